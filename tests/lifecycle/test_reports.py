"""Pictures and HTML reports of ``validate`` and ``monitor``, on synthetic data (no model runs).

The checks that matter to a reader: every chart is a real PNG of a sensible size, a report
embeds its charts as ``data:`` URIs and references nothing remote, a drift report of 120
features stays one readable page (top features as charts, every feature in the table and in the
score chart), and headless Chromium renders ``drift_report.html`` to a screenshot that is not
blank. The same code paths run on real models in ``tests/lifecycle/test_validate.py`` and
``test_monitor.py``.
"""

from __future__ import annotations

import html
import subprocess
from typing import Dict, Tuple

import numpy as np
import pandas as pd
import pytest

from dai_mlflow.lifecycle import drift, metrics
from dai_mlflow.lifecycle.metrics import Decision
from dai_mlflow.lifecycle.reports import page as report
from dai_mlflow.lifecycle.reports import plots
from dai_mlflow.lifecycle.reports.publish import version_pictures
from tests.fixtures_reports import (
    CHROMIUM_FLAGS,
    assert_sensible_png,
    embedded_pngs,
    png_size,
    remote_references,
)

N_FEATURES = 120


def _classification(rng: np.random.Generator, classes: Tuple[str, ...]):
    n = 400
    y = rng.integers(0, len(classes), n)
    problem = metrics.Problem(
        "classification", "y", tuple(f"y.{c}" for c in classes), tuple(classes)
    )

    def model(noise: float) -> pd.DataFrame:
        logits = rng.normal(0, noise, (n, len(classes)))
        logits[np.arange(n), y] += 2.0
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return pd.DataFrame(p, columns=list(problem.output_columns))

    return (
        problem,
        [classes[i] for i in y],
        {"challenger v2": model(1.0), "champion v1": model(3.0)},
    )


def _regression(rng: np.random.Generator):
    n = 400
    t = rng.normal(50, 10, n)
    problem = metrics.Problem("regression", "charge", ("charge",))
    preds = {
        "challenger v2": pd.DataFrame({"charge": t + rng.normal(0, 2, n)}),
        "champion v1": pd.DataFrame({"charge": t + rng.normal(1, 4, n)}),
    }
    return problem, list(t), preds


CASES = {
    "binary": (("no", "yes"), ["roc.png", "precision_recall.png", "calibration.png"]),
    "multiclass": (("a", "b", "c"), ["roc.png", "precision_recall.png", "calibration.png"]),
    "regression": ((), ["predicted_vs_actual.png", "residuals.png"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_validation_report_embeds_its_curves_and_references_nothing_remote(case):
    rng = np.random.default_rng(7)
    classes, names = CASES[case]
    if classes:
        problem, labels, preds = _classification(rng, classes)
    else:
        problem, labels, preds = _regression(rng)
    scores = {k: metrics.compute_metrics(problem, labels, p) for k, p in preds.items()}
    pictures = plots.validation_pictures(problem, labels, preds, scores)
    assert [p.name for p in pictures] == names
    for p in pictures:
        assert_sensible_png(p.png)
    summary = report.ValidationSummary(
        "churn <&>", "run1", Decision.PROMOTED, "challenger v2 is better", problem.kind,
        problem.target, metrics.PRIMARY[problem.kind][0], "holdout.csv", len(labels), scores,
        "2026-12-02",
    )  # fmt: skip
    page = report.validation_report(summary, pictures)
    assert remote_references(page) == []
    assert embedded_pngs(page) == [p.png for p in pictures]
    assert "decision: promoted" in page
    assert "churn &lt;&amp;&gt;" in page  # escaped
    assert "churn <&>" not in page
    for label, values in scores.items():
        assert label in page
        assert f"{values[metrics.PRIMARY[problem.kind][0]]:.4g}" in page


def synthetic_window(n_features: int = N_FEATURES, rows: int = 600, seed: int = 3) -> Dict:
    """Column stats of ``n_features`` (every 4th categorical) and a window where some moved."""
    rng = np.random.default_rng(seed)
    stats, recent = {}, {}
    for i in range(n_features):
        if i % 4 == 3:
            name = f"plan_{i}"
            stats[name] = {"data_type": "str", "data": ["a", "b"], "count": 1000, "missing": 10,
                           "levels": {"a": 500, "b": 300, "c": 150, "d": 40}}  # fmt: skip
            shares = [0.5, 0.3, 0.15, 0.04, 0.01] if i % 8 == 3 else [0.2, 0.2, 0.2, 0.2, 0.2]
            values = rng.choice(["a", "b", "c", "d", "new"], rows, p=shares).astype(object)
            values[rng.random(rows) < 0.02] = None
        else:
            name = f"amount_{i}"
            stats[name] = {"data_type": "real", "data": list(rng.normal(0, 1, 10)),
                           "count": 1000, "missing": 0, "mean": 0.0, "std": 1.0, "min": -3.5,
                           "max": 3.5}  # fmt: skip
            values = rng.normal(0.05 * (i % 12), 1.0, rows)
        recent[name] = values
    frame = pd.DataFrame(recent)
    p = 1 / (1 + np.exp(-rng.normal(0.8, 1, rows)))
    frame["y.0"], frame["y.1"] = 1 - p, p
    base = 1 / (1 + np.exp(-rng.normal(0, 1, 1000)))
    baseline = drift.prediction_baseline(
        pd.DataFrame({"y.0": 1 - base, "y.1": base}), ["y.0", "y.1"]
    )
    result = drift.drift_report(stats, list(stats), ["y.0", "y.1"], frame, baseline)
    return {"version": "3", "report": result, "rows": frame, "stats": stats,
            "prediction_baseline": baseline, "outputs": ["y.0", "y.1"]}  # fmt: skip


@pytest.fixture(scope="module")
def wide_drift_report() -> Tuple[str, report.VersionDrift]:
    """The drift report of a 120-feature window (built once for the module)."""
    version = version_pictures(synthetic_window())
    page = report.drift_report("churn", ["2026-11-20", "2026-11-21"], "run9", "now", [version])
    return page, version


def test_drift_report_stays_readable_for_120_features(wide_drift_report):
    page, version = wide_drift_report
    result = version.report
    assert remote_references(page) == []
    images = embedded_pngs(page)
    top = report.top_features(result.rows)
    # scores + predictions + the top features: not one chart per feature
    assert len(images) == 2 + len(top) == 2 + report.TOP_FEATURES
    for data in images:
        assert_sensible_png(data)
    assert {p.name for p in report.all_pictures([version])} >= {"v3/drift_scores.png"}
    # every feature and prediction column is a row of the table
    for row in result.rows:
        assert f"<td>{row.column}</td>" in page
    assert page.count("<tr") == len(result.rows) + 1
    # the charted features are the most drifted ones
    worst = max(drift.drift_score(r) for r in result.rows if r.kind == "feature")
    assert drift.drift_score(top[0]) == worst
    assert f"should_retrain={str(result.should_retrain).lower()}" in page
    assert html.escape(drift.verdict_reason(result)) in page
    # the score chart has one bar per feature: it is tall, not cut
    _, height = png_size(version.scores_picture.png)
    assert height > N_FEATURES * 12


def test_verdict_reason_says_why():
    result = synthetic_window(n_features=8)["report"]
    reason = drift.verdict_reason(result)
    assert result.should_retrain
    assert reason == (
        "prediction column(s) y.0, y.1 drifted (PSI >= 0.2); "
        "1 of 8 checked features drifted (12% < 30%)"
    )
    # No prediction drifted, but 3 of 8 checked features did (a row without a baseline is
    # not checked): a retrain on the features' share alone.
    rows = [drift.DriftRow("prediction", "y.1", "psi", 0.01, 0.2, False, 0.0, 0.0, "validation")]
    rows += [drift.DriftRow("feature", f"f{i}", "z_mean", 0.0, 0.3, i < 3, 0.0, 0.0, "stats")
             for i in range(8)]  # fmt: skip
    rows += [drift.DriftRow("feature", "new", "none", float("nan"), 0.3, False, 0.0, 0.0, "none")]
    by_features = drift.DriftReport(tuple(rows), 500, True, "ok")
    assert drift.verdict_reason(by_features) == (
        "no prediction column drifted; 3 of 8 checked features drifted (38% >= 30%)"
    )
    few = drift.drift_report({}, [], [], pd.DataFrame({"x": range(5)}), None)
    assert drift.verdict_reason(few) == "no verdict: 5 rows in the window, fewer than 100"


def test_drift_report_renders_in_headless_chromium(wide_drift_report, chromium, tmp_path):
    from PIL import Image

    page, _ = wide_drift_report
    path = tmp_path / report.DRIFT_REPORT_NAME
    path.write_text(page, encoding="utf-8")
    shot = tmp_path / "drift_report.png"
    profile = tmp_path / "profile"
    profile.mkdir()
    proc = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}",
         "--window-size=1200,1600", path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.is_file(), proc.stderr[-2000:]
    image = Image.open(shot).convert("L")
    assert image.size == (1200, 1600)
    pixels = np.asarray(image, dtype=np.float64)
    # A blank (white) or failed (single colour) page has ~zero variance; text and charts do not.
    assert pixels.std() > 20, pixels.std()
    assert (pixels < 128).mean() > 0.01  # some dark ink: text, axes, bars
