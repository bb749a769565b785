"""A model's local endpoint folder: ``endpoint.json``, its lock, and the record of one version's
servers (:class:`Servers`, also built by :mod:`dai_mlflow.image.backend` for ``target=docker``).

Folder layout and the meaning of each file: docs/deploy.md. Stdlib only; Python 3.8-safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Dict, List, Optional

from dai_mlflow.envs.locks import file_lock
from dai_mlflow.lifecycle.deploy.proxy import PROXY_FILE
from dai_mlflow.lifecycle.errors import DeployError

ENDPOINT_ROOT_ENV = "DAI_MLFLOW_ENDPOINT_ROOT"
STATE_FILE = "endpoint.json"
LOCK_FILE = "deploy.lock"


@dataclass
class Servers:
    """The servers of one deployed version; ``route_id`` (unique to this start) and ``since``
    (its UTC time) are set when it is made."""

    model_name: str
    version: str
    model_uri: str
    folder: str
    invocations: str  # base URL of mlflow models serve
    rpc: Optional[str] = None  # base URL of the JSON-RPC server
    pids: List[int] = field(default_factory=list)  # process group leaders
    container: Optional[str] = None  # target=docker: the container serving this version
    route_id: str = ""
    since: str = ""

    def __post_init__(self) -> None:
        self.route_id = self.route_id or f"{self.version}-{secrets.token_hex(4)}"
        self.since = self.since or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

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
        (folder / PROXY_FILE).unlink()


def new_token() -> str:
    """A random hex token (the proxy's admin token; folder suffixes)."""
    return secrets.token_hex(16)
