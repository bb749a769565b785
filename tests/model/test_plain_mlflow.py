"""Logged DAI models with plain MLflow on the driver: no dai_mlflow import, the README's set-up.

A data scientist's notebook, reproduced by ``tests/plain_mlflow_driver.py`` in a subprocess:

* from ``venvs/launcher`` (Python 3.11, MLflow 3, PySpark 4), for both DAI lines:
  ``mlflow.pyfunc.spark_udf(env_manager="uv")``, ``spark_udf(env_manager="virtualenv")`` and
  ``mlflow.models.predict(env_manager="uv")`` on ``models:/<name>/<version>``;
* the other direction: a Python 3.8 / MLflow 2.17 / PySpark 3.5 driver (the DAI 1.10 model's
  Spark venv) scoring the DAI 2 (Python 3.11) model with ``spark_udf(env_manager="virtualenv")``
  (MLflow 2.17 has no uv env manager). MLflow 2.17 cannot open the MLflow 3 sqlite store, so it
  reads the model folder itself (over a REST tracking server a ``models:/`` URI works too).

Each driver's environment is what ``source <venv>/bin/activate`` gives (``venvs/pythons`` first
on PATH: local interpreters for uv, the offline ``pyenv`` for virtualenv), with the license in
its variables. Predictions must equal the scorer's own ``score_batch``. The three drivers run at
once (they spend most of their time in MLflow's env builds). ``mlflow models serve --env-manager
uv`` of both lines is in ``tests/serve/test_server.py``.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List

import numpy as np
import pandas as pd
import pytest

from tests.fixtures_model import LAUNCHER_BIN, PYTHONS_DIR, REPO_ROOT, LoggedDaiModel, run_env
from tests.fixtures_spark import get_expected_scores, get_spark_venv

DRIVER = REPO_ROOT / "tests" / "plain_mlflow_driver.py"
TIMEOUT = 1800


@dataclass(frozen=True)
class Case:
    """A driver env scoring one DAI line's model."""

    name: str
    driver: str  # "launcher" or "py38" (the DAI 1.10 model's Spark venv)
    line: str
    problem: str
    spark: str
    predict: str = ""


CASES = [
    Case("launcher-dai-1.10", "launcher", "1.10", "binary", "uv,virtualenv", "uv"),
    Case("launcher-dai-2", "launcher", "2", "multiclass", "uv,virtualenv", "uv"),
    Case("py38-driver-dai-2", "py38", "2", "multiclass", "virtualenv"),
]


@dataclass
class Run:
    case: Case
    model: LoggedDaiModel
    out_dir: Path
    proc: subprocess.Popen
    log: Path

    def wait(self) -> str:
        self.proc.wait(timeout=TIMEOUT)
        text = self.log.read_text(errors="replace")
        assert self.proc.returncode == 0, f"{self.case.name} failed:\n{text[-4000:]}"
        return text


def _input_parquet(model: LoggedDaiModel, folder: Path) -> Path:
    frame = pd.read_csv(model.build.sample_input_csv)
    frame.insert(0, "row_id", range(len(frame)))
    path = folder / "input.parquet"
    frame.to_parquet(path, index=False)
    return path


def _driver_env(case: Case, model: LoggedDaiModel, home: Path) -> tuple:
    """(python, env): the driver's interpreter and its activated environment."""
    env = run_env(model.license_env)
    env["HOME"] = str(home)  # no license or MLflow config of the developer's
    if case.driver == "launcher":
        env["MLFLOW_TRACKING_URI"] = model.tracking_uri
        return LAUNCHER_BIN / "python", env
    from tests.fixtures_model import get_logged_model

    python = get_spark_venv(get_logged_model("1.10", "binary"))
    path = [p for p in env["PATH"].split(os.pathsep) if p != str(LAUNCHER_BIN)]
    env["PATH"] = os.pathsep.join([str(python.parent), str(PYTHONS_DIR), *path])
    env["VIRTUAL_ENV"] = str(python.parent.parent)
    return python, env


@pytest.fixture(scope="module")
def runs(logged_model, tmp_path_factory) -> Iterator[Dict[str, Run]]:
    """Every case's driver, started at once; killed at the end if still running."""
    started: Dict[str, Run] = {}
    try:
        for case in CASES:
            model = logged_model(case.line, case.problem)
            folder = tmp_path_factory.mktemp(case.name)
            python, env = _driver_env(case, model, folder)
            uri = model.model_uri if case.driver == "launcher" else str(model.local_dir)
            cmd = [str(python), str(DRIVER), "--model-uri", uri, "--out-dir", str(folder / "out")]
            cmd += ["--input", str(_input_parquet(model, folder)), "--spark", case.spark]
            if case.predict:
                cmd += ["--predict", case.predict]
            log = folder / "driver.log"
            with log.open("w") as out:
                proc = subprocess.Popen(
                    cmd, cwd=str(folder), env=env, stdout=out, stderr=subprocess.STDOUT
                )
            started[case.name] = Run(case, model, folder / "out", proc, log)
        yield started
    finally:
        for run in started.values():
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()


def _expected(model: LoggedDaiModel) -> pd.DataFrame:
    return get_expected_scores(model, model.build.sample_input_csv)


def _assert_equal(got: pd.DataFrame, expected: pd.DataFrame, what: str) -> None:
    columns = [c for c in expected.columns if c != "row_id"]
    assert list(got.columns) == columns, what
    assert len(got) == len(expected), what
    np.testing.assert_allclose(
        got[columns].to_numpy(float), expected[columns].to_numpy(float), rtol=1e-9, atol=1e-12
    )


@pytest.mark.venv
@pytest.mark.spark
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_spark_udf_scores_like_the_scorer(runs: Dict[str, Run], case: Case) -> None:
    run = runs[case.name]
    log = run.wait()
    expected = _expected(run.model)
    for env_manager in case.spark.split(","):
        got = pd.read_parquet(run.out_dir / f"spark-{env_manager}.parquet")
        got = got.sort_values("row_id").reset_index(drop=True)
        assert got["row_id"].tolist() == expected["row_id"].tolist()
        _assert_equal(got.drop(columns=["row_id"]), expected, f"{case.name} {env_manager}")
        assert f"spark_udf {env_manager}: " in log
    if case.line == "1.10" and case.driver == "launcher":
        # The driver's PySpark 4 was on the model server's path and its MLflow 3 stdin server
        # script was asked for: the model's hooks took both over (MLflow 2.17 in the env).
        assert "[model server] dai-mlflow stdin server: ready" in log


@pytest.mark.venv
@pytest.mark.spark
@pytest.mark.parametrize("case", [c for c in CASES if c.predict], ids=lambda c: c.name)
def test_models_predict_scores_like_the_scorer(runs: Dict[str, Run], case: Case) -> None:
    run = runs[case.name]
    run.wait()
    answer = json.loads((run.out_dir / "predict-uv.json").read_text())
    records: List[dict] = answer["predictions"] if isinstance(answer, dict) else answer
    _assert_equal(pd.DataFrame(records), _expected(run.model), f"{case.name} predict")


def test_the_driver_imports_no_dai_mlflow() -> None:
    """The driver script itself: only MLflow, PySpark and pandas."""
    tree = ast.parse(DRIVER.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported, "no imports found: the check would pass vacuously"
    assert not [m for m in imported if m.split(".")[0] == "dai_mlflow"]
    proc = subprocess.run([sys.executable, str(DRIVER), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "--model-uri" in proc.stdout
