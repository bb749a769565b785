"""The validation sample of a model version, and the smoke test of a served version against it.

``validate`` writes the sample (:func:`build_sample`); ``deploy`` sends it to a freshly started
server and requires the validated answers (:func:`check_invocations`, :func:`check_rpc`). The
rules: docs/deploy.md (step 3). Stdlib + pandas/numpy + mlflow's ``Model``; Python 3.8-safe.
"""

from __future__ import annotations

import json
import math
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from dai_mlflow.envs.processes import http_request
from dai_mlflow.lifecycle.errors import LifecycleError, SmokeTestError

SAMPLE_FILE = "validation_sample.json"
SAMPLE_ROWS = 50
TOLERANCE = 1e-6
REQUEST_TIMEOUT = 120.0
_NUMBER_TYPES = ("double", "float", "long", "integer")


@dataclass(frozen=True)
class Sample:
    """Rows to send and, when validated, the answers they must get."""

    columns: List[str]
    data: List[List[Any]]
    output_columns: List[str]
    predictions: Optional[List[List[float]]]  # None: not validated, shape checks only
    source: str  # "validation run <id>" or "input example"

    def to_json(self) -> Dict[str, Any]:
        """The ``validation_sample.json`` document."""
        return {
            "columns": self.columns,
            "data": self.data,
            "output_columns": self.output_columns,
            "predictions": self.predictions,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> Sample:
        """Parse ``validation_sample.json``.

        Raises:
            LifecycleError: the file lacks a field.
        """
        try:
            return cls(
                list(data["columns"]), [list(r) for r in data["data"]],
                list(data["output_columns"]), data.get("predictions"), str(data.get("source", "")),
            )  # fmt: skip
        except (KeyError, TypeError) as e:
            raise LifecycleError(f"{SAMPLE_FILE} is incomplete: {e}") from e


def _input_types(model_dir: Path) -> Dict[str, str]:
    from mlflow.models import Model

    schema = Model.load(str(model_dir / "MLmodel")).get_input_schema()
    if schema is None or not schema.has_input_names():
        raise LifecycleError(f"{model_dir}: the model has no named input signature")
    return {s.name: s.type.name for s in schema.inputs}


def _typed(value: Any, kind: str) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if kind in _NUMBER_TYPES:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        return number if math.isfinite(number) else None
    text = str(value)
    return text if text != "" else None


def build_sample(
    model_dir: Path, holdout: pd.DataFrame, predictions: pd.DataFrame, source: str
) -> Sample:
    """The first :data:`SAMPLE_ROWS` rows of ``holdout`` (model inputs only, typed by the
    signature) with their ``predictions``.

    Raises:
        LifecycleError: the model has no named signature, or the holdout lacks an input column.
    """
    types = _input_types(model_dir)
    missing = [c for c in types if c not in holdout.columns]
    if missing:
        raise LifecycleError(f"the holdout lacks model input column(s) {missing}")
    n = min(SAMPLE_ROWS, len(holdout))
    head = holdout.head(n)
    data = [[_typed(v, types[c]) for c, v in zip(types, row)] for row in head[list(types)].values]
    outputs = [str(c) for c in predictions.columns]
    preds = predictions.head(n).to_numpy(dtype=np.float64).tolist()
    return Sample(list(types), data, outputs, preds, source)


def example_sample(model_dir: Path, output_columns: Sequence[str]) -> Sample:
    """The model's logged input example as a sample without expected answers.

    Raises:
        LifecycleError: the model has no input example either.
    """
    from mlflow.models import Model

    model = Model.load(str(model_dir / "MLmodel"))
    try:
        example = model.load_input_example(str(model_dir))
    except Exception as e:  # MLflow raises several kinds for a missing/odd example file
        raise LifecycleError(f"{model_dir}: cannot read its input example: {e}") from e
    if example is None or not isinstance(example, pd.DataFrame) or example.empty:
        raise LifecycleError(
            f"{model_dir} has no validation sample and no input example: run validate for it"
        )
    types = _input_types(model_dir)
    # pandas has no stubs here: the isinstance above does not narrow MLflow's declared union.
    rows: List[Dict[str, Any]] = example.to_dict("records")  # type: ignore[attr-defined]
    data = [[_typed(row.get(c), types[c]) for c in types] for row in rows]
    return Sample(list(types), data, list(output_columns), None, "input example")


def write_sample(sample: Sample, path: Path) -> Path:
    """Write ``validation_sample.json`` (strict JSON: missing values are null)."""
    path.write_text(json.dumps(sample.to_json(), allow_nan=False))
    return path


def read_sample(path: Path) -> Sample:
    """Read ``validation_sample.json``.

    Raises:
        LifecycleError: not JSON or incomplete.
    """
    try:
        return Sample.from_json(json.loads(path.read_text()))
    except ValueError as e:
        raise LifecycleError(f"{path} is not valid JSON: {e}") from e


# ------------------------------------------------------------------------------ checks
def _post(url: str, body: Dict[str, Any]) -> Any:
    data = json.dumps(body, allow_nan=False).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    try:
        text = http_request(url, data, headers, REQUEST_TIMEOUT)[1].decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        detail = " ".join(e.read().decode("utf-8", errors="replace").split())[:300]
        raise SmokeTestError(f"POST {url} answered HTTP {e.code}: {detail}") from e
    except (urllib.error.URLError, OSError) as e:
        raise SmokeTestError(f"POST {url} failed: {e}") from e
    try:
        return json.loads(text)  # MLflow writes NaN as a bare NaN; Python's json reads it
    except ValueError as e:
        raise SmokeTestError(f"POST {url} answered something that is not JSON: {text[:200]}") from e


def _compare(sample: Sample, got: np.ndarray, where: str) -> None:
    n_rows, n_cols = len(sample.data), len(sample.output_columns)
    if got.shape != (n_rows, n_cols):
        raise SmokeTestError(
            f"{where} answered {got.shape[0]} rows x {got.shape[1] if got.ndim > 1 else 1} "
            f"values for {n_rows} rows x {n_cols} outputs"
        )
    bad = ~np.isfinite(got)
    if bad.any():
        raise SmokeTestError(
            f"{where} answered {int(bad.sum())} of {got.size} values that are not finite numbers"
        )
    if n_cols > 1 and ((got < 0).any() or (got > 1).any()):
        raise SmokeTestError(f"{where} answered class probabilities outside [0, 1]")
    if sample.predictions is not None:
        want = np.asarray(sample.predictions, dtype=np.float64)
        off = np.abs(got - want) > TOLERANCE * np.maximum(1.0, np.abs(want))
        if off.any():
            r, c = (int(i) for i in np.argwhere(off)[0])
            raise SmokeTestError(
                f"{where} answered {int(off.sum())} values unlike the validated predictions "
                f"({sample.source}); first: row {r} {sample.output_columns[c]} = {got[r, c]!r}, "
                f"validated {want[r, c]!r}"
            )


def check_invocations(base_url: str, sample: Sample) -> None:
    """POST the sample to ``/invocations`` (``dataframe_split``) and check the answers.

    Raises:
        SmokeTestError: what was wrong, in one line.
    """
    url = base_url.rstrip("/") + "/invocations"
    answer = _post(url, {"dataframe_split": {"columns": sample.columns, "data": sample.data}})
    preds = answer.get("predictions") if isinstance(answer, dict) else None
    if not isinstance(preds, list):
        raise SmokeTestError(f"{url} answered without a predictions list: {str(answer)[:200]}")
    try:
        if preds and isinstance(preds[0], dict):
            got = [[float(row[c]) for c in sample.output_columns] for row in preds]
        else:
            got = [[float(v) for v in (row if isinstance(row, list) else [row])] for row in preds]
    except (KeyError, TypeError, ValueError) as e:
        raise SmokeTestError(
            f"{url} answered predictions without the output columns {sample.output_columns}: {e}"
        ) from e
    _compare(sample, np.asarray(got, dtype=np.float64).reshape(len(got), -1), url)


def check_rpc(base_url: str, sample: Sample) -> None:
    """Call DAI's JSON-RPC ``score_batch`` on ``/rpc`` with the sample and check the answers.

    Raises:
        SmokeTestError: what was wrong, in one line.
    """
    url = base_url.rstrip("/") + "/rpc"
    rows = [dict(zip(sample.columns, r)) for r in sample.data]
    answer = _post(url, {"id": 1, "method": "score_batch", "params": {"rows": rows}})
    if not isinstance(answer, dict) or "result" not in answer:
        error = answer.get("error", {}).get("message") if isinstance(answer, dict) else answer
        raise SmokeTestError(f"{url} answered a JSON-RPC error: {str(error)[:300]}")
    try:
        got = np.asarray(answer["result"], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise SmokeTestError(f"{url} answered a result that is not a table of numbers: {e}") from e
    _compare(sample, got.reshape(len(got), -1) if got.size else got.reshape(0, 0), url)
