"""Drift of recent inputs and predictions against the training and validation baselines.

Features against DAI's ``training_data_column_stats.json`` (summary fields, or computed from its
sample), predictions against ``prediction_baseline.json``: ``z_mean``, ``psi`` with a floor,
missing-rate moves, with the thresholds as module constants. Metrics, thresholds and their
limits: docs/lifecycle.md ("Baselines and thresholds"). numpy/pandas only; Python 3.8-safe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from dai_mlflow.lifecycle.errors import LifecycleError
from dai_mlflow.log.pipeline import COLUMN_STATS_FILE_NAME

NUMERIC_TYPES = ("int", "real", "float", "double", "numeric", "long", "uint")
PSI_THRESHOLD = 0.2
Z_MEAN_THRESHOLD = 0.3
MISSING_RATE_THRESHOLD = 0.1
FEATURE_SHARE_THRESHOLD = 0.3
MIN_ROWS = 100
PREDICTION_BINS = 10
_PSI_FLOOR = 1e-4


@dataclass(frozen=True)
class DriftRow:
    """One row of the monitoring table (one feature or prediction column)."""

    kind: str  # feature | prediction
    column: str
    metric: str  # z_mean | psi | missing_rate | none
    value: float
    threshold: float
    drifted: bool
    baseline_missing_rate: float
    recent_missing_rate: float
    baseline_source: str  # stats | sample | validation | none
    note: str = ""


def signature_names(model_dir: Path, outputs: bool = False) -> List[str]:
    """The input names of a model folder's signature, or its outputs (DAI's columns).

    Raises:
        LifecycleError: outputs were asked for and the model has no named output signature.
    """
    from mlflow.models import Model

    model = Model.load(str(model_dir / "MLmodel"))
    schema = model.get_output_schema() if outputs else model.get_input_schema()
    if schema is None or not schema.has_input_names():
        if outputs:
            raise LifecycleError(f"{model_dir}: the model has no named output signature")
        return []
    return [s.name for s in schema.inputs]


def find_column_stats(model_dir: Path) -> Path:
    """``training_data_column_stats.json`` inside a model's artifacts.

    Raises:
        LifecycleError: the pipeline artifact has none.
    """
    found = sorted((model_dir / "artifacts").rglob(COLUMN_STATS_FILE_NAME))
    if not found:
        raise LifecycleError(
            f"{model_dir}: no {COLUMN_STATS_FILE_NAME} in the model's scoring-pipeline artifact; "
            "re-export the pipeline from DAI (it carries the training baseline)"
        )
    return found[0]


def is_numeric(entry: Mapping[str, Any]) -> bool:
    """True when a column stats entry's ``data_type`` is a number type."""
    dtype = str(entry.get("data_type", "")).strip().lower()
    return dtype.startswith(NUMERIC_TYPES)


def to_float(values: Sequence[Any]) -> np.ndarray:
    """Values as float64; what is not a number becomes NaN."""
    return pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(
        dtype=np.float64
    )


def texts(values: Sequence[Any]) -> List[Optional[str]]:
    """Values as text; None and NaN become None (missing)."""
    out: List[Optional[str]] = []
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(None)
        else:
            out.append(str(v))
    return out


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two distributions over the same buckets (shares)."""
    e = np.maximum(expected, _PSI_FLOOR)
    a = np.maximum(actual, _PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def _baseline_missing(entry: Dict[str, Any]) -> float:
    count, missing = entry.get("count"), entry.get("missing")
    if isinstance(count, (int, float)) and isinstance(missing, (int, float)) and count > 0:
        return float(missing) / float(count)
    return float("nan")


def feature_drift(entry: Dict[str, Any], name: str, recent: pd.Series) -> DriftRow:
    """Drift of one input column against its training stats entry."""
    values = list(recent)
    n = len(values)
    recent_missing = float(sum(1 for v in texts(values) if v is None)) / n if n else float("nan")
    base_missing = _baseline_missing(entry)
    moved = abs(recent_missing - base_missing)
    missing_moved = not math.isnan(base_missing) and moved >= MISSING_RATE_THRESHOLD
    if is_numeric(entry):
        mean, std = entry.get("mean"), entry.get("std")
        source = "stats"
        if not isinstance(mean, (int, float)) or not isinstance(std, (int, float)):
            sample = to_float(entry.get("data") or [])
            sample = sample[~np.isnan(sample)]
            if len(sample) < 2:
                return DriftRow(
                    "feature", name, "none", float("nan"), Z_MEAN_THRESHOLD, missing_moved,
                    base_missing, recent_missing, "none", "no numeric baseline in the stats",
                )  # fmt: skip
            mean, std, source = float(sample.mean()), float(sample.std(ddof=1)), "sample"
        x = to_float(values)
        x = x[~np.isnan(x)]
        if len(x) == 0:
            z = float("nan")
        elif std and std > 0:
            z = (float(x.mean()) - float(mean)) / float(std)
        else:
            z = 0.0 if float(x.mean()) == float(mean) else float("inf")
        drifted = (not math.isnan(z) and abs(z) >= Z_MEAN_THRESHOLD) or missing_moved
        return DriftRow(
            "feature", name, "z_mean", z, Z_MEAN_THRESHOLD, drifted,
            base_missing, recent_missing, source,
        )  # fmt: skip
    levels = entry.get("levels")
    source = "stats"
    if not isinstance(levels, dict) or not levels:
        stats_sample = [v for v in texts(entry.get("data") or []) if v is not None]
        levels = {}
        for v in stats_sample:
            levels[v] = levels.get(v, 0) + 1
        source = "sample"
    if not levels:
        return DriftRow(
            "feature", name, "none", float("nan"), PSI_THRESHOLD, missing_moved,
            base_missing, recent_missing, "none", "no categorical baseline in the stats",
        )  # fmt: skip
    keys = [str(k) for k in levels]
    total = float(sum(float(v) for v in levels.values()))
    expected = np.array([float(levels[k]) / total for k in levels] + [0.0])
    present = [v for v in texts(values) if v is not None]
    counts = dict.fromkeys(keys, 0)
    other = 0
    for v in present:
        if v in counts:
            counts[v] += 1
        else:
            other += 1
    m = float(len(present)) or 1.0
    actual = np.array([counts[k] / m for k in keys] + [other / m])
    psi = _psi(expected, actual)
    return DriftRow(
        "feature", name, "psi", psi, PSI_THRESHOLD, psi >= PSI_THRESHOLD or missing_moved,
        base_missing, recent_missing, source,
    )  # fmt: skip


def prediction_baseline(predictions: pd.DataFrame, columns: Sequence[str]) -> Dict[str, Any]:
    """Decile edges and per-bin shares of holdout predictions, per output column."""
    out: Dict[str, Any] = {"bins": PREDICTION_BINS, "rows": int(len(predictions)), "columns": {}}
    for name in columns:
        x = predictions[name].to_numpy(dtype=np.float64)
        x = x[~np.isnan(x)]
        edges = np.unique(np.quantile(x, np.linspace(0, 1, PREDICTION_BINS + 1))[1:-1])
        shares = bin_shares(x, edges)
        out["columns"][name] = {
            "edges": [float(e) for e in edges],
            "shares": [float(s) for s in shares],
            "mean": float(x.mean()) if len(x) else None,
        }
    return out


def bin_shares(x: np.ndarray, edges: Union[np.ndarray, Sequence[float]]) -> np.ndarray:
    """Share of ``x`` in each bin of the inner ``edges`` (``len(edges) + 1`` bins)."""
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), x, side="right")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(np.float64)
    return counts / max(1.0, float(len(x)))


def prediction_drift(baseline: Optional[Dict[str, Any]], name: str, recent: pd.Series) -> DriftRow:
    """PSI of recent predictions of one output column against the validation baseline."""
    x = pd.to_numeric(recent, errors="coerce").to_numpy(dtype=np.float64)
    recent_missing = float(np.isnan(x).mean()) if len(x) else float("nan")
    column = (baseline or {}).get("columns", {}).get(name)
    if not column:
        return DriftRow(
            "prediction", name, "none", float("nan"), PSI_THRESHOLD, False, float("nan"),
            recent_missing, "none", "no prediction baseline: run validate for this version",
        )  # fmt: skip
    shares = bin_shares(x[~np.isnan(x)], column["edges"])
    psi = _psi(np.asarray(column["shares"], dtype=np.float64), shares)
    return DriftRow(
        "prediction", name, "psi", psi, PSI_THRESHOLD, psi >= PSI_THRESHOLD, 0.0,
        recent_missing, "validation",
    )  # fmt: skip


@dataclass(frozen=True)
class DriftReport:
    """All rows for one model version and window, and the verdict."""

    rows: Tuple[DriftRow, ...]
    n_rows: int
    should_retrain: bool
    status: str  # ok | too_few_rows

    @property
    def drifted_features(self) -> List[str]:
        return [r.column for r in self.rows if r.kind == "feature" and r.drifted]

    @property
    def drifted_predictions(self) -> List[str]:
        return [r.column for r in self.rows if r.kind == "prediction" and r.drifted]


def drift_score(row: DriftRow) -> float:
    """How far past its thresholds a row is: the largest of ``|value| / threshold`` and the
    missing-rate move over :data:`MISSING_RATE_THRESHOLD` (1.0 is at a threshold; NaN when
    nothing could be measured). Comparable across ``z_mean`` and ``psi`` rows."""
    parts = []
    if row.metric in ("z_mean", "psi") and not math.isnan(row.value) and row.threshold > 0:
        parts.append(abs(row.value) / row.threshold)
    moved = abs(row.recent_missing_rate - row.baseline_missing_rate)
    if not math.isnan(moved):
        parts.append(moved / MISSING_RATE_THRESHOLD)
    return max(parts) if parts else float("nan")


def verdict_reason(report: DriftReport) -> str:
    """One sentence saying why ``should_retrain`` is what it is."""
    if report.status == "too_few_rows":
        return f"no verdict: {report.n_rows} rows in the window, fewer than {MIN_ROWS}"
    checked = [r for r in report.rows if r.kind == "feature" and r.metric != "none"]
    drifted = [r.column for r in checked if r.drifted]
    share = len(drifted) / len(checked) if checked else 0.0
    parts = []
    if report.drifted_predictions:
        parts.append(
            f"prediction column(s) {', '.join(report.drifted_predictions)} drifted "
            f"(PSI >= {PSI_THRESHOLD:g})"
        )
    else:
        parts.append("no prediction column drifted")
    relation = ">=" if share >= FEATURE_SHARE_THRESHOLD else "<"
    parts.append(
        f"{len(drifted)} of {len(checked)} checked features drifted ({100 * share:.0f}% "
        f"{relation} {100 * FEATURE_SHARE_THRESHOLD:.0f}%)"
    )
    return "; ".join(parts)


def drift_report(
    stats: Dict[str, Dict[str, Any]],
    features: Sequence[str],
    outputs: Sequence[str],
    recent: pd.DataFrame,
    pred_baseline: Optional[Dict[str, Any]],
) -> DriftReport:
    """Compare ``recent`` rows (inputs + predictions) with the baselines.

    Args:
        stats: parsed column stats (training baseline of the inputs).
        features: model input columns to check (those without stats get a ``none`` row).
        outputs: the model's output columns.
        recent: the recent rows.
        pred_baseline: ``prediction_baseline.json`` of the version, or None.
    """
    rows: List[DriftRow] = []
    for name in features:
        if name not in recent.columns:
            raise LifecycleError(f"recent data lacks the model input column {name!r}")
        entry = stats.get(name)
        if entry is None:
            rows.append(
                DriftRow(
                    "feature",
                    name,
                    "none",
                    float("nan"),
                    float("nan"),
                    False,
                    float("nan"),
                    float(recent[name].isna().mean()),
                    "none",
                    "column not in the training stats",
                )  # fmt: skip
            )
            continue
        rows.append(feature_drift(entry, name, recent[name]))
    for name in outputs:
        if name not in recent.columns:
            raise LifecycleError(f"recent data lacks the prediction column {name!r}")
        rows.append(prediction_drift(pred_baseline, name, recent[name]))
    n = int(len(recent))
    if n < MIN_ROWS:
        return DriftReport(tuple(rows), n, False, "too_few_rows")
    checked = [r for r in rows if r.kind == "feature" and r.metric != "none"]
    share = (sum(1 for r in checked if r.drifted) / len(checked)) if checked else 0.0
    retrain = any(r.drifted for r in rows if r.kind == "prediction")
    retrain = retrain or (bool(checked) and share >= FEATURE_SHARE_THRESHOLD)
    return DriftReport(tuple(rows), n, retrain, "ok")
