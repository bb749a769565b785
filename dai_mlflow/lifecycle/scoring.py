"""Score a downloaded model on a csv/parquet file in the model's own env (a subprocess).

The entry points run on Python 3.8 / mlflow 2.17 or on the launcher's Python 3.11 / mlflow 3;
the model needs its own Python and the DAI wheels. The env is built (or reused) by the one
builder logging uses (:func:`dai_mlflow.envs.model_env.ensure_model_env`), so a model checked
at log time is scored here without any install. :func:`score_file` runs the
``score`` program of :mod:`dai_mlflow.model.hooks.programs` there: read the file with the
signature's types (csv text columns stay text), predict, write DAI's output columns as csv.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import pandas as pd

from dai_mlflow.envs.model_env import ModelProgramError, ensure_model_env, run_program
from dai_mlflow.errors import one_line
from dai_mlflow.lifecycle.errors import LifecycleError, ModelFailedError
from dai_mlflow.spark.files import format_of


def data_format(path: Path) -> str:
    """``csv`` or ``parquet`` from the name (a folder of parquet files is parquet).

    Raises:
        LifecycleError: the path is missing or of another kind.
    """
    if not path.exists():
        raise LifecycleError(f"{path} does not exist")
    found = format_of(str(path))
    if found is None:
        raise LifecycleError(f"cannot tell the format of {path}; name it *.csv or *.parquet")
    return found


def read_frame(path: Path) -> pd.DataFrame:
    """Read a csv/parquet file (csv: every column as text; callers convert)."""
    fmt = data_format(path)
    try:
        if fmt == "csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=True)
        else:
            frame = pd.read_parquet(path)
    except Exception as e:
        raise LifecycleError(f"cannot read {path}: {one_line(e)}") from e
    return frame


def score_file(
    model_dir: Path,
    data: Path,
    env: Optional[dict] = None,
    python: Optional[Path] = None,
    label: str = "",
) -> pd.DataFrame:
    """Predict ``data`` (csv/parquet) with the model in its own env; one row per input row.

    Args:
        model_dir: a downloaded MLflow model folder.
        data: input file; columns beyond the signature's are ignored.
        env: environment of the scoring process (default: this one's, minus Python paths).
        python: the model env's interpreter (default: built or reused here).
        label: how errors name the model (default: the folder).

    Raises:
        ModelFailedError: the model failed (its own error, one line).
    """
    fmt = data_format(data)
    python = python or ensure_model_env(model_dir)
    base = dict(os.environ if env is None else env)
    base.pop("MLFLOW_RUN_ID", None)
    with tempfile.TemporaryDirectory(prefix="dai-mlflow-score-") as scratch:
        out = Path(scratch) / "predictions.csv"
        try:
            run_program(python, "score", [str(model_dir), str(data), fmt, str(out)], base)
        except ModelProgramError as e:
            raise ModelFailedError(f"{label or model_dir}: {e}") from e
        return pd.read_csv(out)
