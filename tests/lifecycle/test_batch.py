"""The batch stage: date partitions, one real ``mlflow run -e batch`` (Spark), and what
``mlflow run . -e batch --backend databricks --backend-config cluster.json`` submits.

The partition and Databricks tests run in-process (seconds; nothing is contacted). The batch run
scores in the model's own env on a local Spark (marked ``venv``, ``spark``, ``mlflow_run``); its
real end-to-end ``mlflow run -e batch`` (the default project env: Python 3.11 / mlflow 3)
re-runs a date that the in-process call already wrote.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from dai_mlflow.errors import DaiMlflowError
from dai_mlflow.lifecycle import tables
from dai_mlflow.lifecycle.errors import LifecycleError
from dai_mlflow.outputs import MARKER_NAME
from tests.fixtures_lifecycle import DAY, NAME, license_text
from tests.fixtures_model import CACHE, last_stdout_line, mlflow_run, run_env

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_partition_rerun_replaces_and_failed_write_leaves_the_table(tmp_path):
    table = tmp_path / "t"
    tables.write_frame(table, DAY, pd.DataFrame({"a": [1, 2]}))
    tables.write_frame(table, DAY, pd.DataFrame({"a": [3, 4, 5]}))
    assert tables.partitions(table) == [DAY]
    assert sorted(tables.read_partitions(table, [DAY])["a"]) == [3, 4, 5]

    def _fail(staging: Path) -> None:
        staging.mkdir()
        (staging / "part-0.parquet").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        tables.replace_partition(table, DAY, _fail)
    assert sorted(p.name for p in table.iterdir()) == [MARKER_NAME, f"date={DAY}"]
    assert sorted(tables.read_partitions(table, [DAY])["a"]) == [3, 4, 5]
    with pytest.raises(LifecycleError, match="only local paths"):
        tables.local_table("s3://bucket/table")


def _write_input_without(src: Path, dst: Path, column: str) -> Path:
    frame = pd.read_csv(src, dtype=str)
    frame.drop(columns=[column]).to_csv(dst, index=False)
    return dst


@pytest.mark.venv
@pytest.mark.spark
@pytest.mark.mlflow_run
def test_batch_twice_for_one_date_leaves_one_copy(
    lifecycle_store, logged_model, expected_scores, tmp_path, monkeypatch
):
    from dai_mlflow.lifecycle.batch import BatchRequest, batch

    store = lifecycle_store
    model = logged_model("1.10", "binary")
    # The champion's Spark venv, built by batch itself (as `make spark-venv` would), in a folder
    # of its own: no other test uses a venv while batch checks or builds it.
    spark_venv = CACHE / "venvs" / "batch-spark-1.10-binary"
    version = store.register(model.local_dir, NAME, "champion")
    source = model.build.sample_input_csv
    table = tmp_path / "scored"

    # One Spark task: two cores are shared with the rest of the suite.
    first = batch(
        BatchRequest(NAME, source, str(table), DAY, spark_venv=spark_venv, master="local[1]")
    )
    n_input = len(pd.read_csv(source))
    assert first.rows == n_input

    # The same date again, through the real entry point (the default project env).
    params = {
        "model_name": NAME,
        "input": str(source),
        "table": str(table),
        "date": DAY,
        "spark_venv": str(spark_venv),
        "master": "local[1]",
    }
    env = run_env({**model.build.license_env(), "MLFLOW_TRACKING_URI": store.tracking_uri})
    proc = mlflow_run(params, tmp_path / "cwd", env, tmp_path / "run", extra_args=("-e", "batch"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert last_stdout_line(proc.stdout).startswith(f"rows={n_input} partition=")

    # no staging left over
    assert sorted(p.name for p in table.iterdir()) == [MARKER_NAME, f"date={DAY}"]
    rows = tables.read_partitions(table, [DAY])
    assert len(rows) == n_input
    assert set(rows["model_version"]) == {version}
    assert set(rows["model_uri"]) == {f"models:/{NAME}/{version}"}
    assert rows["scored_at"].notna().all()
    expected = expected_scores(model, source)
    for column in expected.columns.drop("row_id"):
        assert sorted(rows[column]) == pytest.approx(sorted(expected[column]), abs=1e-6)

    # A bad input fails before Spark starts and leaves the partition as it was.
    files = sorted((table / f"date={DAY}").iterdir())
    bad = _write_input_without(source, tmp_path / "bad.csv", "Day Mins")
    with pytest.raises(DaiMlflowError, match="Day Mins"):
        batch(BatchRequest(NAME, bad, str(table), DAY, spark_venv=spark_venv))
    assert sorted((table / f"date={DAY}").iterdir()) == files
    # The model fails in the job (no license there): its error, one line; the partition stays.
    monkeypatch.delenv("DRIVERLESS_AI_LICENSE_FILE")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DaiMlflowError, match="[Ll]icense") as err:
        batch(BatchRequest(NAME, source, str(table), DAY, spark_venv=spark_venv))
    assert "\n" not in str(err.value)
    assert sorted((table / f"date={DAY}").iterdir()) == files
    assert sorted(p.name for p in table.iterdir()) == [MARKER_NAME, f"date={DAY}"]
    runs = store.client().search_runs(["0"], f"params.date = '{DAY}'")
    statuses = {r.info.status for r in runs}
    assert statuses == {"FINISHED", "FAILED"}


# ----------------------------------------------------------------------------- databricks


def _clean_project(dst: Path) -> Path:
    """The checkout's files as `git clone` would give them (no venvs, caches or stores)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=str(REPO_ROOT),
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = REPO_ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def test_databricks_batch_submission_is_what_cluster_json_says(tmp_path, monkeypatch):
    """``mlflow run <project> -e batch --backend databricks --backend-config cluster.json``,
    with only the HTTP layer of ``mlflow.projects.databricks`` replaced: nothing is contacted.
    MLflow's own pre-run check sees the tracking URI a user would have (``databricks``)."""
    import mlflow
    import mlflow.projects
    import mlflow.projects.databricks as dbx

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    project = _clean_project(tmp_path / "project")
    checks = []
    real_check = dbx.before_run_validations

    def _check(_tracking_uri, config):
        checks.append(config)
        return real_check("databricks", config)

    sent, uploads = [], {}

    def _http(host_creds, endpoint, method, **kwargs):
        sent.append((method, endpoint, kwargs))
        if endpoint == "/api/2.0/dbfs/get-status":
            body = {"error_code": "RESOURCE_DOES_NOT_EXIST"}
        elif endpoint.startswith("/dbfs/"):
            uploads[endpoint] = kwargs["data"].read()
            body = {}
        elif endpoint == "/api/2.0/jobs/runs/submit":
            body = {"run_id": 4242}
        elif endpoint == "/api/2.0/jobs/runs/get":
            body = {"run_page_url": "https://dbc.example/#job/7/run/4242", "state": {}, "job_id": 7}
        else:
            raise AssertionError(f"unexpected request {method} {endpoint}")
        return SimpleNamespace(status_code=200, text=json.dumps(body))

    monkeypatch.setattr(dbx, "before_run_validations", _check)
    monkeypatch.setattr(dbx.rest_utils, "http_request", _http)
    monkeypatch.setattr(dbx.rest_utils, "http_request_safe", _http)
    monkeypatch.setattr(
        dbx.databricks_utils,
        "get_databricks_host_creds",
        lambda _profile=None: SimpleNamespace(host="https://dbc.example"),
    )
    params = {
        "model_name": NAME,
        "input": "/dbfs/dai/incoming/2026-11-20.parquet",
        "table": "/dbfs/dai/scored",
        "date": DAY,
    }
    cluster = json.loads((REPO_ROOT / "cluster.json").read_text())
    submitted = mlflow.projects.run(
        str(project),
        entry_point="batch",
        parameters=params,
        backend="databricks",
        backend_config=str(REPO_ROOT / "cluster.json"),
        synchronous=False,
    )

    assert len(checks) == 1
    submits = [kw["json"] for m, e, kw in sent if e == "/api/2.0/jobs/runs/submit"]
    assert len(submits) == 1
    body = submits[0]
    assert body["new_cluster"] == cluster["new_cluster"]
    assert body["libraries"] == [
        *cluster["libraries"],
        {"pypi": {"package": f"mlflow=={mlflow.__version__}"}},
    ]
    task = body["shell_command_task"]
    assert task["command"][:2] == ["bash", "-c"]
    shell = task["command"][2]
    assert re.search(r"mlflow run /databricks/mlflow/projects/[0-9a-f]+ --entry-point batch", shell)
    for key, value in params.items():
        assert f"-P {key}={value}" in shell
    assert task["env_vars"]["MLFLOW_EXPERIMENT_ID"] == "0"
    # The license reaches the cluster as a secret reference, never as a value.
    key = cluster["new_cluster"]["spark_env_vars"]["DRIVERLESS_AI_LICENSE_KEY"]
    assert re.fullmatch(r"\{\{secrets/[\w.-]+/[\w.-]+\}\}", key)
    secret = license_text()
    assert secret not in json.dumps(body)

    (tar_bytes,) = uploads.values()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:gz") as tar:
        names = set(tar.getnames())
        assert not any(secret.encode() in tar.extractfile(m).read() for m in tar if m.isfile())
    for needed in ("MLproject", "python_env.yaml", "dai_mlflow/lifecycle/batch_job.py"):
        assert f"mlflow-project/{needed}" in names
    built = r"mlflow-project/(venvs/[^/]+/|mlruns/|tests/\.cache/|mlflow\.db)"
    assert not any(re.match(built, n) for n in names)
    run = mlflow.MlflowClient().get_run(submitted.run_id)
    assert run.data.tags["mlflow.project.backend"] == "databricks"
    assert params.items() <= run.data.params.items()
