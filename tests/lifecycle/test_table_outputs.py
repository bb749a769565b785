"""Lifecycle tables never lose data: refusals, and a writer killed half-way (SIGKILL).

The fast tests kill a plain Python writer of ``tables.replace_partition`` (no Spark) at the
moment its staging folder holds part of the new partition; the Spark-marked one kills the real
``batch`` job (``python -m dai_mlflow.lifecycle.batch_job``) while Spark writes. Either way the
table keeps the old partition (or none), readers see no half-written data, and the re-run
writes the partition whole and removes what the killed writer left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from dai_mlflow import outputs
from dai_mlflow.lifecycle import tables
from dai_mlflow.outputs import OutputRefusedError
from tests.fixtures_model import run_env

REPO_ROOT = Path(__file__).resolve().parents[2]
DAY = "2026-11-20"
OTHER_DAY = "2026-11-21"

# A writer that writes one file of the new partition, says so, and waits to be killed.
_HALF_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import pandas as pd
    from dai_mlflow.lifecycle import tables

    def write(staging):
        staging.mkdir()
        pd.DataFrame({"a": [7] * 10}).to_parquet(staging / "part-00000.parquet")
        Path(sys.argv[2]).write_text(str(staging))
        time.sleep(600)

    tables.replace_partition(Path(sys.argv[1]), sys.argv[3], write)
    """
)


def _hidden(table: Path) -> list:
    return sorted(p.name for p in table.iterdir() if p.name.startswith("."))


def _start_half_writer(table: Path, tmp_path: Path, day: str = DAY):
    ready = tmp_path / f"ready-{day}"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HALF_WRITER, str(table), str(ready), day],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None, "the writer ended before writing"
        assert time.monotonic() < deadline, "the writer never wrote"
        time.sleep(0.05)
    return proc, Path(ready.read_text())


def _kill(proc) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.parametrize("before", ["old partition", "no partition"])
def test_a_writer_killed_mid_partition_leaves_old_or_none_and_the_rerun_is_whole(tmp_path, before):
    table = tmp_path / "scored"
    if before == "old partition":
        tables.write_frame(table, DAY, pd.DataFrame({"a": [1, 2, 3]}), kind=outputs.BATCH_TABLE)
    proc, staging = _start_half_writer(table, tmp_path)
    _kill(proc)
    assert proc.returncode == -signal.SIGKILL
    assert staging.is_dir()
    assert staging.name.startswith(f".date={DAY}.staging-")

    # What the killed writer left is hidden; no reader mistakes it for data.
    if before == "old partition":
        assert tables.partitions(table) == [DAY]
        assert sorted(tables.read_partitions(table, [DAY])["a"]) == [1, 2, 3]
        assert sorted(pd.read_parquet(table)["a"]) == [1, 2, 3]  # pyarrow: the table root
    else:
        assert tables.partitions(table) == []
        with pytest.raises(tables.LifecycleError, match="no partition"):
            tables.read_partitions(table, [DAY])

    tables.write_frame(table, DAY, pd.DataFrame({"a": [4, 5, 6, 7]}), kind=outputs.BATCH_TABLE)
    assert sorted(tables.read_partitions(table, [DAY])["a"]) == [4, 5, 6, 7]
    assert sorted(pd.read_parquet(table)["a"]) == [4, 5, 6, 7]
    assert _hidden(table) == []  # the leftovers went with the re-run
    assert sorted(p.name for p in table.iterdir()) == [outputs.MARKER_NAME, f"date={DAY}"]


def test_a_live_writer_keeps_its_staging_and_others_write_beside_it(tmp_path):
    table = tmp_path / "scored"
    proc, staging = _start_half_writer(table, tmp_path)
    try:
        tables.write_frame(table, OTHER_DAY, pd.DataFrame({"a": [1]}))
        assert staging.is_dir()  # its writer still holds the lock
        assert tables.partitions(table) == [OTHER_DAY]
    finally:
        _kill(proc)
    tables.write_frame(table, OTHER_DAY, pd.DataFrame({"a": [2]}))  # any writer cleans up
    assert _hidden(table) == []


def test_a_writer_killed_between_the_two_renames_gets_its_old_partition_back(tmp_path):
    """Where the kernel cannot exchange two folders, the swap is two renames: a kill between
    them leaves the old partition aside, which the next writer of the table puts back."""
    table = tmp_path / "scored"
    tables.write_frame(table, DAY, pd.DataFrame({"a": [1, 2]}))
    (table / f"date={DAY}").rename(table / f".date={DAY}.previous-0123abcd")
    (table / f".date={DAY}.staging-89abcdef").mkdir()
    assert tables.partitions(table) == []
    tables.write_frame(table, OTHER_DAY, pd.DataFrame({"a": [3]}))
    assert tables.partitions(table) == [DAY, OTHER_DAY]
    assert sorted(tables.read_partitions(table, [DAY])["a"]) == [1, 2]
    assert _hidden(table) == []


def test_only_leftovers_of_data_are_removed(tmp_path):
    """A hidden folder that merely looks like a leftover but holds other files is kept."""
    table = tmp_path / "scored"
    tables.write_frame(table, DAY, pd.DataFrame({"a": [1]}))
    lookalike = table / f".date={DAY}.staging-0badc0de"
    lookalike.mkdir()
    (lookalike / "notes.txt").write_text("mine\n")
    tables.write_frame(table, DAY, pd.DataFrame({"a": [2]}))
    assert (lookalike / "notes.txt").read_text() == "mine\n"


def test_tables_refuse_folders_that_are_not_theirs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.csv").write_text("a\n1\n")
    (data / "notes.txt").write_text("mine\n")
    frame = pd.DataFrame({"a": [1]})
    with pytest.raises(OutputRefusedError, match="overwrite=true"):
        tables.write_frame(data, DAY, frame)
    with pytest.raises(OutputRefusedError, match="holds the input"):
        tables.write_frame(data, DAY, frame, overwrite=True, inputs=[str(data / "in.csv")])
    assert sorted(p.name for p in data.iterdir()) == ["in.csv", "notes.txt"]
    # With overwrite, a folder of the user's gets a partition and keeps everything else.
    tables.write_frame(data, DAY, frame, overwrite=True)
    assert {"in.csv", "notes.txt", f"date={DAY}"} <= {p.name for p in data.iterdir()}
    # The monitoring table may not be the batch table it reads.
    batch_table = tmp_path / "scored"
    tables.write_frame(batch_table, DAY, frame, kind=outputs.BATCH_TABLE)
    with pytest.raises(OutputRefusedError, match="is the input"):
        tables.write_frame(batch_table, DAY, frame, overwrite=True, inputs=[str(batch_table)])
    with pytest.raises(OutputRefusedError, match="batch-table, not a monitor-table"):
        tables.write_frame(batch_table, DAY, frame, kind=outputs.MONITOR_TABLE)


@pytest.mark.spark
@pytest.mark.venv
def test_a_batch_job_killed_while_spark_writes_leaves_the_old_partition(
    spark, logged_model, tmp_path
):
    """SIGKILL to the real batch job (driver, JVM, workers, model servers) as soon as Spark has
    started writing the partition; then the same job again, to the end."""
    model = logged_model("2", "binary")
    source = model.build.sample_input_csv
    table = tmp_path / "scored"
    tables.write_frame(table, DAY, pd.DataFrame({"a": [1, 2, 3]}), kind=outputs.BATCH_TABLE)
    cmd = [
        str(REPO_ROOT / "venvs" / "launcher" / "bin" / "python"),
        "-m", "dai_mlflow.lifecycle.batch_job",
        "--model-dir", str(model.local_dir),
        "--model-name", "churn", "--model-version", "1",
        "--input", str(source), "--table", str(table), "--date", DAY,
        "--env-manager", "uv", "--master", "local[1]",
    ]  # fmt: skip
    env = {**run_env(model.license_env), "PYTHONPATH": str(REPO_ROOT)}
    job = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 600
    try:  # a task has opened its part file: the model is scoring into the partition
        while not list(table.glob(f".date={DAY}.staging-*/**/part-*")):
            assert job.poll() is None, "the job ended before it wrote"
            assert time.monotonic() < deadline, "the job never started writing"
            time.sleep(0.02)
    finally:
        _kill(job)
    (staging,) = table.glob(f".date={DAY}.staging-*")
    held = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    print(f"killed the job while {staging.name} held {held}")

    assert tables.partitions(table) == [DAY]
    assert sorted(tables.read_partitions(table, [DAY])["a"]) == [1, 2, 3]
    assert sorted(r.a for r in spark.read.parquet(str(table)).collect()) == [1, 2, 3]

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    rows = len(pd.read_csv(source))
    assert rerun.stdout.strip().splitlines()[-1] == f"batch_result={rows}"
    written = tables.read_partitions(table, [DAY])
    assert len(written) == rows
    assert "a" not in written.columns
    assert spark.read.parquet(str(table)).count() == rows
    assert sorted(p.name for p in table.iterdir()) == [outputs.MARKER_NAME, f"date={DAY}"]
