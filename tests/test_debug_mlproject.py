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
    assert out.stderr.strip() == "error: -P takes key=value, got 'novalue'"
