"""`make spark-venv` mechanism from a python_env.yaml + requirements.txt pair: the
model's Python and requirements plus pyspark and pyarrow for that Python."""

from __future__ import annotations

import os
import subprocess

import pytest

pytestmark = [pytest.mark.venv, pytest.mark.mlflow_run]


def test_spark_venv_from_a_python_env_and_requirements_pair(logged_model, repo_root, tmp_path):
    model = logged_model("1.10", "binary")
    env = {**os.environ, "DAI_MLFLOW_VENVS": str(tmp_path / "venvs")}
    script = repo_root / "launchers" / "build_spark_venv.sh"
    args = ["bash", str(script), "--python-env", str(model.local_dir / "python_env.yaml"),
            "--requirements", str(model.local_dir / "requirements.txt")]  # fmt: skip
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    python = tmp_path / "venvs" / "spark_inference" / "bin" / "python"
    check = (
        "import sys, pyspark, pyarrow, dai_mlflow, mlflow; "
        "print(sys.version_info[:2], pyspark.__version__, mlflow.__version__)"
    )
    got = subprocess.run([str(python), "-c", check], capture_output=True, text=True, check=True)
    assert got.stdout.strip() == "(3, 8) 3.5.8 2.17.2"
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0
    assert "up to date" in again.stderr
