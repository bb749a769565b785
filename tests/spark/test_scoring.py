"""Batch scoring on a local master (``dai_mlflow.spark``, ``spark_inference/score.py``).

Acceptance, on the stand-in models logged by the real ``mlflow run``:

- every env manager x DAI line gives exactly the scorer's own ``score_batch``: ``uv`` and
  ``virtualenv`` from this (launcher, Python 3.11 + PySpark 4) interpreter, offline with local
  interpreters, for a Python 3.8 and a 3.11 model (the executors build the model's env
  themselves and score through a model server); ``local`` from the model's Spark venv
  (``dai_mlflow.envs.spark_venv``): a Python 3.8 driver with PySpark 3.5 for DAI 1.10 and a
  Python 3.11 driver with PySpark 4 for DAI 2;
- a missing column, a missing license and a license that is no license fail with that error in
  one line (not "Scoring timeout"), non-zero exit for the CLI, and leave the previous output
  intact.

Plus quick checks of the offline pyenv wrapper, error translation and the atomic writer. Cluster
scoring (executors on other "machines") is in ``tests/spark/test_cluster.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pandas as pd
import pytest

from dai_mlflow.envs.pythons import PYENV_OFFLINE_SCRIPT
from dai_mlflow.envs.spark_venv import spark_requirements
from dai_mlflow.spark import (
    ERROR_MARKER,
    InputColumnsError,
    SparkScoringError,
    score_to_path,
    translate_error,
    write_atomically,
)
from tests.fixtures_model import LoggedDaiModel, run_env
from tests.fixtures_spark import assert_matches_score_batch, input_with_ids

REPO_ROOT = Path(__file__).resolve().parents[2]
SCORE_PY = REPO_ROOT / "spark_inference" / "score.py"
LAUNCHER_PYTHON = REPO_ROOT / "venvs" / "launcher" / "bin" / "python"
NO_LICENSE = {"DRIVERLESS_AI_LICENSE_FILE": "", "DRIVERLESS_AI_LICENSE_KEY": ""}


# ------------------------------------------------------------------------------- helpers


def _previous_output(path: Path) -> Path:
    """An earlier Spark output (its _SUCCESS): what a re-run may replace."""
    path.mkdir(parents=True)
    (path / "part-previous.parquet").write_bytes(b"previous run")
    (path / "_SUCCESS").write_bytes(b"")
    return path


def _assert_intact(path: Path) -> None:
    assert sorted(p.name for p in path.iterdir()) == ["_SUCCESS", "part-previous.parquet"]
    assert (path / "part-previous.parquet").read_bytes() == b"previous run"
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]
    assert leftovers == []


def _score_cli(
    python: Path, args: List[str], env: Dict[str, str], cwd: Path
) -> Tuple[subprocess.CompletedProcess, float]:
    """Run score.py; also the seconds it took (printed, never asserted: no timed tests)."""
    started = time.monotonic()
    proc = subprocess.run(
        [str(python), str(SCORE_PY), "--master", "local[1]", *args],
        env=env,
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.monotonic() - started
    print(f"score.py {' '.join(args[-2:])}: exit {proc.returncode} after {seconds:.1f}s")
    return proc, seconds


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _cli_env(model: LoggedDaiModel, extra: Dict[str, str]) -> Dict[str, str]:
    """A plain shell: no activated venv, no venvs/pythons on PATH, no UV_PYTHON_DOWNLOADS."""
    env = run_env({"MLFLOW_TRACKING_URI": model.tracking_uri, **model.license_env, **extra})
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    for name in ("VIRTUAL_ENV", "UV_PYTHON_DOWNLOADS", "PYSPARK_PYTHON"):
        env.pop(name, None)
    return env


# ------------------------------------------------------------------------------- quick checks


def test_pyenv_offline_links_a_local_python_instead_of_downloading(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    env["PYENV_ROOT"] = str(tmp_path / "root")
    cmd = [str(PYENV_OFFLINE_SCRIPT), "install", "--skip-existing", "3.8.18"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "no download" in first.stderr
    python = tmp_path / "root" / "versions" / "3.8.18" / "bin" / "python"
    version = subprocess.run([str(python), "-V"], capture_output=True, text=True, timeout=30)
    assert version.stdout.strip() == "Python 3.8.18"
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0
    assert again.stderr == ""
    missing = subprocess.run(
        [str(PYENV_OFFLINE_SCRIPT), "install", "-s", "3.8.99"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1
    assert "Python 3.8.99 is not installed locally" in missing.stderr


def test_spark_requirements_follow_the_model_python() -> None:
    assert spark_requirements("3.8.18", ["pandas==1.2.5"]) == [
        "pyspark==3.5.8",
        "pyarrow==17.0.0",
        "virtualenv",
    ]
    assert spark_requirements("3.11.7", []) == [
        "pyspark==4.3.0",
        "pyarrow==25.0.1",
        "virtualenv",
    ]
    reqs = ["pyarrow==3.0.0", "pyspark==3.3.2", "virtualenv==20.0.0"]
    assert spark_requirements("3.8.18", reqs) == []


def test_translate_error_keeps_the_model_error_line() -> None:
    text = (
        "PythonException: An exception was thrown from the Python worker:\nTraceback ...\n"
        "LicenseNotFoundError: no Driverless AI license found\n\nThe above exception ...\n"
        f"RuntimeError: {ERROR_MARKER} LicenseNotFoundError: no Driverless AI license found\n"
        "\tat org.apache.spark...\n"
    )
    err = translate_error(RuntimeError(text))
    assert isinstance(err, SparkScoringError)
    assert str(err) == (
        "scoring failed in the model: LicenseNotFoundError: no Driverless AI license found"
    )
    assert "\n" not in str(err)


@pytest.mark.spark
def test_failed_write_leaves_previous_output(spark, tmp_path: Path) -> None:
    from pyspark.sql import functions as F

    out = _previous_output(tmp_path / "out")
    boom = F.udf(lambda x: 1 // (x - x), "long")  # ZeroDivisionError on the workers
    df = spark.range(10).withColumn("y", boom("id"))
    with pytest.raises(SparkScoringError, match="ZeroDivisionError"):
        write_atomically(spark, df, str(out), translate_error)
    _assert_intact(out)
    write_atomically(spark, spark.range(3), str(out), translate_error)
    assert sorted(pd.read_parquet(out)["id"]) == [0, 1, 2]


# ------------------------------------------------------------------------------- uv/virtualenv


BUILDING_CASES = [
    ("uv", "1.10", "binary"),
    ("uv", "2", "multiclass"),
    ("virtualenv", "1.10", "binary"),
    ("virtualenv", "2", "multiclass"),
]


@pytest.mark.spark
@pytest.mark.venv
@pytest.mark.parametrize(
    ("env_manager", "line", "problem"), BUILDING_CASES, ids=["-".join(c) for c in BUILDING_CASES]
)
def test_executors_build_the_env_and_score_like_score_batch(
    spark,
    logged_model,
    expected_scores,
    tmp_path: Path,
    env_manager,
    line,
    problem,
    monkeypatch,
) -> None:
    """From the Python 3.11 / PySpark 4 driver, offline: a local Python, no pyspark leak.

    The DAI 1.10 virtualenv (pip) case builds into an empty env root (given to the executors
    with the job), so a real build is seen; the others use the test root shared with the other
    tests (built once)."""
    from tests.fixtures_model import MODEL_ENV_ROOT

    model = logged_model(line, problem)
    fresh = (env_manager, line) == ("virtualenv", "1.10")
    root = tmp_path / "envs" if fresh else MODEL_ENV_ROOT
    # A plain shell: the executors must find Python and tools without an activated venv.
    monkeypatch.setenv("PATH", "/usr/local/bin:/usr/bin:/bin")
    monkeypatch.delenv("UV_PYTHON_DOWNLOADS", raising=False)
    input_csv = input_with_ids(model, tmp_path)
    out = tmp_path / "scored"
    score_to_path(
        spark,
        str(model.local_dir),
        str(input_csv),
        str(out),
        env_manager,
        env=model.license_env,
        env_root=str(root),
    )
    assert_matches_score_batch(out, model, input_csv, expected_scores(model, input_csv))
    # The executors built (or found) the model's env with the env manager's installer, and ran
    # a model server in it (its code folder); the fresh root proves a build here.
    installer = {"uv": "uv", "virtualenv": "pip"}[env_manager]
    python = "3.8" if line == "1.10" else "3.11"
    envs = [p for p in root.glob(f"model-py{python}*-{installer}-*") if p.is_dir()]
    assert len(envs) >= 1
    stamp = json.loads((envs[0] / ".dai-mlflow-venv.json").read_text())
    assert stamp["spec"]["installer"] == installer
    assert list((root / "servers").glob("*/dai_mlflow_model_hooks/arrow_server.py"))


@pytest.fixture(scope="module")
def uv_model(spark, logged_model, tmp_path_factory) -> LoggedDaiModel:
    """The DAI 1.10 model with its uv env already built in this process (as a job's 2nd run)."""
    model = logged_model("1.10", "binary")
    folder = tmp_path_factory.mktemp("uv-warm")
    score_to_path(
        spark,
        str(model.local_dir),
        str(model.build.sample_input_csv),
        str(folder / "out"),
        "uv",
        env=model.license_env,
    )
    return model


@pytest.mark.spark
@pytest.mark.venv
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-license", "LicenseNotFoundError: no Driverless AI license found"),
        ("bad-license", "not a license"),
    ],
)
def test_model_errors_surface_fast_under_uv(
    spark, uv_model: LoggedDaiModel, tmp_path: Path, case, message
) -> None:
    """A model-side error reaches the driver as itself, at once, not as "Scoring timeout"."""
    env = dict(NO_LICENSE, HOME=str(tmp_path))
    if case == "bad-license":
        garbage = tmp_path / "license.sig"
        garbage.write_text("this is not a license\n")
        env["DRIVERLESS_AI_LICENSE_FILE"] = str(garbage)
    out = _previous_output(tmp_path / "out")
    with pytest.raises(SparkScoringError) as info:
        score_to_path(
            spark,
            str(uv_model.local_dir),
            str(uv_model.build.sample_input_csv),
            str(out),
            "uv",
            env=env,
        )
    assert message in str(info.value)
    assert "timeout" not in str(info.value).lower()
    assert "\n" not in str(info.value)
    _assert_intact(out)


@pytest.mark.spark
def test_missing_column_fails_on_the_driver(spark, logged_model, tmp_path: Path) -> None:
    model = logged_model("2", "multiclass")
    frame = pd.read_csv(model.build.sample_input_csv)
    dropped = model.build.input_columns[1]
    frame.drop(columns=[dropped]).to_csv(tmp_path / "in.csv", index=False)
    out = _previous_output(tmp_path / "out")
    with pytest.raises(InputColumnsError, match="missing column"):
        score_to_path(spark, str(model.local_dir), str(tmp_path / "in.csv"), str(out), "uv")
    _assert_intact(out)


# ------------------------------------------------------------------------------- CLI, local


LOCAL_CASES = [("1.10", "binary"), ("2", "regression")]


@pytest.mark.spark
@pytest.mark.venv
@pytest.mark.parametrize(("line", "problem"), LOCAL_CASES, ids=["-".join(c) for c in LOCAL_CASES])
def test_cli_local_from_the_spark_venv_scores_like_score_batch(
    logged_model, spark_venv, expected_scores, tmp_path: Path, line, problem
) -> None:
    """DAI 1.10: a Python 3.8 driver with PySpark 3.5; DAI 2: Python 3.11 with PySpark 4."""
    model = logged_model(line, problem)
    python = spark_venv(model)
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import sys, pyspark; print(sys.version_info[:2], pyspark.__version__)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.stdout.strip() == {"1.10": "(3, 8) 3.5.8", "2": "(3, 11) 4.3.0"}[line]
    input_csv = input_with_ids(model, tmp_path)
    out = _previous_output(tmp_path / "out")  # a successful run replaces it
    proc, _ = _score_cli(
        python,
        ["--model-uri", model.model_uri, "--input", str(input_csv), "--output", str(out)],
        _cli_env(model, {}),
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (out / "part-previous.parquet").exists()
    assert_matches_score_batch(out, model, input_csv, expected_scores(model, input_csv))


@pytest.mark.spark
@pytest.mark.venv
def test_cli_no_license_fails_fast_with_the_real_error(
    logged_model, spark_venv, tmp_path: Path
) -> None:
    model = logged_model("1.10", "binary")
    python = spark_venv(model)
    out = _previous_output(tmp_path / "out")
    # The model folder: a models:/ URI would add the py3.8 driver's tracking bridge start-up.
    args = ["--model-uri", str(model.local_dir), "--input", str(model.build.sample_input_csv)]
    env = _cli_env(model, dict(NO_LICENSE, HOME=str(tmp_path)))
    proc, _ = _score_cli(python, [*args, "--output", str(out)], env, tmp_path)
    assert proc.returncode == 1
    assert _last_line(proc.stderr).startswith("Error: scoring failed in the model: ")
    assert "no Driverless AI license found" in _last_line(proc.stderr)
    _assert_intact(out)


@pytest.mark.spark
def test_cli_missing_column_exits_non_zero_with_one_line(logged_model, tmp_path: Path) -> None:
    model = logged_model("1.10", "binary")
    frame = pd.read_csv(model.build.sample_input_csv)
    frame.drop(columns=[model.build.input_columns[0]]).to_csv(tmp_path / "in.csv", index=False)
    out = _previous_output(tmp_path / "out")
    args = ["--model-uri", model.model_uri, "--input", str(tmp_path / "in.csv")]
    proc, _ = _score_cli(
        LAUNCHER_PYTHON,
        [*args, "--output", str(out), "--env-manager", "uv"],
        _cli_env(model, {}),
        tmp_path,
    )
    assert proc.returncode == 1
    last = _last_line(proc.stderr)
    assert last.startswith("Error: input is missing column(s) ")
    assert repr(model.build.input_columns[0]) in last
    _assert_intact(out)


def test_the_spark_path_is_python38_syntax() -> None:
    """score.py and everything of the package a Python 3.8 driver or model env runs."""
    from dai_mlflow.envs.pythons import find_python

    py38 = find_python("3.8").executable
    package = REPO_ROOT / "dai_mlflow"
    files = [SCORE_PY, *sorted((package / "spark").glob("*.py"))]
    files += sorted((package / "model").rglob("*.py")) + sorted((package / "envs").glob("*.py"))
    files += [package / "errors.py", package / "cli.py"]
    assert len(files) > 10
    proc = subprocess.run(
        [str(py38), "-m", "py_compile", *map(str, files)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
