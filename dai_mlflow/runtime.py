"""Process fixes a DAI scorer needs before it is imported, and the folder it runs in.

* :func:`ensure_stream_filenos`: native libraries loaded by the scorer call ``fileno()`` on
  ``sys.stdout``/``sys.stderr``; serving hosts replace them with objects that have none
  (``'StreamToLogger' object has no attribute 'fileno'``). Such streams are wrapped so that
  ``fileno()`` answers 1 / 2.
* :func:`isolate_from_foreign_spark`: a Spark driver puts its own pyspark/py4j (built for a newer
  Python) on the worker's ``PYTHONPATH``. Importing it from Python 3.8 fails
  (``importlib.resources`` has no ``files``). Entries that provide pyspark/py4j from outside this
  interpreter's prefix are taken off ``sys.path`` (and already-imported foreign modules
  forgotten); on Python < 3.9 ``importlib.resources.files``/``as_file`` are filled in from the
  ``importlib_resources`` backport when it is installed.
* :func:`scorer_workdir` / :func:`in_workdir`: the scorer writes ``./tmp`` under the current
  folder, so it runs in a writable per-process folder (never the model folder, which may be
  read-only, nor the caller's cwd). Custom recipes shipped in ``scoring-pipeline/tmp`` are copied
  there first.

Model-side module: stdlib only, Python 3.8-safe.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator, List, Optional

WORKDIR_ROOT_ENV = "DAI_MLFLOW_SCORER_WORKDIR"
_SPARK_PACKAGES = ("pyspark", "py4j")

_lock = threading.RLock()
_workdir: Optional[Path] = None
_workdir_pid: Optional[int] = None


class _FilenoStream:
    """Delegates to a stream but answers ``fileno()`` with a real descriptor."""

    def __init__(self, stream: Any, fd: int) -> None:
        self._stream = stream
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def write(self, data: str) -> int:
        if self._stream is None:
            return len(data)
        return self._stream.write(data)

    def flush(self) -> None:
        if self._stream is not None and hasattr(self._stream, "flush"):
            self._stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _has_fileno(stream: Any) -> bool:
    try:
        return isinstance(stream.fileno(), int)
    except Exception:  # any failure means "no usable fileno"  # noqa: BLE001
        return False


def ensure_stream_filenos() -> None:
    """Give ``sys.stdout``/``sys.stderr`` a working ``fileno()`` (idempotent)."""
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        if not _has_fileno(stream):
            setattr(sys, name, _FilenoStream(stream, fd))


def _prefixes() -> List[str]:
    found = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    return sorted(found)


def _is_foreign_spark_entry(entry: str, prefixes: List[str]) -> bool:
    if not entry:
        return False
    real = os.path.realpath(entry)
    if any(real == p or real.startswith(p + os.sep) for p in prefixes):
        return False
    base = os.path.basename(real).lower()
    if base.endswith(".zip") and base.startswith(_SPARK_PACKAGES):
        return True
    return os.path.isdir(real) and any(
        os.path.isfile(os.path.join(real, pkg, "__init__.py")) for pkg in _SPARK_PACKAGES
    )


def isolate_from_foreign_spark() -> List[str]:
    """Drop pyspark/py4j ``sys.path`` entries from outside this interpreter; patch 3.8.

    Returns:
        The removed entries.
    """
    prefixes = _prefixes()
    removed = [e for e in sys.path if _is_foreign_spark_entry(e, prefixes)]
    if removed:
        sys.path[:] = [e for e in sys.path if e not in removed]
        for name in list(sys.modules):
            if name.split(".")[0] in _SPARK_PACKAGES:
                mod_file = getattr(sys.modules[name], "__file__", None) or ""
                if any(os.path.realpath(mod_file).startswith(os.path.realpath(r)) for r in removed):
                    del sys.modules[name]
    _backport_importlib_resources()
    return removed


def _backport_importlib_resources() -> None:
    if sys.version_info >= (3, 9):
        return
    import importlib.resources as resources

    if hasattr(resources, "files"):
        return
    try:
        import importlib_resources as backport
    except ImportError:
        return
    resources.files = backport.files  # type: ignore[attr-defined]
    resources.as_file = backport.as_file  # type: ignore[attr-defined]


def scorer_workdir(pipeline_dir: Optional[Path] = None) -> Path:
    """This process's writable scorer folder, created on first use (again after a fork).

    Args:
        pipeline_dir: the scoring-pipeline folder; its ``tmp/`` (custom recipes) is copied in.
    """
    global _workdir, _workdir_pid
    with _lock:
        if _workdir is None or _workdir_pid != os.getpid() or not _workdir.is_dir():
            root = os.environ.get(WORKDIR_ROOT_ENV) or None
            if root:
                Path(root).mkdir(parents=True, exist_ok=True)
            _workdir = Path(tempfile.mkdtemp(prefix=f"dai-scorer-{os.getpid()}-", dir=root))
            _workdir_pid = os.getpid()
            shipped = pipeline_dir / "tmp" if pipeline_dir else None
            if shipped is not None and shipped.is_dir():
                shutil.copytree(shipped, _workdir / "tmp")
        return _workdir


@contextlib.contextmanager
def in_workdir(workdir: Path) -> Iterator[Path]:
    """Run the block with ``workdir`` as cwd, restoring the caller's cwd afterwards.

    The cwd is process-wide, so blocks are serialised by a lock.
    """
    with _lock:
        before = os.getcwd()
        os.chdir(workdir)
        try:
            yield workdir
        finally:
            os.chdir(before)
