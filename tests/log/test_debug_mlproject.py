"""launchers/debug_mlproject.py: `mlflow run`'s set-up, the entry point in-process, right status."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ENTRY = textwrap.dedent(
    """\
    import os, sys
    import mlflow

    args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    expected = os.environ["MLFLOW_RUN_ID"]  # MLflow 3 pops it when the run is attached
    with mlflow.start_run() as run:
        assert run.info.run_id == expected
        mlflow.log_param("pid", os.getpid())
        mlflow.log_param("cwd", os.getcwd())
        if args.get("--fail") == "yes":
            raise SystemExit("entry point failed on purpose")
    print("model_uri=runs:/%s/model" % run.info.run_id)
    """
)
MLPROJECT = textwrap.dedent(
    """\
    name: debug-check
    entry_points:
      main:
        parameters:
          data: path
          fail: {type: string, default: "no"}
        command: "python entry.py --data {data} --fail {fail}"
    """
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "MLproject").write_text(MLPROJECT)
    (root / "entry.py").write_text(ENTRY)
    (root / "data.csv").write_text("a\n1\n")
    return root


def _run(project: Path, repo_root: Path, tmp_path: Path, *params: str):
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from launchers.debug_mlproject import debug_run, parse_params; "
        "sys.exit(debug_run('main', parse_params(sys.argv[3:]), project_dir=__import__('pathlib')"
        ".Path(sys.argv[2]), experiment_name='debug'))"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("MLFLOW_RUN_ID", None)
    return subprocess.run(
        [sys.executable, "-c", code, str(repo_root), str(project), *params],
        capture_output=True,
        text=True,
        env=env,
        cwd=project,  # relative `path` params resolve against the caller's cwd, as in mlflow run
    )


def _last_run(tmp_path: Path):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("debug")
    (run,) = client.search_runs([exp.experiment_id])
    return run


def test_entry_point_runs_in_process_and_run_finishes(project, repo_root, tmp_path):
    out = _run(project, repo_root, tmp_path, "data=data.csv")
    assert out.returncode == 0, out.stderr
    run = _last_run(tmp_path)
    assert run.info.status == "FINISHED"
    assert out.stdout.strip().splitlines()[-1] == f"model_uri=runs:/{run.info.run_id}/model"
    # Same process, cwd = project dir, `path` param made absolute, as `mlflow run` does.
    assert run.data.params["cwd"] == str(project)
    assert run.data.params["data"] == "data.csv"
    assert run.data.tags["mlflow.project.entryPoint"] == "main"
    pid_line = [ln for ln in out.stderr.splitlines() if "=== debug run" in ln][0]
    assert f"(pid {run.data.params['pid']})" in pid_line


def test_failing_entry_point_ends_the_run_failed(project, repo_root, tmp_path):
    out = _run(project, repo_root, tmp_path, "data=data.csv", "fail=yes")
    assert out.returncode == 1
    assert "entry point failed on purpose" in out.stderr
    assert _last_run(tmp_path).info.status == "FAILED"


def test_missing_path_param_is_rejected_like_mlflow_run(project, repo_root, tmp_path):
    out = _run(project, repo_root, tmp_path, "data=no-such-file.csv")
    assert out.returncode != 0
    assert "no-such-file.csv" in out.stderr


def test_bad_param_syntax_is_one_line_error(repo_root):
    out = subprocess.run(
        [sys.executable, str(repo_root / "launchers" / "debug_mlproject.py"), "-P", "novalue"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "Error: -P takes key=value, got 'novalue'"


# --- against the real project and the real `mlflow run` ----------------------------------------


def _debug_real_project(repo_root: Path, env: dict, cwd: Path, *params: str):
    args = [str(repo_root / "venvs" / "mlproject" / "bin" / "python"),
            str(repo_root / "launchers" / "debug_mlproject.py")]  # fmt: skip
    for p in params:
        args += ["-P", p]
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=1200)


def _model_files(model_dir: Path) -> dict:
    """Relative path -> bytes; MLmodel without the keys that name the run, model id or time.

    MLflow also records the (random) temporary staging folder the model was saved from as the
    artifact source and code path; that folder name is normalised. ``registered_model_meta`` is
    left out: MLflow writes it into a local store's model folder whenever anyone downloads a
    ``models:/`` URI of it (other tests do, on the shared fixture model), so it is not ours.
    """
    import re

    import yaml

    volatile = {"run_id", "utc_time_created", "model_uuid", "model_id", "artifact_path"}
    files = {}
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = str(path.relative_to(model_dir))
        if rel == "registered_model_meta":
            continue
        if rel == "MLmodel":
            data = {k: v for k, v in yaml.safe_load(path.read_text()).items() if k not in volatile}
            text = yaml.safe_dump(data, sort_keys=True)
            text = re.sub(r"dai-mlflow-log-[A-Za-z0-9_]+", "dai-mlflow-log-TMP", text)
            files[rel] = text.encode()
        else:
            files[rel] = path.read_bytes()
    return files


@pytest.mark.venv
@pytest.mark.mlflow_run
def test_debug_run_logs_the_same_model_as_mlflow_run(logged_model, repo_root, tmp_path):
    import mlflow

    from tests.fixtures_model import last_stdout_line, run_env

    model = logged_model("1.10", "binary")
    env = run_env({**model.license_env, "MLFLOW_TRACKING_URI": model.tracking_uri})
    name = f"{model.model_name}_debug"
    out = _debug_real_project(
        repo_root, env, tmp_path / "cwd", f"pipeline={model.build.zip_path}", f"model_name={name}"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert last_stdout_line(out.stdout).startswith(f"model_uri=models:/{name}/")

    client = mlflow.MlflowClient(tracking_uri=model.tracking_uri, registry_uri=model.tracking_uri)
    version = client.get_model_version_by_alias(name, "challenger")
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.entryPoint"] == "main"
    ours = _model_files(Path(run.info.artifact_uri) / "model")
    theirs = _model_files(model.local_dir)
    assert sorted(ours) == sorted(theirs)
    assert ours["requirements.txt"] == theirs["requirements.txt"]
    different = [rel for rel in ours if ours[rel] != theirs[rel]]
    assert different == []


@pytest.mark.venv
@pytest.mark.mlflow_run
def test_debug_run_of_a_bad_pipeline_ends_failed(logged_model, repo_root, tmp_path):
    import mlflow

    from tests.fixtures_model import run_env

    model = logged_model("1.10", "binary")
    bad = tmp_path / "scorer.zip"
    bad.write_bytes(b"this is not a zip file")
    env = run_env({**model.license_env, "MLFLOW_TRACKING_URI": model.tracking_uri})
    out = _debug_real_project(
        repo_root, env, tmp_path / "cwd", f"pipeline={bad}", "model_name=never_registered"
    )
    assert out.returncode != 0
    client = mlflow.MlflowClient(tracking_uri=model.tracking_uri, registry_uri=model.tracking_uri)
    assert not client.search_registered_models("name='never_registered'")
    (run_id,) = {ln.split()[2] for ln in out.stderr.splitlines() if ln.startswith("=== run ")}
    assert client.get_run(run_id).info.status == "FAILED"
    assert "scorer.zip" in out.stderr
