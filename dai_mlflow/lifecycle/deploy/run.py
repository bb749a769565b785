"""Deploy the champion: ``mlflow run . -e deploy -P model_name=NAME [-P target=TARGET]``
(``local``, ``docker`` or ``databricks``).

:func:`deploy` resolves ``NAME@champion`` to its version *once* and deploys that number (a later
alias move does not change what this run deploys), then records it: run params
``model_version``, ``model_uri``, ``endpoint_url``; run tags ``dai_mlflow.endpoint_url`` and
``dai_mlflow.deploy_status``; on the model version the tags ``dai_mlflow.deployed.<target>``
(the endpoint URL) and ``dai_mlflow.deploy_run``; the tag is removed from the version that
served before.

``target=local`` (:func:`deploy_local`): an endpoint on a stable port (:mod:`.endpoint`,
:mod:`.proxy`). The new version's servers start beside the old ones on their own ports; they are
smoke-tested with the version's validation sample (:mod:`.smoke`); only then does the proxy
switch to them, atomically; the old servers drain (no request in flight) and stop. A failure
before the switch stops the new servers and leaves the old version serving.

``target=databricks`` (:mod:`.databricks_serving`): a Model Serving endpoint is created or
updated to the version, with the license as a secret reference, and waited for until READY.

Any failure is one line (``error: ...``), exit 1, and the MLflow run ends FAILED.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from dai_mlflow.envs.model_env import ensure_model_env
from dai_mlflow.errors import one_line, say
from dai_mlflow.lifecycle import drift, endpoint, registry, smoke
from dai_mlflow.lifecycle.endpoint import DeployError
from dai_mlflow.lifecycle.errors import LifecycleError

TARGETS = ("local", "docker", "databricks")
# Targets served here behind the front proxy: by processes, or by a container of the DAI image.
ENDPOINT_TARGETS = ("local", "docker")
DEPLOYED_TAG = registry.TAG_PREFIX + "deployed."
DEPLOY_RUN_TAG = registry.TAG_PREFIX + "deploy_run"
DEPLOYED = "deployed"
ALREADY = "already_deployed"
_SECRET_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


@dataclass(frozen=True)
class DeployRequest(registry.ModelRequest):
    """Inputs of :func:`deploy` (the Databricks fields are ignored for ``local``)."""

    target: str = "local"
    port: int = endpoint.DEFAULT_PORT
    host: str = endpoint.DEFAULT_HOST
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
class DeployResult:
    """What was deployed where."""

    run_id: str
    target: str
    model_uri: str
    version: str
    endpoint_url: str
    status: str  # deployed | already_deployed
    previous_version: Optional[str]


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
            url, previous, status = deploy_local(ref, request)
        else:
            from dai_mlflow.lifecycle.databricks_serving import deploy_serving_endpoint

            url, previous, status = deploy_serving_endpoint(ref, request)
        record(ref, request.target, url, previous, run_id, status)
        return DeployResult(run_id, request.target, ref.uri, ref.version, url, status, previous)


def record(
    ref: registry.ModelVersionRef,
    target: str,
    url: str,
    previous: Optional[str],
    run_id: str,
    status: str,
) -> None:
    """The run's params/tags and the version tags that say what is deployed where."""
    import mlflow

    registry.log_params_once({"endpoint_url": url})
    mlflow.set_tags(
        {registry.TAG_PREFIX + "endpoint_url": url, registry.TAG_PREFIX + "deploy_status": status}
    )
    if previous and previous != ref.version:
        old = registry.ModelVersionRef(ref.name, previous, "")
        registry.delete_version_tag(old, DEPLOYED_TAG + target)
    registry.set_version_tag(ref, DEPLOYED_TAG + target, url)
    registry.set_version_tag(ref, DEPLOY_RUN_TAG, run_id)


def load_sample(ref: registry.ModelVersionRef, model_dir: Path) -> smoke.Sample:
    """The version's validation sample, or its input example when it was never validated."""
    run_id = registry.version_tag(ref, registry.BASELINE_RUN_TAG)
    if run_id:
        path = registry.download_run_file(run_id, smoke.SAMPLE_FILE)
        if path is not None:
            try:
                return smoke.read_sample(path)
            finally:
                shutil.rmtree(path.parent, ignore_errors=True)
    say(f"{ref.uri} has no validation sample (validated before deploy existed, or never): "
         "smoke-testing it on its input example, without expected answers")  # fmt: skip
    return smoke.example_sample(model_dir, drift.signature_names(model_dir, outputs=True))


def deploy_local(
    ref: registry.ModelVersionRef, request: DeployRequest
) -> Tuple[str, Optional[str], str]:
    """Start ``ref`` beside what serves, smoke-test it, switch the stable port to it, drain and
    stop the old servers. Returns (endpoint URL, previous version or None, status).

    Raises:
        DeployError: the new version failed to start or its smoke test (it is stopped and the
            old version keeps serving), or the port is held by something else.
    """
    folder = endpoint.state_dir(ref.name, request.state_root)
    url = f"http://{request.host}:{request.port}"
    with endpoint.locked(folder):
        state = endpoint.load_state(folder)
        live = endpoint.proxy_state(state) if state else None
        if state and live is None:
            say(f"the endpoint recorded in {folder} is not running; cleaning it up")
            endpoint.stop_proxy(state, folder)
            if state.get("current"):
                endpoint.stop_servers(state["current"])
            endpoint.clear_state(folder)
            state = None
        if state and (int(state["port"]) != request.port or state["host"] != request.host):
            raise DeployError(
                f"the endpoint of {ref.name} serves on {state['url']}; deploy with "
                f"-P port={state['port']} -P host={state['host']}, or undeploy it first"
            )
        current = (state or {}).get("current") or {}
        previous = current.get("version")
        keeps = f"v{previous} keeps serving at {url}" if previous else f"nothing serves at {url}"
        served = ((live or {}).get("route") or {}).get("version")
        same = served == previous == ref.version and bool(current.get("rpc")) == request.rpc
        same = same and bool(current.get("container")) == (request.target == "docker")
        if same and endpoint.serves(url, live):
            say(f"{ref.uri} already serves at {url}; nothing to do")
            return url, previous, ALREADY
        if same:
            say(f"{ref.uri} is deployed but its server does not answer; starting it again")

        vfolder = folder / f"v{ref.version}-{endpoint.new_token()[:8]}"
        vfolder.mkdir(parents=True)
        servers = None
        try:
            model_dir = registry.download(ref, vfolder / "download")
            sample = load_sample(ref, model_dir)
            if request.target == "docker":
                from dai_mlflow.image.backend import start_servers as start_container_servers

                say(f"starting {ref.uri} beside {('v' + previous) if previous else 'nothing'}")
                clock = time.monotonic()
                servers = start_container_servers(
                    model_dir, vfolder, ref.name, ref.version, ref.uri, request.rpc
                )
            else:
                python = ensure_model_env(model_dir)
                say(f"starting {ref.uri} beside {('v' + previous) if previous else 'nothing'}")
                clock = time.monotonic()
                servers = endpoint.start_servers(
                    model_dir, python, vfolder, ref.name, ref.version, ref.uri, request.rpc
                )
            say(f"{ref.uri} serves on its own port after {time.monotonic() - clock:.1f}s")
            say(f"smoke test of {ref.uri}: {len(sample.data)} rows ({sample.source})")
            clock = time.monotonic()
            smoke.check_invocations(servers.invocations, sample)
            if servers.rpc:
                smoke.check_rpc(servers.rpc, sample)
            say(f"smoke test passed in {time.monotonic() - clock:.2f}s")
            if state is None:
                token = endpoint.new_token()
                info = endpoint.start_proxy(folder, request.host, request.port,
                                            servers.route(), token)  # fmt: skip
                state = {"model_name": ref.name, "url": url, "host": request.host,
                         "port": request.port, "token": token, "proxy": info}  # fmt: skip
            else:
                endpoint.switch_route(state, servers.route())
        except (LifecycleError, OSError) as e:
            if servers is not None:
                endpoint.stop_servers(asdict(servers), remove=False)
            shutil.rmtree(vfolder, ignore_errors=True)
            text = " ".join(str(e).split())
            if isinstance(e, smoke.SmokeTestError):
                raise DeployError(f"smoke test of {ref.uri} failed: {text}; {keeps}") from e
            raise DeployError(f"{ref.uri} was not deployed: {text}; {keeps}") from e
        except BaseException:
            if servers is not None:
                endpoint.stop_servers(asdict(servers), remove=False)
            shutil.rmtree(vfolder, ignore_errors=True)
            raise

        # Switched: from here on the new version serves; record it before retiring the old one.
        state["current"] = asdict(servers)
        endpoint.save_state(folder, state)
        say(f"{url} now serves {ref.uri}")
        if current:
            clock = time.monotonic()
            if not endpoint.wait_drained(state, current["route_id"]):
                say(f"warning: v{previous} still had requests after {endpoint.DRAIN_TIMEOUT:.0f}s")
            drained = time.monotonic() - clock
            endpoint.stop_servers(current)
            say(f"v{previous} drained in {drained:.2f}s and stopped")
        return url, previous, DEPLOYED


@dataclass(frozen=True)
class UndeployResult:
    url: str
    version: Optional[str]


def undeploy(model_name: str, state_root: Optional[Path] = None) -> UndeployResult:
    """Stop a model's local endpoint (proxy and servers) and untag the version it served.

    Raises:
        DeployError: the model has no local endpoint.
    """
    folder = endpoint.state_dir(model_name, state_root)
    with endpoint.locked(folder):
        state = endpoint.load_state(folder)
        if state is None:
            raise DeployError(f"{model_name} has no local endpoint (nothing in {folder})")
        endpoint.stop_proxy(state, folder)
        current = state.get("current") or {}
        if current:
            endpoint.stop_servers(current)
        endpoint.clear_state(folder)
    version = current.get("version")
    if version:
        ref = registry.ModelVersionRef(model_name, str(version), "")
        try:
            kind = "docker" if current.get("container") else "local"
            registry.delete_version_tag(ref, DEPLOYED_TAG + kind)
        except Exception as e:  # the endpoint is stopped either way; say what is left
            raise DeployError(
                f"{state['url']} is stopped, but the tag {DEPLOYED_TAG}local of {ref.uri} could "
                f"not be removed ({one_line(e)}); is MLFLOW_TRACKING_URI its store?"
            ) from e
    return UndeployResult(state["url"], version)
