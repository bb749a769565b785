"""Model-side pieces that need no DAI env: input preparation, params, license, the scorer's
working folder, and the guard that keeps a scorer from ending its caller's process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from dai_mlflow.errors import LicenseNotFoundError
from dai_mlflow.model.license import LicenseSource, find_license, license_bytes, redact_license
from dai_mlflow.model.pyfunc import ScoringError, parse_params, prepare_input
from dai_mlflow.model.runtime import ScorerExitError, in_workdir, scorer_guard, scorer_workdir

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
    # DAI's JSON-RPC clients send null for "default" and 0/1 for flags
    assert parse_params({"pred_contribs": None, "output_margin": 1}) == {
        "pred_contribs": False,
        "output_margin": True,
    }
    with pytest.raises(ScoringError):
        parse_params({"pred_contribs": True, "output_margin": True})
    with pytest.raises(ScoringError):
        parse_params({"fast": True})
    with pytest.raises(ScoringError):
        parse_params({"pred_contribs": 3})
    with pytest.raises(ScoringError):
        parse_params({"pred_contribs": 1.0})


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
    secret = "DAI-LICENSE-KEY-VALUE-0123456789"  # a key's source says where, never what
    source = find_license({"DRIVERLESS_AI_LICENSE_KEY": secret}, home)
    assert source.describe() == "$DRIVERLESS_AI_LICENSE_KEY"
    assert secret not in repr(source)


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


def test_workdir_is_per_process_writable_and_restores_cwd(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DAI_MLFLOW_SCORER_WORKDIR", str(tmp_path / "root"))
    pipeline = tmp_path / "sp"
    (pipeline / "tmp" / "contrib").mkdir(parents=True)
    (pipeline / "tmp" / "contrib" / "r.py").write_text("x = 1\n")
    import dai_mlflow.model.runtime as runtime

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


def _dai_110_license_exit(message: str) -> None:
    """What an exported DAI 1.x scorer does when it cannot accept the license."""
    sys.stderr.write("INFO License manager initialized\n")
    os.write(2, f"ERROR License check failed: {message}\n".encode())  # native / fd-level
    sys.exit(-1)


def test_guard_turns_a_license_exit_into_a_one_line_error(capfd) -> None:
    with pytest.raises(ScorerExitError) as e, scorer_guard("building the scorer"):
        _dai_110_license_exit("signature check failed")
    message = str(e.value)
    assert "\n" not in message
    assert "sys.exit(-1) while building the scorer" in message
    assert "License check failed: signature check failed" in message
    assert "DRIVERLESS_AI_LICENSE_FILE" in message
    # What the scorer printed still reached stderr, in order.
    err = capfd.readouterr().err
    assert err.index("License manager initialized") < err.index("License check failed")


def test_guard_quotes_the_exit_message_or_the_last_line() -> None:
    quota = pytest.raises(ScorerExitError, match="while scoring.*: quota exceeded")
    with quota, scorer_guard("scoring", capture=False):
        sys.exit("quota exceeded")
    stop = pytest.raises(ScorerExitError, match="raised _Stop while importing x")
    with stop, scorer_guard("importing x", capture=False):
        raise _Stop


class _Stop(BaseException):
    pass


def test_guard_lets_interrupts_and_ordinary_errors_through() -> None:
    with pytest.raises(KeyboardInterrupt), scorer_guard("scoring"):
        raise KeyboardInterrupt
    with pytest.raises(ValueError, match="bad value"), scorer_guard("scoring"):
        raise ValueError("bad value")
    with scorer_guard("scoring"):
        pass
    assert sys.stderr.__class__.__name__ != "_TeeStream"  # the caller's stream is back


def test_guard_never_repeats_the_license(monkeypatch, tmp_path: Path) -> None:
    secret = "signature:" + "ab12" * 16
    lic = tmp_path / "license.sig"
    lic.write_text(f"serial_number:1\n{secret}\n")
    monkeypatch.setenv("DRIVERLESS_AI_LICENSE_FILE", str(lic))
    with pytest.raises(ScorerExitError) as e, scorer_guard("building the scorer"):
        _dai_110_license_exit(f"bad license text {secret}")
    assert secret not in str(e.value)
    assert "<license>" in str(e.value)
    assert redact_license(f"key {secret}", {"DRIVERLESS_AI_LICENSE_FILE": str(lic)}) == (
        "key <license>"
    )
