"""Staging a model (layout, env for the pipeline's line, license guard) and the entry point's
one-line errors for bad inputs."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dai_mlflow.log import run
from dai_mlflow.log.run import MODEL_SIDE_MODULES, find_license_leaks, stage_model
from tests.fixtures_model import run_child_json

REPO = Path(__file__).resolve().parents[2]
MLPROJECT_PYTHON = REPO / "venvs" / "mlproject" / "bin" / "python"


def _check_staged(model_dir: Path, build, python_prefix: str, mlflow_pin: str) -> None:
    env = yaml.safe_load((model_dir / "python_env.yaml").read_text())
    assert env["python"].startswith(python_prefix + ".")
    assert env["dependencies"] == ["-r requirements.txt"]
    conda = yaml.safe_load((model_dir / "conda.yaml").read_text())
    assert f"python={env['python']}" in conda["dependencies"]
    reqs = (model_dir / "requirements.txt").read_text().splitlines()
    assert mlflow_pin in reqs
    # Shared wheels are requirements; the experiment wheel is an artifact loaded at load time.
    assert f"./artifacts/scoring-pipeline/{build.core_wheel}" in reqs
    assert not [line for line in reqs if build.experiment_wheel in line]
    stored = model_dir / "artifacts" / "scoring-pipeline"
    assert (stored / build.experiment_wheel).is_file()
    code = model_dir / "code" / "dai_mlflow"
    shipped = sorted(p.relative_to(code).as_posix() for p in code.rglob("*.py"))
    assert shipped == sorted(MODEL_SIDE_MODULES)
    assert (model_dir / "input_example.json").is_file()
    assert not list(model_dir.rglob("license.sig"))


def test_stage_dai_110_from_mlflow3(standin, tmp_path: Path) -> None:
    build = standin("1.10", "multiclass")
    folder = tmp_path / "any name"
    shutil.copytree(build.folder, folder)
    shutil.copy2(build.license_path, folder / "license.sig")  # a user's mistake
    staged = stage_model(folder, tmp_path / "work")
    _check_staged(staged.path, build, "3.8", "mlflow==2.17.2")
    assert staged.pipeline.module_name == build.module_name
    assert not find_license_leaks(staged.path, build.license_path.read_bytes().strip())


def test_license_leak_guard(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.txt").write_bytes(b"xx SECRET yy")
    (tmp_path / "g.txt").write_bytes(b"clean")
    assert find_license_leaks(tmp_path, b"SECRET") == [tmp_path / "a" / "f.txt"]
    assert find_license_leaks(tmp_path, b"") == []


def test_license_leak_guard_reads_in_blocks(tmp_path: Path, monkeypatch) -> None:
    """Files are scanned block by block (a runtime wheel is hundreds of megabytes), and a
    license that straddles two blocks is still found."""
    monkeypatch.setattr(run, "_SCAN_BLOCK", 8)
    secret = b"LICENSE-KEY-BYTES"
    for offset in range(0, 12):
        (tmp_path / "f.bin").write_bytes(b"x" * offset + secret + b"y" * 5)
        assert find_license_leaks(tmp_path, secret) == [tmp_path / "f.bin"], offset
    (tmp_path / "f.bin").write_bytes(b"x" * 20 + secret[:-1] + b"y" * 20)
    assert find_license_leaks(tmp_path, secret) == []


def test_preflight_extracts_once_for_the_whole_run(standin, tmp_path: Path, monkeypatch) -> None:
    """The zip opened by the preflight is the one staged: not extracted a second time."""
    build = standin("1.10", "binary")
    monkeypatch.setenv("DRIVERLESS_AI_LICENSE_FILE", str(build.license_path))
    opened = run.preflight(run.LogRequest(pipeline=build.zip_path), tmp_path / "pre")
    assert opened.folder.is_relative_to(tmp_path / "pre")
    staged = stage_model(build.zip_path, tmp_path / "work", pipeline=opened)
    assert not (tmp_path / "work" / "extracted").exists()
    assert (staged.path / "artifacts" / "scoring-pipeline" / build.core_wheel).is_file()


_IMPORTS = r"""
import json, sys
import dai_mlflow.log.entry
from dai_mlflow.tracking import needs_bridge
needs_bridge("sqlite:///" + sys.argv[1])
print("RESULT=" + json.dumps({"mlflow": "mlflow" in sys.modules}))
"""


def test_the_entry_point_starts_its_bridge_before_importing_mlflow(tmp_path: Path) -> None:
    """Importing the entry point and deciding on a bridge import no MLflow: the bridge server's
    start-up (seconds of imports) overlaps this process's own import of MLflow."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-c", _IMPORTS, tmp_path / "mlflow.db"]
    assert run_child_json(cmd, tmp_path, env, "RESULT") == {"mlflow": False}


_STAGE = r"""
import json, sys
from pathlib import Path
from dai_mlflow.log.run import stage_model
staged = stage_model(Path(sys.argv[1]), Path(sys.argv[2]))
print("RESULT=" + json.dumps({"path": str(staged.path), "python": staged.python_version}))
"""


@pytest.mark.venv
def test_stage_the_other_lines_model_from_the_project_env(standin, tmp_path: Path) -> None:
    """The project env (venvs/mlproject) stages a model of the other Python line: the DAI 2
    env (Python 3.11, mlflow 3) a Python 3.8 model, the DAI 1.10 env a Python 3.11 one."""
    assert MLPROJECT_PYTHON.is_file(), "run `make venvs` first"
    version = subprocess.run(
        [str(MLPROJECT_PYTHON), "-c", "import sys; print(sys.version_info[:2] == (3, 8))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    line, python, mlflow = ("2", "3.11", "mlflow==3.17.2")
    if version == "False":
        line, python, mlflow = ("1.10", "3.8", "mlflow==2.17.2")
    build = standin(line, "binary")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(REPO)
    cmd = [MLPROJECT_PYTHON, "-c", _STAGE, build.zip_path, tmp_path / "w"]
    out = run_child_json(cmd, tmp_path, env, "RESULT", timeout=300)
    assert out["python"].startswith(python + ".")
    _check_staged(Path(out["path"]), build, python, mlflow)


def _entry(args, env_extra, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DRIVERLESS_AI_"))}
    env.update(env_extra)
    env["PYTHONPATH"] = str(REPO)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{cwd / 'never-created.db'}"
    return subprocess.run(
        [str(MLPROJECT_PYTHON), str(REPO / "scorer_entry.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(cwd),
    )


def _bad_inputs(build, tmp: Path):
    """(name, pipeline path, text the error names) for every bad input of the issue."""
    corrupt = tmp / "corrupt" / "scorer.zip"
    corrupt.parent.mkdir()
    corrupt.write_bytes(build.zip_path.read_bytes()[:400])
    cases = [("corrupt zip", corrupt, str(corrupt))]

    def variant(name, change):
        folder = tmp / name
        shutil.copytree(build.folder, folder)
        what = change(folder)
        cases.append((name, folder, what))

    variant("missing-wheel", lambda f: ((f / build.experiment_wheel).unlink(), str(f))[1])
    variant(
        "two-wheels",
        lambda f: (
            shutil.copy2(
                f / build.experiment_wheel,
                f / build.experiment_wheel.replace("_experiment_", "_experiment_0"),
            ),
            build.experiment_wheel,
        )[1],
    )
    variant(
        "no-requirements",
        lambda f: ((f / "requirements.txt").unlink(), str(f / "requirements.txt"))[1],
    )
    variant(
        "editable-line",
        lambda f: ((f / "requirements.txt").write_text("-e ./src\n"), "requirements.txt:1")[1],
    )
    return cases


@pytest.mark.venv
def test_bad_inputs_give_one_line_errors(standin, tmp_path: Path) -> None:
    assert MLPROJECT_PYTHON.is_file(), "run `make venvs` first"
    build = standin("1.10", "binary")
    lic = {"DRIVERLESS_AI_LICENSE_FILE": str(build.license_path)}
    for name, path, named in _bad_inputs(build, tmp_path):
        proc = _entry(["--pipeline", str(path)], lic, tmp_path)
        errors = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 1, (name, proc.stderr[-2000:])
        assert len(errors) == 1, (name, errors)
        assert errors[0].startswith("Error: "), (name, errors)
        assert named in errors[0], (name, errors[0])
        assert "model_uri=" not in proc.stdout
    assert not (tmp_path / "never-created.db").exists()


@pytest.mark.venv
def test_missing_license_is_one_line_error(standin, tmp_path: Path) -> None:
    build = standin("2", "regression")
    home = tmp_path / "home"
    home.mkdir()
    proc = _entry(["--pipeline", str(build.zip_path)], {"HOME": str(home)}, tmp_path)
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1
    assert len(errors) == 1
    assert "DRIVERLESS_AI_LICENSE_KEY" in errors[0]
    assert str(home / ".driverlessai" / "license.sig") in errors[0]
    key = base64.b64encode(build.license_path.read_bytes()).decode()
    assert key not in proc.stderr


def test_mlproject_passes_empty_defaults_as_empty_strings() -> None:
    """No sentinel strings: an omitted model_name reaches the CLI as '' (= do not register)."""
    from mlflow.projects._project_spec import load_project

    entry = load_project(str(REPO)).get_entry_point("main")
    cmd = entry.compute_command({"pipeline": str(REPO), "exclude": ""}, str(REPO))
    assert "--model-name '' --alias challenger --exclude '' --index-options keep" in cmd
    assert load_project(str(REPO)).get_entry_point("freeze").command == "python -m pip freeze"
