"""The embedded tracking default: mlflow 2.17 (DAI 1.10 project env) over a store made by 3.x."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dai_mlflow.tracking import default_tracking_uri, needs_bridge, sqlite_path, store_revision
from tests.fixtures_model import dai110_project_python, run_child_json

REPO = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, os, sys, urllib.request
import mlflow
from dai_mlflow.tracking import needs_bridge, tracking_store
uri = os.environ["MLFLOW_TRACKING_URI"]
out = {"mlflow": mlflow.__version__, "needs_bridge": needs_bridge(uri)}
try:
    with tracking_store() as store:
        store.wait()
        out["url"] = store.uri
        with mlflow.start_run(run_id=os.environ["RUN_ID"]):
            mlflow.log_param("from_child", "yes")
        raise RuntimeError("boom")
except RuntimeError:
    pass
try:
    urllib.request.urlopen(out["url"] + "/health", timeout=2)
    out["server_alive"] = True
except OSError:
    out["server_alive"] = False
out["uri_after"] = os.environ.get("MLFLOW_TRACKING_URI")
print("RESULT=" + json.dumps(out))
"""


def test_uris(tmp_path: Path) -> None:
    uri = default_tracking_uri(tmp_path)
    assert uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert sqlite_path(uri) == tmp_path / "mlflow.db"
    assert sqlite_path("http://127.0.0.1:5000") is None
    assert store_revision(tmp_path / "mlflow.db") is None


def test_mlflow3_opens_its_store_directly(tmp_path: Path) -> None:
    assert not needs_bridge(default_tracking_uri(tmp_path))
    assert not needs_bridge("http://127.0.0.1:5000")


@pytest.mark.venv
def test_mlflow217_bridges_to_a_3x_store_and_stops_the_server(tmp_path: Path) -> None:
    import mlflow

    project_python = dai110_project_python()
    uri = default_tracking_uri(tmp_path)
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.create_run(
        client.create_experiment("bridge", artifact_location=str(tmp_path / "a"))
    )
    assert store_revision(tmp_path / "mlflow.db")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        MLFLOW_TRACKING_URI=uri,
        RUN_ID=run.info.run_id,
        PYTHONPATH=str(REPO),
        DAI_MLFLOW_SERVER_PYTHON=str(REPO / "venvs" / "launcher" / "bin" / "python"),
    )
    out = run_child_json([project_python, "-c", _CHILD], tmp_path, env, "RESULT", timeout=300)
    assert out["mlflow"].startswith("2.17")
    assert out["needs_bridge"] is True
    assert out["url"].startswith("http://127.0.0.1:")
    assert out["server_alive"] is False
    assert out["uri_after"] == uri
    assert client.get_run(run.info.run_id).data.params == {"from_child": "yes"}
