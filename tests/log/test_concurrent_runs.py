"""Fault: several ``mlflow run``s log pipelines into one store at the same time.

Four runs share MLflow's default store (``sqlite:///<cwd>/mlflow.db``) from the DAI 1.10 project
env, each bridged by its own loopback server since that env has mlflow 2.17; then four more
share one ``mlflow server`` from the default project env. Every run must finish, each registers
its own version of one model, and no run is left RUNNING.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

import pytest

from dai_mlflow.envs.processes import free_port, stop_session, wait_answering
from tests.fixtures_model import (
    LAUNCHER_BIN,
    REPO_ROOT,
    get_logged_model,
    license_env_for,
    mlflow_run,
    project_with_env,
    run_env,
)
from tests.fixtures_standin import get_standin

pytestmark = pytest.mark.mlflow_run

RUNS = 4
PROBLEMS = ("regression", "binary", "multiclass", "binary")
NAME = "concurrent"


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One run alone first in each project env: MLflow creates the project envs and the model
    env is built (all cached), so the concurrent runs below race over the store only."""
    get_logged_model("1.10", "binary")
    build = get_standin("1.10", "binary")
    scratch = tmp_path_factory.mktemp("warm-1.10-env")
    params = {"pipeline": str(build.zip_path)}
    env = run_env(license_env_for(build, "1.10"))
    proc = mlflow_run(params, scratch, env, scratch / "out", project=project_with_env("1.10"))
    assert proc.returncode == 0, proc.stderr[-3000:]


def _run_all(
    cwd: Path, out: Path, extra_env: Dict[str, str], project: Path = REPO_ROOT
) -> List[subprocess.CompletedProcess]:
    def _one(i: int) -> subprocess.CompletedProcess:
        build = get_standin("1.10", PROBLEMS[i])
        env = run_env({**license_env_for(build, "1.10"), **extra_env})
        params = {"pipeline": str(build.zip_path), "model_name": NAME}
        return mlflow_run(params, cwd, env, out / f"run-{i}", project=project)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=RUNS) as pool:
        procs = list(pool.map(_one, range(RUNS)))
    print(f"\n{RUNS} concurrent runs into {extra_env or 'the default store'}: "
          f"{time.monotonic() - started:.0f}s")  # fmt: skip
    return procs


def _check(procs: List[subprocess.CompletedProcess], tracking_uri: str) -> None:
    import mlflow

    failed = [p.stderr.splitlines()[-5:] for p in procs if p.returncode != 0]
    assert not failed, failed
    # With an http store MLflow's `mlflow run` prints the run's links after the entry point's
    # last line (stdout, MLflow's own code): take the model_uri line itself.
    uris = [[ln for ln in p.stdout.splitlines() if ln.startswith("model_uri=")][-1] for p in procs]
    assert all(u.startswith(f"model_uri=models:/{NAME}/") for u in uris), uris
    versions = sorted(int(u.rsplit("/", 1)[1]) for u in uris)
    assert versions == list(range(1, RUNS + 1))
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    registered = client.search_model_versions(f"name='{NAME}'")
    assert sorted(int(v.version) for v in registered) == versions
    assert len({v.run_id for v in registered}) == RUNS
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * RUNS


def test_concurrent_runs_into_the_default_sqlite_store(warm, tmp_path: Path) -> None:
    cwd = tmp_path / "project-cwd"
    cwd.mkdir()
    # MLflow's own `mlflow run` processes race to create the tables of a new store ("duplicate
    # column name: step"), before any dai-mlflow code runs: the README's command creates it first.
    subprocess.run(
        [str(LAUNCHER_BIN / "mlflow"), "db", "upgrade", "sqlite:///mlflow.db"],
        cwd=cwd, env=run_env(), check=True, capture_output=True,
    )  # fmt: skip
    procs = _run_all(cwd, tmp_path / "out", {}, project=project_with_env("1.10"))
    assert all("through a loopback mlflow server" in p.stderr for p in procs)
    _check(procs, f"sqlite:///{cwd / 'mlflow.db'}")


def test_concurrent_runs_into_one_tracking_server(warm, tmp_path: Path) -> None:
    store = tmp_path / "server"
    store.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination", str(store / "mlartifacts"),
        # Two worker processes still write the one sqlite file concurrently; MLflow's default
        # four may not all start within uvicorn's health check on 2 loaded cores.
        "--workers", "2",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    env["PATH"] = os.pathsep.join([str(LAUNCHER_BIN), env.get("PATH", "")])
    with (store / "server.log").open("ab") as log:
        server = subprocess.Popen(
            cmd, cwd=store, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        assert wait_answering(f"{url}/health", lambda: server.poll() is None, 300) == "", (
            store / "server.log"
        ).read_text()[-2000:]
        procs = _run_all(tmp_path / "cwd", tmp_path / "out", {"MLFLOW_TRACKING_URI": url})
        _check(procs, url)
    finally:
        stop_session(server)
