"""The MLflow pyfunc that scores with a DAI Python scoring pipeline.

It runs inside the DAI env as a models-from-code pyfunc (the model file only calls
``mlflow.models.set_model(DaiScoringModel())``: no pickle made by another Python). The scorer is
built once per process, lazily, from the model's own experiment wheel; ``predict`` orders and
coerces columns to the signature and returns ``score_batch``'s frame unchanged. Model-side:
stdlib, pandas, mlflow and (lazily) the scorer only; Python 3.8-safe. See docs/model-envs.md.
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from dai_mlflow.errors import DaiMlflowError, one_line
from dai_mlflow.model.experiment import (
    PIPELINE_ARTIFACT,
    ExperimentWheelError,
    activate_experiment,
)
from dai_mlflow.model.license import export_license_location, find_license
from dai_mlflow.model.runtime import (
    ScorerExitError,
    in_workdir,
    prepare_process,
    scorer_guard,
    scorer_workdir,
)

CONFIG_SCORER_MODULE = "scorer_module"
CONFIG_INPUT_COLUMNS = "input_columns"
PARAM_DEFAULTS: Dict[str, bool] = {"pred_contribs": False, "output_margin": False}
NUMERIC_TYPES = ("double", "float", "long", "integer")

_lock = threading.RLock()
# (module, sha256 of the experiment wheel or "" when installed, pid) -> Scorer
_scorers: Dict[Tuple[str, str, int], Any] = {}
_experiment_keys: Dict[Tuple[str, str, int], Tuple[str, str, int]] = {}


class ScoringError(DaiMlflowError, MlflowException):
    """The model cannot score this input (missing columns, bad values, bad params).

    Also an ``MlflowException`` with ``INVALID_PARAMETER_VALUE``: MLflow's scoring server
    (``mlflow models serve``, 2.x and 3.x) answers such errors with HTTP 400 and this message,
    instead of a generic "unexpected error" whose cause hides in a stack trace.
    """

    def __init__(self, message: str) -> None:
        MlflowException.__init__(self, message, error_code=INVALID_PARAMETER_VALUE)


class ScorerImportError(DaiMlflowError, MlflowException):
    """The scorer cannot be imported or built here, or it ended (tried to end) its process.

    Also an ``MlflowException`` (``INTERNAL_ERROR``): MLflow's scoring server answers it with
    this message rather than a generic "unexpected error".
    """

    def __init__(self, message: str) -> None:
        MlflowException.__init__(self, message, error_code=INTERNAL_ERROR)


class ScorerFailedError(DaiMlflowError, MlflowException):
    """The scorer ended (tried to end) its process while scoring; the process was kept alive."""

    def __init__(self, message: str) -> None:
        MlflowException.__init__(self, message, error_code=INTERNAL_ERROR)


def get_scorer(module_name: str, pipeline_dir: Optional[Path] = None) -> Any:
    """The process-wide ``Scorer`` of ``module_name``, built on first use.

    Args:
        module_name: the scorer module.
        pipeline_dir: the model's ``scoring-pipeline`` folder; its experiment wheel is loaded
            (:func:`dai_mlflow.model.experiment.activate_experiment`). Without it, the scorer last
            built for ``module_name`` in this process is returned, else the installed module
            is imported.

    Raises:
        LicenseNotFoundError: no license is available.
        ScorerImportError: the scorer cannot be imported or constructed.
    """
    pid = os.getpid()
    with _lock:
        if pipeline_dir is None:
            built = [v for (m, _, p), v in _scorers.items() if m == module_name and p == pid]
            if built:
                return built[-1]
        # A built scorer keeps its own code: later calls (one per batch) skip hashing and
        # activating the experiment wheel, which can be large for a real pipeline.
        memo = (str(pipeline_dir), module_name, pid) if pipeline_dir else None
        known = _experiment_keys.get(memo) if memo else None
        if known is not None and known in _scorers:
            return _scorers[known]
        try:
            code = activate_experiment(pipeline_dir, module_name) if pipeline_dir else None
        except ExperimentWheelError as e:
            raise ScorerImportError(str(e)) from e
        key = (module_name, code.sha256 if code else "", pid)
        if memo:
            _experiment_keys[memo] = key
        if key in _scorers:
            return _scorers[key]
        export_license_location(find_license())
        prepare_process()
        with in_workdir(scorer_workdir(pipeline_dir)):
            scorer = _build_scorer(module_name)
        _scorers[key] = scorer
        return scorer


def _build_scorer(module_name: str) -> Any:
    """Import the scorer module and call ``Scorer()``; nothing it does can end this process."""
    try:
        with scorer_guard(f"importing {module_name}"):
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise ScorerImportError(
            f"cannot import {module_name} ({e}); load the model in its own env "
            "(env_manager='virtualenv' or 'uv') or install its requirements.txt"
        ) from e
    except ScorerExitError as e:
        raise ScorerImportError(str(e)) from e
    except Exception as e:
        raise ScorerImportError(f"importing {module_name} failed: {one_line(e)}") from e
    try:
        with scorer_guard("building the scorer (Scorer())"):
            return module.Scorer()
    except ScorerExitError as e:
        raise ScorerImportError(str(e)) from e
    except Exception as e:
        raise ScorerImportError(f"{module_name}.Scorer() failed: {one_line(e)}") from e


def parse_params(params: Optional[Mapping[str, Any]]) -> Dict[str, bool]:
    """Validate ``pred_contribs``/``output_margin`` and fill defaults.

    A flag is a bool, ``"true"``/``"false"`` (any case), 0 or 1; None means its default. The
    pyfunc's ``predict`` params and DAI's JSON-RPC ``score`` arguments both come through here.

    Raises:
        ScoringError: unknown name, non-boolean value, or both flags set.
    """
    out = dict(PARAM_DEFAULTS)
    for name, value in (params or {}).items():
        if name not in PARAM_DEFAULTS:
            raise ScoringError(
                f"unknown param {name!r}; supported: {', '.join(sorted(PARAM_DEFAULTS))}"
            )
        if value is None:
            continue
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        elif type(value) is int and value in (0, 1):
            value = bool(value)
        if not isinstance(value, bool):
            raise ScoringError(f"param {name!r} must be true or false, got {value!r}")
        out[name] = value
    if out["pred_contribs"] and out["output_margin"]:
        raise ScoringError("pred_contribs and output_margin cannot both be true (DAI rule)")
    return out


def prepare_input(
    model_input: Any, columns: Sequence[str], types: Optional[Mapping[str, str]] = None
) -> pd.DataFrame:
    """Reorder ``model_input`` to ``columns`` and coerce to ``types`` (signature type names).

    Raises:
        ScoringError: columns are missing (all named) or values cannot be coerced.
    """
    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ScoringError(
            f"input is missing {len(missing)} column(s) the scorer needs: {', '.join(missing)}"
        )
    types = types or {}
    if not frame.columns.is_unique:  # a name given twice: pandas' own selection decides
        frame = frame.loc[:, list(columns)].copy()
        for name, kind in types.items():
            if name in frame.columns:
                frame[name] = _coerce(frame[name], name, kind)
        return frame
    # One new frame from the coerced columns: half the time of selecting, copying and then
    # assigning column by column (which is most of a 1-row call's overhead when served).
    out = {}
    for name in columns:
        given = types.get(name)
        out[name] = _coerce(frame[name], name, given) if given else frame[name]
    return pd.DataFrame(out, index=frame.index, copy=True)


def _coerce(values: pd.Series, name: str, kind: str) -> pd.Series:
    if kind in NUMERIC_TYPES:
        if values.dtype == "float64":
            return values
        try:
            return pd.to_numeric(values, errors="raise").astype("float64")
        except (ValueError, TypeError) as e:
            raise ScoringError(f"column {name!r} must be numeric: {e}") from e
    if kind == "boolean":
        return values.astype("object")
    if kind == "string":
        if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
            return values
        # Non-missing values become str; None/NaN stay missing (vectorised: no per-row lambda).
        present = values.notna()
        out = values.astype("object")
        out[present] = out[present].astype(str)
        return out
    return values


def _to_pandas(result: Any) -> pd.DataFrame:
    if isinstance(result, pd.DataFrame):
        return result
    if hasattr(result, "to_pandas"):
        return result.to_pandas()
    return pd.DataFrame(result)


def score_frame(
    scorer: Any,
    model_input: Any,
    params: Optional[Mapping[str, Any]] = None,
    types: Optional[Mapping[str, str]] = None,
) -> pd.DataFrame:
    """Score a frame with a built scorer: reorder, coerce, ``score_batch`` with the flags.

    Returns:
        ``score_batch``'s frame, indexed like the input.
    """
    flags = parse_params(params)
    columns = list(scorer.get_column_names())
    frame = prepare_input(model_input, columns, types)
    kwargs = {k: v for k, v in flags.items() if v}
    try:
        with scorer_guard("scoring", capture=False):
            result = _to_pandas(scorer.score_batch(frame, **kwargs))
    except ScorerExitError as e:
        raise ScorerFailedError(str(e)) from e
    if len(result) == len(frame):
        result.index = frame.index
    return result


# MLflow 3 warns at class creation when predict has no type hints. Ours has none on purpose:
# the model's signature does the input checks, on MLflow 2.17 as on 3.x; that warning would be
# a stray line in every one-line error and server log. MLflow sets its own "once" filter around
# the check, so a filter of ours never applies: the note is dropped where warnings are shown.
_TYPE_HINT_NOTE = "Add type hints to the `predict` method"


def _show_but_type_hint_note(show: Any) -> Any:
    def _show(message: Any, *args: Any, **kwargs: Any) -> None:
        if _TYPE_HINT_NOTE not in str(message):
            show(message, *args, **kwargs)

    return _show


with warnings.catch_warnings():  # restores showwarning on exit
    warnings.showwarning = _show_but_type_hint_note(warnings.showwarning)

    class DaiScoringModel(PythonModel):
        """Pyfunc wrapper of a DAI ``Scorer`` (see the module docstring)."""

        def __init__(self) -> None:
            self._module: Optional[str] = None
            self._pipeline_dir: Optional[Path] = None
            self._types: Dict[str, str] = {}

        def load_context(self, context: Any) -> None:
            """Read the config and check the license is reachable (the scorer is built lazily)."""
            config = dict(getattr(context, "model_config", None) or {})
            module = config.get(CONFIG_SCORER_MODULE)
            if not module:
                raise ScorerImportError(
                    f"model_config lacks {CONFIG_SCORER_MODULE!r}; re-log the model with dai-mlflow"
                )
            self._module = str(module)
            self._pipeline_dir = Path(context.artifacts[PIPELINE_ARTIFACT])
            columns: List[List[str]] = config.get(CONFIG_INPUT_COLUMNS) or []
            self._types = {str(n): str(t) for n, t in columns}
            find_license()

        def predict(self, context, model_input, params=None):
            """Score ``model_input`` (a DataFrame) and return DAI's output frame."""
            if self._module is None:
                self.load_context(context)
            scorer = get_scorer(str(self._module), self._pipeline_dir)
            with in_workdir(scorer_workdir(self._pipeline_dir)):
                return score_frame(scorer, model_input, params, self._types)
