"""Let MLflow's ``uv`` and ``virtualenv`` env managers restore model envs offline.

A *tool dir* put first on PATH holds an offline ``pyenv`` wrapper
(``dai_mlflow/envs/pyenv_offline``: links ``$PYENV_ROOT/versions/X`` to a local interpreter),
``python3.X`` links and ``uv``; with ``UV_PYTHON_DOWNLOADS=never`` a miss is an error, not a
download. ``venvs/pythons`` is that folder for the DAI Pythons; MLflow is not touched.
Stdlib only and Python 3.8-safe. See docs/model-envs.md, "MLflow's own env managers, offline".
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

from dai_mlflow.envs.pythons import PYENV_OFFLINE_SCRIPT, find_python, write_tools
from dai_mlflow.envs.venvs import find_uv

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
    path it found as the env's home, and restored envs outlive this process, so a temporary
    folder would leave them pointing at nothing. Created atomically
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
