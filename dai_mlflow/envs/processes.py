"""Child processes that run another Python: what they must not inherit, how they are started,
probed over HTTP and stopped (process groups, ``/proc``).

Used by the tracking bridge, model servers and the deploy endpoint's processes (one place for
process handling). Stdlib only; Linux (``/proc``, ``prctl``); Python 3.8-safe.
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
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

# What a Spark Python worker (or any activated env) carries that points a child interpreter of
# *another* env at the wrong packages (PYTHONPATH naming the driver's pyspark.zip, ...).
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


def http_request(
    url: str,
    body: Optional[bytes] = None,
    headers: Optional[Mapping[str, str]] = None,
    timeout: float = 10.0,
) -> Tuple[int, bytes]:
    """``GET url`` (or ``POST`` ``body``); (status, body).

    Raises:
        urllib.error.URLError / OSError: no answer, or an HTTP error status (``HTTPError``).
    """
    req = urllib.request.Request(url, data=body, headers=dict(headers or {}))
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, resp.read()


def answers(url: str, timeout: float = 10.0) -> bool:
    """True when ``GET url`` answers 200 now."""
    try:
        return http_request(url, timeout=timeout)[0] == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_answering(url: str, running: Callable[[], bool], timeout: float) -> str:
    """Poll ``GET url`` until it answers 200: ``""`` then; ``"exited"`` when ``running()`` turns
    false first; ``"timeout"`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running():
            return "exited"
        if answers(url, timeout=2):
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


def is_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone; our own zombies are reaped)."""
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _mentions(pid: int, marker: str) -> bool:
    """True when process ``pid``'s command line or environment contains ``marker``."""
    needle = marker.encode()
    for part in ("cmdline", "environ"):
        try:
            if needle in Path(f"/proc/{pid}/{part}").read_bytes():
                return True
        except OSError:
            continue
    return False


def _group(pgid: int) -> List[int]:
    """Live processes of the process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def stop_group(pid: int, marker: str, grace: float = 30.0) -> None:
    """SIGTERM the process group led by ``pid`` (not our child: started by an earlier command);
    SIGKILL it when still there after ``grace``.

    Only processes that are ours are signalled: their command line or environment names
    ``marker``. A pid recorded before a reboot may belong to anything now.
    """
    ours = [p for p in _group(pid) if _mentions(p, marker)]
    if not ours:
        return
    if pid not in ours:  # the leader is gone or is someone else's: stop what is left of ours
        for p in ours:
            _kill(p)
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        _signal_group(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and is_alive(pid):
            time.sleep(0.1)
        if not is_alive(pid):
            break
    # Workers (gunicorn, uvicorn) share the group: none may outlive its leader.
    for p in _group(pid):
        if _mentions(p, marker):
            _kill(p)
