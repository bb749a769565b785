"""launchers/debug_spark_inference.py: predict in the driver's own process, then the same Spark
job as spark_inference/score.py with env_manager local, writing score_batch's scores."""

from __future__ import annotations

import subprocess

import pytest

from tests.fixtures_model import run_env
from tests.fixtures_spark import assert_matches_score_batch, input_with_ids


@pytest.mark.spark
@pytest.mark.venv
@pytest.mark.mlflow_run
def test_debug_launcher_samples_in_driver_and_scores_like_score_batch(
    logged_model, spark_venv, expected_scores, repo_root, tmp_path
):
    model = logged_model("2", "binary")
    python = spark_venv(model)
    data = input_with_ids(model, tmp_path)
    ours = tmp_path / "debug.parquet"
    proc = subprocess.Popen(
        [str(python), str(repo_root / "launchers" / "debug_spark_inference.py"),
         "--model-uri", str(model.local_dir), "--input", str(data), "--output", str(ours),
         "--sample", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=run_env(model.license_env), cwd=tmp_path,
    )  # fmt: skip
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    line = [ln for ln in stdout.splitlines() if ln.startswith("in-driver sample:")][0]
    assert line == f"in-driver sample: predict ran in pid {proc.pid} (this process: {proc.pid})"
    # The Spark job it then runs is score.py's (env manager local): the same scores.
    assert_matches_score_batch(ours, model, data, expected_scores(model, data))


def test_sample_only_needs_a_sample(repo_root):  # pure: no Spark, no model
    import sys

    out = subprocess.run(
        [sys.executable, str(repo_root / "launchers" / "debug_spark_inference.py"),
         "--model-uri", "x", "--input", "y", "--sample-only"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 2
    assert "--sample-only needs --sample N" in out.stderr
