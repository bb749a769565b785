"""Deploy the champion: resolve ``NAME@champion`` to a version once, deploy that number to the
target, record it on the run and on the model versions (docs/deploy.md, "What is recorded").

Python 3.8-safe: runs in the project env.
"""

from __future__ import annotations

from typing import Dict

from dai_mlflow.errors import say
from dai_mlflow.lifecycle import registry
from dai_mlflow.lifecycle.deploy.request import (
    DEPLOY_RUN_TAG,
    DEPLOYED_TAG,
    ENDPOINT_TARGETS,
    Deployed,
    DeployRequest,
    DeployResult,
)


def deploy(request: DeployRequest) -> DeployResult:
    """Deploy the version ``NAME@champion`` points at now, and record it.

    Raises:
        DaiMlflowError: any expected failure (one line); what served before still serves, no
            version tag changed, and the run ends FAILED.
    """
    import mlflow

    with mlflow.start_run() as run:
        run_id = run.info.run_id
        ref = registry.require_alias(request.model_name, registry.CHAMPION)
        params: Dict[str, object] = {
            "model_name": request.model_name,
            "target": request.target,
            "model_version": ref.version,
            "model_uri": ref.uri,
        }
        if request.target in ENDPOINT_TARGETS:
            params.update(port=request.port, host=request.host, rpc=str(request.rpc).lower())
        else:
            params.update(license_secret=request.license_reference)
        registry.log_params_once(params)
        say(f"deploying {ref.uri} ({request.model_name}@champion) to {request.target}")
        if request.target in ENDPOINT_TARGETS:
            from dai_mlflow.lifecycle.deploy.local import deploy_local

            done = deploy_local(ref, request)
        else:
            from dai_mlflow.lifecycle.deploy.databricks import deploy_serving_endpoint

            done = deploy_serving_endpoint(ref, request)
        record(ref, request.target, done, run_id)
        return DeployResult(
            run_id=run_id, target=request.target, model_uri=ref.uri, version=ref.version,
            endpoint_url=done.url, status=done.status, previous_version=done.previous_version,
        )  # fmt: skip


def record(ref: registry.ModelVersionRef, target: str, done: Deployed, run_id: str) -> None:
    """The run's params/tags and the version tags that say what is deployed where."""
    import mlflow

    url, previous = done.url, done.previous_version
    registry.log_params_once({"endpoint_url": url})
    mlflow.set_tags(
        {
            registry.TAG_PREFIX + "endpoint_url": url,
            registry.TAG_PREFIX + "deploy_status": done.status.value,
        }
    )
    if previous and previous != ref.version:
        old = registry.ModelVersionRef(ref.name, previous, "")
        registry.delete_version_tag(old, DEPLOYED_TAG + target)
    registry.set_version_tag(ref, DEPLOYED_TAG + target, url)
    registry.set_version_tag(ref, DEPLOY_RUN_TAG, run_id)
