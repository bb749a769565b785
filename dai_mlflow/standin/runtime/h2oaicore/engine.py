"""Scoring engine of the stand-in runtime: DAI-style feature engineering plus a GLM, in numpy.

A fitted model is a JSON document (no pickle, so it loads on Python 3.8 and 3.11 alike):

- ``columns``: the input columns, in ``get_column_names()`` order, each with a DAI data type
  (``real``/``int`` are parsed as numbers, ``str`` as categorical text);
- ``features``: the transformed features, in ``get_transformed_column_names()`` order. Kinds:
  ``original`` (the number, missing values filled with ``fill``), ``ohe`` (1.0 when the text
  equals ``level``), ``cvte`` (the training-time target mean of the level, ``prior`` when the
  level is missing or unseen);
- per output ``k`` (one for regression and binary, one per class for multiclass): ``bias[k]``
  and ``weights[k][j]``, with ``means[j]`` the training mean of feature ``j``.

The margin of output ``k`` is ``bias[k] + sum_j weights[k][j] * (x_j - means[j])`` and the
contribution of feature ``j`` is exactly its term, so contributions plus ``bias`` add up to the
margin (they are the exact Shapley values of a linear model with independent features).
Everything is vectorised over rows and computed column by column, so a row scores to the same
bits alone or in a batch. Python 3.8+, numpy and pandas only.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

MODEL_FORMAT = "dai-mlflow-standin-glm/1"
NUMERIC_TYPES = ("real", "int")
# Text that means "missing", as in the na_strings DAI's generated example.py passes to datatable.
NA_STRINGS = frozenset(["", "?", "None", "none", "nan", "NaN", "NA", "N/A", "null", "unknown"])


def parse_numeric(values: Any) -> np.ndarray:
    """Numbers (or text of numbers) as float64; anything else becomes NaN."""
    series = values if isinstance(values, pd.Series) else pd.Series(values, dtype=object)
    if series.dtype == object or str(series.dtype) in ("string", "str", "category"):
        series = series.astype(object)
    out = pd.to_numeric(series, errors="coerce")
    return np.asarray(out.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)


def parse_text(values: Any) -> np.ndarray:
    """Categorical values as an object array of str, with None for missing."""
    series = values if isinstance(values, pd.Series) else pd.Series(values, dtype=object)
    series = series.astype(object)
    # np.array copies: pandas' copy-on-write hands out read-only views.
    text = np.array(series.astype(str).to_numpy(dtype=object), dtype=object)
    missing = np.array(series.isna().to_numpy(), dtype=bool)
    missing |= pd.Series(text, dtype=object).isin(NA_STRINGS).to_numpy()
    text[missing] = None
    return text


def column_values(frame: pd.DataFrame, columns: Sequence[Dict[str, Any]]) -> Dict[str, np.ndarray]:
    """Parse each input column of ``frame`` by its DAI data type.

    Raises:
        KeyError: a column the model needs is missing from ``frame``.
    """
    missing = [c["name"] for c in columns if c["name"] not in frame.columns]
    if missing:
        raise KeyError(f"input frame lacks column(s) {missing}; expected {get_names(columns)}")
    parsed = {}
    for col in columns:
        series = frame[col["name"]]
        if col["data_type"] in NUMERIC_TYPES:
            parsed[col["name"]] = parse_numeric(series)
        else:
            parsed[col["name"]] = parse_text(series)
    return parsed


def get_names(items: Sequence[Dict[str, Any]]) -> List[str]:
    """The ``name`` of each item."""
    return [item["name"] for item in items]


def transform(parsed: Dict[str, np.ndarray], features: Sequence[Dict[str, Any]]) -> np.ndarray:
    """Transformed features (rows x features, float64) from parsed input columns."""
    n = len(next(iter(parsed.values()))) if parsed else 0
    out = np.empty((n, len(features)), dtype=np.float64)
    for j, feat in enumerate(features):
        values = parsed[feat["column"]]
        kind = feat["kind"]
        if kind == "original":
            col = values.copy()
            col[np.isnan(col)] = feat["fill"]
        elif kind == "ohe":
            col = (values == feat["level"]).astype(np.float64)
        elif kind == "cvte":
            mapped = pd.Series(values, dtype=object).map(feat["mapping"])
            col = mapped.astype(np.float64).fillna(feat["prior"]).to_numpy(dtype=np.float64)
        else:
            raise ValueError(f"unknown transformer kind {kind!r} for {feat['name']!r}")
        out[:, j] = col
    return out


class Model:
    """A fitted stand-in model (see the module docstring for the JSON layout)."""

    def __init__(self, spec: Dict[str, Any]) -> None:
        if spec.get("format") != MODEL_FORMAT:
            raise ValueError(f"not a {MODEL_FORMAT} model: format={spec.get('format')!r}")
        self.spec = spec
        self.problem = spec["problem"]
        self.target = spec["target"]
        self.labels: Optional[List[Any]] = spec.get("labels")  # None for regression
        self.columns = spec["columns"]
        self.features = spec["features"]
        self.means = np.array([f["mean"] for f in self.features], dtype=np.float64)
        self.weights = np.array(spec["weights"], dtype=np.float64).reshape(
            len(spec["bias"]), len(self.features)
        )
        self.bias = np.array(spec["bias"], dtype=np.float64)

    @property
    def n_outputs(self) -> int:
        return len(self.bias)

    @property
    def class_labels(self) -> List[Any]:
        """The labels of a binary or multiclass model."""
        if self.labels is None:
            raise ValueError(f"a {self.problem} model has no labels")
        return self.labels

    def column_names(self) -> List[str]:
        return get_names(self.columns)

    def feature_names(self) -> List[str]:
        return get_names(self.features)

    def design(self, frame: pd.DataFrame) -> np.ndarray:
        """Transformed features of ``frame``."""
        return transform(column_values(frame, self.columns), self.features)

    def contributions(self, x: np.ndarray) -> List[np.ndarray]:
        """Per output: rows x (features + 1) contributions, bias last; row sums are margins."""
        out = []
        centred = x - self.means
        for k in range(self.n_outputs):
            contrib = np.empty((x.shape[0], x.shape[1] + 1), dtype=np.float64)
            contrib[:, :-1] = centred * self.weights[k]
            contrib[:, -1] = self.bias[k]
            out.append(contrib)
        return out

    @staticmethod
    def margin_of(contrib: np.ndarray) -> np.ndarray:
        """Bias plus the feature terms, added in a fixed order (same bits for any batch size)."""
        total = contrib[:, -1].copy()
        for j in range(contrib.shape[1] - 1):
            total += contrib[:, j]
        return total

    def margins(self, x: np.ndarray) -> np.ndarray:
        """rows x outputs margins (link space)."""
        return np.column_stack([self.margin_of(c) for c in self.contributions(x)])

    def predict(self, margins: np.ndarray) -> np.ndarray:
        """Predictions from margins: the value (regression) or one probability per class."""
        if self.problem == "regression":
            return margins
        if self.problem == "binary":
            p1 = 1.0 / (1.0 + np.exp(-margins[:, 0]))
            return np.column_stack([1.0 - p1, p1])
        shifted = margins - margins.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        return e / e.sum(axis=1, keepdims=True)

    def pred_columns(self, output_margin: bool = False, pred_contribs: bool = False) -> List[str]:
        """Output column names of ``score_batch`` for the given flags."""
        if output_margin and pred_contribs:
            raise ValueError("cannot provide both output_margin and pred_contribs")
        if pred_contribs:
            names = [f"contrib_{f}" for f in self.feature_names()] + ["contrib_bias"]
            if self.problem != "multiclass":
                return names
            return [f"{name}.{label}" for label in self.class_labels for name in names]
        if self.problem == "regression":
            return [self.target]
        if self.problem == "binary" and output_margin:
            return [f"{self.target}.{self.class_labels[1]}"]
        return [f"{self.target}.{label}" for label in self.class_labels]

    def score_frame(
        self, frame: pd.DataFrame, output_margin: bool = False, pred_contribs: bool = False
    ) -> pd.DataFrame:
        """Score a frame; the result has a fresh RangeIndex (as DAI's frames do)."""
        columns = self.pred_columns(output_margin, pred_contribs)
        x = self.design(frame)
        if pred_contribs:
            values = np.hstack(self.contributions(x))
        elif output_margin:
            values = self.margins(x)
        else:
            values = self.predict(self.margins(x))
        return pd.DataFrame(values, columns=columns)


def metrics(model: Model, frame: pd.DataFrame, target: pd.Series) -> Dict[str, float]:
    """Holdout metrics for the experiment summary (RMSE, or logloss and accuracy)."""
    scored = model.score_frame(frame).to_numpy()
    if model.problem == "regression":
        y = target.to_numpy(dtype=np.float64)
        return {"RMSE": float(math.sqrt(np.mean((scored[:, 0] - y) ** 2)))}
    labels = [str(v) for v in model.class_labels]
    idx = np.array([labels.index(str(v)) for v in target])
    p = np.clip(scored[np.arange(len(idx)), idx], 1e-15, 1.0)
    return {
        "LOGLOSS": float(-np.mean(np.log(p))),
        "ACCURACY": float(np.mean(scored.argmax(axis=1) == idx)),
    }


def row_frame(row: Sequence[Any], columns: Sequence[str]) -> pd.DataFrame:
    """A one-row object frame from a ``score()`` row list in column order."""
    if isinstance(row, (str, bytes)) or len(row) != len(columns):
        got = "a string" if isinstance(row, (str, bytes)) else f"{len(row)} values"
        raise ValueError(f"score() takes a list of {len(columns)} values, got {got}")
    data = {name: pd.Series([value], dtype=object) for name, value in zip(columns, row)}
    return pd.DataFrame(data, columns=list(columns))


def first_row(frame: pd.DataFrame) -> List[float]:
    """The first row of a scored frame as a list of Python floats."""
    return [float(v) for v in frame.to_numpy()[0]]


def optional_labels(labels: Optional[Sequence[str]]) -> Optional[np.ndarray]:
    """Target labels as a numpy array, or None for regression."""
    return None if labels is None else np.array(list(labels), dtype=object)
