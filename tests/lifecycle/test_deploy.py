"""``deploy``: the champion on a local endpoint with a stable port, and on Databricks Model Serving.

Local (markers ``serve``, ``venv``, ``mlflow_run``): one endpoint for the module, started in
the fixture with the worse stand-in model as champion v1; the better model is validated and
promoted to v2. Then the real ``mlflow run . -e deploy`` (the default project env)
swaps v2 in while four clients keep posting validation-sample rows: no request may fail, each
answer must equal the validated predictions of exactly the version the proxy says answered, and
no client sees v1 again once it has seen v2. The serving version's server is then SIGKILLed:
requests get a quick one-line 503, ``/deployment`` says down, and ``deploy`` brings it back. A
champion that answers NaN (its smoke test fails) is refused with one line and leaves v2 serving.
The proxy alone, with stand-in backends: tests/lifecycle/test_proxy.py.

Databricks (unmarked): the real databricks-sdk against a fake workspace on loopback
(``fake_workspace``): create, update, a failed update; the license only as a secret reference.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List

import mlflow
import pytest

from dai_mlflow.envs.processes import free_port, is_alive
from dai_mlflow.errors import DaiMlflowError
from dai_mlflow.lifecycle import registry
from dai_mlflow.lifecycle.cli import run as cli_run
from dai_mlflow.lifecycle.deploy import smoke
from dai_mlflow.lifecycle.deploy.local import undeploy
from dai_mlflow.lifecycle.deploy.request import DEPLOYED_TAG, DeployRequest
from dai_mlflow.lifecycle.deploy.run import deploy
from dai_mlflow.lifecycle.deploy.state import STATE_FILE, load_state, state_dir
from dai_mlflow.lifecycle.metrics import Decision
from dai_mlflow.lifecycle.validate import ValidateRequest, validate
from tests.fixtures_deploy import API, TOKEN, LoadClients
from tests.fixtures_lifecycle import LifecycleStore, broken_model_copy, get_worse_model_dir
from tests.fixtures_model import (
    MODEL_ENV_ROOT,
    get_logged_model,
    last_stdout_line,
    mlflow_run,
    run_env,
)
from tests.fixtures_standin import get_standin

NAME = "dai_churn"
SECRET_REF = "{{secrets/dai-mlflow/driverless-ai-license-key}}"


def _license_text() -> str:
    return get_standin("1.10", "binary").license_path.read_text().strip()


def _get_json(url: str) -> Dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


# ------------------------------------------------------------------------------ databricks


def _bare_versions(store: LifecycleStore, tmp_path: Path, n: int) -> List[str]:
    """Registered versions with nothing behind them: Databricks deploy never opens the model."""
    client = store.client()
    client.create_registered_model(NAME)
    versions = []
    for i in range(n):
        source = tmp_path / f"model-{i}"
        source.mkdir()
        versions.append(str(client.create_model_version(NAME, str(source)).version))
    return versions


def test_databricks_deploy_creates_updates_and_survives_a_failed_update(
    lifecycle_store, fake_workspace, tmp_path, monkeypatch, capsys
):
    store, ws = lifecycle_store, fake_workspace
    # A license in the environment too: it must never be what is sent.
    monkeypatch.setenv("DRIVERLESS_AI_LICENSE_KEY", _license_text())
    v1, v2, v3 = _bare_versions(store, tmp_path, 3)
    client = store.client()
    url = f"{ws.url}/serving-endpoints/{NAME}/invocations"

    # 1. No endpoint yet: GET (404), create, poll until READY.
    client.set_registered_model_alias(NAME, "champion", v1)
    first = deploy(DeployRequest(NAME, target="databricks"))
    assert (first.status, first.version, first.endpoint_url) == ("deployed", v1, url)
    # (newer SDKs first ask /.well-known/databricks-config; the fake has none, as old hosts)
    serving = [r for r in ws.requests if r.path.startswith(API)]
    assert [(r.method, r.path) for r in serving[:2]] == [
        ("GET", f"{API}/{NAME}"),
        ("POST", API),
    ]
    (create,) = ws.calls("POST")
    assert create.headers["Authorization"] == f"Bearer {TOKEN}"
    assert create.body["name"] == NAME
    (entity,) = create.body["config"]["served_entities"]
    assert entity["entity_name"] == NAME
    assert entity["entity_version"] == v1
    assert entity["environment_vars"] == {"DRIVERLESS_AI_LICENSE_KEY": SECRET_REF}
    assert entity["workload_size"] == "Small"
    assert entity["scale_to_zero_enabled"] is True
    routes = create.body["config"]["traffic_config"]["routes"]
    assert routes == [{"served_model_name": entity["name"], "traffic_percentage": 100}]
    assert ws.calls("GET")[-1].path == f"{API}/{NAME}"  # waited for READY
    assert client.get_model_version(NAME, v1).tags[DEPLOYED_TAG + "databricks"] == url

    # 2. The champion moves: the endpoint's config is updated to the new version number.
    client.set_registered_model_alias(NAME, "champion", v2)
    second = deploy(DeployRequest(NAME, target="databricks"))
    assert (second.status, second.previous_version) == ("deployed", v1)
    (update,) = ws.calls("PUT")
    assert update.path == f"{API}/{NAME}/config"
    assert [e["entity_version"] for e in update.body["served_entities"]] == [v2]
    assert update.body["served_entities"][0]["environment_vars"] == entity["environment_vars"]
    assert DEPLOYED_TAG + "databricks" not in client.get_model_version(NAME, v1).tags
    assert client.get_model_version(NAME, v2).tags[DEPLOYED_TAG + "databricks"] == url
    run = client.get_run(second.run_id)
    assert run.data.params["endpoint_url"] == url
    assert run.data.params["model_version"] == v2
    assert run.data.params["license_secret"] == SECRET_REF

    # 3. The update fails on Databricks: one line, exit 1, run FAILED, v2 still recorded.
    client.set_registered_model_alias(NAME, "champion", v3)
    ws.fail_next_update = True
    capsys.readouterr()
    assert cli_run(["deploy", "--model-name", NAME, "--target", "databricks"]) == 1
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, err
    assert "update to models:/dai_churn/" in errors[0]
    assert "failed" in errors[0]
    assert DEPLOYED_TAG + "databricks" not in client.get_model_version(NAME, v3).tags
    assert client.get_model_version(NAME, v2).tags[DEPLOYED_TAG + "databricks"] == url
    failed = client.search_runs(["0"], f"params.model_version = '{v3}'")
    assert [r.info.status for r in failed] == ["FAILED"]

    # The license never left: not in any request, param or tag.
    secret = _license_text()
    sent = json.dumps([[r.method, r.path, r.headers, r.body] for r in ws.requests])
    assert secret not in sent
    for r in client.search_runs(["0"]):
        assert secret not in json.dumps([r.data.params, r.data.tags])
    with pytest.raises(DaiMlflowError, match="never the license"):
        DeployRequest(NAME, target="databricks", secret_key=secret)


# ------------------------------------------------------------------------------ local


@dataclass
class LocalDeployment:
    store: LifecycleStore
    root: Path
    url: str
    port: int
    v1: str
    v2: str
    samples: Dict[str, smoke.Sample]
    env: Dict[str, str]  # what `mlflow run` gets: the store, caches, license


def _sample_of(store: LifecycleStore, run_id: str) -> smoke.Sample:
    sample = registry.read_run_file(run_id, smoke.SAMPLE_FILE, smoke.read_sample)
    assert sample is not None
    return sample


@pytest.fixture(scope="module")
def local_deployment(tmp_path_factory) -> Iterator[LocalDeployment]:
    """v1 (the worse model) deployed on a stable port; v2 (better) validated and champion."""
    root = tmp_path_factory.mktemp("deploy")
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
            deployed = deploy(DeployRequest(NAME, port=port))
            assert deployed.version == v1
            v2 = store.register(good, NAME, "challenger")
            second = validate(ValidateRequest(NAME, build.holdout_csv))
            assert second.decision == Decision.PROMOTED
            samples = {v1: _sample_of(store, first.run_id), v2: _sample_of(store, second.run_id)}
            yield LocalDeployment(store, root, deployed.endpoint_url, port, v1, v2, samples, env)
        finally:
            with contextlib.suppress(DaiMlflowError):  # nothing was deployed
                undeploy(NAME)
            while mlflow.active_run() is not None:
                mlflow.end_run()
            mlflow.set_tracking_uri(saved[0])
            mlflow.set_registry_uri(saved[1])


def _processes_mentioning(text: str) -> List[str]:
    """Command lines of running processes that contain ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in line:
            found.append(line)
    return found


def _state(dep: LocalDeployment) -> Dict:
    state = load_state(state_dir(NAME))
    assert state is not None
    return state


@pytest.mark.serve
@pytest.mark.venv
@pytest.mark.mlflow_run
def test_a_better_champion_is_swapped_in_under_load_without_a_failed_request(
    local_deployment, tmp_path
):
    dep = local_deployment
    old = _state(dep)["current"]
    assert old["version"] == dep.v1
    load = LoadClients(dep.url, dep.samples, clients=4).start()
    try:
        load.wait_for(dep.v1, 20)
        assert load.count(dep.v1) >= 20  # the load runs before the deploy starts
        env = run_env(dep.env)
        params = {"model_name": NAME, "port": str(dep.port)}
        started = time.monotonic()
        proc = mlflow_run(
            params, tmp_path / "cwd", env, tmp_path / "run", extra_args=("-e", "deploy")
        )
        seconds = time.monotonic() - started
        load.wait_for(dep.v2, 20)
    finally:
        load.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = last_stdout_line(proc.stdout)
    assert last == f"deployed=models:/{NAME}/{dep.v2} target=local endpoint={dep.url}"
    errors = [a.error for a in load.answers if a.error]
    print(f"deploy took {seconds:.1f}s; {len(load.answers)} requests during it: "
          f"v1 {load.count(dep.v1)}, v2 {load.count(dep.v2)}, errors {len(errors)}")  # fmt: skip
    assert errors == []
    assert load.count(dep.v1) >= 20
    assert load.count(dep.v2) >= 20
    assert load.count(dep.v1) + load.count(dep.v2) == len(load.answers)
    for client in range(load.clients):
        seen = [a.version for a in load.answers if a.client == client]
        first_v2 = seen.index(dep.v2)
        assert dep.v1 not in seen[first_v2:], f"client {client} went back to v1"

    # The stable endpoint serves v2; v1's servers are gone; what is deployed is recorded.
    assert _get_json(dep.url + "/deployment")["version"] == dep.v2
    assert not any(is_alive(pid) for pid in old["pids"])
    assert not Path(old["folder"]).exists()
    client = dep.store.client()
    assert client.get_model_version(NAME, dep.v2).tags[DEPLOYED_TAG + "local"] == dep.url
    assert DEPLOYED_TAG + "local" not in client.get_model_version(NAME, dep.v1).tags
    (run,) = client.search_runs(["0"], f"params.model_version = '{dep.v2}'")
    assert run.info.status == "FINISHED"
    assert run.data.params["endpoint_url"] == dep.url
    assert run.data.params["model_uri"] == f"models:/{NAME}/{dep.v2}"
    secret = _license_text()
    assert secret not in json.dumps([run.data.params, run.data.tags])
    state_file = state_dir(NAME) / STATE_FILE
    assert secret not in state_file.read_text()
    assert oct(state_file.stat().st_mode & 0o777) == "0o600"


@pytest.mark.serve
@pytest.mark.venv
def test_a_killed_backend_gets_quick_503s_and_the_next_deploy_brings_it_back(
    local_deployment, monkeypatch, capsys
):
    """Every process of the serving version's server is SIGKILLed: clients get a one-line 503
    at once (none waits for a timeout), ``/deployment`` says down, ``deploy`` starts it again."""
    import requests

    dep = local_deployment
    for key, value in dep.env.items():  # the autouse fixture took the license away
        monkeypatch.setenv(key, value)
    before = _state(dep)["current"]
    version = before["version"]
    sample = dep.samples[version]
    body = {"dataframe_split": {"columns": sample.columns, "data": sample.data[:3]}}
    assert requests.post(dep.url + "/invocations", json=body, timeout=60).status_code == 200

    killed = time.monotonic()
    os.killpg(int(before["pids"][0]), signal.SIGKILL)  # the server and its workers
    for _ in range(5):
        resp = requests.post(dep.url + "/invocations", json=body, timeout=10)
        answered = time.monotonic()
        assert resp.status_code == 503, resp.text[:500]
        error = resp.json()["error"]
        assert f"version {version} of {NAME} is down" in error
        assert f"-P model_name={NAME}" in error
        assert "\n" not in error
    deadline = time.monotonic() + 10
    while _get_json(dep.url + "/deployment")["status"] != "down" and time.monotonic() < deadline:
        time.sleep(0.1)
    deployment = _get_json(dep.url + "/deployment")
    assert (deployment["status"], deployment["version"]) == ("down", version)
    down = time.monotonic()

    champion = str(dep.store.client().get_model_version_by_alias(NAME, "champion").version)
    capsys.readouterr()
    result = deploy(DeployRequest(NAME, port=dep.port))
    print(f"killed v{version}: 5 requests answered 503 within {answered - killed:.2f}s, "
          f"/deployment down after {down - killed:.2f}s, deploy serving again after "
          f"{time.monotonic() - down:.1f}s")  # fmt: skip
    assert (result.status, result.version) == ("deployed", champion)
    if champion == version:
        assert "does not answer; starting it again" in capsys.readouterr().err
    deployment = _get_json(dep.url + "/deployment")
    assert (deployment["status"], deployment["version"]) == ("serving", champion)
    load = LoadClients(dep.url, dep.samples, clients=1).start()
    try:
        load.wait_for(champion, 5)
    finally:
        load.stop()
    assert [a.error for a in load.answers if a.error] == []
    assert load.count(champion) >= 5
    assert not Path(before["folder"]).exists()
    assert _processes_mentioning(before["folder"]) == []


@pytest.mark.serve
@pytest.mark.venv
def test_a_champion_failing_its_smoke_test_leaves_the_old_version_serving(
    local_deployment, tmp_path, monkeypatch, capsys
):
    dep = local_deployment
    for key, value in dep.env.items():  # the autouse fixture took the license away
        monkeypatch.setenv(key, value)
    serving = _get_json(dep.url + "/deployment")["version"]
    before = _state(dep)["current"]
    bad = broken_model_copy(get_logged_model("1.10", "binary").local_dir, tmp_path / "bad")
    v3 = dep.store.register(bad, NAME, "champion")  # moved by hand: validate never would

    load = LoadClients(dep.url, dep.samples, clients=2).start()
    try:
        capsys.readouterr()
        code = cli_run(["deploy", "--model-name", NAME, "--port", str(dep.port)])
        load.wait_for(serving, load.count(serving) + 5)
    finally:
        load.stop()
    assert code == 1
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, err
    assert f"smoke test of models:/{NAME}/{v3} failed" in errors[0]
    assert "not finite numbers" in errors[0]
    assert f"v{serving} keeps serving at {dep.url}" in errors[0]

    assert [a.error for a in load.answers if a.error] == []
    assert {a.version for a in load.answers} == {serving}
    assert _get_json(dep.url + "/deployment")["version"] == serving
    assert _state(dep)["current"] == before
    assert all(is_alive(pid) for pid in before["pids"])
    leftovers = [p.name for p in state_dir(NAME).iterdir() if p.name.startswith(f"v{v3}-")]
    assert leftovers == []
    client = dep.store.client()
    assert DEPLOYED_TAG + "local" not in client.get_model_version(NAME, v3).tags
    (run,) = client.search_runs(["0"], f"params.model_version = '{v3}'")
    assert run.info.status == "FAILED"
    assert _processes_mentioning(f"/v{v3}-") == []
