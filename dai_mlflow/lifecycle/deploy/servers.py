"""The servers of one deployed version, started in the model's own env on free loopback ports.

The model's own server (:mod:`dai_mlflow.model.serving`), or, for a model logged before it
existed, ``mlflow models serve`` plus the JSON-RPC script. Started detached (own session) so they
outlive the deploy command; stopped by process group. Linux only; Python 3.8-safe.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Dict, List

from dai_mlflow.envs.processes import (
    free_port,
    is_alive,
    last_log_line,
    start_logged,
    stop_group,
    wait_answering,
)
from dai_mlflow.lifecycle.deploy.state import Servers
from dai_mlflow.lifecycle.errors import DeployError
from dai_mlflow.model.serving import (
    MODEL_NAME_ENV,
    MODEL_VERSION_ENV,
    SERVER_MODULE,
    has_own_server,
)
from dai_mlflow.serve.rpc import DEFAULT_HOST
from dai_mlflow.serve.server import stage_rpc_script
from dai_mlflow.tracking import scratch_store_environ

START_TIMEOUT = float(os.environ.get("DAI_MLFLOW_DEPLOY_START_TIMEOUT", "600"))
# How stop_group knows the endpoint's processes (workers included): this variable names the
# version's folder (the proxy's: the endpoint folder).
FOLDER_ENV = "DAI_MLFLOW_ENDPOINT_FOLDER"
# Variables of the deploy process that must not reach a server: its MLflow run and store (the
# store may be a private bridge that stops when deploy exits) and its Python paths.
DROPPED_VARS = (
    "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV",
)  # fmt: skip


def spawn(cmd: List[str], cwd: Path, env: Dict[str, str], log: Path) -> int:
    """Start a detached process (own session, outlives us); its pid (= its process group)."""
    cwd.mkdir(parents=True, exist_ok=True)
    return start_logged(cmd, env, log, cwd, detached=True).pid


def wait_serving(url: str, pid: int, log: Path, timeout: float = START_TIMEOUT) -> None:
    """Poll ``url`` until it answers 200.

    Raises:
        DeployError: the process died or the time ran out (with the log's last error).
    """
    why = wait_answering(url, lambda: is_alive(pid), timeout)
    if why == "exited":
        raise DeployError(f"it exited before serving: {last_log_line(log)}")
    if why:
        raise DeployError(f"{url} did not answer within {timeout:.0f}s: {last_log_line(log)}")


def server_env(python: Path, folder: Path) -> Dict[str, str]:
    """The environment of a backend: this one's (license included: it is read at scoring time)
    minus the deploy run's MLflow and Python settings, with the model env activated and a private
    scratch tracking store (loading a model may touch the store; MLflow 2.17 cannot read an
    MLflow 3 one)."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_VARS}
    env["PATH"] = os.pathsep.join([str(python.parent), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(python.parent.parent)
    env.update(scratch_store_environ(folder / "scratch-store"))
    env[FOLDER_ENV] = str(folder)
    return env


def start_servers(
    model_dir: Path,
    python: Path,
    folder: Path,
    model_name: str,
    version: str,
    model_uri: str,
    rpc: bool,
) -> Servers:
    """Start the version's servers on free loopback ports and wait until they answer ``/ping``.

    Raises:
        DeployError: a server did not come up (the ones started are stopped again).
    """
    if has_own_server(model_dir):
        return _start_own_server(model_dir, python, folder, model_name, version, model_uri, rpc)
    env = server_env(python, folder)
    started: List[int] = []
    try:
        port = free_port()
        cmd = [str(python), "-m", "mlflow", "models", "serve", "-m", str(model_dir),
               "-h", DEFAULT_HOST, "-p", str(port), "--env-manager", "local"]  # fmt: skip
        log = folder / "invocations.log"
        started.append(spawn(cmd, folder / "invocations-cwd", env, log))
        servers = Servers(
            model_name=model_name,
            version=version,
            model_uri=model_uri,
            folder=str(folder),
            invocations=f"http://{DEFAULT_HOST}:{port}",
            pids=started,
        )
        rpc_log = folder / "rpc.log"
        if rpc:
            rpc_port = free_port()
            # A private copy run as a script: it imports the model's own code/dai_mlflow.
            script = stage_rpc_script(folder)
            cmd = [str(python), str(script), "--model-uri", str(model_dir), "--env-manager",
                   "local", "--host", DEFAULT_HOST, "--port", str(rpc_port)]  # fmt: skip
            started.append(spawn(cmd, folder / "rpc-cwd", env, rpc_log))
            servers.rpc = f"http://{DEFAULT_HOST}:{rpc_port}"
        try:
            wait_serving(servers.invocations + "/ping", started[0], log)
        except DeployError as e:
            raise DeployError(f"mlflow models serve of {model_uri} failed: {e}") from e
        if servers.rpc:
            try:
                wait_serving(servers.rpc + "/ping", started[1], rpc_log)
            except DeployError as e:
                raise DeployError(f"the JSON-RPC server of {model_uri} failed: {e}") from e
        return servers
    except BaseException:
        for pid in started:
            stop_group(pid, str(folder))
        raise


def _start_own_server(
    model_dir: Path,
    python: Path,
    folder: Path,
    model_name: str,
    version: str,
    model_uri: str,
    rpc: bool,
) -> Servers:
    """The model's own server: ``/invocations`` and ``/rpc`` on one port, requests batched."""
    env = server_env(python, folder)
    env["PYTHONPATH"] = str(model_dir / "code")
    env.update({MODEL_NAME_ENV: model_name, MODEL_VERSION_ENV: version})
    port = free_port()
    cmd = [str(python), "-m", SERVER_MODULE, "--model-path", str(model_dir),
           "--host", DEFAULT_HOST, "--port", str(port)]  # fmt: skip
    log = folder / "invocations.log"
    pid = spawn(cmd, folder / "invocations-cwd", env, log)
    url = f"http://{DEFAULT_HOST}:{port}"
    servers = Servers(
        model_name=model_name,
        version=version,
        model_uri=model_uri,
        folder=str(folder),
        invocations=url,
        rpc=url if rpc else None,
        pids=[pid],
    )
    try:
        wait_serving(url + "/ping", pid, log)
    except BaseException as e:
        stop_group(pid, str(folder))
        if isinstance(e, DeployError):
            raise DeployError(f"the server of {model_uri} failed: {e}") from e
        raise
    return servers


def stop_servers(servers: Dict[str, Any], remove: bool = True) -> None:
    """Stop a version's servers (``Servers`` as a dict) and remove its folder."""
    for pid in servers.get("pids", []):
        stop_group(int(pid), str(servers["folder"]))
    if servers.get("container"):
        from dai_mlflow.image.backend import stop_container

        stop_container(servers["container"])
    if remove and servers.get("folder"):
        shutil.rmtree(servers["folder"], ignore_errors=True)
