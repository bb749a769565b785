"""Pictures of ``validate`` and ``monitor`` as PNG bytes: matplotlib and scikit-learn curves.

Figures are built with :class:`matplotlib.figure.Figure`, never ``pyplot`` (no global state, no
display, Agg on ``savefig``): headless and thread-safe. Anything here may raise; callers treat a
failure as a warning (:mod:`.publish`). Python 3.8-safe (matplotlib 3.7, scikit-learn 1.3).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from dai_mlflow.lifecycle import drift, metrics

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red")
BASELINE_COLOR = "tab:gray"
WINDOW_COLOR = "tab:blue"
DRIFTED_COLOR = "tab:red"
DPI = 100
HIST_BINS = 30
MAX_LEVELS = 12
MAX_PREDICTION_PANELS = 6
# A sample this large in the column stats is drawn as a histogram; smaller ones (DAI's own are
# ~10 values) would be noise, so the stats' mean/std are drawn as a normal curve instead.
MIN_SAMPLE_FOR_HISTOGRAM = 50


@dataclass(frozen=True)
class Picture:
    """One rendered chart: ``name`` is its file name under ``plots/``."""

    name: str
    title: str
    png: bytes


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI)


def _render(fig: Any, name: str, title: str) -> Picture:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return Picture(name, title, buf.getvalue())


def _finish(ax: Any, heading: str, legend_at: str) -> None:
    """The common end of a one-axes chart: its heading, legend and grid."""
    ax.set_title(heading, fontsize=10)
    ax.legend(loc=legend_at, fontsize=8)
    ax.grid(alpha=0.3)


def _pct(share: float) -> str:
    return "n/a" if share is None or math.isnan(share) else f"{100.0 * share:.1f}%"


# ------------------------------------------------------------------------------ validate
def validation_pictures(
    problem: metrics.Problem,
    labels: Sequence[object],
    predictions: Mapping[str, pd.DataFrame],
    scores: Mapping[str, Mapping[str, float]],
) -> List[Picture]:
    """The ``plots/`` of a validate run, every model on the same axes.

    Args:
        problem: what the models predict.
        labels: the holdout's target column.
        predictions: holdout predictions per model label (``"challenger v2"``, ...).
        scores: the metrics of each model label (shown in the legends).

    Returns:
        classification: ``roc.png``, ``precision_recall.png``, ``calibration.png``;
        regression: ``predicted_vs_actual.png``, ``residuals.png``.
    """
    if problem.kind == metrics.CLASSIFICATION:
        curves = {k: _positive_scores(problem, labels, p) for k, p in predictions.items()}
        return [
            _roc(curves, scores, problem),
            _precision_recall(curves, problem),
            _calibration(curves, problem),
        ]
    pairs = {k: metrics.numeric_labels(problem, labels, p) for k, p in predictions.items()}
    return [_predicted_vs_actual(pairs, scores, problem), _residuals(pairs, problem)]


def _positive_scores(
    problem: metrics.Problem, labels: Sequence[object], predictions: pd.DataFrame
) -> Tuple[np.ndarray, np.ndarray]:
    """(is positive, score) per row: binary, the last class; multiclass, every (row, class)
    pair one-vs-rest, flattened (the micro-average)."""
    y, probs = metrics.class_indices(problem, labels, predictions)
    if len(problem.classes) == 2:
        return y == 1, probs[:, 1]
    onehot = np.zeros_like(probs, dtype=bool)
    onehot[np.arange(len(y)), y] = True
    return onehot.ravel(), probs.ravel()


def _positive_name(problem: metrics.Problem) -> str:
    if len(problem.classes) == 2:
        return f"{problem.target} = {problem.classes[1]}"
    return f"{problem.target}, micro-average over {len(problem.classes)} classes"


def _roc(curves: Mapping[str, Tuple[np.ndarray, np.ndarray]], scores: Mapping, problem) -> Picture:
    from sklearn.metrics import roc_curve

    fig = _figure(5.5, 5)
    ax = fig.add_subplot()
    for color, (label, (pos, score)) in zip(COLORS, curves.items()):
        fpr, tpr, _ = roc_curve(pos, score)
        auc = scores.get(label, {}).get("auc", float("nan"))
        ax.plot(fpr, tpr, color=color, lw=2, label=f"{label} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color=BASELINE_COLOR, ls="--", lw=1, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    _finish(ax, f"ROC: {_positive_name(problem)}", "lower right")
    return _render(fig, "roc.png", "ROC curve")


def _precision_recall(curves: Mapping[str, Tuple[np.ndarray, np.ndarray]], problem) -> Picture:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig = _figure(5.5, 5)
    ax = fig.add_subplot()
    rate = float("nan")
    for color, (label, (pos, score)) in zip(COLORS, curves.items()):
        precision, recall, _ = precision_recall_curve(pos, score)
        ap = average_precision_score(pos, score)
        ax.plot(recall, precision, color=color, lw=2, label=f"{label} (AP {ap:.3f})")
        rate = float(np.mean(pos))
    ax.axhline(rate, color=BASELINE_COLOR, ls="--", lw=1, label=f"positive rate {rate:.3f}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01))
    _finish(ax, f"Precision-recall: {_positive_name(problem)}", "lower left")
    return _render(fig, "precision_recall.png", "Precision-recall curve")


def _calibration(curves: Mapping[str, Tuple[np.ndarray, np.ndarray]], problem) -> Picture:
    from sklearn.calibration import calibration_curve

    fig = _figure(5.5, 6.2)
    top, bottom = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    bins = np.linspace(0.0, 1.0, 11)
    for color, (label, (pos, score)) in zip(COLORS, curves.items()):
        observed, predicted = calibration_curve(pos, np.clip(score, 0.0, 1.0), n_bins=10)
        top.plot(predicted, observed, marker="o", color=color, lw=2, label=label)
        bottom.hist(score, bins=bins, histtype="step", lw=2, color=color, label=label)
    top.plot([0, 1], [0, 1], color=BASELINE_COLOR, ls="--", lw=1, label="perfectly calibrated")
    top.set(ylabel="observed positive share", xlim=(0, 1), ylim=(0, 1.01))
    top.set_title(f"Calibration: {_positive_name(problem)}", fontsize=10)
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    bottom.set(xlabel="predicted probability (10 bins)", ylabel="rows")
    bottom.grid(alpha=0.3)
    return _render(fig, "calibration.png", "Calibration curve")


def _predicted_vs_actual(
    pairs: Mapping[str, Tuple[np.ndarray, np.ndarray]], scores: Mapping, problem
) -> Picture:
    fig = _figure(5.5, 5)
    ax = fig.add_subplot()
    lo, hi = math.inf, -math.inf
    for color, (label, (y, pred)) in zip(COLORS, pairs.items()):
        rmse = scores.get(label, {}).get("rmse", float("nan"))
        ax.scatter(y, pred, s=8, alpha=0.45, color=color, label=f"{label} (RMSE {rmse:.4g})")
        lo, hi = (
            min(lo, float(y.min()), float(pred.min())),
            max(hi, float(y.max()), float(pred.max())),
        )
    ax.plot([lo, hi], [lo, hi], color=BASELINE_COLOR, ls="--", lw=1, label="predicted = actual")
    ax.set(xlabel=f"actual {problem.target}", ylabel=f"predicted {problem.target}")
    _finish(ax, "Predicted against actual (holdout)", "upper left")
    return _render(fig, "predicted_vs_actual.png", "Predicted against actual")


def _residuals(pairs: Mapping[str, Tuple[np.ndarray, np.ndarray]], problem) -> Picture:
    fig = _figure(5.5, 4.2)
    ax = fig.add_subplot()
    residuals = {k: pred - y for k, (y, pred) in pairs.items()}
    every = np.concatenate(list(residuals.values()))
    bins = np.histogram_bin_edges(every[np.isfinite(every)], bins=HIST_BINS)
    for color, (label, r) in zip(COLORS, residuals.items()):
        ax.hist(
            r,
            bins=bins,
            histtype="step",
            lw=2,
            color=color,
            label=f"{label} (mean {r.mean():+.3g})",
        )
    ax.axvline(0.0, color=BASELINE_COLOR, ls="--", lw=1)
    ax.set(xlabel=f"residual: predicted - actual {problem.target}", ylabel="rows")
    _finish(ax, "Residuals (holdout)", "upper left")
    return _render(fig, "residuals.png", "Residual histogram")


# ------------------------------------------------------------------------------ monitor
def safe_name(text: str) -> str:
    """A file-name-safe version of a column name (the rest of the name is kept in the title)."""
    kept = "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("._")
    return kept[:60] or "column"


def drift_scores_picture(rows: Sequence[drift.DriftRow], name: str = "drift_scores.png") -> Picture:
    """Every feature's drift score (value / threshold, sorted; 1 is the threshold), drifted in red.

    Readable at any feature count: one bar per feature, the figure grows with the count.
    """
    features = sorted(
        (r for r in rows if r.kind == "feature"), key=lambda r: drift.drift_score(r), reverse=True
    )
    n = len(features)
    fig = _figure(7.5, max(2.5, 0.19 * n + 1.4))
    ax = fig.add_subplot()
    values = [drift.drift_score(r) for r in features]
    shown = [0.0 if math.isnan(v) else min(v, 10.0) for v in values]
    colors = [DRIFTED_COLOR if r.drifted else WINDOW_COLOR for r in features]
    y = np.arange(n)
    ax.barh(y, shown, color=colors, height=0.7)
    ax.set_yticks(y)
    labels = [f"{r.column} ({r.metric})" for r in features]
    ax.set_yticklabels(labels, fontsize=7 if n > 40 else 8)
    ax.set_ylim(n - 0.5, -0.5)  # first (most drifted) on top, no empty margin
    ax.axvline(1.0, color="black", ls="--", lw=1, label="threshold")
    for i, v in enumerate(values):
        if not math.isnan(v) and v > 10.0:
            ax.text(10.0, i, f" {v:.0f}", va="center", fontsize=7)
    ax.set_xlabel("drift score = metric / its threshold (cut at 10); red: drifted")
    ax.set_title(f"Drift score of all {n} features", fontsize=10)
    ax.set_xlim(0, 10.8)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _render(fig, name, "Drift score of every feature")


def feature_picture(
    entry: Optional[Mapping[str, Any]], row: drift.DriftRow, recent: pd.Series, name: str
) -> Picture:
    """One input column: the training baseline (column stats) against the window.

    Numbers: the window's histogram against the training sample's (when the stats hold at least
    :data:`MIN_SAMPLE_FOR_HISTOGRAM` values) or the normal curve of the stats' mean and std,
    with both means marked. Categories: the share of each level (top :data:`MAX_LEVELS`, the
    rest as "other"). Missing shares are in the legend.
    """
    fig = _figure(6.2, 3.6)
    ax = fig.add_subplot()
    entry = entry or {}
    base_missing = _pct(row.baseline_missing_rate)
    win_missing = _pct(row.recent_missing_rate)
    if drift.is_numeric(entry):
        _numeric_panel(ax, entry, recent, base_missing, win_missing)
    else:
        _category_panel(ax, entry, recent, base_missing, win_missing)
    verdict = "drifted" if row.drifted else "ok"
    value = "n/a" if math.isnan(row.value) else f"{row.value:.3g}"
    ax.set_title(
        f"{row.column}: {row.metric} = {value} (threshold {row.threshold:g}) - {verdict}",
        fontsize=9,
        color=DRIFTED_COLOR if row.drifted else "black",
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.2), ncol=2, frameon=False)
    ax.grid(alpha=0.3)
    return _render(fig, name, row.column)


def _numeric_panel(ax: Any, entry: Mapping[str, Any], recent: pd.Series, bm: str, wm: str) -> None:
    x = drift.to_float(list(recent))
    x = x[np.isfinite(x)]
    sample = drift.to_float(entry.get("data") or [])
    sample = sample[np.isfinite(sample)]
    mean, std = entry.get("mean"), entry.get("std")
    if not isinstance(mean, (int, float)) or not isinstance(std, (int, float)):
        mean = float(sample.mean()) if len(sample) else float("nan")
        std = float(sample.std(ddof=1)) if len(sample) > 1 else float("nan")
    lo_hi = [v for v in (entry.get("min"), entry.get("max")) if isinstance(v, (int, float))]
    points = np.concatenate([x, sample, np.asarray(lo_hi, dtype=np.float64)])
    if math.isfinite(mean) and math.isfinite(std):
        points = np.append(points, [mean - 3 * std, mean + 3 * std])
    points = points[np.isfinite(points)]
    lo, hi = (float(points.min()), float(points.max())) if len(points) else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, HIST_BINS + 1)
    width = edges[1] - edges[0]
    if len(x):
        ax.hist(x, bins=edges, weights=np.full(len(x), 1.0 / len(x)), color=WINDOW_COLOR,
                alpha=0.55, label=f"window ({len(x)} values, missing {wm})")  # fmt: skip
        ax.axvline(float(x.mean()), color=WINDOW_COLOR, lw=1.5, ls="-")
    if len(sample) >= MIN_SAMPLE_FOR_HISTOGRAM:
        ax.hist(sample, bins=edges, weights=np.full(len(sample), 1.0 / len(sample)),
                histtype="step", lw=2, color=BASELINE_COLOR,
                label=f"training sample ({len(sample)}, missing {bm})")  # fmt: skip
    elif math.isfinite(mean) and math.isfinite(std) and std > 0:
        grid = np.linspace(lo, hi, 200)
        density = np.exp(-0.5 * ((grid - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
        label = f"training: normal(mean {mean:.3g}, std {std:.3g}), missing {bm}"
        ax.plot(grid, density * width, color=BASELINE_COLOR, lw=2, label=label)
    if math.isfinite(mean):
        ax.axvline(
            mean, color=BASELINE_COLOR, lw=1.5, ls="--", label="means: training --, window -"
        )
    ax.set_xlabel("value")
    ax.set_ylabel("share of values per bin")


def _category_panel(ax: Any, entry: Mapping[str, Any], recent: pd.Series, bm: str, wm: str) -> None:
    levels = entry.get("levels")
    if not isinstance(levels, Mapping) or not levels:
        levels = {}
        for v in drift.texts(entry.get("data") or []):
            if v is not None:
                levels[v] = levels.get(v, 0) + 1
    total = float(sum(float(v) for v in levels.values())) or 1.0
    base = {str(k): float(v) / total for k, v in levels.items()}
    present = [v for v in drift.texts(list(recent)) if v is not None]
    counts: Dict[str, int] = {}
    for v in present:
        counts[v] = counts.get(v, 0) + 1
    m = float(len(present)) or 1.0
    window = {k: c / m for k, c in counts.items()}
    ranked = sorted(set(base) | set(window), key=lambda k: -max(base.get(k, 0), window.get(k, 0)))
    shown, rest = ranked[:MAX_LEVELS], ranked[MAX_LEVELS:]
    names = list(shown)
    b = [base.get(k, 0.0) for k in shown]
    w = [window.get(k, 0.0) for k in shown]
    if rest:
        names.append(f"other ({len(rest)} levels)")
        b.append(sum(base.get(k, 0.0) for k in rest))
        w.append(sum(window.get(k, 0.0) for k in rest))
    pos = np.arange(len(names))
    ax.bar(pos - 0.2, b, width=0.4, color=BASELINE_COLOR, label=f"training (missing {bm})")
    ax.bar(pos + 0.2, w, width=0.4, color=WINDOW_COLOR, label=f"window (missing {wm})")
    ax.set_xticks(pos)
    ax.set_xticklabels([n if len(n) <= 18 else n[:17] + "…" for n in names], rotation=30,
                       ha="right", fontsize=7)  # fmt: skip
    ax.set_ylabel("share of present values")


def prediction_picture(
    baseline: Optional[Mapping[str, Any]],
    outputs: Sequence[str],
    recent: pd.DataFrame,
    rows: Sequence[drift.DriftRow],
    name: str = "predictions.png",
) -> Picture:
    """Each output column: the window's share per validation decile bin against the baseline's
    (about 10 % each), or the window's histogram alone when the version was never validated."""
    shown = list(outputs)[:MAX_PREDICTION_PANELS]
    by_column = {r.column: r for r in rows if r.kind == "prediction"}
    cols = min(2, len(shown)) or 1
    nrows = max(1, math.ceil(len(shown) / cols))
    fig = _figure(6.0 * cols, 3.2 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, cols, squeeze=False).ravel())
    columns = (baseline or {}).get("columns", {})
    for ax, column in zip(axes, shown):
        x = pd.to_numeric(recent[column], errors="coerce").to_numpy(dtype=np.float64)
        x = x[np.isfinite(x)]
        spec = columns.get(column)
        row = by_column.get(column)
        if spec:
            edges = list(spec["edges"])
            window = drift.bin_shares(x, edges)
            pos = np.arange(len(spec["shares"]))
            ax.bar(pos - 0.2, spec["shares"], width=0.4, color=BASELINE_COLOR, label="validation")
            ax.bar(pos + 0.2, window, width=0.4, color=WINDOW_COLOR, label="window")
            bounds = ["min"] + [f"{e:.3g}" for e in edges] + ["max"]
            ax.set_xticks(pos)
            ax.set_xticklabels([f"{a}-{b}" for a, b in zip(bounds, bounds[1:])], rotation=35,
                               ha="right", fontsize=7)  # fmt: skip
            ax.set_ylabel("share of rows")
        else:
            ax.hist(x, bins=HIST_BINS, color=WINDOW_COLOR, label="window (no validation baseline)")
            ax.set_ylabel("rows")
        title = column
        if row is not None and not math.isnan(row.value):
            title += f": PSI {row.value:.3f} - {'drifted' if row.drifted else 'ok'}"
        drifted = row is not None and row.drifted
        ax.set_title(title, fontsize=9, color=DRIFTED_COLOR if drifted else "black")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    return _render(fig, name, "Prediction distribution against the validation baseline")
