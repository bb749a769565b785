"""The wheelhouse: source-only pins are built once and offered to every install with
--find-links, so pyspark is never rebuilt (and re-cached at ~480 MB) per venv."""

from __future__ import annotations

import stat
import sys
import textwrap
from pathlib import Path

import pytest

from dai_mlflow.envs import venvs, wheelhouse


@pytest.fixture
def house(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "wheels"
    monkeypatch.setenv(wheelhouse.WHEELHOUSE_ENV, str(folder))
    return folder


def _fake_python(tmp_path: Path, *, succeed: bool) -> Path:
    """A stand-in for ``python -m pip wheel ... -w DIR PIN`` that writes (or fails to write)
    ``<name>-<version>-py2.py3-none-any.whl`` and records each call."""
    script = tmp_path / "fake-python"
    log = tmp_path / "calls.txt"
    body = f"""\
        #!{sys.executable}
        import sys
        from pathlib import Path
        args = sys.argv[1:]
        with open({str(log)!r}, "a") as f:
            f.write(" ".join(args) + "\\n")
        if not {succeed!r}:
            print("error: no network")
            sys.exit(1)
        out = Path(args[args.index("-w") + 1])
        name, version = args[-1].split("==")
        (out / f"{{name}}-{{version}}-py2.py3-none-any.whl").write_bytes(b"wheel")
    """
    script.write_text(textwrap.dedent(body))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_only_pinned_source_only_projects_are_picked():
    lines = [
        "pyspark==4.3.0",
        "PySpark == 3.5.8 ; python_version < '3.9'",
        "pyspark>=3",  # not a pin: left to the installer
        "pandas==2.3.3",
        "./wheels/pyspark_helper-1.0-py3-none-any.whl",
        "-r other.txt",
    ]
    assert wheelhouse.source_only_pins(lines) == ["pyspark==4.3.0", "pyspark==3.5.8"]


def test_folder_follows_the_env_var_then_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv(wheelhouse.WHEELHOUSE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert wheelhouse.wheelhouse_dir() == tmp_path / "xdg" / "dai-mlflow" / "wheels"
    monkeypatch.setenv(wheelhouse.WHEELHOUSE_ENV, str(tmp_path / "mine"))
    assert wheelhouse.wheelhouse_dir() == tmp_path / "mine"


def test_a_wheel_is_built_once_then_reused(house, tmp_path):
    python = _fake_python(tmp_path, succeed=True)
    said: list = []
    for _ in range(2):
        got = wheelhouse.ensure_wheels(["pyspark==4.3.0", "six"], str(python), said.append)
        assert got == house
    assert [p.name for p in house.glob("*.whl")] == ["pyspark-4.3.0-py2.py3-none-any.whl"]
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(calls) == 1
    # built in an isolated env: an interpreter without the `wheel` package builds it too
    assert "--use-pep517" in calls[0].split()
    assert sum("building pyspark==4.3.0" in s for s in said) == 1
    assert not [p for p in house.iterdir() if p.name.startswith(".build-")]


def test_a_failed_build_falls_back_to_the_index_and_leaves_nothing(house, tmp_path):
    python = _fake_python(tmp_path, succeed=False)
    said: list = []
    assert wheelhouse.ensure_wheels(["pyspark==4.3.0"], str(python), said.append) is None
    assert list(house.iterdir()) == []
    assert "installing it from the index instead" in said[-1]


def test_lines_without_source_only_pins_touch_nothing(house, tmp_path):
    python = _fake_python(tmp_path, succeed=True)
    assert wheelhouse.ensure_wheels(["six==1.17.0"], str(python), print) is None
    assert not house.exists()
    assert not (tmp_path / "calls.txt").exists()


def test_installs_get_find_links_when_the_wheelhouse_has_a_wheel(house, tmp_path, monkeypatch):
    """ensure_venv passes the wheelhouse to the installer of a group that pins pyspark."""
    house.mkdir()
    (house / "pyspark-4.3.0-py2.py3-none-any.whl").write_bytes(b"wheel")
    seen: list = []
    monkeypatch.setattr(venvs, "_run", lambda cmd, *a, **k: seen.append([str(c) for c in cmd]))
    spec = venvs.VenvSpec(
        python=venvs.find_python("3").version,
        dependencies=("pyspark==4.3.0",),
        base_dir=tmp_path,
        installer="pip",
    )
    with pytest.raises(FileNotFoundError):  # the fake _run made no venv, so the stamp fails
        venvs.ensure_venv(spec, tmp_path / "venv", quiet=True, progress=lambda _: None)
    install = [c for c in seen if "install" in c]
    assert install
    assert install[0][-2:] == ["--find-links", str(house)]
    assert not (tmp_path / "venv").exists()
