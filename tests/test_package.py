"""The package type-checks (mypy, as ``make lint`` runs it) and imports on Python 3.8.

mypy follows ``module.NAME`` across files, so a name that moved (``CHALLENGER`` from
``lifecycle.registry`` to ``tracking``) fails here, in the fast tests, rather than in a code path
that only a slow test (a lifecycle run, a model env) reaches.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fixtures_model import dai110_project_python

REPO = Path(__file__).resolve().parents[1]


def _mypy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mypy", *args],
        cwd=str(REPO), capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_mypy_is_clean_on_the_package() -> None:
    proc = _mypy()
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "no issues found" in proc.stdout


def test_mypy_finds_a_name_that_moved_away(tmp_path: Path) -> None:
    # The reader the CI run of an earlier round failed on: the aliases moved to tracking.
    module = tmp_path / "reader.py"
    module.write_text(textwrap.dedent("""\
        from dai_mlflow.lifecycle import registry
        from dai_mlflow import tracking


        def f() -> object:
            return registry.CHAMPIONS, tracking.CHAMPION
        """))  # fmt: skip
    proc = _mypy(str(module))
    assert proc.returncode == 1
    assert 'Module has no attribute "CHAMPIONS"' in proc.stdout, proc.stdout
    assert "tracking.CHAMPION" not in proc.stdout


_IMPORT_ALL = r"""
import importlib, pkgutil, sys
import dai_mlflow
failed = []
for info in pkgutil.walk_packages(dai_mlflow.__path__, "dai_mlflow."):
    if info.name.endswith("__main__") or ".standin.runtime" in info.name:
        continue
    try:
        importlib.import_module(info.name)
    except Exception as e:
        failed.append(f"{info.name}: {type(e).__name__}: {e}")
print("\n".join(failed))
sys.exit(1 if failed else 0)
"""


@pytest.mark.venv
def test_every_module_imports_on_python_38() -> None:
    """mypy checks as Python 3.10 (its oldest target); the DAI 1.10 project env (Python 3.8,
    MLflow 2.17) imports every module, so no 3.9+ construct runs at import time."""
    python = dai110_project_python()
    proc = subprocess.run(
        [str(python), "-c", _IMPORT_ALL], cwd=str(REPO), capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
