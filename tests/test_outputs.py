"""What an output may replace (``dai_mlflow.outputs``): the path rules, one refusal line each.

Pure: no Spark, no model. The Spark writer and ``score.py`` are checked in
``tests/spark/test_files_output.py``, the lifecycle tables in
``tests/lifecycle/test_table_outputs.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dai_mlflow import outputs
from dai_mlflow.outputs import OutputRefusedError, check_output, check_table


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch) -> Path:
    """A working folder with a home folder of its own beside it."""
    work = tmp_path / "projects" / "work"
    work.mkdir(parents=True)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    return work


def _data_folder(work: Path) -> Path:
    """The issue's layout: data/in.csv with a notes.txt beside it."""
    data = work / "data"
    data.mkdir()
    (data / "in.csv").write_text("a,b\n1,2\n")
    (data / "notes.txt").write_text("mine\n")
    return data


def _spark_output(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "part-00000-abc-c000.snappy.parquet").write_bytes(b"PAR1")
    (folder / ".part-00000-abc-c000.snappy.parquet.crc").write_bytes(b"crc")
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / "._SUCCESS.crc").write_bytes(b"crc")
    return folder


def _refused(match: str, *args, **kwargs) -> str:
    with pytest.raises(OutputRefusedError, match=match) as info:
        check_output(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_an_output_holding_the_input_is_refused_even_with_overwrite(cwd):
    data = _data_folder(cwd)
    for overwrite in (False, True):
        message = _refused("holds the input", "data", ["data/in.csv"], overwrite)
        assert "write the output to a new folder" in message
    _refused("is the input", "data/in.csv", ["data/in.csv"], True)
    _refused("lies inside the input folder", "data/scored", ["data"], True)
    assert sorted(p.name for p in data.iterdir()) == ["in.csv", "notes.txt"]


def test_a_folder_that_is_not_ours_needs_overwrite(cwd):
    _data_folder(cwd)
    message = _refused("not write", "data", ["elsewhere.csv"])
    assert "in.csv, notes.txt" in message
    assert "pass --overwrite to replace it" in message
    check_output("data", ["elsewhere.csv"], overwrite=True)
    (cwd / "plain.parquet").write_bytes(b"PAR1")
    _refused("a file that dai-mlflow did not write", "plain.parquet", [])
    check_output("plain.parquet", [], overwrite=True)


def test_earlier_outputs_are_replaced_without_overwrite(cwd):
    check_output("new/scored", ["in.csv"])  # does not exist: written
    _spark_output(cwd / "spark")
    check_output("spark", ["in.csv"])
    ours = cwd / "ours"
    ours.mkdir()
    (ours / "part-0.parquet").write_bytes(b"PAR1")
    outputs.write_marker(ours, outputs.SCORED)
    check_output(str(ours), ["in.csv"])
    check_output(f"file://{ours}", ["in.csv"])
    # A file the user put into an earlier output makes it theirs again.
    (ours / "notes.txt").write_text("mine\n")
    _refused("notes.txt", str(ours), ["in.csv"])
    # Parquet parts alone (no _SUCCESS, no marker) are not enough.
    bare = cwd / "bare"
    bare.mkdir()
    (bare / "part-0.parquet").write_bytes(b"PAR1")
    _refused("no _SUCCESS or marker file", "bare", [])


def test_the_marker_names_the_tool_and_never_the_license(cwd, monkeypatch):
    monkeypatch.setenv("DRIVERLESS_AI_LICENSE_KEY", "secret-license-text")
    folder = cwd / "out"
    folder.mkdir()
    outputs.write_marker(folder, outputs.SCORED)
    text = (folder / outputs.MARKER_NAME).read_text()
    assert '"tool": "dai-mlflow"' in text
    assert '"version": ' in text
    assert "secret-license-text" not in text
    assert outputs.marker_kind(folder) == outputs.SCORED


@pytest.mark.parametrize(
    ("output", "why"),
    [
        ("/", "filesystem root"),
        ("~", "your home folder"),
        (".", "the current folder"),
        ("..", "a folder holding the current folder"),
    ],
)
def test_root_home_and_current_folders_are_never_replaced(cwd, output, why):
    message = _refused(why, output, [], overwrite=True)
    assert "not even with overwrite" in message


def test_a_project_folder_is_never_replaced(cwd):
    project = cwd / "checkout"
    project.mkdir()
    (project / "MLproject").write_text("name: x\n")
    _refused("project folder", str(project), [], overwrite=True)
    git = cwd / "clone"
    (git / ".git").mkdir(parents=True)
    _refused("project folder", str(git), [], overwrite=True)


def test_a_symlink_output_is_refused(cwd):
    _spark_output(cwd / "real")
    os.symlink(cwd / "real", cwd / "link")
    _refused("symbolic link", "link", [], overwrite=True)


def test_remote_uris_follow_the_path_rules_on_their_text():
    check_output("s3a://bucket/scored", ["s3a://bucket/in/day.csv"])
    with pytest.raises(OutputRefusedError, match="is or holds the input"):
        check_output("s3a://bucket/in", ["s3a://bucket/in/day.csv"], overwrite=True)
    with pytest.raises(OutputRefusedError, match="inside the input folder"):
        check_output("hdfs://nn/in/x", ["hdfs://nn/in"], overwrite=True)
    with pytest.raises(OutputRefusedError, match="root of its filesystem"):
        check_output("dbfs:/", [], overwrite=True)
    check_output("hdfs://other/in", ["hdfs://nn/in"])  # another filesystem
    assert outputs.is_remote("dbfs:/x")
    assert not outputs.is_remote("file:///x")


def test_tables_that_are_not_ours_are_refused(cwd):
    data = _data_folder(cwd)
    with pytest.raises(OutputRefusedError, match="holds the input"):
        check_table(data, outputs.BATCH_TABLE, [str(data / "in.csv")], overwrite=True)
    with pytest.raises(OutputRefusedError, match="set -P overwrite=true") as info:
        check_table(data, outputs.BATCH_TABLE, [])
    assert "notes.txt" in str(info.value)
    check_table(data, outputs.BATCH_TABLE, [], overwrite=True)
    legacy = cwd / "legacy"
    (legacy / "date=2026-11-20").mkdir(parents=True)
    (legacy / ".date=2026-11-20.staging-0123abcd").mkdir()
    check_table(legacy, outputs.BATCH_TABLE, [])  # written before markers: only partitions
    outputs.write_marker(legacy, outputs.BATCH_TABLE)
    with pytest.raises(OutputRefusedError, match="is a dai-mlflow batch-table, not a monitor"):
        check_table(legacy, outputs.MONITOR_TABLE, [])
    with pytest.raises(OutputRefusedError, match="is the input"):
        check_table(legacy, outputs.MONITOR_TABLE, [str(legacy)], overwrite=True)
    part = legacy / "date=2026-11-20"
    (part / "notes.txt").write_text("mine\n")
    with pytest.raises(OutputRefusedError, match="notes.txt"):
        outputs.check_partition(part, overwrite=False)


def test_a_folder_that_cannot_be_written_is_one_line(cwd):
    (cwd / "a-file").write_text("in the way\n")
    claim = outputs.claimed(cwd / "a-file" / "out")
    with pytest.raises(outputs.OutputLocationError, match="choose a folder you can write"):
        claim.__enter__()
