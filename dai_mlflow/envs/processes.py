"""Child processes that run another Python: what they must not inherit, and how they end.

* :data:`FOREIGN_PYTHON_VARS`: variables a Spark Python worker (or any activated env) carries
  that point a child interpreter of *another* env at the wrong packages (``PYTHONPATH`` naming the
  driver's ``pyspark.zip``, ``VIRTUAL_ENV``, ...). Servers started in a model's env drop them.
* :func:`parent_death_signal`: run in a child before it ``exec``s (``preexec_fn``), so that it
  gets SIGTERM when the process that started it dies, even by SIGKILL (Linux ``prctl``).
* Servers on loopback (the tracking bridge, model servers, the deploy endpoint's processes):
  :func:`free_port`, :func:`start_logged`, :func:`wait_answering`, :func:`last_log_line`,
  :func:`stop_session`.

Stdlib only; Python 3.8-safe.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence

FOREIGN_PYTHON_VARS = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "VIRTUAL_ENV",
    "SPARK_HOME",
    "PYSPARK_PYTHON",
    "PYSPARK_DRIVER_PYTHON",
    "PYSPARK_GATEWAY_PORT",
    "PYSPARK_GATEWAY_SECRET",
)
_PR_SET_PDEATHSIG = 1


def without_foreign_python(environ: Mapping[str, str], drop: Sequence[str] = ()) -> Dict[str, str]:
    """``environ`` minus :data:`FOREIGN_PYTHON_VARS` (and ``drop``)."""
    return {k: v for k, v in environ.items() if k not in FOREIGN_PYTHON_VARS and k not in drop}


def parent_death_signal() -> None:
    """In a child, before ``exec``: SIGTERM when its parent dies (no-op where unsupported)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start_logged(
    cmd: Sequence[str],
    env: Mapping[str, str],
    log: Path,
    cwd: Optional[Path] = None,
    detached: bool = False,
) -> subprocess.Popen:
    """Start ``cmd`` in a session of its own (a process group :func:`stop_session` ends whole),
    its output appended to ``log``, no stdin. It gets SIGTERM when this process dies, unless
    ``detached`` (a server meant to outlive the command that started it)."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(cmd), env=dict(env), cwd=str(cwd) if cwd else None,
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=None if detached else parent_death_signal,
        )  # fmt: skip


def wait_answering(url: str, running: Callable[[], bool], timeout: float) -> str:
    """Poll ``GET url`` until it answers 200: ``""`` then; ``"exited"`` when ``running()`` turns
    false first; ``"timeout"`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running():
            return "exited"
        with contextlib.suppress(urllib.error.URLError, OSError), urllib.request.urlopen(
            url, timeout=2
        ) as resp:
            if resp.status == 200:
                return ""
        time.sleep(0.25)
    return "timeout"


def last_log_line(path: Path, lines: int = 40) -> str:
    """The line of a server's log that says what went wrong: the last error among its last
    ``lines``, else its last line."""
    if not path.is_file():
        return "(no log)"
    text = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in text[-lines:] if "Error" in ln or "error" in ln or "Exception" in ln]
    return ((errors or text or ["(empty log)"])[-1])[:300]


def stop_session(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the process group :func:`start_logged` made, SIGKILL it after ``grace`` seconds;
    no member (gunicorn and uvicorn workers share it) outlives the leader."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace)
    _signal_group(proc.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
