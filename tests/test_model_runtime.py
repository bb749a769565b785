"""Model-side pieces that need no DAI env: input preparation, params, license, runtime fixes."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from dai_mlflow.errors import LicenseNotFoundError
from dai_mlflow.license import LicenseSource, find_license, license_bytes
from dai_mlflow.model import ScoringError, parse_params, prepare_input
from dai_mlflow.runtime import (
    _FilenoStream,
    ensure_stream_filenos,
    in_workdir,
    isolate_from_foreign_spark,
    scorer_workdir,
)

COLUMNS = ["b", "a", "c"]
TYPES = {"a": "double", "b": "string", "c": "double"}


def test_prepare_input_reorders_and_coerces() -> None:
    frame = pd.DataFrame({"a": ["1.5", None], "c": [1, 2], "b": [3, "x"], "extra": [0, 0]})
    out = prepare_input(frame, COLUMNS, TYPES)
    assert list(out.columns) == COLUMNS
    assert out["a"].dtype == "float64"
    assert pd.isna(out["a"][1])
    assert out["c"].tolist() == [1.0, 2.0]
    assert out["b"].tolist() == ["3", "x"]


def test_prepare_input_never_hands_the_callers_frame_to_the_scorer() -> None:
    """Typed columns are not copied again, but the frame is still the scorer's own."""
    frame = pd.DataFrame({"a": [1.5, 2.5], "b": ["x", "y"], "c": [3.0, 4.0]})
    out = prepare_input(frame, COLUMNS, TYPES)
    out.loc[0, "a"] = -1.0
    out.loc[0, "b"] = "changed"
    assert frame["a"].tolist() == [1.5, 2.5]
    assert frame["b"].tolist() == ["x", "y"]
    assert out["c"].dtype == "float64"


def test_prepare_input_names_every_missing_column() -> None:
    with pytest.raises(ScoringError) as e:
        prepare_input(pd.DataFrame({"a": [1.0]}), COLUMNS, TYPES)
    assert "b, c" in str(e.value)
    assert "2 column(s)" in str(e.value)


def test_prepare_input_bad_number() -> None:
    with pytest.raises(ScoringError) as e:
        prepare_input(pd.DataFrame({"a": ["x"], "b": ["y"], "c": [1]}), COLUMNS, TYPES)
    assert "'a'" in str(e.value)


def test_params() -> None:
    assert parse_params(None) == {"pred_contribs": False, "output_margin": False}
    assert parse_params({"pred_contribs": "true"})["pred_contribs"] is True
    with pytest.raises(ScoringError):
        parse_params({"pred_contribs": True, "output_margin": True})
    with pytest.raises(ScoringError):
        parse_params({"fast": True})
    with pytest.raises(ScoringError):
        parse_params({"pred_contribs": 3})


def test_license_order(tmp_path: Path) -> None:
    lic = tmp_path / "l.sig"
    lic.write_text("LICENSE-BYTES")
    home = tmp_path / "home"
    assert (
        find_license(
            {"DRIVERLESS_AI_LICENSE_KEY": "k", "DRIVERLESS_AI_LICENSE_FILE": str(lic)}, home
        ).kind
        == "key"
    )
    assert find_license({"DRIVERLESS_AI_LICENSE_FILE": str(lic)}, home) == LicenseSource(
        "file", str(lic)
    )
    (home / ".driverlessai").mkdir(parents=True)
    (home / ".driverlessai" / "license.sig").write_text("x")
    assert find_license({}, home).where.endswith("license.sig")
    assert license_bytes(LicenseSource("file", str(lic))) == b"LICENSE-BYTES"
    assert "k" not in LicenseSource("key", "DRIVERLESS_AI_LICENSE_KEY").describe().lower().replace(
        "key", ""
    )


def test_license_missing_is_clear(tmp_path: Path) -> None:
    with pytest.raises(LicenseNotFoundError) as e:
        find_license({}, tmp_path)
    msg = str(e.value)
    assert "DRIVERLESS_AI_LICENSE_KEY" in msg
    assert "DRIVERLESS_AI_LICENSE_FILE" in msg
    assert "license.sig" in msg
    with pytest.raises(LicenseNotFoundError) as e:
        find_license({"DRIVERLESS_AI_LICENSE_FILE": str(tmp_path / "nope")}, tmp_path)
    assert "does not exist" in str(e.value)


class _NoFileno(io.StringIO):
    def fileno(self) -> int:
        raise AttributeError("'StreamToLogger' object has no attribute 'fileno'")


def test_streams_get_a_fileno(monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdout", _NoFileno())
    monkeypatch.setattr(sys, "stderr", None)
    ensure_stream_filenos()
    assert sys.stdout.fileno() == 1
    assert sys.stderr.fileno() == 2
    sys.stdout.write("still writes")
    assert isinstance(sys.stdout, _FilenoStream)
    ensure_stream_filenos()
    assert not isinstance(sys.stdout._stream, _FilenoStream)


def test_foreign_pyspark_entries_are_dropped(monkeypatch, tmp_path: Path) -> None:
    foreign = tmp_path / "spark" / "python"
    (foreign / "pyspark").mkdir(parents=True)
    (foreign / "pyspark" / "__init__.py").write_text("raise ImportError('built for 3.12')\n")
    zipped = tmp_path / "spark" / "lib" / "py4j-0.10.9.9-src.zip"
    monkeypatch.setattr(sys, "path", [str(foreign), str(zipped), *sys.path])
    removed = isolate_from_foreign_spark()
    assert str(foreign) in removed
    assert str(zipped) in removed
    assert str(foreign) not in sys.path


def test_workdir_is_per_process_writable_and_restores_cwd(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DAI_MLFLOW_SCORER_WORKDIR", str(tmp_path / "root"))
    pipeline = tmp_path / "sp"
    (pipeline / "tmp" / "contrib").mkdir(parents=True)
    (pipeline / "tmp" / "contrib" / "r.py").write_text("x = 1\n")
    import dai_mlflow.runtime as runtime

    monkeypatch.setattr(runtime, "_workdir", None)
    wd = scorer_workdir(pipeline)
    assert wd.is_dir()
    assert str(os.getpid()) in wd.name
    assert wd.parent == tmp_path / "root"
    assert (wd / "tmp" / "contrib" / "r.py").is_file()
    before = os.getcwd()
    with in_workdir(wd):
        assert os.getcwd() == str(wd)
        Path("tmp/x").mkdir()
    assert os.getcwd() == before
    assert scorer_workdir(pipeline) == wd
