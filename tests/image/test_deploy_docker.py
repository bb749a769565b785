"""``deploy -P target=docker``: the champion served by a container behind the same front proxy.

(Markers ``docker``, ``serve``, ``venv``, ``mlflow_run``; in tests/image so that it shares the
image tests' Docker daemon and cached image layers.) v1, the worse stand-in model, is deployed in
the fixture; v2 is validated and promoted; the real ``mlflow run . -e deploy -P target=docker``
swaps v2 in while four clients keep posting rows: no request may fail, and each answer equals the
validated predictions of the version the proxy names. Then a champion whose smoke test fails is
refused in one line and v2's container keeps serving.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator

import mlflow
import pytest

from dai_mlflow.envs.processes import free_port
from dai_mlflow.errors import DaiMlflowError
from dai_mlflow.image.backend import BASE_ENV, NETWORK_ENV
from dai_mlflow.lifecycle import registry
from dai_mlflow.lifecycle.cli import run as cli_run
from dai_mlflow.lifecycle.deploy import smoke
from dai_mlflow.lifecycle.deploy.local import undeploy
from dai_mlflow.lifecycle.deploy.request import DEPLOYED_TAG, DeployRequest
from dai_mlflow.lifecycle.deploy.run import deploy
from dai_mlflow.lifecycle.deploy.state import load_state, state_dir
from dai_mlflow.lifecycle.metrics import Decision
from dai_mlflow.lifecycle.validate import ValidateRequest, validate
from tests.fixtures_deploy import LoadClients
from tests.fixtures_lifecycle import LifecycleStore, broken_model_copy, get_worse_model_dir
from tests.fixtures_model import (
    MODEL_ENV_ROOT,
    get_logged_model,
    last_stdout_line,
    mlflow_run,
    run_env,
)
from tests.fixtures_standin import get_standin
from tests.image.conftest import docker

pytestmark = [pytest.mark.docker, pytest.mark.serve, pytest.mark.venv, pytest.mark.mlflow_run]
NAME = "dai_churn_docker"


@dataclass
class DockerDeployment:
    store: LifecycleStore
    url: str
    port: int
    v1: str
    v2: str
    samples: Dict[str, smoke.Sample]
    env: Dict[str, str]


def _get_json(url: str) -> Dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _sample_of(run_id: str) -> smoke.Sample:
    sample = registry.read_run_file(run_id, smoke.SAMPLE_FILE, smoke.read_sample)
    assert sample is not None
    return sample


def _state() -> Dict:
    state = load_state(state_dir(NAME))
    assert state is not None
    return state


@pytest.fixture(scope="module")
def docker_deployment(base_image, tmp_path_factory) -> Iterator[DockerDeployment]:
    """v1 (worse) served by a container on a stable port; v2 (better) validated and champion."""
    root = tmp_path_factory.mktemp("deploy-docker")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    build = get_standin("1.10", "binary")
    good = get_logged_model("1.10", "binary").local_dir
    worse = get_worse_model_dir()
    saved = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    env = {
        "MLFLOW_TRACKING_URI": uri,
        "DAI_MLFLOW_ENV_ROOT": str(MODEL_ENV_ROOT),
        "DAI_MLFLOW_ENDPOINT_ROOT": str(root / "endpoints"),
        "UV_PYTHON_DOWNLOADS": "never",
        BASE_ENV: base_image,  # the Python-less Debian base: the image carries Python 3.8
        NETWORK_ENV: "host",  # the test daemon has no bridge
        "WORKERS": "1",
        "DOCKER_HOST": os.environ["DOCKER_HOST"],
        **build.license_env(),
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mp.chdir(root)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        store = LifecycleStore(uri, root)
        port = free_port()
        try:
            v1 = store.register(worse, NAME, "challenger")
            first = validate(ValidateRequest(NAME, build.holdout_csv))
            assert first.decision == Decision.FIRST
            deployed = deploy(DeployRequest(NAME, target="docker", port=port))
            assert deployed.version == v1
            v2 = store.register(good, NAME, "challenger")
            second = validate(ValidateRequest(NAME, build.holdout_csv))
            assert second.decision == Decision.PROMOTED
            samples = {v1: _sample_of(first.run_id), v2: _sample_of(second.run_id)}
            yield DockerDeployment(store, deployed.endpoint_url, port, v1, v2, samples, env)
        finally:
            with contextlib.suppress(DaiMlflowError):
                undeploy(NAME)
            while mlflow.active_run() is not None:
                mlflow.end_run()
            mlflow.set_tracking_uri(saved[0])
            mlflow.set_registry_uri(saved[1])


def _running(name: str) -> bool:
    proc = docker("inspect", "-f", "{{.State.Running}}", name, check=False)
    return proc.stdout.strip() == "true"


def test_a_better_champion_container_is_swapped_in_under_load(docker_deployment, tmp_path):
    dep = docker_deployment
    old = _state()["current"]
    assert old["version"] == dep.v1
    assert _running(old["container"])
    load = LoadClients(dep.url, dep.samples, clients=4).start()
    try:
        load.wait_for(dep.v1, 20)
        params = {"model_name": NAME, "port": str(dep.port), "target": "docker"}
        proc = mlflow_run(
            params,
            tmp_path / "cwd",
            run_env(dep.env),
            tmp_path / "run",
            extra_args=("-e", "deploy"),
        )
        load.wait_for(dep.v2, 20)
    finally:
        load.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = last_stdout_line(proc.stdout)
    assert last == f"deployed=models:/{NAME}/{dep.v2} target=docker endpoint={dep.url}"
    errors = [a.error for a in load.answers if a.error]
    print(f"{len(load.answers)} requests during the docker deploy: v1 {load.count(dep.v1)}, "
          f"v2 {load.count(dep.v2)}, errors {len(errors)}")  # fmt: skip
    assert errors == []
    assert load.count(dep.v1) >= 20
    assert load.count(dep.v2) >= 20
    assert _get_json(dep.url + "/deployment")["version"] == dep.v2
    new = _state()["current"]
    assert _running(new["container"])
    assert docker("inspect", old["container"], check=False).returncode != 0  # stopped, removed
    # Deployed as root (as here), the container runs as the image's user, with a copy of the
    # license file that user owns; the stopped container's copy went with it.
    user = docker("inspect", "-f", "{{.Config.User}}", new["container"]).stdout.strip()
    assert user.split(":")[0] not in ("", "0", "root") or os.getuid() != 0, user
    copies = sorted(p.name for p in Path(dep.env["DAI_MLFLOW_ENDPOINT_ROOT"]).rglob(".license-*"))
    assert copies == ([f".license-{new['container']}.sig"] if os.getuid() == 0 else [])
    client = dep.store.client()
    assert client.get_model_version(NAME, dep.v2).tags[DEPLOYED_TAG + "docker"] == dep.url


def test_a_champion_container_failing_its_smoke_test_leaves_the_old_one_serving(
    docker_deployment, tmp_path, monkeypatch, capsys
):
    dep = docker_deployment
    for key, value in dep.env.items():
        monkeypatch.setenv(key, value)
    serving = _get_json(dep.url + "/deployment")["version"]
    before = _state()["current"]
    bad = broken_model_copy(get_logged_model("1.10", "binary").local_dir, tmp_path / "bad")
    v3 = dep.store.register(bad, NAME, "champion")
    load = LoadClients(dep.url, dep.samples, clients=2).start()
    try:
        capsys.readouterr()
        code = cli_run(["deploy", "--model-name", NAME, "--port", str(dep.port),
                        "--target", "docker"])  # fmt: skip
        load.wait_for(serving, load.count(serving) + 5)
    finally:
        load.stop()
    assert code == 1
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, errors
    assert f"smoke test of models:/{NAME}/{v3} failed" in errors[0]
    assert f"v{serving} keeps serving at {dep.url}" in errors[0]
    assert [a.error for a in load.answers if a.error] == []
    assert _state()["current"] == before
    assert _running(before["container"])
    names = docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
    assert [n for n in names if f"-v{v3}-" in n] == []
