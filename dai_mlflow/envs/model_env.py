"""The one way a logged model's own env is built: logging's check, lifecycle scoring, Spark, tests.

:func:`ensure_model_env` builds ``<env root>/model-py<python>-<installer>-<key>`` from the model's
``python_env.yaml`` and ``requirements.txt`` (:mod:`dai_mlflow.envs.venvs`, under a file lock),
with an interpreter found offline. :func:`run_program` runs the programs of
:mod:`dai_mlflow.model.hooks.programs` there from :func:`hooks_package`, so the env's Python
imports nothing of the caller's. Runs wherever an env is needed; stdlib (+ PyYAML); Python
3.8-safe. See docs/model-envs.md, "Where envs live and how they are keyed".
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pkgutil
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from dai_mlflow.envs.locks import file_lock
from dai_mlflow.envs.processes import without_foreign_python
from dai_mlflow.envs.pythons import find_python
from dai_mlflow.envs.venvs import (
    PYTHON_ENV_FILE_NAME,
    REQUIREMENTS_FILE_NAME,
    NoSpaceError,
    VenvSpec,
    ensure_venv,
    load_python_env,
    spec_key,
)
from dai_mlflow.errors import DaiMlflowError, PythonNotFoundError, say
from dai_mlflow.model.experiment import default_cache_dir, temp_cache_base, writable_dir
from dai_mlflow.model.hooks import MODULES, PACKAGE
from dai_mlflow.model.hooks.programs import RESULT_MARKER
from dai_mlflow.model.hooks.stdin_server import ERROR_MARKER

ENV_ROOT_ENV = "DAI_MLFLOW_ENV_ROOT"
# The env managers of every dai-mlflow command: ``local`` (the caller's env is the model's) and
# the two that build the model's env, with the installer each one builds with.
INSTALLERS = {"uv": "uv", "virtualenv": "pip"}
BUILDING_ENV_MANAGERS = tuple(INSTALLERS)
ENV_MANAGERS = ("local", *BUILDING_ENV_MANAGERS)

Progress = Callable[[str], None]


class ModelProgramError(DaiMlflowError):
    """Model-side code failed in the model's env; the message is its own error, one line."""


def _quiet(_message: str) -> None:
    pass


def model_python_version(model_dir: Path) -> str:
    """The ``python:`` of a model folder's ``python_env.yaml`` (what MLflow writes for pyfunc).

    Raises:
        DaiMlflowError: the folder has none, or it is not valid.
    """
    if not (model_dir / PYTHON_ENV_FILE_NAME).is_file():
        raise DaiMlflowError(f"{model_dir} has no {PYTHON_ENV_FILE_NAME}; is it an MLflow model?")
    return str(load_python_env(model_dir / PYTHON_ENV_FILE_NAME)["python"])


def env_root(explicit: Optional[str] = None) -> Path:
    """Where model envs live (see the module docstring); created.

    Raises:
        DaiMlflowError: the chosen root cannot be written; or the default one is not ours alone
            (another user owns it, or group or others can write it); or no root can be written.
    """
    chosen = explicit or os.environ.get(ENV_ROOT_ENV)
    if chosen:
        root = Path(chosen).expanduser()
        if not writable_dir(root):
            raise DaiMlflowError(f"the env root {root} cannot be written; pick another")
        return root
    home = Path(os.path.expanduser("~")) / ".cache" / "dai-mlflow" / "envs"
    return default_cache_dir(home, temp_cache_base() / "envs", ENV_ROOT_ENV)


def model_env_spec(model_dir: Path, installer: str = "uv") -> VenvSpec:
    """The env spec of a model folder: its ``python_env.yaml`` (``-r requirements.txt``).

    Raises:
        DaiMlflowError: the folder has no ``python_env.yaml``/``requirements.txt``.
    """
    for name in (PYTHON_ENV_FILE_NAME, REQUIREMENTS_FILE_NAME):
        if not (model_dir / name).is_file():
            raise DaiMlflowError(
                f"{model_dir} has no {name}; is it an MLflow pyfunc model logged by dai-mlflow?"
            )
    spec = VenvSpec.from_python_env(model_dir / PYTHON_ENV_FILE_NAME, installer=installer)
    try:
        find_python(spec.python)
    except PythonNotFoundError:
        minor = ".".join(spec.python.split(".")[:2])
        if minor == spec.python:
            raise
        find_python(minor)  # raises with the searched places when the minor is missing too
        say(f"Python {spec.python} not found here; building with Python {minor}")
        spec = VenvSpec(
            python=minor,
            dependencies=spec.dependencies,
            build_dependencies=spec.build_dependencies,
            base_dir=spec.base_dir,
            installer=installer,
        )
    return spec


def model_env_dir(model_dir: Path, installer: str = "uv", root: Optional[str] = None) -> Path:
    """The folder the model's env is (or would be) built in."""
    return _spec_key_dir(model_dir, installer, root)[2]


def _spec_key_dir(
    model_dir: Path, installer: str, root: Optional[str]
) -> Tuple[VenvSpec, str, Path]:
    spec = model_env_spec(model_dir, installer)
    key = spec_key(spec, find_python(spec.python))
    return spec, key, env_root(root) / f"model-py{spec.python}-{installer}-{key}"


def ensure_model_env(
    model_dir: Path,
    installer: str = "uv",
    root: Optional[str] = None,
    quiet: bool = True,
    progress: Progress = _quiet,
) -> Path:
    """Build (or reuse) the model's own env; its python.

    Concurrent callers (Spark tasks, parallel ``mlflow run``s) wait for one another's build of
    the same env; a build that fails half-way leaves nothing behind.

    Raises:
        PythonNotFoundError: no local interpreter of the model's Python.
        NoSpaceError: the disk filled (the message names the env root and how to pick another).
        VenvBuildError: the build failed.
        DaiMlflowError: the folder is no dai-mlflow model, or no env root can be written.
    """
    spec, key, dest = _spec_key_dir(model_dir, installer, root)  # hashes the wheels once
    try:
        with file_lock(dest.with_name(dest.name + ".lock")):
            python, built = ensure_venv(spec, dest, quiet=quiet, progress=progress, key=key)
    except NoSpaceError as e:
        raise NoSpaceError(
            str(dest),
            e.step,
            where=f"the model env in {dest.parent}",
            fix=f"free space there or set {ENV_ROOT_ENV} to a folder on a disk with room",
        ) from e
    except OSError as e:  # the lock file, on a disk with no room at all
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise NoSpaceError(
            str(dest),
            "taking its lock",
            where=f"the model env in {dest.parent}",
            fix=f"free space there or set {ENV_ROOT_ENV} to a folder on a disk with room",
        ) from e
    progress(f"model env {'built' if built else 'reused'}: {dest}")
    return python


def hooks_package(root: Path) -> Path:
    """A folder holding this package's model-side code as ``dai_mlflow_model_hooks``.

    Read with ``pkgutil`` (works when dai_mlflow itself came as a zip through ``addPyFile``) and
    written once per content under ``root/servers``; the model env's interpreter imports it from
    there and nothing else of this executor's Python.
    """
    files = {name: pkgutil.get_data("dai_mlflow.model.hooks", name) or b"" for name in MODULES}
    digest = hashlib.sha256()
    for name in MODULES:
        digest.update(name.encode() + b"\0" + files[name])
    folder = root / "servers" / digest.hexdigest()[:16]
    if (folder / PACKAGE / MODULES[0]).is_file():
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=str(folder.parent)))
        try:
            (tmp / PACKAGE).mkdir()
            for name, data in files.items():
                (tmp / PACKAGE / name).write_bytes(data)
            try:
                os.rename(str(tmp), str(folder))
            except OSError:
                if not (folder / PACKAGE / MODULES[0]).is_file():
                    raise
        finally:
            shutil.rmtree(str(tmp), ignore_errors=True)
    except OSError as e:
        raise DaiMlflowError(
            f"cannot write the model-side code under {folder.parent} ({e.strerror}); free space "
            f"there or set {ENV_ROOT_ENV} to a writable folder with room"
        ) from e
    return folder


def program_environ(hooks: Path, environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment of model-side code: ``environ`` (default this process's) without another
    Python's paths, with :func:`hooks_package`'s folder as the only ``PYTHONPATH``."""
    env = without_foreign_python(os.environ if environ is None else environ)
    env["PYTHONPATH"] = str(hooks)
    return env


def run_program(
    python: Path,
    program: str,
    args: Sequence[str],
    environ: Optional[Dict[str, str]] = None,
    root: Optional[str] = None,
) -> Dict[str, Any]:
    """Run one of :mod:`dai_mlflow.model.hooks.programs` with ``python`` (a model env's); its
    result.

    It runs in a scratch working folder (a DAI scorer writes ``./tmp`` there).

    Raises:
        ModelProgramError: it failed; the model's own error, one line.
    """
    hooks = hooks_package(env_root(root))
    cmd = [str(python), "-m", f"{PACKAGE}.programs", program, *map(str, args)]
    with tempfile.TemporaryDirectory(prefix=f"dai-mlflow-{program}-") as cwd:
        proc = subprocess.run(
            cmd, cwd=cwd, env=program_environ(hooks, environ), capture_output=True, text=True
        )
    results = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARKER)]
    if proc.returncode == 0 and results:
        return json.loads(results[-1][len(RESULT_MARKER) :])
    lines = [ln.strip() for ln in (proc.stdout + "\n" + proc.stderr).splitlines() if ln.strip()]
    marked = [ln.split(ERROR_MARKER, 1)[1].strip() for ln in lines if ERROR_MARKER in ln]
    detail = (marked or lines or [f"exit code {proc.returncode}, no output"])[-1]
    raise ModelProgramError(detail[:500])
