"""What ``deploy`` is asked and what it answers: request, result and status types, tag names.

Light (no pandas): :mod:`dai_mlflow.lifecycle.cli` takes its option defaults from here.
Python 3.8-safe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Optional

from dai_mlflow.lifecycle import registry
from dai_mlflow.lifecycle.errors import LifecycleError
from dai_mlflow.serve.rpc import DEFAULT_HOST

TARGETS = ("local", "docker", "databricks")
# Targets served here behind the front proxy: by processes, or by a container of the DAI image.
ENDPOINT_TARGETS = ("local", "docker")
DEPLOYED_TAG = registry.TAG_PREFIX + "deployed."
DEPLOY_RUN_TAG = registry.TAG_PREFIX + "deploy_run"
DEFAULT_PORT = 5050
_SECRET_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class DeployStatus(str, Enum):
    """The run tag ``dai_mlflow.deploy_status`` and the key of the last stdout line."""

    __str__ = str.__str__  # prints as its value, on every Python

    DEPLOYED = "deployed"
    ALREADY = "already_deployed"


@dataclass(frozen=True)
class DeployRequest(registry.ModelRequest):
    """Inputs of :func:`~.run.deploy` (the Databricks fields are ignored for ``local``)."""

    target: str = "local"
    port: int = DEFAULT_PORT
    host: str = DEFAULT_HOST
    rpc: bool = False
    state_root: Optional[Path] = None
    endpoint_name: str = ""
    secret_scope: str = "dai-mlflow"
    secret_key: str = "driverless-ai-license-key"
    workload_size: str = "Small"
    scale_to_zero: bool = True
    wait_minutes: float = 30.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target not in TARGETS:
            raise LifecycleError(f"target {self.target!r}: use one of {', '.join(TARGETS)}")
        if not 1 <= self.port <= 65535:
            raise LifecycleError(f"port must be 1..65535, got {self.port}")
        for label, value in (("secret_scope", self.secret_scope), ("secret_key", self.secret_key)):
            if not _SECRET_NAME.match(value):
                raise LifecycleError(
                    f"{label} {value!r} is not a secret name (letters, digits, '_', '-', '.'); "
                    "pass the name of the secret that holds the license, never the license"
                )
        if self.wait_minutes <= 0:
            raise LifecycleError(f"wait_minutes must be > 0, got {self.wait_minutes}")

    @property
    def license_reference(self) -> str:
        """The license as Databricks resolves it at serving time: a secret reference."""
        return "{{secrets/" + self.secret_scope + "/" + self.secret_key + "}}"


@dataclass(frozen=True)
class Deployed:
    """What a target did: its endpoint URL, the version it served before, the status."""

    url: str
    previous_version: Optional[str]
    status: DeployStatus


@dataclass(frozen=True)
class DeployResult:
    """What was deployed where."""

    run_id: str
    target: str
    model_uri: str
    version: str
    endpoint_url: str
    status: DeployStatus
    previous_version: Optional[str]


@dataclass(frozen=True)
class UndeployResult:
    """The endpoint that was stopped and the version it served."""

    url: str
    version: Optional[str]
