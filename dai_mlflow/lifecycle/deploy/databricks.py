"""``deploy -P target=databricks``: a Databricks Model Serving endpoint on the champion's version.

``databricks-sdk`` (installed with MLflow in both project envs) with its default authentication;
the license is a secret *reference*, never read here. The REST calls and what is untested:
docs/deploy.md. Tests replace the workspace with a local fake (tests/fixtures_deploy.py).
Python 3.8-safe.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Optional, Tuple

from dai_mlflow.errors import say
from dai_mlflow.lifecycle import registry
from dai_mlflow.lifecycle.deploy.request import Deployed, DeployRequest, DeployStatus
from dai_mlflow.lifecycle.errors import DeployError

LICENSE_ENV = "DRIVERLESS_AI_LICENSE_KEY"
READY = "READY"


def endpoint_name_for(model_name: str) -> str:
    """A valid endpoint name from a model name (UC ``catalog.schema.model`` keeps ``model``)."""
    base = model_name.rsplit(".", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", base).strip("-_")
    return (name or "dai-model")[:63]


def _served_version(endpoint: object, model_name: str) -> Optional[str]:
    config = getattr(endpoint, "config", None)
    for entity in getattr(config, "served_entities", None) or []:
        if getattr(entity, "entity_name", None) == model_name:
            return str(getattr(entity, "entity_version", "") or "") or None
    return None


def _state(endpoint: object) -> Tuple[str, str]:
    state = getattr(endpoint, "state", None)
    ready = getattr(getattr(state, "ready", None), "value", None) or "?"
    update = getattr(getattr(state, "config_update", None), "value", None) or "?"
    return str(ready), str(update)


def deploy_serving_endpoint(ref: registry.ModelVersionRef, request: DeployRequest) -> Deployed:
    """Create or update the endpoint to ``ref`` and wait for READY.

    Returns:
        The invocations URL, the version of this model served before (or None), the status.

    Raises:
        DeployError: authentication, the API or the update failed, or READY did not come in
            time; the endpoint keeps what it served.
    """
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.errors import DatabricksError, NotFound, OperationFailed
    from databricks.sdk.service.serving import (
        EndpointCoreConfigInput,
        Route,
        ServedEntityInput,
        TrafficConfig,
    )

    name = request.endpoint_name.strip() or endpoint_name_for(ref.name)
    served_name = endpoint_name_for(f"{ref.name}-{ref.version}")
    entity = ServedEntityInput(
        name=served_name,
        entity_name=ref.name,
        entity_version=ref.version,
        workload_size=request.workload_size,
        scale_to_zero_enabled=request.scale_to_zero,
        environment_vars={LICENSE_ENV: request.license_reference},
    )
    traffic = TrafficConfig(routes=[Route(served_model_name=served_name, traffic_percentage=100)])
    timeout = timedelta(minutes=request.wait_minutes)
    try:
        w = WorkspaceClient()
        host = (w.config.host or "").rstrip("/")
        url = f"{host}/serving-endpoints/{name}/invocations"
        try:
            existing = w.serving_endpoints.get(name)
        except NotFound:
            existing = None
        if existing is None:
            say(f"creating serving endpoint {name} with {ref.uri}; waiting up to {timeout}")
            config = EndpointCoreConfigInput(
                name=name, served_entities=[entity], traffic_config=traffic
            )
            done = w.serving_endpoints.create_and_wait(name=name, config=config, timeout=timeout)
            previous = None
        else:
            previous = _served_version(existing, ref.name)
            if previous == ref.version and _state(existing) == (READY, "NOT_UPDATING"):
                say(f"{name} already serves {ref.uri} and is READY; nothing to do")
                return Deployed(url, previous, DeployStatus.ALREADY)
            say(f"updating serving endpoint {name} from v{previous} to {ref.uri}; waiting")
            done = w.serving_endpoints.update_config_and_wait(
                name=name, served_entities=[entity], traffic_config=traffic, timeout=timeout
            )
    except OperationFailed as e:
        raise DeployError(f"serving endpoint {name}: the update to {ref.uri} failed: {e}") from e
    except TimeoutError as e:
        raise DeployError(
            f"serving endpoint {name} was not READY with {ref.uri} within {timeout}: {e}"
        ) from e
    except DatabricksError as e:
        raise DeployError(f"serving endpoint {name}: {type(e).__name__}: {e}") from e
    except ValueError as e:  # the SDK's "cannot configure default credentials" and friends
        raise DeployError(f"Databricks authentication failed: {' '.join(str(e).split())}") from e
    ready, update = _state(done)
    if ready != READY:
        raise DeployError(f"serving endpoint {name} is {ready} ({update}) after the update")
    served = _served_version(done, ref.name)
    if served != ref.version:
        raise DeployError(f"serving endpoint {name} serves v{served}, not {ref.uri}")
    say(f"serving endpoint {name} is READY with {ref.uri}: {url}")
    return Deployed(url, previous, DeployStatus.DEPLOYED)
