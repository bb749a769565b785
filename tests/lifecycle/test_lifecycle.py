"""Tests of the registry lifecycle: the champion/challenger gate, batch partitions, drift, and
what ``mlflow run . -e batch --backend databricks --backend-config cluster.json`` submits.

Every test gets its own sqlite store (``lifecycle_store``). The logic runs in-process; model
code runs in the models' own envs (subprocesses), as in the entry points. One real end-to-end
``mlflow run -e batch`` (the default project env: Python 3.11 / mlflow 3)
re-runs a date that the in-process call already wrote.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from dai_mlflow.errors import DaiMlflowError
from dai_mlflow.lifecycle import drift, metrics, scoring, tables
from dai_mlflow.lifecycle.errors import LifecycleError, ModelFailedError
from dai_mlflow.lifecycle.metrics import Decision
from dai_mlflow.lifecycle.reports import plots
from dai_mlflow.lifecycle.validate import ValidateRequest, validate
from dai_mlflow.outputs import MARKER_NAME
from dai_mlflow.standin import data as standin_data
from tests.fixtures_model import last_stdout_line, mlflow_run, run_env
from tests.fixtures_reports import assert_sensible_png, embedded_pngs, remote_references
from tests.fixtures_spark import get_spark_venv
from tests.fixtures_standin import get_standin

REPO_ROOT = Path(__file__).resolve().parents[2]
NAME = "dai_churn"
DAY = "2026-11-20"
SHIFTED_DAY = "2026-11-21"


def _holdout() -> Path:
    return get_standin("1.10", "binary").holdout_csv


def _license_text() -> str:
    return get_standin("1.10", "binary").license_path.read_text().strip()


# ----------------------------------------------------------------------------- metrics, tables


def test_auc_and_log_loss_equal_hand_computed_values():
    problem = metrics.Problem("classification", "y", ("y.a", "y.b"), ("a", "b"))
    preds = pd.DataFrame({"y.a": [0.9, 0.6, 0.4, 0.2], "y.b": [0.1, 0.4, 0.6, 0.8]})
    m = metrics.compute_metrics(problem, ["a", "b", "a", "b"], preds)
    # positives (b) score 0.4 and 0.8, negatives (a) 0.1 and 0.6: 3 of 4 pairs ordered
    assert m["auc"] == pytest.approx(0.75)
    expected = -sum(map(__import__("math").log, [0.9, 0.4, 0.4, 0.8])) / 4
    assert m["log_loss"] == pytest.approx(expected)
    reg = metrics.Problem("regression", "t", ("t",))
    r = metrics.compute_metrics(reg, ["1", "2", "", "4"], pd.DataFrame({"t": [1.0, 4.0, 9.0, 0.0]}))
    assert r == {"mae": pytest.approx(2.0), "rmse": pytest.approx((20 / 3) ** 0.5)}


def _standin_holdout_predictions(problem: str):
    """The stand-in's holdout and its model's predictions, scored in-process by the stand-in's
    numpy engine (the fitted model read from the experiment wheel)."""
    from dai_mlflow.standin.runtime.h2oaicore.engine import Model

    build = get_standin("1.10", problem)
    with zipfile.ZipFile(build.folder / build.experiment_wheel) as zf:
        spec = json.loads(zf.read(f"{build.module_name}/fitted_model.json"))
    holdout = pd.read_csv(build.holdout_csv)
    return build, holdout, Model(spec).score_frame(holdout)


@pytest.mark.parametrize("problem", ["regression", "binary", "multiclass"])
def test_metrics_agree_with_the_standin_experiment_summary_on_its_holdout(problem):
    """scikit-learn's numbers (the gate's) against the stand-in's own numpy ones (the DAI
    experiment summary's RMSE / LOGLOSS), on the same holdout predictions. The hand-written
    metrics this module had agreed with scikit-learn to 1e-16 here before they were removed."""
    from dai_mlflow.standin.runtime.h2oaicore import engine

    build, holdout, preds = _standin_holdout_predictions(problem)
    found = metrics.detect_problem(list(preds.columns), list(holdout.columns))
    labels = list(holdout[build.target])
    got = metrics.compute_metrics(found, labels, preds)
    assert set(got) == set(metrics.metric_names(found))
    with zipfile.ZipFile(build.folder / build.experiment_wheel) as zf:
        model = engine.Model(json.loads(zf.read(f"{build.module_name}/fitted_model.json")))
    summary = engine.metrics(model, holdout, holdout[build.target])
    if found.kind == "regression":
        assert got["rmse"] == pytest.approx(summary["RMSE"], rel=1e-12)
        assert 0 < got["mae"] <= got["rmse"]
    else:
        assert got["log_loss"] == pytest.approx(summary["LOGLOSS"], rel=1e-12)
        assert 0.5 < got["auc"] <= 1.0


def test_problem_is_found_from_dai_output_columns():
    binary = metrics.detect_problem(["Churn?.False.", "Churn?.True."], ["x", "Churn?"])
    assert (binary.kind, binary.target, binary.classes) == (
        "classification",
        "Churn?",
        ("False.", "True."),
    )
    assert metrics.detect_problem(["Total Charge"], ["Total Charge", "x"]).kind == "regression"
    with pytest.raises(LifecycleError, match="no column that is the target"):
        metrics.detect_problem(["Churn?.False.", "Churn?.True."], ["x"])
    assert metrics.label_text(20.0) == "20"


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


# ----------------------------------------------------------------------------- validate


def _run_of(store, run_id: str):
    return store.client().get_run(run_id)


def _artifacts(run_id: str, dst: Path) -> Path:
    import mlflow.artifacts

    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(dst)))


def _check_report(folder: Path, report_name: str, pngs: list) -> str:
    """The report and its plots are there; the plots are sensible PNGs, all embedded in the
    HTML, which references nothing remote. Returns the HTML."""
    page = (folder / report_name).read_text(encoding="utf-8")
    assert remote_references(page) == []
    embedded = embedded_pngs(page)
    for rel in pngs:
        data = (folder / "plots" / rel).read_bytes()
        assert_sensible_png(data)
        assert data in embedded, rel
    return page


@pytest.mark.venv
def test_first_model_becomes_champion_and_a_worse_challenger_is_not_promoted(
    lifecycle_store, logged_model, worse_model_dir
):
    store = lifecycle_store
    better = logged_model("1.10", "binary").local_dir
    v1 = store.register(better, NAME, "challenger")
    first = validate(ValidateRequest(NAME, _holdout()))
    assert first.decision == Decision.FIRST
    assert store.alias(NAME, "champion") == v1

    v2 = store.register(worse_model_dir, NAME, "challenger")
    second = validate(ValidateRequest(NAME, _holdout()))
    assert second.decision == Decision.KEPT
    assert store.aliases(NAME) == {"champion": v1, "challenger": v2}
    run = _run_of(store, second.run_id)
    assert run.info.status == "FINISHED"
    logged = run.data.metrics
    assert logged["challenger_auc"] < logged["champion_auc"]
    assert logged["challenger_log_loss"] > logged["champion_log_loss"]
    assert run.data.tags["dai_mlflow.decision"] == Decision.KEPT
    assert "not better than champion" in run.data.tags["dai_mlflow.decision_reason"]
    # The curves of both models, and the one-page report holding them.
    got = _artifacts(second.run_id, store.root.parent / "artifacts")
    names = ["roc.png", "precision_recall.png", "calibration.png"]
    assert sorted(p.name for p in (got / "plots").iterdir()) == sorted(names)
    page = _check_report(got, "validation_report.html", names)
    assert "decision: kept" in page
    assert f"challenger v{v2}" in page
    assert f"champion v{v1}" in page
    assert "dai_mlflow.plots_error" not in run.data.tags
    # The smoke-test sample deploy uses: holdout rows and the challenger's answers.
    sample = json.loads((got / "validation_sample.json").read_text())
    assert len(sample["data"]) == len(sample["predictions"]) == 50
    assert _license_text() not in page + json.dumps(sample)


@pytest.mark.venv
def test_a_better_challenger_is_promoted_even_when_plotting_fails(
    lifecycle_store, logged_model, worse_model_dir, monkeypatch, capsys
):
    store = lifecycle_store
    v1 = store.register(worse_model_dir, NAME, "champion")
    v2 = store.register(logged_model("1.10", "binary").local_dir, NAME, "challenger")

    def _broken(*_args, **_kwargs):
        raise RuntimeError("no room on the canvas")

    monkeypatch.setattr(plots, "validation_pictures", _broken)
    result = validate(ValidateRequest(NAME, _holdout()))
    assert result.decision == Decision.PROMOTED
    assert result.previous_champion == v1
    assert store.aliases(NAME) == {"champion": v2, "challenger": v2}
    assert result.challenger_metrics["auc"] > result.champion_metrics["auc"]
    run = _run_of(store, result.run_id)
    assert run.info.status == "FINISHED"
    assert "no room on the canvas" in run.data.tags["dai_mlflow.plots_error"]
    assert "warning: validation report not made" in capsys.readouterr().err
    artifacts = {a.path for a in store.client().list_artifacts(result.run_id)}
    assert "validation_report.html" not in artifacts
    assert {"prediction_baseline.json", "validation_sample.json"} <= artifacts


@pytest.mark.venv
def test_a_failed_validation_moves_no_alias_and_ends_the_run_failed(
    lifecycle_store, logged_model, worse_model_dir, monkeypatch, tmp_path
):
    store = lifecycle_store
    v1 = store.register(worse_model_dir, NAME, "champion")
    v2 = store.register(logged_model("1.10", "binary").local_dir, NAME, "challenger")
    before = store.aliases(NAME)

    # 1. the holdout has no label column: refused before any model is scored
    unlabelled = get_standin("1.10", "binary").sample_input_csv
    with pytest.raises(LifecycleError, match="no column that is the target"):
        validate(ValidateRequest(NAME, unlabelled))
    # 2. the models cannot score (no license where they run): the model's own error, one line
    monkeypatch.delenv("DRIVERLESS_AI_LICENSE_FILE")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ModelFailedError) as err:
        validate(ValidateRequest(NAME, _holdout()))
    assert "\n" not in str(err.value)
    assert "license" in str(err.value).lower()

    assert store.aliases(NAME) == before == {"champion": v1, "challenger": v2}
    runs = store.client().search_runs(["0"], "params.model_name = 'dai_churn'")
    assert len(runs) == 2
    assert {r.info.status for r in runs} == {"FAILED"}
    secret = _license_text()
    for r in runs:
        assert secret not in json.dumps([r.data.params, r.data.tags])


# ----------------------------------------------------------------------------- batch


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
    spark_venv = get_spark_venv(model).parents[1]  # the Spark venv `make spark-venv` builds
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


# ----------------------------------------------------------------------------- monitor


def _fresh_inputs(path: Path, seed: int, shift: bool) -> Path:
    """New rows from the training data's generator; ``shift`` moves four features."""
    data = standin_data.generate("binary", 600, seed)
    frame = pd.DataFrame(data.rows, columns=list(data.columns))
    if shift:
        frame["Day Mins"] = frame["Day Mins"] + 110.0
        frame["Cust Serv Calls"] = frame["Cust Serv Calls"] + 3
        frame["x1"] = frame["x1"] + 2.0
        frame["Int'l Plan"] = frame["Int'l Plan"].where(frame["Int'l Plan"].isna(), "yes")
    frame.to_csv(path, index=False)
    return path


@pytest.mark.venv
def test_monitor_flags_shifted_data_and_not_the_training_distribution(
    lifecycle_store, logged_model, tmp_path, monkeypatch
):
    from dai_mlflow.lifecycle.monitor import MonitorRequest, monitor
    from dai_mlflow.lifecycle.reports.page import TOP_FEATURES

    store = lifecycle_store
    model = logged_model("1.10", "binary")
    version = store.register(model.local_dir, NAME, "challenger")
    first = validate(ValidateRequest(NAME, _holdout()))  # logs the baseline
    assert first.decision == Decision.FIRST

    # The batch table's layout (batch is tested above; here the rows are scored without Spark).
    table, out = tmp_path / "scored", tmp_path / "monitoring"
    for day, shift in ((DAY, False), (SHIFTED_DAY, True)):
        inputs = _fresh_inputs(tmp_path / f"{day}.csv", seed=777, shift=shift)
        frame = pd.read_csv(inputs)
        preds = scoring.score_file(model.local_dir, inputs)
        frame = pd.concat([frame, preds], axis=1)
        frame["model_name"], frame["model_version"] = NAME, version
        frame["model_uri"] = f"models:/{NAME}/{version}"
        frame["scored_at"] = pd.Timestamp("2026-11-21T01:00:00")
        tables.write_frame(table, day, frame)

    calm = monitor(MonitorRequest(NAME, str(table), str(out), DAY))
    assert not calm.should_retrain
    assert not calm.frame["drifted"].any(), calm.frame[["column", "value"]]
    assert set(calm.frame["kind"]) == {"feature", "prediction"}
    assert (calm.frame["baseline_source"] != "none").all()
    got = _artifacts(calm.run_id, tmp_path / "calm-artifacts")
    n_features = int((calm.frame["kind"] == "feature").sum())
    charts = sorted(p.name for p in (got / "plots" / f"v{version}").iterdir())
    assert "drift_scores.png" in charts
    assert "predictions.png" in charts
    features = [c for c in charts if c.startswith("feature_")]
    assert len(features) == min(n_features, TOP_FEATURES)
    page = _check_report(got, "drift_report.html", [f"v{version}/{c}" for c in charts])
    assert "should_retrain=false" in page
    assert "no prediction column drifted" in page

    # A failure while drawing changes neither the verdict nor the table.
    def _broken(*_args, **_kwargs):
        raise RuntimeError("no room on the canvas")

    monkeypatch.setattr(plots, "drift_scores_picture", _broken)
    shifted = monitor(MonitorRequest(NAME, str(table), str(out), SHIFTED_DAY))
    shifted_run = store.client().get_run(shifted.run_id)
    assert "no room on the canvas" in shifted_run.data.tags["dai_mlflow.plots_error"]
    assert "drifted" in shifted_run.data.tags["dai_mlflow.should_retrain_reason"]
    assert "drift_report.html" not in {
        a.path for a in store.client().list_artifacts(shifted.run_id)
    }
    assert shifted.should_retrain
    drifted = set(shifted.frame.loc[shifted.frame["drifted"], "column"])
    assert {"Day Mins", "Cust Serv Calls", "x1", "Int'l Plan"} <= drifted
    assert {"Account Length", "State.Code"}.isdisjoint(drifted)
    assert shifted.frame.loc[shifted.frame["kind"] == "prediction", "drifted"].all()

    monitor(MonitorRequest(NAME, str(table), str(out), SHIFTED_DAY))  # re-run: replaced
    assert tables.partitions(out) == [DAY, SHIFTED_DAY]
    saved = tables.read_partitions(out, [SHIFTED_DAY])
    assert len(saved) == len(shifted.frame)
    run = store.client().get_run(shifted.run_id)
    assert run.data.metrics["should_retrain"] == 1.0
    assert drift.PSI_THRESHOLD == 0.2  # the documented thresholds (docs/lifecycle.md)
    assert drift.Z_MEAN_THRESHOLD == 0.3


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
    secret = _license_text()
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
