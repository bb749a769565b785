"""Interpreter discovery: finds installed-but-unselected Pythons offline, fails in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dai_mlflow.envs import pythons
from dai_mlflow.errors import PythonNotFoundError


def test_finds_the_running_interpreter_by_exact_version():
    me = pythons.current()
    found = pythons.find_python(me.version)
    assert found.version == me.version
    ran = subprocess.run(
        [str(found.executable), "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert ran == me.version  # the path found runs that very version


def test_major_minor_request_matches_any_micro():
    assert pythons.matches("3.8", "3.8.18")
    assert pythons.matches("3.8.18", "3.8.18")
    assert not pythons.matches("3.8", "3.11.7")
    assert not pythons.matches("3.8.1", "3.8.18")


def test_missing_version_is_one_line_error_with_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "no-pyenv"))
    monkeypatch.setenv("UV_PYTHON_INSTALL_DIR", str(tmp_path / "no-uv"))
    with pytest.raises(PythonNotFoundError) as err:
        pythons.find_python("3.2")
    message = str(err.value)
    assert "\n" not in message
    assert "Python 3.2 not found" in message
    assert "pyenv install 3.2" in message
    assert "DAI_MLFLOW_PYTHON_3_2" in message


def test_override_env_var_wins_and_a_bad_one_is_reported(monkeypatch, tmp_path):
    me = pythons.current()
    var = f"DAI_MLFLOW_PYTHON_{me.major_minor.replace('.', '_')}"
    monkeypatch.setenv(var, sys.executable)
    assert pythons.find_python(me.major_minor).version == me.version
    monkeypatch.setenv(var, str(tmp_path / "nope"))
    with pytest.raises(PythonNotFoundError, match="does not exist"):
        pythons.find_python(me.major_minor)


def test_pyenv_versions_are_found_without_being_selected(monkeypatch, tmp_path):
    """A pyenv-style folder whose interpreter is not on PATH is still found."""
    me = pythons.current()
    fake_root = tmp_path / "pyenv"
    bin_dir = fake_root / "versions" / me.version / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(os.path.realpath(sys.executable))
    monkeypatch.setenv("PYENV_ROOT", str(fake_root))
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv(f"DAI_MLFLOW_PYTHON_{me.major_minor.replace('.', '_')}", raising=False)
    pythons._probe_cache.clear()
    found = pythons.find_python(me.version)
    assert found.version == me.version


def test_link_interpreters_points_at_real_executables(tmp_path):
    me = pythons.current()
    linked = pythons.link_interpreters(tmp_path / "pythons", versions=(me.major_minor,))
    link = linked[me.major_minor]
    assert link.name == f"python{me.major_minor}"
    # A link to a shim script would not be an ELF interpreter; this one must run as Python.
    out = subprocess.run([str(link), "-c", "import sys; print(sys.prefix)"], capture_output=True)
    assert out.returncode == 0
    assert Path(os.path.realpath(link)).read_bytes()[:2] != b"#!"


def test_cli_prints_version_and_path():
    me = pythons.current()
    out = subprocess.run(
        [sys.executable, "-m", "dai_mlflow.envs.pythons", me.version],
        capture_output=True,
        text=True,
        check=True,
    )
    requested, version, exe = out.stdout.strip().split("\t")
    assert (requested, version) == (me.version, me.version)
    assert Path(exe).exists()


def test_a_venv_on_path_resolves_to_its_base_interpreter(monkeypatch):
    """Envs built from a venv's python would break when that venv is deleted."""
    if sys.prefix == sys.base_prefix:
        pytest.skip("the suite runs from venvs/launcher; this needs a venv interpreter")
    me = pythons.current()
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv(f"DAI_MLFLOW_PYTHON_{me.major_minor.replace('.', '_')}", raising=False)
    pythons._probe_cache.clear()
    found = pythons.find_python(me.version)
    assert not str(found.executable).startswith(sys.prefix)
    assert str(found.executable).startswith(os.path.realpath(sys.base_prefix))
