"""launchers/debug_spark_inference.py: predict in the driver's own process, then the same Spark
job as spark_inference/score.py with env_manager local, writing the same predictions."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.fixtures_model import run_env

pytestmark = [pytest.mark.spark, pytest.mark.venv, pytest.mark.mlflow_run]


def _local_uri(model) -> str:  # noqa: ANN001
    return str(model.local_dir)


def test_debug_launcher_samples_in_driver_and_matches_score_py(
    logged_model, spark_venv, repo_root, tmp_path
):
    model = logged_model("2", "binary")
    python = spark_venv(model)
    env = run_env(model.license_env)
    data = Path(model.build.sample_input_csv)

    ours = tmp_path / "debug.parquet"
    proc = subprocess.Popen(
        [str(python), str(repo_root / "launchers" / "debug_spark_inference.py"),
         "--model-uri", _local_uri(model), "--input", str(data), "--output", str(ours),
         "--sample", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    line = [ln for ln in stdout.splitlines() if ln.startswith("in-driver sample:")][0]
    assert line == f"in-driver sample: predict ran in pid {proc.pid} (this process: {proc.pid})"

    theirs = tmp_path / "score.parquet"
    out = subprocess.run(
        [str(python), str(repo_root / "spark_inference" / "score.py"),
         "--model-uri", _local_uri(model), "--input", str(data), "--output", str(theirs),
         "--env-manager", "local", "--master", "local[1]"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    a = pd.read_parquet(ours)
    b = pd.read_parquet(theirs)
    assert len(a) == len(pd.read_csv(data))
    key = list(a.columns)
    pd.testing.assert_frame_equal(
        a.sort_values(key, na_position="first").reset_index(drop=True),
        b[key].sort_values(key, na_position="first").reset_index(drop=True),
    )


def test_sample_only_needs_a_sample(repo_root):
    import sys

    out = subprocess.run(
        [sys.executable, str(repo_root / "launchers" / "debug_spark_inference.py"),
         "--model-uri", "x", "--input", "y", "--sample-only"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 2
    assert "--sample-only needs --sample N" in out.stderr
