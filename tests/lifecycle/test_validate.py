"""The validate stage: the gate's metrics and the champion/challenger decision.

Metrics are checked against hand-computed values and the stand-in's own experiment summary
(in-process, sub-second). The decision runs on real models in their own envs (marked ``venv``):
every test gets its own sqlite store (``lifecycle_store``).
"""

from __future__ import annotations

import json
import math
import zipfile

import pandas as pd
import pytest

from dai_mlflow.lifecycle import metrics
from dai_mlflow.lifecycle.errors import LifecycleError, ModelFailedError
from dai_mlflow.lifecycle.metrics import Decision
from dai_mlflow.lifecycle.reports import plots
from dai_mlflow.lifecycle.validate import ValidateRequest, validate
from tests.fixtures_lifecycle import NAME, check_report, download_run, holdout_csv, license_text
from tests.fixtures_standin import get_standin

# ----------------------------------------------------------------------------- metrics


def test_auc_and_log_loss_equal_hand_computed_values():
    problem = metrics.Problem("classification", "y", ("y.a", "y.b"), ("a", "b"))
    preds = pd.DataFrame({"y.a": [0.9, 0.6, 0.4, 0.2], "y.b": [0.1, 0.4, 0.6, 0.8]})
    m = metrics.compute_metrics(problem, ["a", "b", "a", "b"], preds)
    # positives (b) score 0.4 and 0.8, negatives (a) 0.1 and 0.6: 3 of 4 pairs ordered
    assert m["auc"] == pytest.approx(0.75)
    expected = -sum(map(math.log, [0.9, 0.4, 0.4, 0.8])) / 4
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


# ----------------------------------------------------------------------------- the decision


@pytest.mark.venv
def test_first_model_becomes_champion_and_a_worse_challenger_is_not_promoted(
    lifecycle_store, logged_model, worse_model_dir
):
    store = lifecycle_store
    better = logged_model("1.10", "binary").local_dir
    v1 = store.register(better, NAME, "challenger")
    first = validate(ValidateRequest(NAME, holdout_csv()))
    assert first.decision == Decision.FIRST
    assert store.alias(NAME, "champion") == v1

    v2 = store.register(worse_model_dir, NAME, "challenger")
    second = validate(ValidateRequest(NAME, holdout_csv()))
    assert second.decision == Decision.KEPT
    assert store.aliases(NAME) == {"champion": v1, "challenger": v2}
    run = store.client().get_run(second.run_id)
    assert run.info.status == "FINISHED"
    logged = run.data.metrics
    assert logged["challenger_auc"] < logged["champion_auc"]
    assert logged["challenger_log_loss"] > logged["champion_log_loss"]
    assert run.data.tags["dai_mlflow.decision"] == Decision.KEPT
    assert "not better than champion" in run.data.tags["dai_mlflow.decision_reason"]
    # The curves of both models, and the one-page report holding them.
    got = download_run(second.run_id, store.root.parent / "artifacts")
    names = ["roc.png", "precision_recall.png", "calibration.png"]
    assert sorted(p.name for p in (got / "plots").iterdir()) == sorted(names)
    page = check_report(got, "validation_report.html", names)
    assert "decision: kept" in page
    assert f"challenger v{v2}" in page
    assert f"champion v{v1}" in page
    assert "dai_mlflow.plots_error" not in run.data.tags
    # The smoke-test sample deploy uses: holdout rows and the challenger's answers.
    sample = json.loads((got / "validation_sample.json").read_text())
    assert len(sample["data"]) == len(sample["predictions"]) == 50
    assert license_text() not in page + json.dumps(sample)


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
    result = validate(ValidateRequest(NAME, holdout_csv()))
    assert result.decision == Decision.PROMOTED
    assert result.previous_champion == v1
    assert store.aliases(NAME) == {"champion": v2, "challenger": v2}
    assert result.challenger_metrics["auc"] > result.champion_metrics["auc"]
    run = store.client().get_run(result.run_id)
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
        validate(ValidateRequest(NAME, holdout_csv()))
    assert "\n" not in str(err.value)
    assert "license" in str(err.value).lower()

    assert store.aliases(NAME) == before == {"champion": v1, "challenger": v2}
    runs = store.client().search_runs(["0"], "params.model_name = 'dai_churn'")
    assert len(runs) == 2
    assert {r.info.status for r in runs} == {"FAILED"}
    secret = license_text()
    for r in runs:
        assert secret not in json.dumps([r.data.params, r.data.tags])
