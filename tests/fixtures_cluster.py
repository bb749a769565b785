"""A Spark standalone cluster on loopback whose executors know nothing of the driver's machine.

- ``installed_venv() -> Path``: python of a venv into which the project's *wheel* was installed
  (``pip install dai_mlflow-*.whl[spark]``, built with ``uv build``): no checkout anywhere on its
  path. Cached under ``tests/.cache/cluster/`` by the wheel's bytes (built reproducibly).
- ``cluster() -> Cluster``: a master and a worker started with the launcher's own PySpark
  (``bin/spark-class org.apache.spark.deploy.master.Master`` / ``...worker.Worker``), as an
  operator starts them. The worker is another "machine": its own ``HOME`` and work dir, no
  license variable, no ``PYTHONPATH``, ``python3`` on its ``PATH`` is the installed venv's, and
  its node configuration names the local interpreters (``DAI_MLFLOW_PYTHON_3_8``/``_3_11``),
  its model env root and uv's package cache, as an admin would set them on a node. Stopped (the
  whole process group) at the end of the session.
  Spark authenticates (a secret made at run time) and encrypts its connections, as a cluster
  that is sent a license must: master and worker read it from their ``spark-defaults.conf``;
  drivers get the same file through ``SPARK_CONF_DIR=cluster.conf_dir`` (or ``--conf``).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator

import pytest
from filelock import FileLock

from dai_mlflow.envs.processes import free_port
from dai_mlflow.envs.pythons import find_python
from dai_mlflow.envs.venvs import VenvSpec, ensure_venv, find_uv
from tests.fixtures_model import CACHE, LAUNCHER_BIN, PYTHONS_DIR, REPO_ROOT

CLUSTER_CACHE = CACHE / "cluster"
START_TIMEOUT = 120.0
# A fixed timestamp makes `uv build` write the same wheel bytes for the same sources.
SOURCE_DATE_EPOCH = "315532800"


@dataclass
class Cluster:
    """A running standalone cluster."""

    master_url: str
    ui_url: str
    worker_home: Path
    env_root: Path
    logs: Path
    executor_python: Path
    conf_dir: Path
    work_dir: Path
    local_dir: Path
    worker_pid: int

    def secure_conf(self) -> Dict[str, str]:
        """The confs a driver needs (authentication, its secret, encryption)."""
        lines = (self.conf_dir / "spark-defaults.conf").read_text().splitlines()
        return dict(ln.split(None, 1) for ln in lines if ln.strip())


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{cmd[0]} failed:\n{proc.stderr[-3000:]}"
    return proc


def build_wheel() -> Path:
    """The project's wheel (``uv build``), the same bytes for the same sources."""
    dist = CLUSTER_CACHE / "dist"
    for old in dist.glob("*.whl"):
        old.unlink()
    env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
    _run([find_uv(), "build", "--wheel", "--out-dir", dist, REPO_ROOT], env=env, timeout=600)
    (wheel,) = dist.glob("dai_mlflow-*.whl")
    return wheel


def get_installed_venv() -> Path:
    """Python of a venv with the project's wheel and its ``spark`` extra installed."""
    CLUSTER_CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(str(CLUSTER_CACHE / "venv.lock")):
        wheel = build_wheel()
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()[:12]
        dest = CLUSTER_CACHE / f"installed-{digest}"
        for old in CLUSTER_CACHE.glob("installed-*"):
            if old != dest:
                shutil.rmtree(old, ignore_errors=True)
        spec = VenvSpec(
            python=find_python("3.11").version,  # the driver's (launcher's) Python line
            dependencies=(f"./{wheel.name}[spark]", "pyspark==4.3.0"),
            base_dir=wheel.parent,
            installer="uv",
        )
        python, _ = ensure_venv(spec, dest, quiet=True, progress=lambda _m: None)
    return python


@pytest.fixture(scope="session")
def installed_venv() -> Path:
    """Python of the venv the wheel was pip-installed into (see the module docstring)."""
    return get_installed_venv()


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def _clean_env(home: Path) -> Dict[str, str]:
    """A node's environment: none of the driver's license, Python or MLflow settings."""
    drop_prefixes = ("DRIVERLESS_AI_", "PYSPARK_", "MLFLOW_", "DAI_MLFLOW_", "SPARK_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)}
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "UV_PYTHON_DOWNLOADS"):
        env.pop(name, None)
    ours = {str(LAUNCHER_BIN), str(PYTHONS_DIR)}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p not in ours)
    env["HOME"] = str(home)
    env["SPARK_HOME"] = str(_spark_home())
    # The machine's options for short-lived test JVMs (tests/conftest.py), for the daemons.
    env["SPARK_DAEMON_JAVA_OPTS"] = os.environ.get("SPARK_SUBMIT_OPTS", "")
    return env


def _start(cmd, env: Dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            [str(c) for c in cmd],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped whole at the end
        )


def _wait_for_worker(ui_url: str, procs) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        for proc in procs:
            assert proc.poll() is None, "a cluster process exited while starting"
        try:
            with urllib.request.urlopen(f"{ui_url}/json/", timeout=5) as resp:
                state = json.load(resp)
            if state.get("aliveworkers", 0) >= 1:
                return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError("the Spark worker did not register with the master")


@pytest.fixture(scope="session")
def cluster(installed_venv: Path, tmp_path_factory) -> Iterator[Cluster]:
    """A master and a worker on loopback (see the module docstring)."""
    folder = tmp_path_factory.mktemp("cluster")
    spark_class = _spark_home() / "bin" / "spark-class"
    conf_dir = folder / "conf"
    conf_dir.mkdir()
    (conf_dir / "spark-defaults.conf").write_text(
        "spark.authenticate true\n"
        f"spark.authenticate.secret {secrets.token_hex(16)}\n"
        "spark.network.crypto.enabled true\n"
        # and for the executors the worker starts
        f"spark.executor.extraJavaOptions {os.environ.get('SPARK_SUBMIT_OPTS', '')}\n"
    )
    port, ui_port, worker_ui = free_port(), free_port(), free_port()
    master_env = _clean_env(folder / "master-home")
    master_env["SPARK_CONF_DIR"] = str(conf_dir)
    master = _start(
        [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1"]
        + ["--port", port, "--webui-port", ui_port],
        master_env,
        folder / "master.log",
    )
    worker_home = folder / "worker-home"
    env_root = CLUSTER_CACHE / "node-envs"  # a node's disk outlives one test session
    worker_env = _clean_env(worker_home)
    worker_env["SPARK_CONF_DIR"] = str(conf_dir)
    local_dir = folder / "local"  # executors' scratch space (Spark's default: /tmp)
    local_dir.mkdir()
    worker_env["SPARK_LOCAL_DIRS"] = str(local_dir)
    worker_env["PATH"] = os.pathsep.join([str(installed_venv.parent), worker_env["PATH"]])
    uv = find_uv()
    worker_env["UV_CACHE_DIR"] = _run([uv, "cache", "dir"]).stdout.strip()
    worker_env["DAI_MLFLOW_ENV_ROOT"] = str(env_root)
    for version in ("3.8", "3.11"):
        found = find_python(version)
        worker_env[f"DAI_MLFLOW_PYTHON_{version.replace('.', '_')}"] = str(found.executable)
    master_url = f"spark://127.0.0.1:{port}"
    worker = _start(
        [spark_class, "org.apache.spark.deploy.worker.Worker", master_url, "--host", "127.0.0.1"]
        + ["--cores", "2", "--memory", "4g", "--webui-port", worker_ui]
        + ["--work-dir", folder / "work"],
        worker_env,
        folder / "worker.log",
    )
    ui_url = f"http://127.0.0.1:{ui_port}"
    try:
        _wait_for_worker(ui_url, (master, worker))
        yield Cluster(
            master_url,
            ui_url,
            worker_home,
            env_root,
            folder,
            installed_venv,
            conf_dir,
            folder / "work",
            local_dir,
            worker.pid,
        )
    finally:
        for proc in (worker, master):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
