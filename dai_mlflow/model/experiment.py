"""Load a model's DAI experiment wheel from its own artifacts, never from the shared env.

The wheel is extracted once per sha256 into a cache (renamed into place, so concurrent loads
never see half a folder), which goes first on ``sys.path`` after a same-named module loaded from
elsewhere is forgotten. A cache folder picked by default must be the user's own
(:func:`private_dir`): its code runs in the process that holds the license.
Model-side module: stdlib only, Python 3.8-safe. See docs/model-envs.md.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import stat
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from dai_mlflow.errors import DaiMlflowError

EXPERIMENT_CACHE_ENV = "DAI_MLFLOW_EXPERIMENT_CACHE"
PIPELINE_ARTIFACT = "scoring-pipeline"  # the artifact key and its folder under artifacts/
_COMPLETE_MARKER = ".dai-mlflow-complete"


class ExperimentWheelError(DaiMlflowError):
    """The experiment wheel is missing, unreadable, or cannot be extracted."""


@dataclass(frozen=True)
class ExperimentCode:
    """An experiment wheel made importable.

    Attributes:
        module_name: the scorer module (``scoring_h2oai_experiment_<key>``).
        wheel: the wheel file in the model's artifacts.
        sha256: hex digest of the wheel's bytes (the cache key).
        path: the extracted folder put on ``sys.path``.
    """

    module_name: str
    wheel: Path
    sha256: str
    path: Path


def _canonical(name: str) -> str:
    return name.replace("-", "_").replace(".", "_").lower()


def find_experiment_wheel(pipeline_dir: Path, module_name: str) -> Optional[Path]:
    """The wheel of ``module_name`` inside ``pipeline_dir`` (``<module>-<version>-...whl``)."""
    if not pipeline_dir.is_dir():
        return None
    wanted = _canonical(module_name)
    found = sorted(
        p for p in pipeline_dir.glob("*.whl") if _canonical(p.name.split("-")[0]) == wanted
    )
    return found[-1] if found else None


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def writable_dir(folder: Path) -> bool:
    """Whether ``folder`` exists (made if need be) and can be written to."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(str(folder), os.W_OK | os.X_OK)


def temp_cache_base() -> Path:
    """``<tmp>/dai-mlflow-<uid>``: the per-user fallback when the home cache cannot be written."""
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"dai-mlflow-{uid}"


def unsafe_reason(folder: Path) -> Optional[str]:
    """Why another user could change what ``folder`` holds, or None when only we can."""
    try:
        st = os.lstat(str(folder))
    except OSError as e:
        return f"cannot be inspected ({e.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a folder"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"is owned by uid {st.st_uid}, not by you (uid {os.getuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"can be written by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def private_dir(folder: Path, setting: str, mode: int = 0o700) -> Path:
    """``folder`` created with ``mode`` if missing, after checking it is ours alone.

    Args:
        folder: a cache folder picked by default.
        setting: the variable that names another folder (said in the error).
        mode: mode of a folder created now (its parents get the usual mode).

    Raises:
        DaiMlflowError: it exists but another user owns it, group or others can write it, or it
            is a link; or it cannot be created.
    """
    try:
        folder.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError as e:
        raise DaiMlflowError(
            f"cannot create the cache folder {folder} ({e.strerror}); set {setting} to a "
            "writable folder"
        ) from e
    reason = unsafe_reason(folder)
    if reason:
        raise DaiMlflowError(
            f"refusing the cache folder {folder}: it {reason}, so code put there by someone "
            f"else could run with your license; remove it, or set {setting} to a folder of "
            "your own"
        )
    return folder


def cache_candidates() -> List[Path]:
    """Cache folders in order of preference (see the module docstring)."""
    explicit = os.environ.get(EXPERIMENT_CACHE_ENV)
    if explicit:
        return [Path(explicit).expanduser()]
    xdg = os.environ.get("XDG_CACHE_HOME")
    home_cache = Path(xdg) if xdg else Path(os.path.expanduser("~")) / ".cache"
    return [home_cache / "dai-mlflow" / "experiments", temp_cache_base() / "experiments"]


def default_cache_dir(home: Path, fallback: Path, setting: str) -> Path:
    """``home`` (created ``0755``) when it can be written, else ``fallback`` (created ``0700``,
    as is its parent ``<tmp>/dai-mlflow-<uid>``); whichever is picked must be ours alone.

    Raises:
        DaiMlflowError: the picked folder is not private (see :func:`private_dir`), or neither
            can be written.
    """
    try:
        home.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError:
        pass  # a read-only home (cluster nodes): the fallback
    else:
        if os.access(str(home), os.W_OK | os.X_OK):
            return private_dir(home, setting, mode=0o755)
    private_dir(fallback.parent, setting)
    folder = private_dir(fallback, setting)
    if not os.access(str(folder), os.W_OK | os.X_OK):
        raise DaiMlflowError(f"no writable cache folder (tried {home}, {fallback}); set {setting}")
    return folder


def cache_root() -> Path:
    """The cache folder (see the module docstring); created.

    Raises:
        ExperimentWheelError: it cannot be written, or the one picked by default is not private.
    """
    candidates = cache_candidates()
    if len(candidates) == 1:
        if writable_dir(candidates[0]):
            return candidates[0]
        raise ExperimentWheelError(
            f"the experiment cache {candidates[0]} cannot be written; set "
            f"{EXPERIMENT_CACHE_ENV} to a writable folder"
        )
    try:
        return default_cache_dir(candidates[0], candidates[1], EXPERIMENT_CACHE_ENV)
    except DaiMlflowError as e:
        raise ExperimentWheelError(str(e)) from e


def _safe_members(zf: zipfile.ZipFile, wheel: Path) -> List[zipfile.ZipInfo]:
    members = []
    for info in zf.infolist():
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
            raise ExperimentWheelError(f"{wheel}: unsafe path {name!r} in the wheel; re-export it")
        members.append(info)
    return members


def extract_wheel(wheel: Path, sha256: str, root: Path) -> Path:
    """Extract ``wheel`` into ``root/<sha256>`` once (atomic rename); return that folder.

    Raises:
        ExperimentWheelError: the wheel is unreadable or the folder cannot be written.
    """
    dest = root / sha256
    if (dest / _COMPLETE_MARKER).is_file():
        return dest
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{sha256[:12]}-{os.getpid()}-", dir=str(root)))
    except OSError as e:
        raise ExperimentWheelError(f"cannot write under {root}: {e}") from e
    try:
        with zipfile.ZipFile(str(wheel)) as zf:
            zf.extractall(str(tmp), members=_safe_members(zf, wheel))
        (tmp / _COMPLETE_MARKER).write_text(f"{wheel.name}\n")
        os.chmod(str(tmp), 0o755)  # mkdtemp made it 0700; other users may share the cache
        try:
            os.rename(str(tmp), str(dest))
        except OSError:
            # Another process renamed its complete copy first (or an incomplete folder from a
            # crashed older version sits there): keep the complete one.
            if not (dest / _COMPLETE_MARKER).is_file():
                shutil.rmtree(str(dest), ignore_errors=True)
                os.rename(str(tmp), str(dest))
    except (OSError, zipfile.BadZipFile) as e:
        raise ExperimentWheelError(
            f"cannot extract {wheel.name} into {root}: {type(e).__name__}: {e}"
        ) from e
    finally:
        shutil.rmtree(str(tmp), ignore_errors=True)
    return dest


def _import_paths(folder: Path) -> List[str]:
    """``folder`` plus the ``*.data/purelib|platlib`` folders a wheel may carry."""
    paths = [str(folder)]
    for data in sorted(folder.glob("*.data")):
        for scheme in ("purelib", "platlib"):
            if (data / scheme).is_dir():
                paths.append(str(data / scheme))
    return paths


def _forget_foreign_module(module_name: str, paths: List[str]) -> None:
    """Drop ``module_name`` (and submodules) from ``sys.modules`` if loaded from elsewhere."""
    loaded = sys.modules.get(module_name)
    if loaded is None:
        return
    origin = os.path.realpath(getattr(loaded, "__file__", None) or "")
    if any(origin.startswith(os.path.realpath(p) + os.sep) for p in paths):
        return
    for name in list(sys.modules):
        if name == module_name or name.startswith(module_name + "."):
            del sys.modules[name]


def activate_experiment(pipeline_dir: Path, module_name: str) -> Optional[ExperimentCode]:
    """Make the model's own experiment code importable as ``module_name``.

    Args:
        pipeline_dir: the model's ``scoring-pipeline`` artifact folder.
        module_name: the scorer module the model imports.

    Returns:
        What was activated, or None when the pipeline ships no wheel for ``module_name``
        (models logged with the wheel installed into their env).

    Raises:
        ExperimentWheelError: the wheel cannot be read or extracted.
    """
    wheel = find_experiment_wheel(Path(pipeline_dir), module_name)
    if wheel is None:
        return None
    try:
        sha256 = file_sha256(wheel)
    except OSError as e:
        raise ExperimentWheelError(f"cannot read {wheel}: {e}") from e
    folder = extract_wheel(wheel, sha256, cache_root())
    paths = _import_paths(folder)
    _forget_foreign_module(module_name, paths)
    for entry in reversed(paths):
        if entry in sys.path:
            sys.path.remove(entry)
        sys.path.insert(0, entry)
    importlib.invalidate_caches()
    return ExperimentCode(module_name, wheel, sha256, folder)
