"""The monitor stage: drift of a window against the training and validation baselines.

The documented thresholds are checked against the code's (no model, no store).
One end-to-end test (marked ``venv``) validates a real model, scores two days (one shifted)
in its env, and runs ``monitor`` on each against a sqlite store (``lifecycle_store``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from dai_mlflow.lifecycle import drift, scoring, tables
from dai_mlflow.lifecycle.metrics import Decision
from dai_mlflow.lifecycle.reports import plots
from dai_mlflow.lifecycle.validate import ValidateRequest, validate
from dai_mlflow.standin import data as standin_data
from tests.fixtures_lifecycle import (
    DAY,
    NAME,
    SHIFTED_DAY,
    check_report,
    download_run,
    holdout_csv,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- thresholds
def _doc_text(path: str) -> str:
    return " ".join((REPO_ROOT / path).read_text(encoding="utf-8").split())


def test_the_documented_thresholds_are_the_code_s():
    """docs/lifecycle.md ("Baselines and thresholds") states the thresholds drift.py uses, and
    its example reason is the sentence the code writes."""
    doc = _doc_text("docs/lifecycle.md")
    section = doc[doc.index("### Baselines and thresholds") : doc.index("## Scheduling")]
    table = dict(re.findall(r"\| ([a-z ]+) \| [^|]+ \| (.+?) \|", section))
    assert table.pop("check") == "drifted when"  # the header
    assert table == {
        "numeric feature": f"\\|z_mean\\| ≥ **{drift.Z_MEAN_THRESHOLD:g}**",
        "categorical feature": f"PSI ≥ **{drift.PSI_THRESHOLD:g}**",
        "any feature": f"moved by ≥ **{drift.MISSING_RATE_THRESHOLD:g}** (absolute)",
        "prediction column": f"PSI ≥ **{drift.PSI_THRESHOLD:g}**",
    }
    share = f"≥ **{100 * drift.FEATURE_SHARE_THRESHOLD:.0f} %** of the checked features drifted"
    assert f"`should_retrain` = any prediction column drifted, or {share}" in section
    assert f"Fewer than **{drift.MIN_ROWS}** rows: no verdict" in section
    # The example reason: a drifted prediction column and 4 of 9 checked features drifted.
    rows = [drift.DriftRow("prediction", "Churn?.True.", "psi", 0.5, 0.2, True, 0.0, 0.0, "v")]
    rows += [drift.DriftRow("feature", f"f{i}", "z_mean", 0.0, 0.3, i < 4, 0.0, 0.0, "stats")
             for i in range(9)]  # fmt: skip
    report = drift.DriftReport(tuple(rows), 500, True, "ok")
    assert f"(e.g. `v3: {drift.verdict_reason(report)}`)" in doc


# ----------------------------------------------------------------------------- end to end


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
    first = validate(ValidateRequest(NAME, holdout_csv()))  # logs the baseline
    assert first.decision == Decision.FIRST

    # The batch table's layout (test_batch.py tests batch; here rows are scored without Spark).
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
    got = download_run(calm.run_id, tmp_path / "calm-artifacts")
    n_features = int((calm.frame["kind"] == "feature").sum())
    charts = sorted(p.name for p in (got / "plots" / f"v{version}").iterdir())
    assert "drift_scores.png" in charts
    assert "predictions.png" in charts
    features = [c for c in charts if c.startswith("feature_")]
    assert len(features) == min(n_features, TOP_FEATURES)
    page = check_report(got, "drift_report.html", [f"v{version}/{c}" for c in charts])
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
