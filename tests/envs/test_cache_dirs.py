"""Default cache folders (model envs, extracted experiment wheels) must be the user's own.

With a read-only home they fall back to ``<tmp>/dai-mlflow-<uid>/``; another local user who
made that folder first must not get code into the scorer process.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from dai_mlflow.envs.model_env import ENV_ROOT_ENV, env_root
from dai_mlflow.errors import DaiMlflowError
from dai_mlflow.model.experiment import (
    EXPERIMENT_CACHE_ENV,
    ExperimentWheelError,
    activate_experiment,
    cache_root,
    file_sha256,
)

MODULE = "scoring_h2oai_experiment_cachetest"
needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another uid needs root"
)


@pytest.fixture
def read_only_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No writable home (even for root: the home lies under a regular file), tmp in tmp_path."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    monkeypatch.setenv("HOME", str(blocker / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv(ENV_ROOT_ENV, raising=False)
    monkeypatch.delenv(EXPERIMENT_CACHE_ENV, raising=False)
    shared_tmp = tmp_path / "tmp"
    shared_tmp.mkdir()
    shared_tmp.chmod(0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(shared_tmp))
    return shared_tmp / f"dai-mlflow-{os.getuid()}"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _pipeline_with_wheel(folder: Path) -> Path:
    """A scoring-pipeline folder whose experiment wheel is harmless."""
    folder.mkdir()
    wheel = folder / f"{MODULE}-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"{MODULE}/__init__.py", "ORIGIN = 'the model'\n")
    return wheel


def _plant(base: Path, wheel: Path) -> None:
    """What another user leaves in the fallback: a "complete" folder for the model's wheel."""
    planted = base / "experiments" / file_sha256(wheel)
    (planted / MODULE).mkdir(parents=True)
    (planted / MODULE / "__init__.py").write_text("ORIGIN = 'someone else'\n")
    (planted / ".dai-mlflow-complete").write_text(wheel.name + "\n")


@pytest.fixture
def forget_module():
    yield
    for name in [n for n in sys.modules if n.split(".")[0] == MODULE]:
        del sys.modules[name]
    sys.path[:] = [p for p in sys.path if "dai-mlflow-" not in p]


def test_fallback_folders_are_created_private(read_only_home: Path, forget_module) -> None:
    assert env_root() == read_only_home / "envs"
    assert cache_root() == read_only_home / "experiments"
    for folder in (read_only_home, read_only_home / "envs", read_only_home / "experiments"):
        assert _mode(folder) == 0o700, folder


@needs_root
def test_fallback_made_by_another_user_is_refused(
    read_only_home: Path, tmp_path: Path, forget_module
) -> None:
    wheel = _pipeline_with_wheel(tmp_path / "scoring-pipeline")
    _plant(read_only_home, wheel)
    read_only_home.chmod(0o755)
    for path in [read_only_home, *read_only_home.rglob("*")]:
        os.chown(path, 12345, 12345)
    with pytest.raises(ExperimentWheelError) as e:
        activate_experiment(wheel.parent, MODULE)
    msg = str(e.value)
    assert "\n" not in msg
    assert "owned by uid 12345" in msg
    assert EXPERIMENT_CACHE_ENV in msg
    assert MODULE not in sys.modules
    with pytest.raises(DaiMlflowError, match=f"owned by uid 12345.*{ENV_ROOT_ENV}"):
        env_root()


def test_group_writable_fallback_is_refused(
    read_only_home: Path, tmp_path: Path, forget_module
) -> None:
    wheel = _pipeline_with_wheel(tmp_path / "scoring-pipeline")
    _plant(read_only_home, wheel)
    read_only_home.chmod(0o770)
    with pytest.raises(ExperimentWheelError, match="written by group or others"):
        activate_experiment(wheel.parent, MODULE)
    assert MODULE not in sys.modules
    with pytest.raises(DaiMlflowError, match="written by group or others"):
        env_root()


def test_symlinked_fallback_is_refused(read_only_home: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    read_only_home.symlink_to(elsewhere)
    with pytest.raises(DaiMlflowError, match="symbolic link"):
        env_root()


def test_private_fallback_loads_the_models_own_code(
    read_only_home: Path, tmp_path: Path, forget_module
) -> None:
    wheel = _pipeline_with_wheel(tmp_path / "scoring-pipeline")
    code = activate_experiment(wheel.parent, MODULE)
    assert code is not None
    assert code.path.parent == read_only_home / "experiments"
    assert __import__(MODULE).ORIGIN == "the model"


def test_group_writable_home_cache_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(ENV_ROOT_ENV, raising=False)
    envs = home / ".cache" / "dai-mlflow" / "envs"
    envs.mkdir(parents=True)
    envs.chmod(0o775)
    with pytest.raises(DaiMlflowError, match=f"written by group or others.*{ENV_ROOT_ENV}"):
        env_root()
    envs.chmod(0o755)
    assert env_root() == envs


def test_explicit_roots_are_the_users_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv(ENV_ROOT_ENV, str(shared))
    monkeypatch.setenv(EXPERIMENT_CACHE_ENV, str(shared))
    assert env_root() == shared
    assert cache_root() == shared
