"""The deployer's side of the front proxy: start it, switch its route, wait for a drain, stop it.

Talks to the proxy's admin port (127.0.0.1, token in ``endpoint.json``); the proxy process is
:mod:`.proxy`. Stdlib only; Python 3.8-safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import urllib.error
from pathlib import Path
from typing import Any, Dict, Optional

from dai_mlflow.envs.processes import (
    answers,
    http_request,
    is_alive,
    last_log_line,
    stop_group,
)
from dai_mlflow.errors import say
from dai_mlflow.lifecycle.deploy import proxy
from dai_mlflow.lifecycle.deploy.servers import DROPPED_VARS, FOLDER_ENV, spawn
from dai_mlflow.lifecycle.errors import DeployError
from dai_mlflow.model.http_limits import bind_warning

DRAIN_TIMEOUT = 300.0
PROXY_MODULE = "dai_mlflow.lifecycle.deploy.proxy"


def serves(url: str, live: Optional[Dict[str, Any]]) -> bool:
    """True when the endpoint at ``url`` answers ``/ping`` and the proxy's ``/-/state``
    (``live``) finds every backend of its route up (an ``/rpc`` server may be down alone)."""
    health = (live or {}).get("health") or {}
    return all(v == proxy.UP for v in health.values()) and answers(url + "/ping")


def _proxy_env() -> Dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in DROPPED_VARS and not k.startswith(("DRIVERLESS_AI_", "MLFLOW_"))
    }
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[3])  # where dai_mlflow is
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
    cmd = [sys.executable, "-m", PROXY_MODULE, "--state-dir", str(folder),
           "--host", host, "--port", str(port), "--route", json.dumps(route)]  # fmt: skip
    log = folder / "proxy.log"
    pid = spawn(cmd, folder, env, log)
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
    headers = {proxy.TOKEN_HEADER: state["token"]}
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    return json.loads(http_request(url, data, headers, timeout=10)[1])


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
