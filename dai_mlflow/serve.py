"""Serving helpers: the model's env for ``dai_mlflow.rpc``, and running a server process.

* :func:`run_rpc_in_model_env` (``python -m dai_mlflow.rpc --env-manager uv|virtualenv``, from
  ``venvs/launcher``): resolves the model URI with this MLflow (3.x reads any store), restores
  the model's env with MLflow's own ``PyFuncBackend.prepare_env`` — the env
  ``mlflow models serve --env-manager uv`` uses, under ``MLFLOW_ENV_ROOT`` — offline, with the
  local interpreter of the model's Python (:func:`dai_mlflow.envmanagers.env_build_env`), then
  runs a private copy of ``rpc.py`` there as a script with ``--env-manager local``. Signals
  reach the server; if this process dies, the server gets SIGTERM.
* :func:`free_port`, :func:`wait_until_serving`, :func:`stop_server`: start/stop a server
  process on loopback (tests and ``benchmarks/serve_load.py``).

Launcher side (Python >= 3.10, mlflow 3.x); never imported inside a model env.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from dai_mlflow.errors import DaiMlflowError

PYTHON_ENV_FILE_NAME = "python_env.yaml"
RPC_SCRIPT_NAME = "dai_mlflow_rpc.py"


class ServeError(DaiMlflowError):
    """A server could not be prepared or did not come up."""


def model_python_version(local_dir: Path) -> str:
    """The ``python:`` of the model's ``python_env.yaml``.

    Raises:
        ServeError: the model folder has no readable python_env.yaml.
    """
    path = local_dir / PYTHON_ENV_FILE_NAME
    try:
        import yaml

        version = (yaml.safe_load(path.read_text()) or {}).get("python")
    except (OSError, ValueError) as e:
        raise ServeError(f"cannot read {path}: {e}; is {local_dir} an MLflow model?") from e
    if not version:
        raise ServeError(f"{path} names no python version; re-log the model with dai-mlflow")
    return str(version)


def download_model(model_uri: str) -> Path:
    """The model's local folder (``models:/``, ``runs:/``, or a path as is).

    Raises:
        ServeError: the URI does not resolve.
    """
    import mlflow.artifacts

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    except Exception as e:
        raise ServeError(f"cannot resolve {model_uri}: {' '.join(str(e).split())}") from e


def _parent_death_signal() -> None:
    # The server gets SIGTERM if this launcher dies, even by SIGKILL (Linux prctl).
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_rpc_in_model_env(
    rpc_script: Path,
    model_uri: str,
    host: str,
    port: int,
    env_manager: str,
    extra_args: Sequence[str] = (),
) -> int:
    """Restore the model's env with MLflow, run ``rpc_script`` there, wait; its exit code.

    Raises:
        ServeError: the URI does not resolve or the env cannot be built.
    """
    from mlflow.pyfunc.backend import PyFuncBackend

    from dai_mlflow.envmanagers import env_build_env, model_server_env, patched_environ

    local = download_model(model_uri)
    build_env = env_build_env(model_python_version(local))
    backend = PyFuncBackend(config={}, env_manager=env_manager)
    try:
        with patched_environ(build_env):
            environment = backend.prepare_env(str(local))
    except Exception as e:
        raise ServeError(
            f"restoring the env of {model_uri} ({env_manager}) failed: {' '.join(str(e).split())}"
        ) from e
    # A private copy run as a script: the server imports the model's own code/dai_mlflow,
    # not this checkout's, and nothing of the launcher's env reaches the model's Python.
    folder = Path(tempfile.mkdtemp(prefix="dai-mlflow-rpc-"))
    try:
        shutil.copy2(rpc_script, folder / RPC_SCRIPT_NAME)
        args = [
            str(folder / RPC_SCRIPT_NAME),
            "--model-uri",
            str(local),
            "--host",
            host,
            "--port",
            str(port),
            "--env-manager",
            "local",
            *extra_args,
        ]
        command = "exec python " + " ".join(shlex.quote(a) for a in args)
        env = {**os.environ, **build_env, **model_server_env()}
        proc = environment.execute(command, env, preexec_fn=_parent_death_signal, synchronous=False)
        return _wait_forwarding_signals(proc)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _wait_forwarding_signals(proc: subprocess.Popen) -> int:
    def _forward(signum: int, _frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {s: signal.signal(s, _forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # pragma: no cover - forwarded above
                continue
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# ------------------------------------------------------------------------------ processes
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start_server(
    cmd: Sequence[str], env: Dict[str, str], log_path: Path, cwd: Optional[Path] = None
) -> subprocess.Popen:
    """Start ``cmd`` in its own session (so :func:`stop_server` ends all its children)."""
    log = log_path.open("wb")
    try:
        return subprocess.Popen(
            list(cmd),
            env=env,
            cwd=str(cwd) if cwd else None,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        log.close()


def wait_until_serving(
    url: str, proc: subprocess.Popen, timeout: float, log_path: Optional[Path] = None
) -> None:
    """Poll ``url`` (GET) until it answers 200.

    Raises:
        ServeError: the process exited first, or ``timeout`` seconds passed (with the log's tail).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServeError(f"server exited with {proc.returncode}: {_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.25)
    raise ServeError(f"{url} did not answer within {timeout:.0f}s: {_tail(log_path)}")


def stop_server(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the server's process group, SIGKILL it after ``grace`` seconds."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=grace)
    # Children (uvicorn/gunicorn workers) share the group: make sure none outlives the leader.
    _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _tail(log_path: Optional[Path], lines: int = 15) -> str:
    if log_path is None or not log_path.is_file():
        return "(no log)"
    text = log_path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def serve_command(
    mlflow_bin: str, model_uri: str, port: int, env_manager: str, host: str = "127.0.0.1"
) -> List[str]:
    """``mlflow models serve`` for a model on ``host:port``."""
    return [
        mlflow_bin,
        "models",
        "serve",
        "-m",
        model_uri,
        "-h",
        host,
        "-p",
        str(port),
        "--env-manager",
        env_manager,
    ]
