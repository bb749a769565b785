"""Fixtures of the DAI-shaped stand-in pipeline (loaded by tests/conftest.py).

- ``standin(dai_version, problem) -> StandinBuild``: a finished build under
  ``tests/.cache/standin/<dai_version>-<problem>/``, made once behind a file lock and reused
  while the builder's sources are unchanged (a build takes well under a second).
- ``standin_env(dai_version) -> Path``: the python of a venv of the line's Python with the
  pipeline's installable requirements (requirements.txt minus h2o4gpu and pyorc, under
  req_constraints_deps.txt), the h2oaicore wheel and the experiment wheels of all three
  problems. Cached under ``tests/.cache/venvs/standin-<dai_version>`` and rebuilt only when a
  wheel or a pin changes. Tests that use it should be marked ``@pytest.mark.venv``.

- ``forged_license(path) -> Path``: a license-shaped file that fails verification (made-up
  fields, a signature of zeros; nothing of a real license), as a DAI scorer meets a license that
  exists but is not valid.

Run code in that env with a subprocess, from a writable cwd, with ``build.license_env()``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Dict, List

import pytest
from filelock import FileLock

from dai_mlflow.envs.venvs import VenvSpec, ensure_venv
from dai_mlflow.standin import PROBLEMS, StandinBuild, build_pipeline, load_build

CACHE = Path(__file__).resolve().parent / ".cache"


def get_standin(dai_version: str, problem: str) -> StandinBuild:
    """Build (or reuse) the cached stand-in pipeline for a line and a problem.

    A stale build is replaced by building beside it and swapping folders, so a test session
    still reading the old folder sees it whole or gone, never half-written.
    """
    out_dir = CACHE / "standin" / f"{dai_version}-{problem}"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir) + ".lock"):
        build = load_build(out_dir)
        if build is not None:
            return build
        fresh = out_dir.with_name(out_dir.name + f".new-{os.getpid()}")
        old = out_dir.with_name(out_dir.name + f".old-{os.getpid()}")
        shutil.rmtree(fresh, ignore_errors=True)
        build_pipeline(fresh, dai_version, problem, seed=0)
        if out_dir.exists():
            out_dir.rename(old)
        fresh.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
        build = load_build(out_dir)
        assert build is not None, f"{out_dir}: the fresh build has no readable manifest"
        return build


def env_dependencies(builds: List[StandinBuild]) -> List[str]:
    """Requirement lines of the shared env: the first build's installable lines, the
    constraints, and every build's experiment wheel (absolute paths)."""
    first = builds[0]
    lines = [ln for ln in first.installable_requirements() if ln != first.experiment_wheel]
    lines.append("-c req_constraints_deps.txt")
    lines += [str(b.folder / b.experiment_wheel) for b in builds]
    return lines


def get_standin_env(dai_version: str) -> Path:
    """Python of the cached venv that can import every problem's stand-in scorer."""
    builds = [get_standin(dai_version, problem) for problem in PROBLEMS]
    dest = CACHE / "venvs" / f"standin-{dai_version}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    spec = VenvSpec(
        python=builds[0].python,
        dependencies=tuple(env_dependencies(builds)),
        base_dir=builds[0].folder,
        installer="uv",
    )
    with FileLock(str(dest) + ".lock"):
        python, _ = ensure_venv(spec, dest, quiet=True, progress=lambda _msg: None)
    return python


@pytest.fixture(scope="session")
def standin() -> Callable[[str, str], StandinBuild]:
    """Factory: ``standin("1.10", "binary")`` → a finished, cached :class:`StandinBuild`."""
    cache: Dict[tuple, StandinBuild] = {}

    def _get(dai_version: str, problem: str) -> StandinBuild:
        if (dai_version, problem) not in cache:
            cache[(dai_version, problem)] = get_standin(dai_version, problem)
        return cache[(dai_version, problem)]

    return _get


@pytest.fixture(scope="session")
def standin_env() -> Callable[[str], Path]:
    """Factory: ``standin_env("1.10")`` → python of the cached venv for that line."""
    cache: Dict[str, Path] = {}

    def _get(dai_version: str) -> Path:
        if dai_version not in cache:
            cache[dai_version] = get_standin_env(dai_version)
        return cache[dai_version]

    return _get


def forged_license(path: Path) -> Path:
    """Write a license that exists but fails the signature check; its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# dai-mlflow test: a forged license\nserial_number:forged\n"
        "expiration_date:2099/01/01\nsignature:" + "0" * 64 + "\n"
    )
    return path
