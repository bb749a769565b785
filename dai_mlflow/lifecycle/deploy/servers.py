"""A local serving endpoint on a stable port: one front proxy, one set of servers per version.

Layout of a model's endpoint folder (``$DAI_MLFLOW_ENDPOINT_ROOT/<model>`` or
``~/.cache/dai-mlflow/endpoints/<model>``):

- ``endpoint.json`` (mode 0600): the stable URL, the proxy's pid and admin port, the admin
  token, and the version being served with its servers (pids, ports, folder);
- ``deploy.lock``: an flock held by a deploy or undeploy for its whole length;
- ``v<N>-<id>/``: one deployed version: ``model/`` (the registered files, downloaded once),
  ``invocations.log`` / ``rpc.log``, and the servers' working folders (the DAI scorer writes
  ``./tmp`` where it runs);
- ``proxy.json``, ``proxy.log``: written by the proxy (:mod:`.proxy`).

The server is the model's own (:mod:`dai_mlflow.model.serving`: ``/invocations`` and ``/rpc``
on one port); a model logged before it existed gets ``mlflow models serve --env-manager local``
and, when asked, the JSON-RPC server (a private copy run as a script). Either is started with
the model's own env (``ensure_model_env``: the env validate scores in, so usually no
install) on free loopback ports, in their own sessions so they outlive the deploy command.
:func:`start_servers` / :func:`stop_servers` start and stop them; :func:`start_proxy`,
:func:`switch_route`, :func:`wait_drained` and :func:`stop_proxy` drive the proxy. The
sequence (start new → smoke test → switch → drain → stop old) is in :mod:`.deploy`.

Linux only (``/proc``, process groups), like the DAI scorer. Python 3.8-safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Dict, List, Optional

from dai_mlflow.envs.locks import file_lock
from dai_mlflow.envs.processes import free_port, last_log_line, start_logged, wait_answering
from dai_mlflow.errors import say
from dai_mlflow.lifecycle import proxy
from dai_mlflow.lifecycle.errors import LifecycleError
from dai_mlflow.model.http_limits import bind_warning
from dai_mlflow.model.serving import (
    MODEL_NAME_ENV,
    MODEL_VERSION_ENV,
    SERVER_MODULE,
    has_own_server,
)
from dai_mlflow.serve.rpc import DEFAULT_HOST, install_script

ENDPOINT_ROOT_ENV = "DAI_MLFLOW_ENDPOINT_ROOT"
STATE_FILE = "endpoint.json"
LOCK_FILE = "deploy.lock"
DEFAULT_PORT = 5050
START_TIMEOUT = float(os.environ.get("DAI_MLFLOW_DEPLOY_START_TIMEOUT", "600"))
DRAIN_TIMEOUT = 300.0
STOP_GRACE = 30.0
FOLDER_ENV = "DAI_MLFLOW_ENDPOINT_FOLDER"
# Variables of the deploy process that must not reach a server: its MLflow run and store (the
# store may be a private bridge that stops when deploy exits) and its Python paths.
_DROPPED_VARS = (
    "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV",
)  # fmt: skip


class DeployError(LifecycleError):
    """A deployment step failed; the endpoint still serves what it served before."""


@dataclass
class Servers:
    """The servers of one deployed version."""

    route_id: str
    model_name: str
    version: str
    model_uri: str
    folder: str
    invocations: str  # base URL of mlflow models serve
    rpc: Optional[str] = None  # base URL of the JSON-RPC server
    pids: List[int] = field(default_factory=list)  # process group leaders
    since: str = ""
    container: Optional[str] = None  # target=docker: the container serving this version

    def route(self) -> Dict[str, Any]:
        """The proxy's route to these servers."""
        return {
            "id": self.route_id, "model_name": self.model_name, "version": self.version,
            "model_uri": self.model_uri, "invocations": self.invocations, "rpc": self.rpc,
            "since": self.since,
        }  # fmt: skip


def endpoint_root() -> Path:
    """``$DAI_MLFLOW_ENDPOINT_ROOT`` or ``~/.cache/dai-mlflow/endpoints``."""
    env = os.environ.get(ENDPOINT_ROOT_ENV)
    return Path(env) if env else Path.home() / ".cache" / "dai-mlflow" / "endpoints"


def state_dir(model_name: str, root: Optional[Path] = None) -> Path:
    """The endpoint folder of a model (its name made file-safe)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", model_name).strip(".") or "model"
    return (root or endpoint_root()) / safe


def locked(folder: Path) -> ContextManager[None]:
    """Hold the endpoint's deploy lock (one deploy or undeploy at a time)."""
    return file_lock(folder / LOCK_FILE)


def load_state(folder: Path) -> Optional[Dict[str, Any]]:
    """``endpoint.json``, or None when there is none."""
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise DeployError(
            f"{path} is not valid JSON ({e}); remove it after stopping its servers"
        ) from e


def save_state(folder: Path, state: Dict[str, Any]) -> None:
    """Write ``endpoint.json`` atomically, readable by its owner only (it holds the token)."""
    tmp = folder / f".{STATE_FILE}.{os.getpid()}"
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=1)
    tmp.replace(folder / STATE_FILE)


def clear_state(folder: Path) -> None:
    """Remove ``endpoint.json`` and ``proxy.json`` (the endpoint is stopped)."""
    with contextlib.suppress(FileNotFoundError):
        (folder / STATE_FILE).unlink()
    with contextlib.suppress(FileNotFoundError):
        (folder / proxy.PROXY_FILE).unlink()


def new_token() -> str:
    """A random hex token (the proxy's admin token; folder suffixes)."""
    return secrets.token_hex(16)


# ------------------------------------------------------------------------------ processes
def is_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone; our own zombies are reaped)."""
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _spawn(cmd: List[str], cwd: Path, env: Dict[str, str], log: Path) -> int:
    """Start a detached process (own session, outlives us); its pid (= its process group)."""
    cwd.mkdir(parents=True, exist_ok=True)
    return start_logged(cmd, env, log, cwd, detached=True).pid


def _mentions(pid: int, marker: str) -> bool:
    """True when process ``pid``'s command line or environment contains ``marker``."""
    needle = marker.encode()
    for part in ("cmdline", "environ"):
        try:
            if needle in Path(f"/proc/{pid}/{part}").read_bytes():
                return True
        except OSError:
            continue
    return False


def _group(pgid: int) -> List[int]:
    """Live processes of the process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def stop_group(pid: int, marker: str, grace: float = STOP_GRACE) -> None:
    """SIGTERM the process group led by ``pid``; SIGKILL it when still there after ``grace``.

    Only processes that are ours are signalled: their command line or environment names
    ``marker`` (the version's folder, or the endpoint folder for the proxy). A pid recorded
    before a reboot may belong to anything now.
    """
    ours = [p for p in _group(pid) if _mentions(p, marker)]
    if not ours:
        return
    if pid not in ours:  # the leader is gone or is someone else's: stop what is left of ours
        for p in ours:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and is_alive(pid):
            time.sleep(0.1)
        if not is_alive(pid):
            break
    # Workers (gunicorn, uvicorn) share the group: none may outlive its leader.
    for p in _group(pid):
        if _mentions(p, marker):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)


def _get(url: str, timeout: float = 5.0, headers: Optional[Dict[str, str]] = None) -> Any:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body = resp.read()
        return resp.status, body


def answers(url: str) -> bool:
    """True when ``GET url`` answers 200 now."""
    try:
        return _get(url, timeout=10)[0] == 200
    except (urllib.error.URLError, OSError):
        return False


def serves(url: str, live: Optional[Dict[str, Any]]) -> bool:
    """True when the endpoint at ``url`` answers ``/ping`` and the proxy's ``/-/state``
    (``live``) finds every backend of its route up (an ``/rpc`` server may be down alone)."""
    health = (live or {}).get("health") or {}
    return all(v == proxy.UP for v in health.values()) and answers(url + "/ping")


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
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_VARS}
    env["PATH"] = os.pathsep.join([str(python.parent), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(python.parent.parent)
    env["MLFLOW_TRACKING_URI"] = (folder / "scratch-store").as_uri()
    env["MLFLOW_ALLOW_FILE_STORE"] = "true"
    env[FOLDER_ENV] = str(folder)  # how stop_group knows its processes (workers included)
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
    env = server_env(python, folder)
    started: List[int] = []
    if has_own_server(model_dir):
        return _start_own_server(model_dir, python, folder, model_name, version, model_uri, rpc)
    try:
        port = free_port()
        cmd = [str(python), "-m", "mlflow", "models", "serve", "-m", str(model_dir),
               "-h", DEFAULT_HOST, "-p", str(port), "--env-manager", "local"]  # fmt: skip
        log = folder / "invocations.log"
        started.append(_spawn(cmd, folder / "invocations-cwd", env, log))
        servers = Servers(
            route_id=f"{version}-{uuid.uuid4().hex[:8]}", model_name=model_name, version=version,
            model_uri=model_uri, folder=str(folder), invocations=f"http://{DEFAULT_HOST}:{port}",
            pids=started, since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )  # fmt: skip
        rpc_log = folder / "rpc.log"
        if rpc:
            rpc_port = free_port()
            # A private copy run as a script: it imports the model's own code/dai_mlflow.
            script = install_script(folder)
            cmd = [str(python), str(script), "--model-uri", str(model_dir), "--env-manager",
                   "local", "--host", DEFAULT_HOST, "--port", str(rpc_port)]  # fmt: skip
            started.append(_spawn(cmd, folder / "rpc-cwd", env, rpc_log))
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
    pid = _spawn(cmd, folder / "invocations-cwd", env, log)
    url = f"http://{DEFAULT_HOST}:{port}"
    servers = Servers(
        route_id=f"{version}-{uuid.uuid4().hex[:8]}", model_name=model_name, version=version,
        model_uri=model_uri, folder=str(folder), invocations=url, rpc=url if rpc else None,
        pids=[pid], since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )  # fmt: skip
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


# ------------------------------------------------------------------------------ proxy
def _proxy_env() -> Dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _DROPPED_VARS and not k.startswith(("DRIVERLESS_AI_", "MLFLOW_"))
    }
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])  # where dai_mlflow is
    return env


def start_proxy(folder: Path, host: str, port: int, route: Dict[str, Any], token: str) -> Dict:
    """Start the front proxy on ``host:port`` with its first route; its ``proxy.json``.

    Raises:
        DeployError: the proxy did not come up (e.g. the port is taken).
    """
    info_file = folder / proxy.PROXY_FILE
    with contextlib.suppress(FileNotFoundError):
        info_file.unlink()
    warning = bind_warning(host, port)
    if warning:
        say(warning)
    env = {**_proxy_env(), proxy.TOKEN_ENV: token, FOLDER_ENV: str(folder)}
    cmd = [sys.executable, "-m", "dai_mlflow.lifecycle.proxy", "--state-dir", str(folder),
           "--host", host, "--port", str(port), "--route", json.dumps(route)]  # fmt: skip
    log = folder / "proxy.log"
    pid = _spawn(cmd, folder, env, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not is_alive(pid):
            raise DeployError(
                f"the front proxy did not start on {host}:{port}: {last_log_line(log)}"
            )
        if info_file.is_file():
            info = json.loads(info_file.read_text())
            if info.get("pid") == pid:
                return info
        time.sleep(0.1)
    stop_group(pid, str(folder))
    raise DeployError(
        f"the front proxy did not start on {host}:{port} within 60s: {last_log_line(log)}"
    )


def _admin(state: Dict[str, Any], path: str, body: Optional[Dict[str, Any]] = None) -> Any:
    url = f"http://127.0.0.1:{state['proxy']['admin_port']}{path}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={proxy.TOKEN_HEADER: state["token"]})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def proxy_state(state: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The running proxy's ``/-/state``, or None when it is gone or does not answer."""
    if not state.get("proxy") or not is_alive(int(state["proxy"]["pid"])):
        return None
    try:
        return _admin(state, "/-/state")
    except (urllib.error.URLError, OSError, ValueError):
        return None


def switch_route(state: Dict[str, Any], route: Dict[str, Any]) -> Dict[str, Any]:
    """Point the proxy at ``route`` (atomic); the previous route.

    Raises:
        DeployError: the proxy did not take it (the old route stays).
    """
    try:
        return _admin(state, "/-/route", route)["previous"]
    except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
        raise DeployError(f"the front proxy refused the switch: {e}") from e


def wait_drained(state: Dict[str, Any], route_id: str, timeout: float = DRAIN_TIMEOUT) -> bool:
    """Wait until no request is in flight on ``route_id``; False when ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = proxy_state(state)
        if now is None or int(now["inflight"].get(route_id, 0)) == 0:
            return True
        time.sleep(0.05)
    return False


def stop_proxy(state: Dict[str, Any], folder: Path) -> None:
    """Stop the endpoint's front proxy (its listening port closes)."""
    if state.get("proxy"):
        stop_group(int(state["proxy"]["pid"]), str(folder), grace=10.0)
