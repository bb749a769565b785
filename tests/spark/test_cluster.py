"""Spark scoring beyond one machine's setup: a standalone cluster, and the pip-installed package.

Through a real standalone master and worker on loopback (``tests/fixtures_cluster.py``: the
worker has its own HOME and work dir, no license variable, no checkout on its path; its Python
is a venv the project's wheel was pip-installed into), from the launcher's driver:

- ``spark_inference/score.py --master spark://... --env-manager uv`` scores both DAI lines
  exactly like ``score_batch``; the executors build the model env under *their* env root;
- ``dai_mlflow.spark.score(spark, ...)`` from a driver script does the same;
- the lifecycle ``batch`` entry point writes its partition through the cluster;
- a driver without a license (or with ``DAI_MLFLOW_SHIP_LICENSE=0``) gets the model's
  one-line error, naming the worker's own HOME;
- the cluster authenticates and encrypts (drivers take the confs from ``SPARK_CONF_DIR``'s
  ``spark-defaults.conf`` or ``--conf``); a driver without them is refused, in one line, before
  its license goes anywhere; no copy of the license is left in the worker's work or scratch
  folders, and while the application runs the executor's copy is 0600;
- the executor process killed (SIGKILL) mid-job: Spark starts another, reruns the lost tasks,
  and the output is still every row once, equal to ``score_batch``.

And the package alone: a venv with ``pip install dai_mlflow-*.whl[spark]`` (no checkout on any
path) imports ``dai_mlflow`` from its site-packages and scores with ``dai_mlflow.spark.score``
on ``local[2]``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

import pandas as pd
import pytest

from tests.fixtures_cluster import Cluster
from tests.fixtures_model import LAUNCHER_BIN, REPO_ROOT, LoggedDaiModel, run_env
from tests.spark.test_spark_faults import (
    assert_tiled_scores,
    cmdline,
    descendants,
    model_servers,
    tiled_input,
    written,
)

pytestmark = [pytest.mark.spark, pytest.mark.venv]
SCORE_PY = REPO_ROOT / "spark_inference" / "score.py"
CASES = [("1.10", "binary"), ("2", "multiclass")]
TOLERANCE = 1e-9
API_DRIVER = """
import json
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

    def look(_):  # on the executor, while the application runs
        import glob, os
        local = os.environ.get("SPARK_LOCAL_DIRS", "").split(",")[0]
        private = os.path.join(local, "dai-mlflow-private")
        found = glob.glob("dai-mlflow-license-*") + glob.glob(private + "/dai-mlflow-license-*")
        return [(p, oct(os.stat(p).st_mode & 0o777)) for p in found + [private]]

    print("executor license files:", json.dumps(spark.sparkContext.parallelize([0], 1)
          .flatMap(look).collect()), flush=True)
finally:
    spark.stop()
"""


def _run_driver(
    args: List[str],
    model: LoggedDaiModel,
    home: Path,
    licensed: bool = True,
    installed: Optional[Path] = None,
    conf_dir: Optional[Path] = None,
    extra: Optional[Dict[str, str]] = None,
) -> subprocess.CompletedProcess:
    """Run ``python args`` as a driver whose HOME is ``home``: the launcher's Python, or
    ``installed`` (a venv's python holding the pip-installed package, run isolated with no
    checkout on any path)."""
    env = run_env(model.license_env if licensed else {})
    env["HOME"] = str(home)  # the driver's license is only what is given here
    env.update(extra or {})
    if conf_dir is not None:  # the cluster's spark-defaults.conf: authentication, encryption
        env["SPARK_CONF_DIR"] = str(conf_dir)
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
    if line == "1.10":  # the confs from spark-defaults.conf, or given as spark-submit takes them
        proc = _run_driver(args, model, tmp_path, conf_dir=cluster.conf_dir)
    else:
        for key, value in cluster.secure_conf().items():
            args += ["--conf", f"{key}={value}"]
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
    proc = _run_driver(["-c", API_DRIVER, *args, "uv"], model, tmp_path, conf_dir=cluster.conf_dir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    _assert_like_score_batch(out, model, expected_scores(model, model.build.sample_input_csv))
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("executor license files:")]
    files = dict(json.loads(line.split(":", 1)[1]))
    private = [p for p in files if p.endswith("dai-mlflow-private")]
    assert [files[p] for p in private] == ["0o700"]
    copies = [p for p in files if p not in private]
    assert copies, "the executor had no copy of the license"
    assert all(os.path.dirname(p) == private[0] for p in copies)  # none left in its work dir
    assert {files[p] for p in copies} == {"0o600"}
    _assert_no_license_left(cluster)


def _assert_no_license_left(cluster: Cluster) -> None:
    """No copy in any application's work folder; none in the scratch folders once the
    applications ended (the worker removes those a moment after)."""
    assert list(cluster.work_dir.glob("app-*/*/dai-mlflow-license-*")) == []
    deadline = time.monotonic() + 60
    while list(cluster.local_dir.rglob("dai-mlflow-license-*")) and time.monotonic() < deadline:
        time.sleep(1)
    assert list(cluster.local_dir.rglob("dai-mlflow-license-*")) == []


def test_a_driver_without_auth_and_encryption_is_refused_before_it_starts(
    cluster: Cluster, logged_model, tmp_path: Path
) -> None:
    model = logged_model("1.10", "binary")
    out = tmp_path / "scored"
    args = [str(SCORE_PY), "--model-uri", str(model.local_dir), "--env-manager", "uv"]
    args += ["--input", str(model.build.sample_input_csv), "--output", str(out)]
    args += ["--master", cluster.master_url, "--conf", "spark.authenticate=true"]
    proc = _run_driver(args, model, tmp_path)
    assert proc.returncode == 1
    assert _last_line(proc.stderr) == (
        f"Error: not sending the DAI license to the executors of {cluster.master_url}: Spark "
        "would serve it unauthenticated or unencrypted; set spark.authenticate.secret=<secret "
        "shared with the cluster> spark.network.crypto.enabled=true (--conf KEY=VALUE or "
        "spark-defaults.conf), or provide the license on the nodes and set "
        "DAI_MLFLOW_SHIP_LICENSE=0"
    )
    assert not out.exists()


@pytest.mark.parametrize("case", ["no-license-on-the-driver", "ship-license-0"])
def test_without_a_license_the_cluster_says_so_in_one_line(
    cluster: Cluster, logged_model, tmp_path: Path, case
) -> None:
    model = logged_model("1.10", "binary")
    out = tmp_path / "scored"
    args = [str(SCORE_PY), "--model-uri", str(model.local_dir)]
    args += ["--input", str(model.build.sample_input_csv), "--output", str(out)]
    args += ["--env-manager", "uv", "--master", cluster.master_url]
    # One attempt: every retry of the task would fail the same way (a minute of retries).
    args += ["--conf", "spark.task.maxFailures=1"]
    # DAI_MLFLOW_SHIP_LICENSE=0: the driver's license stays with it, the nodes provide theirs.
    shipped = case == "ship-license-0"
    extra = {"DAI_MLFLOW_SHIP_LICENSE": "0"} if shipped else {}
    proc = _run_driver(
        args, model, tmp_path, licensed=shipped, conf_dir=cluster.conf_dir, extra=extra
    )
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
    monkeypatch.setenv("SPARK_CONF_DIR", str(cluster.conf_dir))
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


def test_an_executor_killed_mid_job_is_replaced_and_the_output_is_exact(
    cluster: Cluster, logged_model, expected_scores, tmp_path: Path
) -> None:
    model = logged_model("1.10", "binary")
    rows = 120_000
    data = tiled_input(model, tmp_path, rows)
    out = tmp_path / "scored"
    args = [str(SCORE_PY), "--model-uri", str(model.local_dir), "--input", str(data)]
    args += ["--output", str(out), "--env-manager", "uv", "--master", cluster.master_url]
    env = run_env(model.license_env)
    env.update(HOME=str(tmp_path), SPARK_CONF_DIR=str(cluster.conf_dir))
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(LAUNCHER_BIN / "python"), *args],
        cwd=str(tmp_path),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed: List[int] = []
    try:
        while proc.poll() is None and not killed:
            servers = model_servers(cluster.worker_pid)
            if any(written(pid) >= 300_000 for pid in servers):  # a batch was answered
                executors = [
                    pid
                    for pid in descendants(cluster.worker_pid)
                    if b"CoarseGrainedExecutorBackend" in cmdline(pid)
                ]
                for pid in executors:
                    os.kill(pid, signal.SIGKILL)
                killed = executors
            time.sleep(0.02)
        killed_at = time.monotonic()
        _, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    ended = time.monotonic()
    print(
        f"killed executor {killed} at {killed_at - started:.1f}s, ended {ended - killed_at:.1f}s on"
    )
    assert killed, "the job ended before a model server answered a batch"
    assert proc.returncode == 0, stderr[-4000:]
    assert_tiled_scores(out, expected_scores(model, model.build.sample_input_csv), rows)
    _assert_no_license_left(cluster)
