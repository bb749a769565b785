"""``deploy -P target=local|docker``: start the new version beside the old, smoke-test it, switch
the front proxy, drain and stop the old; and ``undeploy``.

The sequence and its guarantees: docs/deploy.md. Linux only; Python 3.8-safe.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from dai_mlflow.envs.model_env import ensure_model_env
from dai_mlflow.errors import one_line, say
from dai_mlflow.lifecycle import drift, registry
from dai_mlflow.lifecycle.deploy import admin, servers, smoke, state
from dai_mlflow.lifecycle.deploy.request import (
    DEPLOYED_TAG,
    Deployed,
    DeployRequest,
    DeployStatus,
    UndeployResult,
)
from dai_mlflow.lifecycle.errors import DeployError, LifecycleError, SmokeTestError


def load_sample(ref: registry.ModelVersionRef, model_dir: Path) -> smoke.Sample:
    """The version's validation sample, or its input example when it was never validated."""
    run_id = registry.version_tag(ref, registry.BASELINE_RUN_TAG)
    if run_id:
        sample = registry.read_run_file(run_id, smoke.SAMPLE_FILE, smoke.read_sample)
        if sample is not None:
            return sample
    say(f"{ref.uri} has no validation sample (validated before deploy existed, or never): "
         "smoke-testing it on its input example, without expected answers")  # fmt: skip
    return smoke.example_sample(model_dir, drift.signature_names(model_dir, outputs=True))


def deploy_local(ref: registry.ModelVersionRef, request: DeployRequest) -> Deployed:
    """Start ``ref`` beside what serves, smoke-test it, switch the stable port to it, drain and
    stop the old servers.

    Raises:
        DeployError: the new version failed to start or its smoke test (it is stopped and the
            old version keeps serving), or the port is held by something else.
    """
    folder = state.state_dir(ref.name, request.state_root)
    url = f"http://{request.host}:{request.port}"
    with state.locked(folder):
        info = state.load_state(folder)
        live = admin.proxy_state(info) if info else None
        if info and live is None:
            say(f"the endpoint recorded in {folder} is not running; cleaning it up")
            admin.stop_proxy(info, folder)
            if info.get("current"):
                servers.stop_servers(info["current"])
            state.clear_state(folder)
            info = None
        if info and (int(info["port"]) != request.port or info["host"] != request.host):
            raise DeployError(
                f"the endpoint of {ref.name} serves on {info['url']}; deploy with "
                f"-P port={info['port']} -P host={info['host']}, or undeploy it first"
            )
        current = (info or {}).get("current") or {}
        previous = current.get("version")
        keeps = f"v{previous} keeps serving at {url}" if previous else f"nothing serves at {url}"
        served = ((live or {}).get("route") or {}).get("version")
        same = served == previous == ref.version and bool(current.get("rpc")) == request.rpc
        same = same and bool(current.get("container")) == (request.target == "docker")
        if same and admin.serves(url, live):
            say(f"{ref.uri} already serves at {url}; nothing to do")
            return Deployed(url, previous, DeployStatus.ALREADY)
        if same:
            say(f"{ref.uri} is deployed but its server does not answer; starting it again")

        vfolder = folder / f"v{ref.version}-{state.new_token()[:8]}"
        vfolder.mkdir(parents=True)
        started = None
        try:
            model_dir = registry.download(ref, vfolder / "download")
            sample = load_sample(ref, model_dir)
            if request.target == "docker":
                from dai_mlflow.image.backend import start_servers as start_container_servers

                say(f"starting {ref.uri} beside {('v' + previous) if previous else 'nothing'}")
                clock = time.monotonic()
                started = start_container_servers(
                    model_dir, vfolder, ref.name, ref.version, ref.uri, request.rpc
                )
            else:
                python = ensure_model_env(model_dir)
                say(f"starting {ref.uri} beside {('v' + previous) if previous else 'nothing'}")
                clock = time.monotonic()
                started = servers.start_servers(
                    model_dir, python, vfolder, ref.name, ref.version, ref.uri, request.rpc
                )
            say(f"{ref.uri} serves on its own port after {time.monotonic() - clock:.1f}s")
            say(f"smoke test of {ref.uri}: {len(sample.data)} rows ({sample.source})")
            clock = time.monotonic()
            smoke.check_invocations(started.invocations, sample)
            if started.rpc:
                smoke.check_rpc(started.rpc, sample)
            say(f"smoke test passed in {time.monotonic() - clock:.2f}s")
            if info is None:
                token = state.new_token()
                proxy_info = admin.start_proxy(folder, request.host, request.port,
                                               started.route(), token)  # fmt: skip
                info = {"model_name": ref.name, "url": url, "host": request.host,
                        "port": request.port, "token": token, "proxy": proxy_info}  # fmt: skip
            else:
                admin.switch_route(info, started.route())
        except (LifecycleError, OSError) as e:
            if started is not None:
                servers.stop_servers(asdict(started), remove=False)
            shutil.rmtree(vfolder, ignore_errors=True)
            text = " ".join(str(e).split())
            if isinstance(e, SmokeTestError):
                raise DeployError(f"smoke test of {ref.uri} failed: {text}; {keeps}") from e
            raise DeployError(f"{ref.uri} was not deployed: {text}; {keeps}") from e
        except BaseException:
            if started is not None:
                servers.stop_servers(asdict(started), remove=False)
            shutil.rmtree(vfolder, ignore_errors=True)
            raise

        # Switched: from here on the new version serves; record it before retiring the old one.
        info["current"] = asdict(started)
        state.save_state(folder, info)
        say(f"{url} now serves {ref.uri}")
        if current:
            clock = time.monotonic()
            if not admin.wait_drained(info, current["route_id"]):
                say(f"warning: v{previous} still had requests after {admin.DRAIN_TIMEOUT:.0f}s")
            drained = time.monotonic() - clock
            servers.stop_servers(current)
            say(f"v{previous} drained in {drained:.2f}s and stopped")
        return Deployed(url, previous, DeployStatus.DEPLOYED)


def undeploy(model_name: str, state_root: Optional[Path] = None) -> UndeployResult:
    """Stop a model's local endpoint (proxy and servers) and untag the version it served.

    Raises:
        DeployError: the model has no local endpoint.
    """
    folder = state.state_dir(model_name, state_root)
    with state.locked(folder):
        info = state.load_state(folder)
        if info is None:
            raise DeployError(f"{model_name} has no local endpoint (nothing in {folder})")
        admin.stop_proxy(info, folder)
        current = info.get("current") or {}
        if current:
            servers.stop_servers(current)
        state.clear_state(folder)
    version = current.get("version")
    if version:
        ref = registry.ModelVersionRef(model_name, str(version), "")
        kind = "docker" if current.get("container") else "local"
        try:
            registry.delete_version_tag(ref, DEPLOYED_TAG + kind)
        except Exception as e:  # the endpoint is stopped either way; say what is left
            raise DeployError(
                f"{info['url']} is stopped, but the tag {DEPLOYED_TAG}{kind} of {ref.uri} could "
                f"not be removed ({one_line(e)}); is MLFLOW_TRACKING_URI its store?"
            ) from e
    return UndeployResult(info["url"], version)
