"""Shared pytest set-up: fixture modules per layer, and the cache folder for expensive builds.

Each layer keeps its fixtures in its own module (``tests/fixtures_*.py``) so that work on one
layer never edits another's. Expensive things (DAI-shaped pipelines, model envs) are cached
under ``tests/.cache`` behind a file lock, keyed by what they are built from.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / "tests" / ".cache"
# Model envs built by this process and the Spark workers it starts (which keep the environment
# they started with) go to the test cache, never to the developer's ~/.cache.
os.environ.setdefault("DAI_MLFLOW_ENV_ROOT", str(CACHE_DIR / "model-envs"))
# MLflow's env restores in this process (and what inherits its environment) use this worker's
# own root, as run_env gives the subprocesses (see tests/fixtures_model.py).
os.environ["MLFLOW_ENV_ROOT"] = str(
    CACHE_DIR / "mlflow-envs" / os.environ.get("PYTEST_XDIST_WORKER", "main")
)
# pip installs in the tests' envs (MLflow's restores, the pip-built venvs) skip compiling every
# installed module to bytecode: an MLflow-sized install takes 27 s instead of 63 s on 2 cores.
# Python compiles what is imported when it is first imported, and keeps it: the suite writes
# bytecode even where the environment says not to (this machine sets PYTHONDONTWRITEBYTECODE;
# uv-built envs have no .pyc, so without this every process that imports MLflow compiled it
# again, 3.8 s instead of 1.3 s; the full suite took 28 min instead of 35). It goes to one tree
# of the test cache (PYTHONPYCACHEPREFIX, Python >= 3.8), never into __pycache__ folders beside
# the sources: a loaded model's code/ folder is an artifact the tests compare. The installed
# files are the same; users' builds keep pip's default.
os.environ.setdefault("PIP_COMPILE", "0")
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
os.environ["PYTHONPYCACHEPREFIX"] = str(CACHE_DIR / "pycache")
sys.dont_write_bytecode = False
sys.pycache_prefix = os.environ["PYTHONPYCACHEPREFIX"]
# The suite's Spark JVMs are short-lived: they compile with C1 only and use the serial collector
# (a small local job here: 17 CPU-s instead of 28, and Spark's JVMs were the largest CPU share of
# the suite). Drivers read SPARK_SUBMIT_OPTS; the standalone cluster's daemons and executors get
# the same options (tests/fixtures_cluster.py), as does the README session's shell.
os.environ.setdefault("SPARK_SUBMIT_OPTS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")

pytest_plugins = [
    "tests.fixtures_standin",
    "tests.fixtures_model",
    "tests.fixtures_spark",
    "tests.fixtures_switch",
    "tests.fixtures_serve",
    "tests.fixtures_lifecycle",
    "tests.fixtures_reports",
    "tests.fixtures_deploy",
    "tests.fixtures_cluster",
]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    return CACHE_DIR


@pytest.fixture(autouse=True)
def _no_license_leak_from_host(monkeypatch):
    """Tests choose their license explicitly; a developer's own license never leaks in."""
    for var in ("DRIVERLESS_AI_LICENSE_KEY", "DRIVERLESS_AI_LICENSE_FILE"):
        if var in os.environ and not os.environ.get("DAI_MLFLOW_TEST_KEEP_LICENSE"):
            monkeypatch.delenv(var)


@pytest.fixture(autouse=True)
def _no_mlflow_uri_leak():
    """In-process tests point MLflow's process-wide tracking/registry URIs at their own stores;
    put back what was there (usually unset), so a later test resolves its own store."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    yield
    tracking_utils._tracking_uri, registry_utils._registry_uri = saved
