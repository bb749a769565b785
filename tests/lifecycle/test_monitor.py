"""The monitor stage: drift of a window against the training and validation baselines.

``feature_drift``'s branches and the documented thresholds are unit tests (no model, no store).
One end-to-end test (marked ``venv``) validates a real model, scores two days (one shifted)
in its env, and runs ``monitor`` on each against a sqlite store (``lifecycle_store``).
"""

from __future__ import annotations

import math
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


# ----------------------------------------------------------------------------- feature_drift
NUMERIC = {"data_type": "real", "mean": 10.0, "std": 2.0, "count": 100, "missing": 0}
LEVELS = {"data_type": "str", "levels": {"a": 50, "b": 50}, "count": 100, "missing": 0}


def _recent(*runs) -> pd.Series:
    """``_recent(("a", 80), ("b", 20))``: a column of those values, that many times each."""
    return pd.Series([v for value, times in runs for v in [value] * times], dtype=object)


def _psi(pairs) -> float:
    """PSI by hand over (expected share, actual share) buckets, each share floored at 1e-4."""
    floor = 1e-4
    return sum((max(a, floor) - max(e, floor)) * math.log(max(a, floor) / max(e, floor))
               for e, a in pairs)  # fmt: skip


def test_a_numeric_feature_drifts_by_its_mean_against_the_stats_mean_and_std():
    row = drift.feature_drift(NUMERIC, "amount", _recent((10.8, 100)))
    assert (row.kind, row.column, row.metric, row.baseline_source) == (
        "feature", "amount", "z_mean", "stats",
    )  # fmt: skip
    assert row.value == pytest.approx(0.4)  # (10.8 - 10) / 2
    assert (row.threshold, row.drifted) == (drift.Z_MEAN_THRESHOLD, True)
    assert drift.feature_drift(NUMERIC, "amount", _recent((9.2, 100))).drifted  # |z|: -0.4
    calm = drift.feature_drift(NUMERIC, "amount", _recent((10.5, 100)))
    assert calm.value == pytest.approx(0.25)
    assert not calm.drifted
    # Text values are read as numbers (a batch table keeps what the input file held).
    assert drift.feature_drift(NUMERIC, "amount", _recent(("10.8", 100))).value == pytest.approx(
        0.4
    )


def test_a_numeric_feature_without_mean_and_std_uses_the_stats_sample():
    entry = {"data_type": "int", "data": ["1", "2", "3", "x", None], "count": 10, "missing": 0}
    row = drift.feature_drift(entry, "calls", _recent((2.5, 100)))
    assert (row.metric, row.baseline_source) == ("z_mean", "sample")
    assert row.value == pytest.approx(0.5)  # sample 1, 2, 3: mean 2, std 1
    assert row.drifted
    # A constant sample: the same mean is no drift, another is infinitely far.
    flat = {"data_type": "real", "data": [5, 5, 5]}
    assert drift.feature_drift(flat, "c", _recent((5.0, 100))).value == 0.0
    assert drift.feature_drift(flat, "c", _recent((6.0, 100))).value == math.inf
    # Fewer than two numbers: no baseline, no drift, and the row says so.
    none = drift.feature_drift({"data_type": "real", "data": [1.0]}, "c", _recent((9.0, 100)))
    assert (none.metric, none.baseline_source, none.drifted) == ("none", "none", False)
    assert math.isnan(none.value)
    assert none.note == "no numeric baseline in the stats"


def test_a_categorical_feature_drifts_by_psi_over_the_stats_levels_and_other():
    row = drift.feature_drift(LEVELS, "plan", _recent(("a", 80), ("b", 20)))
    assert (row.metric, row.baseline_source, row.threshold) == ("psi", "stats", drift.PSI_THRESHOLD)
    assert row.value == pytest.approx(_psi([(0.5, 0.8), (0.5, 0.2), (0.0, 0.0)]))  # ~0.416
    assert row.drifted
    calm = drift.feature_drift(LEVELS, "plan", _recent(("a", 60), ("b", 40)))
    assert calm.value == pytest.approx(_psi([(0.5, 0.6), (0.5, 0.4), (0.0, 0.0)]))  # ~0.041
    assert not calm.drifted
    # A level training never saw counts in the "other" bucket.
    new = drift.feature_drift(LEVELS, "plan", _recent(("a", 50), ("b", 30), ("c", 20)))
    assert new.value == pytest.approx(_psi([(0.5, 0.5), (0.5, 0.3), (0.0, 0.2)]))
    assert new.drifted
    # Missing values are left out of the shares (their move is checked on its own).
    with_gaps = drift.feature_drift(LEVELS, "plan", _recent(("a", 60), ("b", 40), (None, 5)))
    assert with_gaps.value == pytest.approx(calm.value)


def test_a_categorical_feature_without_levels_counts_the_stats_sample():
    entry = {"data_type": "str", "data": ["a", "a", "a", "b", None]}  # a: 3/4, b: 1/4
    row = drift.feature_drift(entry, "plan", _recent(("a", 25), ("b", 75)))
    assert (row.metric, row.baseline_source) == ("psi", "sample")
    assert row.value == pytest.approx(_psi([(0.75, 0.25), (0.25, 0.75), (0.0, 0.0)]))
    assert row.drifted
    assert not drift.feature_drift(entry, "plan", _recent(("a", 75), ("b", 25))).drifted
    none = drift.feature_drift({"data_type": "str", "data": []}, "plan", _recent(("a", 9)))
    assert (none.metric, none.baseline_source, none.drifted) == ("none", "none", False)
    assert none.note == "no categorical baseline in the stats"


@pytest.mark.parametrize("entry", [NUMERIC, LEVELS], ids=["numeric", "categorical"])
def test_a_missing_rate_that_moves_by_the_threshold_is_drift_on_its_own(entry):
    # Present values as in training: only the share of missing ones moves.
    def recent(present: int, missing: object = None, n_missing: int = 0) -> pd.Series:
        half = present // 2
        runs = [(10.0, present)] if entry is NUMERIC else [("a", half), ("b", present - half)]
        return _recent(*runs, (missing, n_missing))

    steady = drift.feature_drift(entry, "x", recent(100))
    assert (steady.baseline_missing_rate, steady.recent_missing_rate) == (0.0, 0.0)
    assert abs(steady.value) < 0.01
    assert not steady.drifted
    # 10 of 100 missing: moved by 0.1, the threshold (drifted); 5 of 100 (NaN counts): not.
    gaps = drift.feature_drift(entry, "x", recent(90, None, 10))
    assert gaps.recent_missing_rate == pytest.approx(0.1)
    assert abs(gaps.value) < 0.01
    assert gaps.drifted
    few = drift.feature_drift(entry, "x", recent(96, float("nan"), 4))
    assert few.recent_missing_rate == pytest.approx(0.04)
    assert not few.drifted
    # Without a count in the stats there is no missing-rate baseline: nothing moved.
    bare = {k: v for k, v in entry.items() if k not in ("count", "missing")}
    unknown = drift.feature_drift(bare, "x", recent(50, None, 50))
    assert math.isnan(unknown.baseline_missing_rate)
    assert not unknown.drifted


def test_empty_recent_data_measures_nothing_and_gives_no_verdict():
    row = drift.feature_drift(NUMERIC, "amount", pd.Series([], dtype=object))
    assert row.metric == "z_mean"
    assert math.isnan(row.value)
    assert math.isnan(row.recent_missing_rate)
    assert not row.drifted
    assert math.isnan(drift.drift_score(row))
    report = drift.drift_report(
        {"amount": NUMERIC}, ["amount"], [], pd.DataFrame({"amount": []}), None
    )
    assert (report.status, report.should_retrain, report.n_rows) == ("too_few_rows", False, 0)
    assert drift.verdict_reason(report) == "no verdict: 0 rows in the window, fewer than 100"


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
    return standin_data.write_window(path, seed, shift)


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
