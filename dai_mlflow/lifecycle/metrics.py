"""Holdout metrics of a DAI model's predictions (scikit-learn), and the gate's rule: which metric
is compared (:data:`PRIMARY`), which is better, what the gate decided (:class:`Decision`).

The problem type and target follow the model's output columns (docs/lifecycle.md, "Promotion
rule"). scikit-learn is imported inside the functions: the Spark job imports this package
without needing it. Python 3.8-safe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from dai_mlflow.lifecycle.errors import LifecycleError

CLASSIFICATION = "classification"
REGRESSION = "regression"
# problem type -> (metric the gate compares, True when higher is better)
PRIMARY: Dict[str, Tuple[str, bool]] = {CLASSIFICATION: ("auc", True), REGRESSION: ("rmse", False)}


class Decision(str, Enum):
    """What ``validate`` decided: the run tag ``dai_mlflow.decision`` and the last stdout line."""

    __str__ = str.__str__  # prints as its value, on every Python

    FIRST = "first_champion"
    PROMOTED = "promoted"
    KEPT = "kept"
    ALREADY = "already_champion"

    @property
    def promotes(self) -> bool:
        """The challenger becomes champion (the alias moves to it)."""
        return self in (Decision.FIRST, Decision.PROMOTED)


@dataclass(frozen=True)
class Problem:
    """What the model predicts: the holdout's target column and, for classification, classes."""

    kind: str
    target: str
    output_columns: Tuple[str, ...]
    classes: Tuple[str, ...] = ()


def detect_problem(
    output_columns: Sequence[str], holdout_columns: Sequence[str], target: Optional[str] = None
) -> Problem:
    """Tell the target and the problem type from the model's outputs and the holdout's columns.

    Raises:
        LifecycleError: no holdout column is the target of these outputs.
    """
    outputs = tuple(output_columns)
    candidates = [target] if target else sorted(holdout_columns, key=len, reverse=True)
    for name in candidates:
        if name not in holdout_columns:
            continue
        if outputs == (name,):
            return Problem(REGRESSION, name, outputs)
        prefix = name + "."
        if outputs and all(c.startswith(prefix) and len(c) > len(prefix) for c in outputs):
            return Problem(CLASSIFICATION, name, outputs, tuple(c[len(prefix) :] for c in outputs))
    wanted = f"target {target!r}" if target else "the target"
    raise LifecycleError(
        f"the holdout has no column that is {wanted} of the model's outputs {list(outputs)}; "
        "add the label column (named as in the DAI experiment) or pass --target"
    )


def label_text(value: object) -> Optional[str]:
    """A label as DAI names its class: integral floats lose their ``.0``; missing is None."""
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return str(int(value))
    text = str(value)
    return text if text.strip() != "" else None


def classification_metrics(
    problem: Problem, labels: Sequence[object], predictions: pd.DataFrame
) -> Dict[str, float]:
    """``auc`` and ``log_loss`` of class probabilities against labels (scikit-learn).

    Raises:
        LifecycleError: a label is not one of the model's classes, or no row has a label.
    """
    from sklearn.metrics import log_loss, roc_auc_score

    y, probs = class_indices(problem, labels, predictions)
    k = len(problem.classes)
    loss = float(log_loss(y, probs, labels=list(range(k))))
    columns = [1] if k == 2 else list(range(k))
    present = [c for c in columns if 0 < int((y == c).sum()) < len(y)]
    aucs = [float(roc_auc_score(y == c, probs[:, c])) for c in present]
    auc = float(np.mean(aucs)) if aucs else float("nan")
    return {"auc": auc, "log_loss": loss}


def class_indices(
    problem: Problem, labels: Sequence[object], predictions: pd.DataFrame
) -> Tuple[np.ndarray, np.ndarray]:
    """Labelled rows only: each label's class index, and the class probabilities (rows x classes).

    Raises:
        LifecycleError: a label is not one of the model's classes, or no row has a label.
    """
    texts = [label_text(v) for v in labels]
    keep = np.array([t is not None for t in texts])
    if not keep.any():
        raise LifecycleError(f"the holdout's {problem.target!r} column has no labels")
    unknown = sorted({t for t in texts if t is not None and t not in problem.classes})
    if unknown:
        raise LifecycleError(
            f"holdout labels {unknown[:5]} of {problem.target!r} are not classes of the model "
            f"{list(problem.classes)}; is this the holdout of the same experiment?"
        )
    index = {c: i for i, c in enumerate(problem.classes)}
    y = np.array([index[t] for t in texts if t is not None])
    probs = predictions[list(problem.output_columns)].to_numpy(dtype=np.float64)[keep]
    return y, probs


def numeric_labels(
    problem: Problem, labels: Sequence[object], predictions: pd.DataFrame
) -> Tuple[np.ndarray, np.ndarray]:
    """Labelled rows only: the numeric labels and the predictions (regression).

    Raises:
        LifecycleError: labels are not numbers, or no row has a label.
    """
    try:
        y = pd.to_numeric(pd.Series(list(labels)), errors="raise").to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise LifecycleError(f"the holdout's {problem.target!r} column is not numeric: {e}") from e
    pred = predictions[problem.output_columns[0]].to_numpy(dtype=np.float64)
    keep = ~np.isnan(y)
    if not keep.any():
        raise LifecycleError(f"the holdout's {problem.target!r} column has no labels")
    return y[keep], pred[keep]


def regression_metrics(
    problem: Problem, labels: Sequence[object], predictions: pd.DataFrame
) -> Dict[str, float]:
    """``mae`` and ``rmse`` of the prediction against numeric labels (scikit-learn).

    Raises:
        LifecycleError: labels are not numbers, or no row has a label.
    """
    from sklearn.metrics import mean_absolute_error, mean_squared_error

    y, pred = numeric_labels(problem, labels, predictions)
    return {
        "mae": float(mean_absolute_error(y, pred)),
        "rmse": float(np.sqrt(mean_squared_error(y, pred))),
    }


def compute_metrics(
    problem: Problem, labels: Sequence[object], predictions: pd.DataFrame
) -> Dict[str, float]:
    """The metrics of the problem type (see the module docstring)."""
    if problem.kind == CLASSIFICATION:
        return classification_metrics(problem, labels, predictions)
    return regression_metrics(problem, labels, predictions)


def is_better(problem: Problem, challenger: Dict[str, float], champion: Dict[str, float]) -> bool:
    """True when the challenger beats the champion strictly on the primary metric."""
    name, higher = PRIMARY[problem.kind]
    new, old = challenger[name], champion[name]
    if math.isnan(new):
        return False
    if math.isnan(old):
        return True
    return new > old if higher else new < old


def metric_names(problem: Problem) -> List[str]:
    """Metric names logged for this problem type."""
    return ["auc", "log_loss"] if problem.kind == CLASSIFICATION else ["mae", "rmse"]
