"""Serving a logged DAI model from the model's own env: ``python -m dai_mlflow.serve``.

MLflow 3 restores the env (as ``mlflow models serve --env-manager uv`` does) and the env's own
server runs there: the model's own server when the model carries it, else the env's ``mlflow
models serve --env-manager local`` (MLflow 2.17 on Python 3.8 for DAI 1.10, which has no uv env
manager). Also stages and runs the JSON-RPC script for ``python -m dai_mlflow.serve.rpc``.
Signals reach the server; if this process dies, the server gets SIGTERM.
Launcher side (Python >= 3.10, MLflow 3); never imported in a model env. See docs/serving.md.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import click

from dai_mlflow.cli import entry_point
from dai_mlflow.envs.locks import file_lock
from dai_mlflow.envs.model_env import (
    BUILDING_ENV_MANAGERS,
    ENV_MANAGERS,
    model_python_version,
)
from dai_mlflow.envs.processes import FOREIGN_PYTHON_VARS, parent_death_signal
from dai_mlflow.errors import DaiMlflowError, say
from dai_mlflow.model import http_limits
from dai_mlflow.model.serving import (
    MODEL_NAME_ENV,
    MODEL_VERSION_ENV,
    SERVER_MODULE,
    has_own_server,
)
from dai_mlflow.tracking import download_model, scratch_store_environ

# The name of the JSON-RPC module copied beside a model: run there as a script by the model
# env's Python (it imports the model's own code/dai_mlflow, not this checkout's).
RPC_SCRIPT_NAME = "dai_mlflow_rpc.py"
RPC_MODULE_FILE = Path(__file__).resolve().with_name("rpc.py")


class ServeError(DaiMlflowError):
    """A server could not be prepared or did not come up."""


def stage_rpc_script(folder: Path, rpc_file: Path = RPC_MODULE_FILE) -> Path:
    """Copy the JSON-RPC module into ``folder`` as a script, with the limits module it imports
    from beside it; the script's path."""
    script = folder / RPC_SCRIPT_NAME
    shutil.copy2(rpc_file, script)
    shutil.copy2(Path(http_limits.__file__), folder / http_limits.SCRIPT_NAME)
    return script


def offline_build_env(python_version: str, path: Optional[str] = None) -> Dict[str, str]:
    """Variables under which MLflow restores a model env offline with a local interpreter.

    The persistent tool dir of :func:`dai_mlflow.envs.offline.env_build_env` (``uv``, the
    interpreter links, the offline ``pyenv`` wrapper) goes first on ``path`` (default: PATH),
    and uv downloads are off.

    Raises:
        PythonNotFoundError: no local interpreter of that version.
    """
    from dai_mlflow.envs.offline import env_build_env, tool_dir

    env = env_build_env(python_version)
    if path is not None:
        env["PATH"] = os.pathsep.join([str(tool_dir(python_version)), path])
    return env


def prepare_model_env(local_dir: Path, env_manager: str) -> Any:
    """Restore (or reuse) the model's env with MLflow; an ``mlflow.utils.environment.Environment``.

    Raises:
        ServeError: the env cannot be built.
    """
    from mlflow.pyfunc.backend import PyFuncBackend

    from dai_mlflow.envs.offline import patched_environ

    if env_manager not in BUILDING_ENV_MANAGERS:
        raise ServeError(f"env manager {env_manager!r} builds no env; use uv or virtualenv")
    build_env = offline_build_env(model_python_version(local_dir))
    backend = PyFuncBackend(config={}, env_manager=env_manager)
    try:
        # MLflow names envs by requirements (one env per DAI version) and treats a folder that
        # exists as built: two restores at once would let the second use a half-built env.
        with _restore_lock(), patched_environ(build_env):
            drop_orphaned_envs(_env_root())
            return backend.prepare_env(str(local_dir))
    except Exception as e:
        raise ServeError(
            f"restoring the env of {local_dir} ({env_manager}) failed: {' '.join(str(e).split())}"
        ) from e


def _env_root() -> Path:
    from mlflow.environment_variables import MLFLOW_ENV_ROOT

    return Path(MLFLOW_ENV_ROOT.get()).expanduser()


def _restore_lock() -> Any:
    """Serialise env restores of this machine's MLflow env root (an flock on a file in it)."""
    return file_lock(_env_root() / ".dai-mlflow-restore.lock")


def drop_orphaned_envs(root: Path) -> List[Path]:
    """Remove MLflow envs under ``root`` whose interpreter is gone; the folders removed.

    MLflow reuses an env folder that exists. One whose ``pyvenv.cfg`` home no longer exists
    (its interpreter's folder was deleted, e.g. a cleaned ``~/.cache``) has no working
    ``python``, and ``source activate && python`` would run whatever Python is on PATH.
    Removed, MLflow builds it again.
    """
    removed = []
    for cfg in sorted(root.glob("mlflow-*/pyvenv.cfg")):
        try:
            pairs = [line.split("=", 1) for line in cfg.read_text().splitlines() if "=" in line]
        except OSError:
            continue
        home = {k.strip(): v.strip() for k, v in pairs}.get("home")
        if home and not Path(home).is_dir():
            say(f"{cfg.parent.name}: its interpreter ({home}) is gone; building the env again")
            shutil.rmtree(str(cfg.parent), ignore_errors=True)
            removed.append(cfg.parent)
    return removed


def run_in_model_env(
    environment: Any, argv: Sequence[str], extra_env: Optional[Dict[str, str]] = None
) -> int:
    """Run ``argv`` in the restored env (``exec``, activated), forwarding signals; exit code.

    The model is already a local folder, so the server needs no tracking store; it gets a
    private scratch one instead of the caller's: loading a model toggles MLflow tracing, which
    opens the store, and MLflow 2.17 (DAI 1.10 envs) cannot read an MLflow 3 sqlite store
    ("Can't locate revision"). The scratch folder is removed when the server exits.
    """
    command = "exec " + " ".join(shlex.quote(a) for a in argv)
    scratch = Path(tempfile.mkdtemp(prefix="dai-mlflow-serve-store-"))
    env = {**os.environ, **dict.fromkeys(FOREIGN_PYTHON_VARS, "")}
    env.update(scratch_store_environ(scratch / "mlruns"))
    env.update(extra_env or {})
    try:
        proc = environment.execute(command, env, preexec_fn=parent_death_signal, synchronous=False)
        return _wait_forwarding_signals(proc)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def model_identity(model_uri: str) -> Dict[str, str]:
    """``DAI_MLFLOW_MODEL_NAME``/``_VERSION`` of a ``models:/NAME/VERSION`` or ``@ALIAS`` URI
    (the server's metrics and inference log name them); empty for other URIs."""
    if not model_uri.startswith("models:/"):
        return {}
    name, _, ref = model_uri[len("models:/") :].partition("/")
    name, _, alias = name.partition("@")
    version = ref if ref.isdigit() else ""
    if alias:
        try:
            import mlflow

            version = str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
        except Exception:  # names only; the download already resolved the URI
            version = ""
    return {MODEL_NAME_ENV: name, MODEL_VERSION_ENV: version}


def run_model_server(
    model_uri: str,
    host: str,
    port: int,
    env_manager: str,
    options: Sequence[str] = (),
) -> Optional[int]:
    """Run the model's own server (``/invocations``, ``/rpc``, ``/metrics``) in its env.

    Returns:
        The server's exit code, or None when the model carries no server (an older model).

    Raises:
        ServeError: the URI does not resolve or the env cannot be built.
    """
    local = download_model(model_uri)
    if not has_own_server(local):
        return None
    argv = ["-m", SERVER_MODULE, "--model-path", str(local), "--host", host, "--port", str(port)]
    argv += list(options)
    extra_env = {"PYTHONPATH": str(local / "code"), **model_identity(model_uri)}
    if env_manager == "local":
        env = {**os.environ, **extra_env}
        return subprocess.call([sys.executable, *argv], env=env)
    environment = prepare_model_env(local, env_manager)
    return run_in_model_env(environment, ["python", *argv], extra_env)


def serve_model(
    model_uri: str,
    host: str,
    port: int,
    env_manager: str,
    workers: Optional[int] = None,
    timeout: Optional[int] = None,
    options: Sequence[str] = (),
) -> int:
    """Serve ``model_uri`` in its own env: its own server, or (older models) the env's
    ``mlflow models serve``.

    Raises:
        ServeError: the URI does not resolve or the env cannot be built.
    """
    own = list(options)
    own += ["--workers", str(workers)] if workers else []
    own += ["--timeout", str(timeout)] if timeout else []
    code = run_model_server(model_uri, host, port, env_manager, own)
    if code is not None:
        return code
    say(f"{model_uri} carries no dai-mlflow server (logged before it existed): mlflow models serve")
    local = download_model(model_uri)
    options = ["-h", host, "-p", str(port)]
    options += ["-w", str(workers)] if workers else []
    options += ["-t", str(timeout)] if timeout else []
    if env_manager == "local":
        argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(local), *options]
        return subprocess.call([*argv, "--env-manager", "local"])
    environment = prepare_model_env(local, env_manager)
    argv = ["mlflow", "models", "serve", "-m", str(local), *options, "--env-manager", "local"]
    return run_in_model_env(environment, argv)


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
    local = download_model(model_uri)
    environment = prepare_model_env(local, env_manager)
    # A private copy run as a script: the server imports the model's own code/dai_mlflow,
    # not this checkout's, and nothing of the launcher's env reaches the model's Python.
    folder = Path(tempfile.mkdtemp(prefix="dai-mlflow-rpc-"))
    try:
        script = stage_rpc_script(folder, rpc_script)
        argv = ["python", str(script), "--model-uri", str(local)]
        argv += ["--host", host, "--port", str(port), "--env-manager", "local", *extra_args]
        return run_in_model_env(environment, argv)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _wait_forwarding_signals(proc: subprocess.Popen) -> int:
    def _forward(signum: int, _frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {s: signal.signal(s, _forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


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


@click.command(
    name="python -m dai_mlflow.serve",
    help=(
        "Serve a logged DAI model from its own env (restored offline with uv or virtualenv; "
        "DAI 1.10 on Python 3.8 and DAI 2 alike) with the model's own server: POST "
        "/invocations (mlflow models serve's protocol and answers), POST /rpc (DAI's JSON-RPC), "
        "GET /ping /health /version /metrics; concurrent requests share scorer calls."
    ),
)
@click.option("-m", "--model-uri", required=True, help="models:/NAME@ALIAS, runs:/..., a path")
@click.option("-h", "--host", default="127.0.0.1", show_default=True)
@click.option("-p", "--port", type=int, default=5000, show_default=True)
@click.option("-w", "--workers", type=int, default=None, help="server workers")
@click.option("-t", "--timeout", type=int, default=None, help="request timeout (s)")
@click.option("--env-manager", type=click.Choice(ENV_MANAGERS), default="uv", show_default=True)
@click.option("--max-batch-rows", type=int, default=None, help="most rows per scorer call")
@click.option("--max-wait-ms", type=float, default=None, help="longest wait to merge requests")
@click.option("--no-batching", is_flag=True, help="one scorer call per request")
@click.option("--log-requests", default=None, metavar="DIR", help="inference log (parquet)")
@click.option("--body-limit", type=int, default=None, metavar="BYTES", help="(default 64 MiB)")
def cli(
    model_uri: str,
    host: str,
    port: int,
    workers: Optional[int],
    timeout: Optional[int],
    env_manager: str,
    max_batch_rows: Optional[int],
    max_wait_ms: Optional[float],
    no_batching: bool,
    log_requests: Optional[str],
    body_limit: Optional[int],
) -> int:
    """Serve until stopped; the server's exit code."""
    options: List[str] = []
    for flag, value in (
        ("--max-batch-rows", max_batch_rows),
        ("--max-wait-ms", max_wait_ms),
        ("--log-requests", os.path.abspath(log_requests) if log_requests else None),
        ("--body-limit", body_limit),
    ):
        options += [flag, str(value)] if value is not None else []
    options += ["--no-batching"] if no_batching else []
    return serve_model(model_uri, host, port, env_manager, workers, timeout, options)


main = entry_point(cli)


if __name__ == "__main__":
    sys.exit(main())
