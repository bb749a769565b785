"""Train the stand-in model: DAI-style feature engineering, then an L2-regularised GLM.

Features are named as DAI names them: ``<i>_<col>`` (numeric, mean-filled), one-hot
``<i>_OHE:<col>.<level>``, a smoothed target encoding ``<i>_CVTE:<col>.<k>`` of ``State.Code``.
The GLM is fitted by Newton's method on standardised features; numbers are rounded to 8
significant digits so that BLAS differences between machines do not change the stored model.
The result is the JSON model :mod:`h2oaicore.engine` scores, whose code builds the design matrix.
"""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np
import pandas as pd

from dai_mlflow.standin.data import LABELS, Dataset
from dai_mlflow.standin.runtime.h2oaicore import engine

CVTE_COLUMNS = ("State.Code",)
_CVTE_SMOOTHING = 20.0
_L2 = 1.0
_MAX_NEWTON_STEPS = 50


def _round(x: float) -> float:
    return float(f"{x:.8g}")


def to_frame(dataset: Dataset) -> pd.DataFrame:
    """The input rows as an object-typed DataFrame (what a caller might pass to score_batch)."""
    data = {
        name: pd.Series([row[j] for row in dataset.rows], dtype=object)
        for j, name in enumerate(dataset.columns)
    }
    return pd.DataFrame(data, columns=list(dataset.columns))


def _targets(dataset: Dataset, problem: str) -> np.ndarray:
    """Regression: the values; classification: one-hot rows over the labels."""
    if problem == "regression":
        return np.array(dataset.labels, dtype=np.float64)
    labels = [str(v) for v in LABELS[problem]]
    idx = np.array([labels.index(str(v)) for v in dataset.labels])
    return np.eye(len(labels))[idx]


def fit_features(dataset: Dataset, problem: str) -> List[Dict[str, Any]]:
    """The transformers, fitted on the training rows (``mean`` is filled in later)."""
    frame = to_frame(dataset)
    columns = [{"name": n, "data_type": t} for n, t in zip(dataset.columns, dataset.data_types)]
    parsed = engine.column_values(frame, columns)
    y = _targets(dataset, problem)
    features: List[Dict[str, Any]] = []
    for i, col in enumerate(columns):
        name, values = col["name"], parsed[col["name"]]
        if col["data_type"] in engine.NUMERIC_TYPES:
            fill = _round(float(np.nanmean(values)))
            features.append(
                {"name": f"{i}_{name}", "kind": "original", "column": name, "fill": fill}
            )
            continue
        levels = sorted({v for v in values if v is not None})
        if name not in CVTE_COLUMNS:
            for level in levels:
                features.append(
                    {
                        "name": f"{i}_OHE:{name}.{level}",
                        "kind": "ohe",
                        "column": name,
                        "level": level,
                    }
                )
            continue
        outputs = y[:, None] if y.ndim == 1 else y[:, 1:]
        for k in range(outputs.shape[1]):
            prior = float(outputs[:, k].mean())
            mapping = {}
            for level in levels:
                hits = outputs[values == level, k]
                smoothed = (hits.sum() + _CVTE_SMOOTHING * prior) / (len(hits) + _CVTE_SMOOTHING)
                mapping[level] = _round(float(smoothed))
            features.append(
                {
                    "name": f"{i}_CVTE:{name}.{k}",
                    "kind": "cvte",
                    "column": name,
                    "mapping": mapping,
                    "prior": _round(prior),
                }
            )
    return features


def _newton(z: np.ndarray, y: np.ndarray, problem: str) -> np.ndarray:
    """Coefficients (outputs x (1 + features)) on standardised features ``z``."""
    n, p = z.shape
    a = np.hstack([np.ones((n, 1)), z])
    penalty = np.full(p + 1, _L2)
    penalty[0] = 1e-6  # keeps the softmax intercepts identifiable without shrinking them
    if problem == "regression":
        beta = np.linalg.solve(a.T @ a + np.diag(penalty), a.T @ y)
        return beta[None, :]
    k_out = 1 if problem == "binary" else y.shape[1]
    target = y[:, 1:2] if problem == "binary" else y
    beta = np.zeros((k_out, p + 1))
    for _ in range(_MAX_NEWTON_STEPS):
        eta = a @ beta.T
        if problem == "binary":
            prob = 1.0 / (1.0 + np.exp(-eta))
        else:
            e = np.exp(eta - eta.max(axis=1, keepdims=True))
            prob = e / e.sum(axis=1, keepdims=True)
        grad = ((prob - target).T @ a) + beta * penalty
        hess = np.zeros((k_out * (p + 1), k_out * (p + 1)))
        for k in range(k_out):
            for m in range(k_out):
                w = (
                    prob[:, k] * ((k == m) - prob[:, m])
                    if k_out > 1
                    else prob[:, 0] * (1 - prob[:, 0])
                )
                block = a.T @ (a * w[:, None])
                if k == m:
                    block += np.diag(penalty)
                hess[k * (p + 1) : (k + 1) * (p + 1), m * (p + 1) : (m + 1) * (p + 1)] = block
        step = np.linalg.solve(hess, grad.reshape(-1)).reshape(k_out, p + 1)
        beta -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    if k_out > 1:
        # Softmax is unchanged by adding one vector to every class; fix the free direction
        # (which the solver pins down poorly) so that the stored model is reproducible.
        beta -= beta.mean(axis=0, keepdims=True)
    return beta


def train(dataset: Dataset, problem: str, experiment_key: str) -> Dict[str, Any]:
    """Fit features and GLM on ``dataset``; return the JSON model document."""
    features = fit_features(dataset, problem)
    columns = [{"name": n, "data_type": t} for n, t in zip(dataset.columns, dataset.data_types)]
    x = engine.transform(engine.column_values(to_frame(dataset), columns), features)
    means = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    beta = _newton((x - means) / scale, _targets(dataset, problem), problem)
    weights = beta[:, 1:] / scale
    for feat, mean in zip(features, means):
        feat["mean"] = _round(float(mean))
    labels = None if problem == "regression" else list(LABELS[problem])
    return {
        "format": engine.MODEL_FORMAT,
        "experiment_key": experiment_key,
        "problem": problem,
        "target": dataset.target,
        "labels": labels,
        "columns": columns,
        "features": features,
        "bias": [_round(float(b)) for b in beta[:, 0]],
        "weights": [[_round(float(w)) for w in row] for row in weights],
        "link": {"regression": "identity", "binary": "logit", "multiclass": "softmax"}[problem],
    }
