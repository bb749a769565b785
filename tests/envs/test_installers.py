"""Installer subprocesses get no license, and URLs are shown without credentials."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dai_mlflow.envs import venvs
from dai_mlflow.envs.installers import has_credentials, installer_environ, redact_credentials
from dai_mlflow.errors import VenvBuildError

_FAILS_WITH_LICENSE = (
    "import os, sys; "
    "leaked = sorted(k for k in os.environ if k.startswith('DRIVERLESS_AI_')); "
    "print('error: leaked ' + ' '.join(leaked)) if leaked else None; "
    "sys.exit(1 if leaked else 0)"
)


def test_installer_environ_drops_the_license() -> None:
    env = installer_environ(
        {"DRIVERLESS_AI_LICENSE_KEY": "x", "DRIVERLESS_AI_LICENSE_FILE": "/l", "PATH": "/bin"}
    )
    assert env == {"PATH": "/bin", "PIP_NO_INPUT": "1"}


def test_installer_steps_run_without_the_license(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIVERLESS_AI_LICENSE_KEY", "bGljZW5zZQ==")
    monkeypatch.setenv("DRIVERLESS_AI_LICENSE_FILE", str(tmp_path / "license.sig"))
    venvs._run([sys.executable, "-c", _FAILS_WITH_LICENSE], "a step", tmp_path, None, True)


def test_installer_errors_are_shown_without_credentials(tmp_path: Path) -> None:
    say = "print('ERROR: no index at https://alice:s3cr3t@pkgs.example.org/simple'); exit(1)"
    with pytest.raises(VenvBuildError) as e:
        venvs._run([sys.executable, "-c", say], "installing", tmp_path, None, True)
    assert "s3cr3t" not in str(e.value)
    assert "https://***@pkgs.example.org/simple" in str(e.value)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("-i https://alice:pw@h.org/simple", "-i https://***@h.org/simple"),
        ("--find-links=https://tok@h.org/w/", "--find-links=https://***@h.org/w/"),
        ("x @ git+https://tok@github.com/o/x.git", "x @ git+https://***@github.com/o/x.git"),
        ("'https://a:b@h.org/s' failed", "'https://***@h.org/s' failed"),
        ("x @ git+ssh://git@github.com/o/x.git", "x @ git+ssh://git@github.com/o/x.git"),
        ("https://h.org/simple mail me at a@b.org", "https://h.org/simple mail me at a@b.org"),
    ],
)
def test_redact_credentials(text: str, shown: str) -> None:
    assert redact_credentials(text) == shown
    assert has_credentials(text) == (text != shown)
