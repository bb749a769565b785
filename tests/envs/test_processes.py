"""Servers on loopback: start one with its log, wait until it answers, stop its whole group."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from dai_mlflow.envs.processes import (
    free_port,
    last_log_line,
    start_logged,
    stop_session,
    wait_answering,
)


def test_a_server_is_waited_for_then_stopped_with_its_children(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    # A leader that forks a worker into its group, then serves (as gunicorn does).
    program = (
        "import http.server, os, sys, time\n"
        "if os.fork() == 0:\n"
        "    time.sleep(600)\n"
        "print('serving', flush=True)\n"
        f"http.server.ThreadingHTTPServer(('127.0.0.1', {port}), "
        "http.server.SimpleHTTPRequestHandler).serve_forever()\n"
    )
    proc = start_logged([sys.executable, "-c", program], os.environ, log, cwd=tmp_path)
    try:
        assert wait_answering(f"http://127.0.0.1:{port}/", lambda: proc.poll() is None, 30) == ""
    finally:
        stop_session(proc, grace=5)
    assert proc.poll() is not None
    time.sleep(0.2)
    group = [p for p in Path("/proc").glob("[0-9]*/stat") if _pgid(p) == proc.pid]
    assert group == []  # the forked worker is gone too
    assert "serving" in log.read_text()


def test_a_server_that_exits_is_reported_with_its_error_line(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    program = "import sys; print('starting'); print('ValueError: bad config'); print('bye')"
    proc = start_logged([sys.executable, "-c", program], os.environ, log)
    url = f"http://127.0.0.1:{free_port()}/"
    assert wait_answering(url, lambda: proc.poll() is None, 30) == "exited"
    assert last_log_line(log) == "ValueError: bad config"
    assert last_log_line(tmp_path / "missing.log") == "(no log)"


def test_a_silent_port_times_out(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    assert wait_answering(url, lambda: True, 0.6) == "timeout"


def _pgid(stat: Path) -> int:
    try:
        fields = stat.read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return -1
    return int(fields[2]) if fields[0] != "Z" else -1
