"""A model server killed (SIGKILL) while a Spark task scores: the job still succeeds, exactly.

``spark_inference/score.py --env-manager uv --master local[2]`` scores a few hundred thousand
rows (the sample input, tiled, with a ``row_id``); once a model server has answered a batch,
every model server of the job (loaded and spare) is killed. The worker notices the death,
starts a new server and sends the batch again: exit 0, every input row exactly once, equal to
``score_batch``, nothing left behind. The standalone-cluster version (the executor process
killed) is in ``tests/spark/test_cluster.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Set

import pandas as pd
import pytest

from tests.fixtures_model import LAUNCHER_BIN, REPO_ROOT, LoggedDaiModel, run_env

pytestmark = [pytest.mark.spark, pytest.mark.venv]
SCORE_PY = REPO_ROOT / "spark_inference" / "score.py"
ROWS = 240_000
TOLERANCE = 1e-9
RESTARTED = "starting a new model server, sending the batch again"


def tiled_input(model: LoggedDaiModel, folder: Path, rows: int) -> Path:
    """The sample input repeated to ``rows`` rows, with ``row_id``; scores repeat with it."""
    frame = pd.read_csv(model.build.sample_input_csv)
    big = pd.concat([frame] * (rows // len(frame) + 1), ignore_index=True).head(rows)
    big.insert(0, "row_id", range(len(big)))
    path = folder / "input.parquet"
    big.to_parquet(path, index=False)
    return path


def assert_tiled_scores(out: Path, expected: pd.DataFrame, rows: int) -> None:
    """Each input row exactly once, and its scores those of its sample row."""
    got = pd.read_parquet(out).sort_values("row_id").reset_index(drop=True)
    assert got["row_id"].tolist() == list(range(rows))
    columns = [c for c in expected.columns if c != "row_id"]
    want = expected[columns].to_numpy(float)[got["row_id"].to_numpy() % len(expected)]
    assert float(abs(got[columns].to_numpy(float) - want).max()) <= TOLERANCE


def descendants(root: int) -> Set[int]:
    """Pids of every process below ``root``."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found: Set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def written(pid: int) -> int:
    try:
        io = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return 0
    return int(next(ln for ln in io.splitlines() if ln.startswith("wchar:")).split()[1])


def model_servers(root: int) -> Set[int]:
    return {pid for pid in descendants(root) if b"arrow_server" in cmdline(pid)}


def kill_servers_once_scoring(proc: subprocess.Popen, answered: int) -> List[int]:
    """SIGKILL every model server below ``proc`` as soon as one has written ``answered``
    bytes of predictions (so a task is mid-way); the pids killed."""
    while proc.poll() is None:
        servers = model_servers(proc.pid)
        if any(written(pid) >= answered for pid in servers):
            for pid in servers:
                os.kill(pid, signal.SIGKILL)
            return sorted(servers)
        time.sleep(0.02)
    return []


def test_a_model_server_killed_mid_task_is_survived_exactly(
    logged_model, expected_scores, tmp_path: Path
) -> None:
    model = logged_model("1.10", "binary")
    data = tiled_input(model, tmp_path, ROWS)
    out = tmp_path / "scored"
    args = ["--master", "local[2]", "--env-manager", "uv", "--model-uri", str(model.local_dir)]
    args += ["--input", str(data), "--output", str(out)]
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(LAUNCHER_BIN / "python"), str(SCORE_PY), *args],
        env=run_env(model.license_env),
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # One batch's predictions (20 000 rows x 2 doubles) are ~320 kB: a batch is answered.
        killed = kill_servers_once_scoring(proc, answered=300_000)
        killed_at = time.monotonic()
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    ended = time.monotonic()
    print(
        f"killed {killed} at {killed_at - started:.1f}s; job ended {ended - killed_at:.1f}s later"
    )
    assert killed, "the job ended before a model server answered a batch"
    assert proc.returncode == 0, stderr[-4000:]
    assert RESTARTED in stderr
    assert_tiled_scores(out, expected_scores(model, model.build.sample_input_csv), ROWS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.parquet", "scored"]
    assert not any(os.path.exists(f"/proc/{pid}") for pid in killed)
