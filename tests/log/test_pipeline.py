"""Reading and validating scoring pipelines: zip or folder, and one-line errors for bad ones."""

from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path

import pytest

from dai_mlflow.errors import PipelineError
from dai_mlflow.log.pipeline import copy_pipeline, open_pipeline, read_column_stats


@pytest.mark.parametrize("line", ["1.10", "2"])
def test_reads_zip_and_folder(standin, tmp_path: Path, line: str) -> None:
    build = standin(line, "binary")
    from_zip = open_pipeline(build.zip_path, tmp_path / "x")
    from_folder = open_pipeline(build.folder)
    for p in (from_zip, from_folder):
        assert p.module_name == build.module_name
        assert p.python == build.python
        assert p.dai_version == build.dai_version
        assert p.dai_line == build.dai_line
        assert p.experiment_wheel.file_name == build.experiment_wheel
        assert p.requirements_file.name == "requirements.txt"
        assert p.constraints_file is not None
    assert from_zip.folder.is_relative_to(tmp_path)


def test_any_folder_name_and_parent_folder(standin, tmp_path: Path) -> None:
    build = standin("1.10", "regression")
    renamed = tmp_path / "my export" / "whatever"
    shutil.copytree(build.folder, renamed)
    assert open_pipeline(renamed).folder == renamed
    assert open_pipeline(renamed.parent).folder == renamed


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_corrupt_zip(standin, tmp_path: Path) -> None:
    bad = tmp_path / "scorer.zip"
    bad.write_bytes(standin("1.10", "binary").zip_path.read_bytes()[:300])
    with pytest.raises(PipelineError) as e:
        open_pipeline(bad, tmp_path / "x")
    msg = _one_line(e)
    assert str(bad) in msg
    assert "re-download" in msg


def test_corrupt_member_is_refused_while_extracting(standin, tmp_path: Path) -> None:
    """No separate testzip() pass: extraction itself checks each member's CRC."""
    build = standin("1.10", "binary")
    bad = tmp_path / "scorer.zip"
    shutil.copy2(build.zip_path, bad)
    with zipfile.ZipFile(bad) as zf:
        info = zf.getinfo(f"scoring-pipeline/{build.core_wheel}")
    data = bytearray(bad.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.file_size // 2] ^= 0xFF  # stored, not deflated: a flipped byte of data
    bad.write_bytes(bytes(data))
    with pytest.raises(PipelineError) as e:
        open_pipeline(bad, tmp_path / "x")
    assert "re-download" in _one_line(e)


def _zip_with(tmp_path: Path, build, name: str, data: bytes = b"x", mode: int = 0) -> Path:
    out = tmp_path / "evil.zip"
    shutil.copy2(build.zip_path, out)
    with zipfile.ZipFile(out, "a") as zf:
        info = zipfile.ZipInfo(name)
        if mode:
            info.external_attr = mode << 16
        zf.writestr(info, data)
    return out


@pytest.mark.parametrize(
    "member", ["../escape.txt", "scoring-pipeline/../../escape.txt", "/abs.txt"]
)
def test_zip_slip_refused(standin, tmp_path: Path, member: str) -> None:
    evil = _zip_with(tmp_path, standin("1.10", "binary"), member)
    with pytest.raises(PipelineError) as e:
        open_pipeline(evil, tmp_path / "x")
    assert "outside" in _one_line(e)
    assert str(evil) in str(e.value)
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").rglob("escape.txt"))


def test_zip_symlink_refused(standin, tmp_path: Path) -> None:
    evil = _zip_with(
        tmp_path,
        standin("1.10", "binary"),
        "scoring-pipeline/link",
        b"/etc/passwd",
        stat.S_IFLNK | 0o777,
    )
    with pytest.raises(PipelineError) as e:
        open_pipeline(evil, tmp_path / "x")
    assert "symlink" in _one_line(e)


def test_folder_symlink_refused(standin, tmp_path: Path) -> None:
    folder = tmp_path / "sp"
    shutil.copytree(standin("1.10", "binary").folder, folder)
    (folder / "link").symlink_to("/etc/hostname")
    with pytest.raises(PipelineError) as e:
        open_pipeline(folder)
    assert "symlink" in _one_line(e)


def test_missing_experiment_wheel(standin, tmp_path: Path) -> None:
    build = standin("2", "binary")
    folder = tmp_path / "sp"
    shutil.copytree(build.folder, folder)
    (folder / build.experiment_wheel).unlink()
    with pytest.raises(PipelineError) as e:
        open_pipeline(folder)
    assert "scoring_h2oai_experiment_" in _one_line(e)
    assert str(folder) in str(e.value)


def test_two_experiment_wheels(standin, tmp_path: Path) -> None:
    folder = tmp_path / "sp"
    shutil.copytree(standin("2", "binary").folder, folder)
    other = standin("2", "regression")
    shutil.copy2(other.folder / other.experiment_wheel, folder)
    with pytest.raises(PipelineError) as e:
        open_pipeline(folder)
    msg = _one_line(e)
    assert "exactly one" in msg
    assert other.experiment_wheel in msg


def test_missing_requirements(standin, tmp_path: Path) -> None:
    folder = tmp_path / "sp"
    shutil.copytree(standin("1.10", "multiclass").folder, folder)
    (folder / "requirements.txt").unlink()
    with pytest.raises(PipelineError) as e:
        open_pipeline(folder)
    msg = _one_line(e)
    assert str(folder / "requirements.txt") in msg
    assert "re-export" in msg


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as e:
        open_pipeline(tmp_path / "nope.zip")
    assert "does not exist" in _one_line(e)


def test_version_from_experiment_wheel_when_no_core_wheel(standin, tmp_path: Path) -> None:
    """Without the shared wheels, the experiment wheel's pin on h2oaicore gives the version."""
    folder = tmp_path / "sp"
    build = standin("1.10", "binary")
    shutil.copytree(build.folder, folder)
    for w in folder.glob("*.whl"):
        if not w.name.startswith("scoring_h2oai_experiment_"):
            w.unlink()
    p = open_pipeline(folder)
    assert p.dai_version == build.dai_version
    assert p.python == "3.8"


def test_copy_leaves_licenses_out(standin, tmp_path: Path) -> None:
    folder = tmp_path / "sp"
    build = standin("1.10", "binary")
    shutil.copytree(build.folder, folder)
    shutil.copy2(build.license_path, folder / "license.sig")
    dest = copy_pipeline(open_pipeline(folder), tmp_path / "scoring-pipeline")
    assert (dest / build.experiment_wheel).is_file()
    assert not (dest / "license.sig").exists()


def test_copy_links_big_files_and_never_writes_through_to_the_source(
    standin, tmp_path: Path
) -> None:
    """The staging copy hard-links (no second gigabyte copy), and a file it rewrites (masked
    credentials) is a new file: the user's folder is never changed."""
    build = standin("1.10", "binary")
    folder = tmp_path / "sp"
    shutil.copytree(build.folder, folder)
    secret_line = "--extra-index-url https://user:s3cret@pypi.example.com/simple\n"
    req = folder / "requirements.txt"
    req.write_text(secret_line + req.read_text())
    before = req.read_text()
    dest = copy_pipeline(open_pipeline(folder), tmp_path / "scoring-pipeline")
    core = build.core_wheel
    assert (dest / core).stat().st_ino == (folder / core).stat().st_ino
    assert req.read_text() == before
    assert "s3cret" not in (dest / "requirements.txt").read_text()


@pytest.mark.parametrize(
    "text",
    [
        '{"age": {"data_type": "int", "data": [1, 2]}, "note": "not a column"}',
        '[{"name": "age", "type": "int", "sample": [1, 2]}]',
        '{"columns": [{"column_name": "age", "logical_type": "int", "values": [1, 2]}]}',
        '"{\\"age\\": {\\"dtype\\": \\"int\\", \\"samples\\": [1, 2]}}"',
    ],
    ids=["object", "list", "under-columns", "json-in-a-string"],
)
def test_column_stats_shapes_read_alike(tmp_path: Path, text: str) -> None:
    path = tmp_path / "training_data_column_stats.json"
    path.write_text(text)
    stats = read_column_stats(path)
    assert list(stats) == ["age"]
    assert (stats["age"]["data_type"], stats["age"]["data"]) == ("int", [1, 2])


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "42"])
def test_column_stats_that_are_not_stats_fail_in_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "training_data_column_stats.json"
    path.write_text(text)
    if text == "[1, 2]":  # a list of no column objects: no columns, not an error
        assert read_column_stats(path) == {}
        return
    with pytest.raises(PipelineError, match="training_data_column_stats.json") as info:
        read_column_stats(path)
    assert "\n" not in str(info.value)
