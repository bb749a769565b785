"""Spark fixtures and checks (a plugin of tests/conftest.py).

- ``spark``: one local Spark session for the whole test run (``local[1]``, no UI, workers run
  this interpreter; dai_mlflow reaches them the way it reaches any executor, shipped by the
  job); stopped at the end.
- ``spark_venv(model) -> Path``: python of the model's Spark venv, built by
  ``dai_mlflow.envs.spark_venv`` (what ``make spark-venv`` builds) under ``tests/.cache/venvs``,
  behind a file lock and reused while the model's env spec is unchanged.
- ``expected_scores(model, input_csv) -> DataFrame``: the scorer's own ``score_batch`` on the
  csv, computed in the model's own env (``row_id`` = csv row number, then DAI's columns).
- ``input_with_ids`` and ``assert_matches_score_batch``: a sample input with a ``row_id`` the
  model does not know, and the check that a Spark output equals ``score_batch`` row for row.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict

import pandas as pd
import pytest
from filelock import FileLock

from tests.fixtures_model import LoggedDaiModel, model_python, run_env

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = REPO_ROOT / "tests" / ".cache"
TOLERANCE = 1e-9

# The model env holds only the shared requirements: the experiment wheel (in the model's
# artifacts) is unzipped here on its own, independently of dai_mlflow.model.experiment.
_SCORE_BATCH = r"""
import glob, importlib, os, sys, tempfile, zipfile
import pandas as pd
csv, module, out, pipeline = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
frame = pd.read_csv(csv)
wheel = glob.glob(os.path.join(pipeline, module + "-*.whl"))[0]
code = tempfile.mkdtemp(prefix="expected-")
zipfile.ZipFile(wheel).extractall(code)
sys.path.insert(0, code)
os.chdir(os.environ["WORKDIR"])
scorer = importlib.import_module(module).Scorer()
scores = scorer.score_batch(frame[list(scorer.get_column_names())])
scores.insert(0, "row_id", range(len(frame)))
scores.to_csv(out, index=False)
"""


@pytest.fixture(scope="session")
def spark():
    """The shared local Spark session."""
    from pyspark.sql import SparkSession

    saved = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (
        SparkSession.builder.master("local[1]")
        .appName("dai-mlflow-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("FATAL")
    yield session
    session.stop()
    if saved is None:
        os.environ.pop("PYSPARK_PYTHON", None)
    else:
        os.environ["PYSPARK_PYTHON"] = saved


def get_spark_venv(model: LoggedDaiModel) -> Path:
    """Python of the model's Spark venv (its env + pyspark), cached per line and problem."""
    from dai_mlflow.envs.spark_venv import spec_for_model_dir
    from dai_mlflow.envs.venvs import ensure_venv

    dest = CACHE / "venvs" / f"spark-{model.build.dai_line}-{model.build.problem}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        spec = spec_for_model_dir(model.local_dir, site_paths=[str(REPO_ROOT)])  # as make does
        python, _ = ensure_venv(spec, dest, quiet=True, progress=lambda _m: None)
    return python


@pytest.fixture(scope="session")
def spark_venv() -> Callable[[LoggedDaiModel], Path]:
    """Factory: ``spark_venv(model)`` → python of ``dai_mlflow.envs.spark_venv``'s venv for it."""
    return get_spark_venv


def get_expected_scores(model: LoggedDaiModel, input_csv: Path) -> pd.DataFrame:
    """``Scorer().score_batch`` of ``input_csv`` in the model's env, cached by content."""
    digest = hashlib.sha256(input_csv.read_bytes())
    digest.update(json.dumps([str(model.local_dir), model.build.module_name]).encode())
    out = CACHE / "expected" / f"{digest.hexdigest()[:16]}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not out.is_file():
            workdir = out.with_suffix(".work")
            workdir.mkdir(exist_ok=True)
            env: Dict[str, str] = {**run_env(model.license_env), "WORKDIR": str(workdir)}
            tmp = out.with_suffix(".part")
            proc = subprocess.run(
                [
                    str(model_python(model)),
                    "-c",
                    _SCORE_BATCH,
                    str(input_csv),
                    model.build.module_name,
                    str(tmp),
                    str(model.local_dir / "artifacts" / "scoring-pipeline"),
                ],
                cwd=str(workdir),
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
            tmp.replace(out)
    return pd.read_csv(out)


@pytest.fixture(scope="session")
def expected_scores() -> Callable[[LoggedDaiModel, Path], pd.DataFrame]:
    """Factory: ``expected_scores(model, csv)`` → row_id + DAI's output columns."""
    return get_expected_scores


def input_with_ids(model: LoggedDaiModel, folder: Path) -> Path:
    """The model's sample input plus a ``row_id`` column the model does not know."""
    frame = pd.read_csv(model.build.sample_input_csv)
    frame.insert(0, "row_id", range(len(frame)))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "input.csv"
    frame.to_csv(path, index=False)
    return path


def assert_matches_score_batch(
    output: Path, model: LoggedDaiModel, input_csv: Path, expected: pd.DataFrame
) -> None:
    got = pd.read_parquet(output).sort_values("row_id").reset_index(drop=True)
    source = pd.read_csv(input_csv)
    dai_columns = [c for c in expected.columns if c != "row_id"]
    assert list(got.columns) == list(source.columns) + dai_columns
    assert len(got) == len(source) == len(expected) > 0
    if model.build.labels:
        assert dai_columns == [f"{model.build.target}.{label}" for label in model.build.labels]
    else:
        assert dai_columns == [model.build.target]
    assert got["row_id"].tolist() == expected["row_id"].tolist()
    diff = (got[dai_columns].to_numpy(float) - expected[dai_columns].to_numpy(float)).__abs__()
    assert float(diff.max()) <= TOLERANCE
