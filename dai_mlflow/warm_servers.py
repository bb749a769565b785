"""A model server kept warm in each Spark Python worker, so the next job skips its start-up.

With ``env_manager="uv"`` or ``"virtualenv"``, ``spark_udf`` starts one model server per task
inside the model's env and kills it when the task ends. Most of that start-up is the server's
own imports (``import mlflow`` takes 3-5 s), before any model is involved. Spark reuses its
Python workers across jobs, so each worker here keeps one spare server that has done its
imports and waits for a model path on stdin (``spark_model_server.py --wait-for-model``):

* when a task asks for a server, the spare is handed the task's model if it was started with
  the very same env (the activate command and every environment variable: license, thread
  limits, tracking, model config); otherwise a new server is started and the spare is stopped.
  A spare never serves a model it loaded before: it loads the task's model from scratch;
* right after, a new spare is started for the next job. It costs one idle interpreter per
  Python worker (~180 MB RSS), and some CPU while it imports during the current job;
* a spare exits when its worker goes away (stdin closes) or after
  ``DAI_MLFLOW_WARM_SERVER_IDLE`` seconds (default 600). ``DAI_MLFLOW_WARM_SERVERS=0`` turns
  spares off: one server per task, started cold, as MLflow does.

Worker side: runs in the Spark Python worker (the driver's env: mlflow 3.x, or 2.17 on a
Python 3.8 driver); Python 3.8-safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import threading
from pathlib import Path
from shlex import quote
from typing import Any, Dict, Optional, Tuple

from dai_mlflow.spark_model_server import MODEL_CONFIG_ENV

WARM_SERVERS_ENV = "DAI_MLFLOW_WARM_SERVERS"

_lock = threading.Lock()
# env key -> the spare server started with that env (one per worker process)
_spare: Dict[str, Any] = {}


def enabled() -> bool:
    """Spares are on unless ``DAI_MLFLOW_WARM_SERVERS=0``."""
    return os.environ.get(WARM_SERVERS_ENV, "1").strip().lower() not in ("0", "false", "no")


def env_key(activate_cmd: object, command_env: Dict[str, str]) -> str:
    """A digest of everything a server process starts with, but its model."""
    text = json.dumps([activate_cmd, sorted(command_env.items())], default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _start(environment: Any, script: Path, command_env: Dict[str, str], **pipes: Any) -> Any:
    return environment.execute(
        command=f"python {quote(str(script))} --wait-for-model",
        command_env=command_env,
        stdin=subprocess.PIPE,
        synchronous=False,
        **pipes,
    )


def stop(proc: Any) -> None:
    """Stop a server that is not serving: closing stdin ends it, a signal ends its shell."""
    with contextlib.suppress(OSError, ValueError):
        proc.stdin.close()
    if proc.poll() is None:
        proc.terminate()


def _hand_model(proc: Any, model_path: str) -> bool:
    if proc.poll() is not None:
        return False
    try:
        proc.stdin.write(json.dumps({"model_uri": model_path}) + "\n")
        proc.stdin.flush()
    except (OSError, ValueError):
        return False
    return True


def _take_spare(key: str) -> Optional[Any]:
    """The spare started with ``key``; any other spare is stopped."""
    found = None
    for k in list(_spare):
        proc = _spare.pop(k)
        if k == key and proc.poll() is None:
            found = proc
        else:
            stop(proc)
    return found


def spare_pid() -> Optional[int]:
    """The pid of this worker's spare server (for tests and diagnostics)."""
    with _lock:
        procs = [p for p in _spare.values() if p.poll() is None]
    return procs[0].pid if procs else None


def serve(
    environment: Any,
    script: Path,
    model_path: str,
    model_config: Optional[dict] = None,
    **pipes: Any,
) -> Tuple[Any, bool]:
    """A server for ``model_path`` in ``environment`` (an MLflow ``Environment``).

    Returns the process (its stdin open, the model path already sent) and whether it was a warm
    spare. Leaves a new spare for the next call with the same env.
    """
    command_env = os.environ.copy()
    if model_config:
        command_env[MODEL_CONFIG_ENV] = json.dumps(model_config)
    key = env_key(environment.get_activate_command(), command_env)
    with _lock:
        proc = _take_spare(key)
        warm = proc is not None and _hand_model(proc, model_path)
        if not warm:
            if proc is not None:
                stop(proc)
            proc = _start(environment, script, command_env, **pipes)
            if not _hand_model(proc, model_path):
                return proc, False  # died at once: the caller reports its output
        with contextlib.suppress(OSError):  # no spare this time; the job has its server
            _spare[key] = _start(environment, script, command_env, **pipes)
    return proc, warm


def patched_serve_stdin(original: Any, script: Path) -> Any:
    """``PyFuncBackend.serve_stdin`` through :func:`serve` (``original`` when spares are off)."""

    def serve_stdin(self: Any, model_uri: Any, stdout: Any = None, stderr: Any = None, **kw: Any):  # noqa: ANN202
        if not enabled() or set(kw) - {"model_config"}:
            return original(self, model_uri, stdout=stdout, stderr=stderr, **kw)
        from mlflow.artifacts import download_artifacts

        local_path = download_artifacts(artifact_uri=str(model_uri))
        environment = self.prepare_env(local_path)
        proc, _ = serve(
            environment,
            script,
            local_path,
            kw.get("model_config"),
            stdout=stdout,
            stderr=stderr,
        )
        return proc

    return serve_stdin
