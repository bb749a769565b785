"""Score a downloaded model on a csv/parquet file in the model's own env (a subprocess).

The entry points run on Python 3.8 / mlflow 2.17 or on the launcher's Python 3.11 / mlflow 3;
the model needs its own Python and the DAI wheels. :func:`model_env_python` builds (or reuses)
that env exactly as logging does (``dai_mlflow.venvs``, keyed by python_env.yaml, requirements
and wheel bytes, under ``$DAI_MLFLOW_ENV_ROOT`` or ``~/.cache/dai-mlflow/envs``), so a model
validated at log time is scored here without any install. :func:`score_file` runs
:data:`_SCORE` there: read the file with the signature's types (csv text columns stay text),
``pyfunc.predict``, write the DAI output columns as csv.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import tempfile
import textwrap
from pathlib import Path
from typing import List, Optional, Sequence

import pandas as pd

from dai_mlflow.lifecycle.errors import LifecycleError, ScoringError

ENV_ROOT_ENV = "DAI_MLFLOW_ENV_ROOT"
_ERROR_MARKER = "DAI_MLFLOW_SCORE_ERROR="

_SCORE = textwrap.dedent(
    """
    import sys
    import pandas as pd
    import mlflow.pyfunc
    from mlflow.models import Model

    model_dir, data_path, fmt, out_path = sys.argv[1:5]
    try:
        schema = Model.load(model_dir).get_input_schema()
        types = {s.name: s.type.name for s in schema.inputs}
        text = [n for n, t in types.items() if t == "string"]
        if fmt == "csv":
            frame = pd.read_csv(data_path, dtype={n: str for n in text}, keep_default_na=True)
        else:
            frame = pd.read_parquet(data_path)
        missing = [n for n in schema.required_input_names() if n not in frame.columns]
        if missing:
            raise ValueError("input is missing model column(s) %s" % missing)
        frame = frame[[n for n in types if n in frame.columns]].copy()
        for name, kind in types.items():
            if name not in frame.columns:
                continue
            col = frame[name]
            if kind in ("double", "float"):
                frame[name] = pd.to_numeric(col, errors="raise").astype("float64")
            elif kind == "string":
                frame[name] = col.astype(object).where(col.notna(), None).map(
                    lambda v: v if v is None else str(v)
                )
        model = mlflow.pyfunc.load_model(model_dir)
        out = model.predict(frame)
        out = pd.DataFrame(out)
        out.to_csv(out_path, index=False)
    except BaseException as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        print("%s%s: %s" % (sys.argv[5], type(e).__name__, lines[0] if lines else ""))
        sys.exit(1)
    """
)


def env_root() -> Path:
    """``$DAI_MLFLOW_ENV_ROOT`` or ``~/.cache/dai-mlflow/envs`` (shared with logging)."""
    env = os.environ.get(ENV_ROOT_ENV)
    return Path(env) if env else Path.home() / ".cache" / "dai-mlflow" / "envs"


def model_env_python(model_dir: Path) -> Path:
    """Build or reuse the model's own env (its python_env.yaml + requirements.txt).

    Raises:
        DaiMlflowError: no local interpreter of the model's Python, or the build failed.
    """
    from dai_mlflow.pythons import find_python
    from dai_mlflow.venvs import VenvSpec, ensure_venv, spec_key

    spec_file = model_dir / "python_env.yaml"
    if not spec_file.is_file():
        raise LifecycleError(f"{model_dir} has no python_env.yaml; is it an MLflow pyfunc model?")
    spec = VenvSpec.from_python_env(spec_file, installer="uv")
    key = spec_key(spec, find_python(spec.python))
    dest = env_root() / f"model-py{spec.python}-{key}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(str(dest) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        python, _ = ensure_venv(spec, dest, quiet=True, progress=lambda _m: None)
    return python


def data_format(path: Path) -> str:
    """``csv`` or ``parquet`` from the name (a folder of parquet files is parquet).

    Raises:
        LifecycleError: the path is missing or of another kind.
    """
    if not path.exists():
        raise LifecycleError(f"{path} does not exist")
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".parquet", ".pq")) or (path.is_dir() and any(path.rglob("*.parquet"))):
        return "parquet"
    raise LifecycleError(f"cannot tell the format of {path}; name it *.csv or *.parquet")


def read_frame(path: Path, columns: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Read a csv/parquet file (csv: every column as text; callers convert)."""
    fmt = data_format(path)
    try:
        if fmt == "csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=True)
        else:
            frame = pd.read_parquet(path)
    except Exception as e:
        raise LifecycleError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    if columns is not None:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise LifecycleError(f"{path} lacks column(s) {missing}")
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
        ScoringError: the model failed (its own error, one line).
    """
    fmt = data_format(data)
    python = python or model_env_python(model_dir)
    base = dict(os.environ if env is None else env)
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "MLFLOW_RUN_ID"):
        base.pop(var, None)
    with tempfile.TemporaryDirectory(prefix="dai-mlflow-score-") as cwd:
        out = Path(cwd) / "predictions.csv"
        # cwd is scratch: the DAI scorer writes ./tmp there.
        proc = subprocess.run(
            [str(python), "-c", _SCORE, str(model_dir), str(data), fmt, str(out), _ERROR_MARKER],
            cwd=cwd,
            env=base,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not out.is_file():
            raise ScoringError(f"{label or model_dir}: {_error_line(proc.stdout, proc.stderr)}")
        return pd.read_csv(out)


def _error_line(stdout: str, stderr: str) -> str:
    marked = [ln.split(_ERROR_MARKER, 1)[1] for ln in stdout.splitlines() if _ERROR_MARKER in ln]
    if marked:
        return marked[-1].strip()[:500]
    lines: List[str] = [ln.strip() for ln in (stderr + "\n" + stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "Exception" in ln]
    return ((errors or lines or ["the scoring process died without output"])[-1])[:500]
