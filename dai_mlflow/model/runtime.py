"""Process fixes a DAI scorer needs, the folder it runs in, and a guard it cannot escape.

:func:`prepare_process` applies the hooks' interpreter-start fixes again (for a model loaded into
an env without the hooks wheel); :func:`scorer_workdir`/:func:`in_workdir` run the scorer in a
writable per-process folder (it writes ``./tmp``; recipes in ``scoring-pipeline/tmp`` are copied
there); :func:`scorer_guard` turns its ``sys.exit`` into a :class:`ScorerExitError`.
Model-side module: stdlib only, Python 3.8-safe. See docs/model-hooks.md.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Deque, Iterator, List, Optional

from dai_mlflow.errors import DaiMlflowError
from dai_mlflow.model.hooks import (
    drop_foreign_spark,
    ensure_stream_filenos,
    fill_importlib_resources,
)
from dai_mlflow.model.license import LICENSE_FILE_ENV, LICENSE_KEY_ENV, redact_license

WORKDIR_ROOT_ENV = "DAI_MLFLOW_SCORER_WORKDIR"
# "2026-12-02 08:26:02 ERROR " / "2026-12-02 08:26:02,123 - ERROR - ": a log line's stamp.
_LOG_PREFIX = re.compile(
    r"^\[?\d{4}-\d\d-\d\d[ T][\d:.,]+\]?\s*(?:[-|:]\s*)?"
    r"(?:(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\s*(?:[-|:]\s*)?)?"
)
_TAIL_LINES = 200
_POLL_SECONDS = 0.05

_lock = threading.RLock()
_workdir: Optional[Path] = None
_workdir_pid: Optional[int] = None


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


def prepare_process() -> List[str]:
    """The hooks' fixes, for a process that did not start with them (idempotent).

    Returns:
        The ``sys.path`` entries taken off (another Python's PySpark).
    """
    ensure_stream_filenos()
    removed = drop_foreign_spark()
    fill_importlib_resources()
    return removed


class ScorerExitError(DaiMlflowError):
    """The DAI scorer tried to end the process (``sys.exit``) or raised a ``BaseException``.

    The process was kept alive; the message quotes what the scorer printed about it.
    """


class _Recorder:
    """Keeps the last lines written through it (text or bytes), thread-safe."""

    def __init__(self) -> None:
        self.lines: Deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._partial = ""
        self._lock = threading.Lock()

    def add(self, data: Any) -> None:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        with self._lock:
            parts = (self._partial + text).split("\n")
            self._partial = parts.pop()
            self.lines.extend(p.rstrip("\r") for p in parts)

    def text_lines(self) -> List[str]:
        with self._lock:
            return [*self.lines, self._partial]


class _TeeStream:
    """``sys.stderr`` stand-in: writes through and records (hosts whose stderr is no fd 2)."""

    def __init__(self, stream: Any, recorder: _Recorder) -> None:
        self._stream = stream
        self._recorder = recorder

    def write(self, data: str) -> int:
        self._recorder.add(data)
        return self._stream.write(data) if self._stream is not None else len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Fd2Tail:
    """Routes fd 2 into a temporary file for a block; a thread passes it on live and records it.

    A file rather than a pipe: a process the scorer starts (DAI starts servers) inherits fd 2
    and may write long after the block; into a pipe nobody reads any more it would block.
    """

    def __init__(self, recorder: _Recorder) -> None:
        self._recorder = recorder
        self._saved = -1
        self._file: Any = None
        self._offset = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> _Fd2Tail:
        _flush_stderr()
        try:
            self._saved = os.dup(2)
            self._file = tempfile.TemporaryFile()
            os.dup2(self._file.fileno(), 2)
        except OSError:  # no usable fd 2 (a daemon): the Python-level tee still records
            self._close()
            return self
        self._thread = threading.Thread(target=self._run, name="dai-mlflow-stderr", daemon=True)
        self._thread.start()
        return self

    def _pass_on(self) -> None:
        while True:
            data = os.pread(self._file.fileno(), 65536, self._offset)
            if not data:
                return
            self._offset += len(data)
            self._recorder.add(data)
            with contextlib.suppress(OSError):
                os.write(self._saved, data)

    def _run(self) -> None:
        while not self._stop.wait(_POLL_SECONDS):
            self._pass_on()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._saved >= 0:
            os.close(self._saved)
        self._file, self._saved = None, -1

    def __exit__(self, *exc: Any) -> None:
        if self._thread is None:
            return
        _flush_stderr()
        os.dup2(self._saved, 2)
        self._stop.set()
        self._thread.join()
        self._pass_on()
        self._close()


def _flush_stderr() -> None:
    for stream in (sys.stderr, sys.__stderr__):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()


@contextlib.contextmanager
def _captured_stderr(recorder: _Recorder) -> Iterator[None]:
    tee = _TeeStream(sys.stderr, recorder)
    sys.stderr = tee
    try:
        with _Fd2Tail(recorder):
            yield
    finally:
        if sys.stderr is tee:  # the scorer may have installed its own stream meanwhile
            sys.stderr = tee._stream


def _reason(lines: List[str], exc: BaseException) -> str:
    """The line that says why: the last one about the license, else the exit message."""
    printed = [ln.strip() for ln in lines if ln.strip()]
    about_license = [ln for ln in printed if "licen" in ln.lower()]
    if about_license:
        return _LOG_PREFIX.sub("", about_license[-1])
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code.strip():
        return code.strip().splitlines()[0]
    if not isinstance(exc, SystemExit) and str(exc).strip():
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    return printed[-1] if printed else ""


def describe_exit(action: str, exc: BaseException, lines: List[str]) -> str:
    """One line: what the scorer did, while doing what, and why (license lines first)."""
    if isinstance(exc, SystemExit):
        what = f"called sys.exit({exc.code!r})"
    else:
        what = f"raised {type(exc).__name__}"
    reason = redact_license(_reason(lines, exc))[:500]
    message = f"the DAI scorer {what} while {action}; the process was kept alive"
    if reason:
        message += f": {reason}"
    if "licen" in reason.lower() and LICENSE_FILE_ENV not in reason:
        message += (
            f" (license read from {LICENSE_KEY_ENV}, {LICENSE_FILE_ENV} or "
            "~/.driverlessai/license.sig)"
        )
    return message


@contextlib.contextmanager
def scorer_guard(action: str, capture: bool = True) -> Iterator[None]:
    """Run DAI scorer code so that it cannot end this process.

    Args:
        action: what the block does, for the message ("building the scorer").
        capture: also record what is printed on stderr (fd 2 and ``sys.stderr``) meanwhile,
            passing it on live, so the message can quote the scorer's reason. Costs a thread;
            use it for one-off steps, not per batch.

    Raises:
        ScorerExitError: the block raised ``SystemExit`` or another ``BaseException`` that is
            not an ``Exception``, ``KeyboardInterrupt`` or ``GeneratorExit``.
    """
    recorder = _Recorder()
    capturing = _captured_stderr(recorder) if capture else contextlib.nullcontext()
    try:
        with capturing:
            yield
    except (KeyboardInterrupt, GeneratorExit, Exception):
        raise
    except BaseException as e:
        raise ScorerExitError(describe_exit(action, e, recorder.text_lines())) from e
