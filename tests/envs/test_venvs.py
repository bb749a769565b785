"""The keyed venv builder and the launchers: reuse, rebuild, no half-built env, missing Python,
and `venvs/mlproject` being exactly the env `mlflow run` builds for the project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from dai_mlflow.envs import pythons, venvs
from dai_mlflow.errors import DaiMlflowError, PythonNotFoundError, VenvBuildError


def _tiny_wheel(folder: Path, version_text: str) -> Path:
    """A pure-Python wheel `daitiny` whose module returns ``version_text``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "daitiny-1.0-py3-none-any.whl"
    files = {
        "daitiny.py": f"VALUE = {version_text!r}\n",
        "daitiny-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: daitiny\nVersion: 1.0\n",
        "daitiny-1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "".join(f"{name},,\n" for name in files) + "daitiny-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr("daitiny-1.0.dist-info/RECORD", record)
    return path


def _spec(base: Path, *deps: str) -> venvs.VenvSpec:
    return venvs.VenvSpec(
        python=pythons.current().version, dependencies=deps, base_dir=base, installer="uv"
    )


def _value(python: Path) -> str:
    out = subprocess.run(
        [str(python), "-c", "import daitiny; print(daitiny.VALUE)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


# --- keys (fast) -------------------------------------------------------------------------------


def test_key_is_stable_and_follows_wheel_bytes_not_just_names(tmp_path):
    me = pythons.current()
    _tiny_wheel(tmp_path, "one")
    spec = _spec(tmp_path, "./daitiny-1.0-py3-none-any.whl")
    key = venvs.spec_key(spec, me)
    assert key == venvs.spec_key(spec, me)
    _tiny_wheel(tmp_path, "two")  # same file name, new contents (MLflow issue #10525)
    assert venvs.spec_key(spec, me) != key


def test_key_follows_nested_requirement_files(tmp_path):
    me = pythons.current()
    (tmp_path / "more.txt").write_text("six==1.16.0\n")
    spec = _spec(tmp_path, "-r more.txt")
    key = venvs.spec_key(spec, me)
    (tmp_path / "more.txt").write_text("six==1.17.0\n")
    assert venvs.spec_key(spec, me) != key


def test_spec_rejects_unknown_installer(tmp_path):
    with pytest.raises(DaiMlflowError, match="unknown installer"):
        venvs.VenvSpec(python="3.11", dependencies=(), base_dir=tmp_path, installer="conda")


def test_python_env_yaml_is_validated_like_mlflow(tmp_path):
    bad = tmp_path / "python_env.yaml"
    bad.write_text('name: x\npython: "3.11"\n')
    with pytest.raises(DaiMlflowError, match="unknown keys"):
        venvs.load_python_env(bad)
    bad.write_text("python: 3.10\n")
    with pytest.raises(DaiMlflowError, match="quoted version string"):
        venvs.load_python_env(bad)


def test_project_python_env_names_an_exact_local_python(repo_root):
    """python_env.yaml must name a full version that is installed, or `mlflow run` downloads."""
    for path in [repo_root / "python_env.yaml", *sorted((repo_root / "envs").glob("*.yaml"))]:
        version = venvs.load_python_env(path)["python"]
        assert version.count(".") == 2, f"{path}: python must be major.minor.micro"
        assert pythons.find_python(version).version == version


def test_pyspark_pin_follows_python():
    assert venvs.pyspark_requirement("3.8.18").startswith("pyspark==3.5.")
    assert venvs.pyspark_requirement("3.11.7").startswith("pyspark==4.")


# --- building (slow) ---------------------------------------------------------------------------


@pytest.mark.venv
def test_reuse_when_unchanged_rebuild_when_changed(tmp_path):
    wheels = tmp_path / "wheels"
    _tiny_wheel(wheels, "one")
    spec = _spec(wheels, "./daitiny-1.0-py3-none-any.whl")
    dest = tmp_path / "env"
    python, built = venvs.ensure_venv(spec, dest, quiet=True, progress=lambda _: None)
    assert built
    assert _value(python) == "one"
    stamp = (dest / venvs.STAMP_FILE_NAME).stat().st_mtime_ns

    python, built = venvs.ensure_venv(spec, dest, quiet=True, progress=lambda _: None)
    assert not built
    assert (dest / venvs.STAMP_FILE_NAME).stat().st_mtime_ns == stamp

    _tiny_wheel(wheels, "two")
    python, built = venvs.ensure_venv(spec, dest, quiet=True, progress=lambda _: None)
    assert built
    assert _value(python) == "two"


@pytest.mark.venv
def test_failed_build_leaves_nothing_behind(tmp_path):
    dest = tmp_path / "env"
    good = _spec(tmp_path, "six==1.16.0")
    venvs.ensure_venv(good, dest, quiet=True, progress=lambda _: None)
    assert dest.is_dir()
    bad = _spec(tmp_path, "dai-mlflow-no-such-package-anywhere==0.0.1")
    with pytest.raises(VenvBuildError) as err:
        venvs.ensure_venv(bad, dest, quiet=True, progress=lambda _: None)
    assert not dest.exists()
    assert "\n" not in str(err.value)
    assert "nothing was left behind" in str(err.value)


@pytest.mark.venv
def test_interrupted_build_is_rebuilt(tmp_path):
    """A folder without a finished stamp (e.g. killed mid-build) is never reused."""
    dest = tmp_path / "env"
    spec = _spec(tmp_path, "six==1.16.0")
    venvs.ensure_venv(spec, dest, quiet=True, progress=lambda _: None)
    (dest / venvs.STAMP_FILE_NAME).unlink()
    _, built = venvs.ensure_venv(spec, dest, quiet=True, progress=lambda _: None)
    assert built


def test_missing_python_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "no-pyenv"))
    dest = tmp_path / "env"
    spec = venvs.VenvSpec(python="3.2.1", dependencies=("six",), base_dir=tmp_path)
    with pytest.raises(PythonNotFoundError, match=r"Python 3\.2\.1 not found"):
        venvs.ensure_venv(spec, dest, quiet=True, progress=lambda _: None)
    assert not dest.exists()


def test_cli_reports_missing_python_in_one_line(tmp_path, repo_root):
    req = tmp_path / "requirements.txt"
    req.write_text("six\n")
    env = {**os.environ, "PYENV_ROOT": str(tmp_path / "none"), "PYTHONPATH": str(repo_root)}
    out = subprocess.run(
        [sys.executable, "-m", "dai_mlflow.envs.venvs", "requirements",
         "--dest", str(tmp_path / "e"),
         "--python", "3.2", "--requirements", str(req)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1
    assert out.stderr.startswith("Error: Python 3.2 not found")


# --- launchers ---------------------------------------------------------------------------------


@pytest.mark.venv
def test_launcher_venv_imports_mlflow_and_the_checkout(tmp_path, repo_root):
    """The launcher script builds a working venv into a scratch VENVS, then reuses it."""
    env = {**os.environ, "DAI_MLFLOW_VENVS": str(tmp_path / "venvs")}
    script = repo_root / "launchers" / "build_launcher_venv.sh"
    subprocess.run(["bash", str(script), "--quiet"], check=True, env=env, capture_output=True)
    python = tmp_path / "venvs" / "launcher" / "bin" / "python"
    check = "import mlflow, pyspark, dai_mlflow; print(mlflow.__version__.split('.')[0])"
    out = subprocess.run([str(python), "-c", check], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3"
    again = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, check=True
    )
    assert "up to date" in again.stderr
    activate = (tmp_path / "venvs" / "launcher" / "bin" / "activate").read_text()
    assert "UV_PYTHON_DOWNLOADS=never" in activate


def test_launchers_print_usage_on_wrong_arguments(repo_root):
    for script in ("build_launcher_venv.sh", "build_mlproject_venv.sh", "build_spark_venv.sh"):
        out = subprocess.run(
            ["bash", str(repo_root / "launchers" / script), "--bogus", "x", "y"],
            capture_output=True,
            text=True,
        )
        assert out.returncode != 0, script
        assert "usage:" in out.stderr, script


@pytest.mark.venv
@pytest.mark.mlflow_run
def test_mlproject_venv_equals_the_env_mlflow_run_builds(tmp_path, repo_root):
    """`pip freeze --all` of venvs/mlproject equals that of the env `mlflow run` creates."""
    subprocess.run(
        ["bash", str(repo_root / "launchers" / "build_mlproject_venv.sh"), "--quiet"],
        check=True,
        capture_output=True,
    )
    ours = subprocess.run(
        [str(repo_root / "venvs" / "mlproject" / "bin" / "python"), "-m", "pip", "freeze", "--all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    # A scratch project with the same python_env.yaml; only its env matters here.
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(repo_root / "python_env.yaml", project / "python_env.yaml")
    (project / "MLproject").write_text(
        textwrap.dedent(
            """\
            name: freeze-check
            python_env: python_env.yaml
            entry_points:
              main:
                parameters:
                  out: string
                command: "python -m pip freeze --all > {out}"
            """
        )
    )
    env = {
        **os.environ,
        "MLFLOW_ENV_ROOT": str(tmp_path / "mlflow-envs"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    launcher = repo_root / "venvs" / "launcher" / "bin" / "mlflow"
    out = subprocess.run(
        [
            str(launcher),
            "run",
            str(project),
            "--env-manager",
            "virtualenv",
            "-P",
            f"out={tmp_path / 'freeze.txt'}",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    theirs = (tmp_path / "freeze.txt").read_text()
    assert sorted(ours.split()) == sorted(theirs.split())
    assert "mlflow==" in ours
