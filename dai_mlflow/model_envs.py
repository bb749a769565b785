"""Persistent model envs for ``spark_udf(env_manager="uv" | "virtualenv")``.

MLflow's ``spark_udf`` restores the model's env in a fresh temporary root on every call (MLflow
issue #12204), so every job pays a full env build. Inside :func:`persistent_model_envs`, the
backend ``spark_udf`` creates is pointed at a persistent root instead, and the env is prepared
once on the driver under a file lock:

* root: ``$DAI_MLFLOW_ENV_ROOT/mlflow`` (default ``~/.cache/dai-mlflow/envs/mlflow``), laid out
  as MLflow lays out any env root (``virtualenv_envs/``, ``pyenv_root/``, ``pip_cache_pkgs/``);
* name: MLflow's own (a hash of ``python_env.yaml`` and the requirement lines) plus an env id
  that adds the env manager and :func:`dai_mlflow.venvs.spec_key` of the model's env spec (the
  exact Python and the bytes of every wheel and requirements file it names). Models logged by
  dai-mlflow list only the wheels every pipeline of a DAI version shares (the experiment wheel
  is loaded from the model's artifacts), so a second model of that version finds its env
  ready, while a shared wheel rebuilt under the same file name gets a new env (MLflow alone
  would reuse the stale one, issue #10525);
* an env is marked ready once built; a folder without the mark (a build that was killed), or
  whose interpreter no longer starts, is removed and rebuilt. Concurrent jobs wait for each
  other's build of the same env. The interpreter links uv records live in a persistent folder
  (:func:`dai_mlflow.envmanagers.tool_dir`).

Driver side; stdlib (+ mlflow when used), Python 3.8-safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Optional

from dai_mlflow.pythons import find_python
from dai_mlflow.venvs import VenvSpec, spec_key

ENV_ROOT_ENV = "DAI_MLFLOW_ENV_ROOT"
MLFLOW_ROOT_NAME = "mlflow"
READY_FILE_NAME = ".dai-mlflow-ready"
BUILDING_ENV_MANAGERS = ("uv", "virtualenv")


def env_root() -> Path:
    """The persistent MLflow env root (not created)."""
    base = os.environ.get(ENV_ROOT_ENV)
    root = Path(base) if base else Path.home() / ".cache" / "dai-mlflow" / "envs"
    return root.expanduser() / MLFLOW_ROOT_NAME


def env_id(model_dir: Path, env_manager: str) -> str:
    """The id added to MLflow's env name: env manager + the model env spec's key."""
    spec = VenvSpec.from_python_env(model_dir / "python_env.yaml", installer="pip")
    key = spec_key(spec, find_python(spec.python))
    return f"dai-mlflow:{env_manager}:{key}"


def mlflow_env_dir(model_dir: Path, root: Path, id_: str) -> Optional[Path]:
    """Where MLflow puts the env of ``model_dir`` under ``root``; None if MLflow's private
    naming helpers moved (then readiness marks are skipped, envs still reused)."""
    try:
        from mlflow.utils.virtualenv import (
            _VIRTUALENV_ENVS_DIR,
            _get_python_env,
            _get_virtualenv_name,
        )

        name = _get_virtualenv_name(_get_python_env(model_dir), model_dir, id_)
    except Exception:  # noqa: BLE001 - private API: degrade, never fail scoring over it
        return None
    return root / _VIRTUALENV_ENVS_DIR / name


def env_folders(root: Optional[Path] = None) -> list:
    """Names of the env folders under the root (what tests and benchmarks compare)."""
    folder = (root or env_root()) / "virtualenv_envs"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created with its folder) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_usable(env_dir: Path) -> bool:
    """Built to the end (ready mark) and its interpreter still starts (its base may be gone)."""
    if not (env_dir / READY_FILE_NAME).is_file():
        return False
    try:
        probe = subprocess.run([str(env_dir / "bin" / "python"), "-c", ""], timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def prepare(backend: object, model_dir: Path, root: Path, id_: str) -> None:
    """Build (or find) the env of ``backend`` on the driver, under a lock, and mark it ready."""
    lock = root / "locks" / (hashlib.sha256(id_.encode()).hexdigest()[:16] + ".lock")
    with file_lock(lock):
        env_dir = mlflow_env_dir(model_dir, root, id_)
        if env_dir is not None and env_dir.exists() and not _is_usable(env_dir):
            print(f"[dai-mlflow] removing an unfinished or broken env: {env_dir}", file=sys.stderr)
            shutil.rmtree(str(env_dir), ignore_errors=True)
        backend.prepare_env(model_uri=str(model_dir), capture_output=False)
        if env_dir is not None and env_dir.is_dir():
            (env_dir / READY_FILE_NAME).write_text(id_ + "\n")


@contextlib.contextmanager
def persistent_model_envs(
    model_dir: Path, env_manager: str, root: Optional[Path] = None
) -> Iterator[Path]:
    """Within the block, ``mlflow.pyfunc.spark_udf`` restores envs under a persistent root.

    Args:
        model_dir: the downloaded model folder passed to ``spark_udf``.
        env_manager: ``uv`` or ``virtualenv`` (anything else: the block changes nothing).
        root: the MLflow env root (default :func:`env_root`).

    Yields:
        The root.
    """
    import mlflow.pyfunc

    root = Path(root or env_root())
    if env_manager not in BUILDING_ENV_MANAGERS:
        yield root
        return
    id_ = env_id(model_dir, env_manager)
    original = mlflow.pyfunc.get_flavor_backend

    def get_flavor_backend(model_uri, **kwargs):  # noqa: ANN001, ANN202 - MLflow's signature
        if not kwargs.get("create_env_root_dir") or kwargs.get("env_root_dir"):
            return original(model_uri, **kwargs)
        kwargs.update(create_env_root_dir=False, env_root_dir=str(root))
        backend = original(model_uri, **kwargs)
        backend._env_id = id_  # MLflow appends it to the env name's hashed text
        prepare(backend, Path(model_dir), root, id_)
        return backend

    mlflow.pyfunc.get_flavor_backend = get_flavor_backend
    try:
        yield root
    finally:
        mlflow.pyfunc.get_flavor_backend = original
