"""Make MLflow's ``uv`` and ``virtualenv`` env managers work offline with local interpreters.

``mlflow.pyfunc.spark_udf`` (and ``mlflow models predict``) rebuild a model's env in a fresh
temporary root on every call. Offline that breaks in three measured ways, each fixed here on the
driver side, without touching MLflow:

* ``virtualenv``: MLflow runs ``pyenv install --skip-existing X`` with ``PYENV_ROOT`` set to the
  fresh root, so pyenv downloads CPython. :func:`tool_dir` puts the offline ``pyenv`` wrapper
  (``dai_mlflow/pyenv_offline``) first on PATH; it links ``$PYENV_ROOT/versions/X`` to a local
  interpreter of exactly X.
* ``uv``: ``uv venv --python=X`` only sees interpreters on PATH and in uv's own folder; a pyenv
  3.8 that is installed but not selected is invisible, so uv tries a download. The tool dir holds
  ``python3.8``/``python3.8.18`` links (and ``uv`` itself), and ``UV_PYTHON_DOWNLOADS=never``
  turns a miss into an error instead of a network call.
* The model server MLflow starts in that env inherits the Spark worker's environment: its
  ``PYTHONPATH`` names the driver's ``pyspark.zip`` (PySpark 4 needs Python >= 3.9), so a Python
  3.8 model server importing mlflow dies with ``module 'importlib.resources' has no attribute
  'files'``. :func:`model_server_env` blanks the Spark variables for the server; nothing in
  MLflow's stdin server needs them.
* The server also inherits the driver's ``MLFLOW_TRACKING_URI``. Loading a model enables
  MLflow tracing, which opens that store: MLflow 2.17 (the Python 3.8 env) opening the driver's
  MLflow 3 sqlite store logs "Can't locate revision" (and could race other servers on it).
  :func:`model_server_env` asks the server (:mod:`dai_mlflow.spark_model_server`) for a private
  scratch store instead: one per server process, removed when it exits.

Stdlib only and Python 3.8-safe (the module is imported by ``spark_inference/score.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional

from dai_mlflow.pythons import PYENV_OFFLINE_SCRIPT, find_python, write_tools
from dai_mlflow.venvs import find_uv

ENV_MANAGERS = ("local", "uv", "virtualenv")
BUILDING_ENV_MANAGERS = ("uv", "virtualenv")

# Variables a Spark Python worker carries that must not reach a model server running another
# Python: they put the driver's pyspark (and its py4j) on the server's sys.path.
SPARK_WORKER_VARS = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "SPARK_HOME",
    "PYSPARK_PYTHON",
    "PYSPARK_DRIVER_PYTHON",
    "PYSPARK_GATEWAY_PORT",
    "PYSPARK_GATEWAY_SECRET",
)

# Read by dai_mlflow/spark_model_server.py (which must not import this module).
PRIVATE_TRACKING_ENV = "DAI_MLFLOW_PRIVATE_TRACKING"

_tool_dirs: Dict[str, Path] = {}


def _which_outside(name: str, exclude: Path) -> Optional[str]:
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder or ".") / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            try:
                if candidate.parent.resolve() == exclude.resolve():
                    continue
            except OSError:
                continue
            return str(candidate)
    return None


def tools_root() -> Path:
    """Where tool dirs live: ``$XDG_CACHE_HOME/dai-mlflow/tools`` or ``~/.cache/...``."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "dai-mlflow" / "tools"


def tool_dir(python_version: str) -> Path:
    """A folder with ``pyenv`` (offline wrapper), ``uv`` and ``python3.X`` links.

    It is persistent (keyed by what the links point at): ``uv venv`` records the interpreter
    path it found as the env's home, and the envs of :mod:`dai_mlflow.model_envs` outlive this
    process, so a temporary folder would leave them pointing at nothing. Created atomically
    (a temporary folder renamed into place), so concurrent drivers share it safely.

    Args:
        python_version: the model's Python (``3.8.18``); the exact version is linked as
            ``python3.8.18`` and its minor as ``python3.8``.

    Raises:
        PythonNotFoundError: no local interpreter of that version.
    """
    if python_version in _tool_dirs and _tool_dirs[python_version].is_dir():
        return _tool_dirs[python_version]
    interp = find_python(python_version)
    uv = find_uv()
    what = [os.path.realpath(interp.executable), interp.version, uv and os.path.realpath(uv)]
    digest = hashlib.sha256(json.dumps(what).encode() + PYENV_OFFLINE_SCRIPT.read_bytes())
    folder = tools_root() / f"py{python_version}-{digest.hexdigest()[:16]}"
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=str(folder.parent)))
        try:
            write_tools(tmp, [interp], uv)
            os.chmod(str(tmp), 0o755)
            try:
                os.rename(str(tmp), str(folder))
            except OSError:
                if not folder.is_dir():  # not a concurrent winner: a real failure
                    raise
        finally:
            shutil.rmtree(str(tmp), ignore_errors=True)
    _tool_dirs[python_version] = folder
    return folder


def env_build_env(python_version: str) -> Dict[str, str]:
    """Variables under which MLflow builds a model env offline with a local interpreter."""
    folder = tool_dir(python_version)
    env = {
        "PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', '')}",
        "UV_PYTHON_DOWNLOADS": "never",
    }
    real_pyenv = _which_outside("pyenv", folder)
    if real_pyenv:
        env["DAI_MLFLOW_REAL_PYENV"] = real_pyenv
    root = os.environ.get("PYENV_ROOT")
    if root:
        # MLflow overrides PYENV_ROOT for the install; the wrapper still needs the real one.
        env["DAI_MLFLOW_REAL_PYENV_ROOT"] = root
    return env


def model_server_env() -> Dict[str, str]:
    """Overrides for the model server's environment: no trace of the driver's Spark install,
    and a private tracking store per server instead of the driver's."""
    env = dict.fromkeys(SPARK_WORKER_VARS, "")
    env[PRIVATE_TRACKING_ENV] = "1"
    return env


@contextmanager
def patched_environ(update: Dict[str, str]) -> Iterator[None]:
    """Set ``update`` in ``os.environ`` for the block, then restore the previous values."""
    saved = {k: os.environ.get(k) for k in update}
    os.environ.update(update)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
