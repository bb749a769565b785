"""The license location survives the scorer's own working folder: a relative
DRIVERLESS_AI_LICENSE_FILE is made absolute before the scorer (which runs elsewhere) reads it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dai_mlflow.errors import LicenseNotFoundError
from dai_mlflow.model.license import LICENSE_FILE_ENV, export_license_location, find_license


def test_a_relative_license_file_is_made_absolute_for_the_scorer(tmp_path, monkeypatch):
    (tmp_path / "license.sig").write_text("not a real license\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(LICENSE_FILE_ENV, "license.sig")
    source = find_license(home=tmp_path / "nohome")
    assert source.where == str(tmp_path / "license.sig")
    export_license_location(source)
    monkeypatch.chdir(Path("/"))  # where a scorer would run: not the user's folder
    assert os.environ[LICENSE_FILE_ENV] == str(tmp_path / "license.sig")
    assert Path(os.environ[LICENSE_FILE_ENV]).is_file()


def test_the_default_file_is_exported_and_a_key_is_left_alone(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".driverlessai").mkdir(parents=True)
    (home / ".driverlessai" / "license.sig").write_text("x\n")
    monkeypatch.delenv(LICENSE_FILE_ENV, raising=False)
    export_license_location(find_license(home=home))
    assert os.environ[LICENSE_FILE_ENV] == str(home / ".driverlessai" / "license.sig")
    monkeypatch.delenv(LICENSE_FILE_ENV)
    monkeypatch.setenv("DRIVERLESS_AI_LICENSE_KEY", "k")
    export_license_location(find_license(home=home))
    assert LICENSE_FILE_ENV not in os.environ


def test_a_relative_path_to_nothing_names_the_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(LICENSE_FILE_ENV, "missing.sig")
    with pytest.raises(LicenseNotFoundError, match=str(tmp_path / "missing.sig")):
        find_license(home=tmp_path)
