"""Spark scoring beyond one machine's setup: a standalone cluster, and the pip-installed package.

Through a real standalone master and worker on loopback (``tests/fixtures_cluster.py``: the
worker has its own HOME and work dir, no license variable, no checkout on its path; its Python
is a venv the project's wheel was pip-installed into), from the launcher's driver:

- ``spark_inference/score.py --master spark://... --env-manager uv`` scores both DAI lines
  exactly like ``score_batch``; the executors build the model env under *their* env root;
- ``dai_mlflow.spark.score(spark, ...)`` from a driver script does the same;
- the lifecycle ``batch`` entry point writes its partition through the cluster;
- a driver without a license gets the model's one-line error, naming the worker's own HOME.

And the package alone: a venv with ``pip install dai_mlflow-*.whl[spark]`` (no checkout on any
path) imports ``dai_mlflow`` from its site-packages and scores with ``dai_mlflow.spark.score``
on ``local[2]``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import List, Optional

import pandas as pd
import pytest

from tests.fixtures_cluster import Cluster
from tests.fixtures_model import LAUNCHER_BIN, REPO_ROOT, LoggedDaiModel, run_env

pytestmark = [pytest.mark.spark, pytest.mark.venv]
SCORE_PY = REPO_ROOT / "spark_inference" / "score.py"
CASES = [("1.10", "binary"), ("2", "multiclass")]
TOLERANCE = 1e-9
API_DRIVER = """
import sys
import pandas as pd
from pyspark.sql import SparkSession
import dai_mlflow
from dai_mlflow.spark import score, read_input
master, model, data, out, env_manager = sys.argv[1:6]
print("dai_mlflow from", dai_mlflow.__file__, flush=True)
spark = SparkSession.builder.master(master).appName("api").config("spark.ui.enabled", "false")
spark = spark.getOrCreate()
try:
    scored = score(spark, model, read_input(spark, data), env_manager)
    scored.toPandas().to_parquet(out)
finally:
    spark.stop()
"""


def _run_driver(
    args: List[str],
    model: LoggedDaiModel,
    home: Path,
    licensed: bool = True,
    installed: Optional[Path] = None,
) -> subprocess.CompletedProcess:
    """Run ``python args`` as a driver whose HOME is ``home``: the launcher's Python, or
    ``installed`` (a venv's python holding the pip-installed package, run isolated with no
    checkout on any path)."""
    env = run_env(model.license_env if licensed else {})
    env["HOME"] = str(home)  # the driver's license is only what is given here
    python = [str(LAUNCHER_BIN / "python")]
    if installed is not None:
        python = [str(installed), "-I"]
        env["PATH"] = os.pathsep.join([str(installed.parent), "/usr/local/bin:/usr/bin:/bin"])
        env["VIRTUAL_ENV"] = str(installed.parents[1])
        for name in ("PYTHONPATH", "PYSPARK_PYTHON"):
            env.pop(name, None)
    return subprocess.run(
        [*python, *args],
        cwd=str(home),
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )


def _with_ids(model: LoggedDaiModel, folder: Path) -> Path:
    frame = pd.read_csv(model.build.sample_input_csv)
    frame.insert(0, "row_id", range(len(frame)))
    path = folder / "input.parquet"
    frame.to_parquet(path, index=False)
    return path


def _assert_like_score_batch(out: Path, model: LoggedDaiModel, expected: pd.DataFrame) -> None:
    got = pd.read_parquet(out).sort_values("row_id").reset_index(drop=True)
    columns = [c for c in expected.columns if c != "row_id"]
    assert got["row_id"].tolist() == expected["row_id"].tolist()
    diff = (got[columns].to_numpy(float) - expected[columns].to_numpy(float)).__abs__()
    assert float(diff.max()) <= TOLERANCE


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


@pytest.mark.parametrize(("line", "problem"), CASES, ids=["-".join(c) for c in CASES])
def test_score_py_on_the_cluster_scores_like_score_batch(
    cluster: Cluster, logged_model, expected_scores, tmp_path: Path, line, problem
) -> None:
    model = logged_model(line, problem)
    data = _with_ids(model, tmp_path)
    out = tmp_path / "scored"
    args = [str(SCORE_PY), "--model-uri", str(model.local_dir), "--input", str(data)]
    args += ["--output", str(out), "--env-manager", "uv", "--master", cluster.master_url]
    proc = _run_driver(args, model, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    _assert_like_score_batch(out, model, expected_scores(model, model.build.sample_input_csv))
    python = "3.8" if line == "1.10" else "3.11"
    built = [p.name for p in cluster.env_root.glob(f"model-py{python}*-uv-*") if p.is_dir()]
    assert built, f"no model env under the executors' root {cluster.env_root}"


def test_the_api_on_the_cluster(cluster: Cluster, logged_model, expected_scores, tmp_path) -> None:
    model = logged_model("2", "multiclass")
    out = tmp_path / "scored.parquet"
    args = [cluster.master_url, str(model.local_dir), str(_with_ids(model, tmp_path)), str(out)]
    proc = _run_driver(["-c", API_DRIVER, *args, "uv"], model, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    _assert_like_score_batch(out, model, expected_scores(model, model.build.sample_input_csv))


def test_without_a_license_the_cluster_says_so_in_one_line(
    cluster: Cluster, logged_model, tmp_path: Path
) -> None:
    model = logged_model("1.10", "binary")
    out = tmp_path / "scored"
    args = [str(SCORE_PY), "--model-uri", str(model.local_dir)]
    args += ["--input", str(model.build.sample_input_csv), "--output", str(out)]
    args += ["--env-manager", "uv", "--master", cluster.master_url]
    proc = _run_driver(args, model, tmp_path, licensed=False)
    assert proc.returncode == 1
    last = _last_line(proc.stderr)
    assert last.startswith("Error: scoring failed in the model: "), proc.stderr[-3000:]
    assert "LicenseNotFoundError: no Driverless AI license found" in last
    assert str(cluster.worker_home) in last  # looked on the executor, not on the driver
    assert not out.exists()


def test_lifecycle_batch_through_the_cluster(
    cluster: Cluster, lifecycle_store, logged_model, tmp_path: Path, monkeypatch
) -> None:
    from dai_mlflow.lifecycle.batch import BatchRequest, batch

    model = logged_model("2", "multiclass")
    for name, value in model.license_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PYSPARK_PYTHON", raising=False)  # the executors' Python is theirs
    lifecycle_store.register(model.local_dir, "cluster_model", "champion")
    table = tmp_path / "scored"
    result = batch(
        BatchRequest(
            "cluster_model",
            model.build.sample_input_csv,
            str(table),
            "2026-12-01",
            env_manager="uv",
            master=cluster.master_url,
        )
    )
    assert result.rows == len(pd.read_csv(model.build.sample_input_csv))
    assert result.partition == table / "date=2026-12-01"


def test_the_pip_installed_package_scores_on_local_2(
    installed_venv: Path, logged_model, expected_scores, tmp_path: Path
) -> None:
    """No checkout on any path: dai_mlflow comes from the venv's site-packages."""
    model = logged_model("2", "multiclass")
    out = tmp_path / "scored.parquet"
    args = ["local[2]", str(model.local_dir), str(_with_ids(model, tmp_path)), str(out), "uv"]
    proc = _run_driver(["-c", API_DRIVER, *args], model, tmp_path, installed=installed_venv)
    assert proc.returncode == 0, proc.stderr[-4000:]
    origin = proc.stdout.splitlines()[0]
    assert origin.startswith("dai_mlflow from " + str(installed_venv.parents[1])), origin
    _assert_like_score_batch(out, model, expected_scores(model, model.build.sample_input_csv))
