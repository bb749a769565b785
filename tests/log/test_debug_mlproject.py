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


# --- against the real project, as a user runs it ---------------------------------------------
# README "Debugging step by step" and launch.json's "MLproject entry point" give one command:
# run from the checkout with venvs/mlproject's python, in a fresh shell (no venv activated, no
# MLFLOW_TRACKING_URI: the default store), with only the license set. It runs here as written,
# in a copy of the checkout (tests/docs/shell.py), the pipeline where launch.json expects it.

GENERATED = "data/generated/dai-1.10-binary"


def _documented_debug_command():
    from tests.docs.blocks import doc_commands, launch_commands

    (readme,) = [
        c for c in doc_commands() if c.file == "README.md" and "debug_mlproject.py" in c.text
    ]
    (launch,) = [c for c in launch_commands() if "debug_mlproject.py" in c.text]
    # The placeholder is the pipeline a user passes: the one launch.json prompts with by default.
    assert readme.text.replace("/path/to/scorer.zip", f"{GENERATED}/scorer.zip") == launch.text
    return launch


def _debug_as_a_user(build, checkout: Path, pipeline: Path):
    """Run the documented debug command in the user checkout; returns the finished process."""
    import shutil

    from tests.docs.shell import Session, user_env

    folder = checkout / GENERATED
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(pipeline, folder / "scorer.zip")
    shutil.copy2(build.license_path, folder / "license.sig")
    command = _documented_debug_command()
    session = Session(checkout, user_env())
    session.run(type(command)("Makefile", 0, "make venvs"), timeout=1200)  # README step 1
    return session.run(command, timeout=1200, expect_rc=None)


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
def test_debug_run_as_documented_logs_the_same_model_as_mlflow_run(logged_model):

    from tests.docs.shell import store_client, user_checkout
    from tests.fixtures_model import last_stdout_line

    model = logged_model("1.10", "binary")
    with user_checkout("checkout-debug") as checkout:
        out = _debug_as_a_user(model.build, checkout, model.build.zip_path)
        assert out.returncode == 0, out.stderr[-3000:]
        uri = last_stdout_line(out.stdout)
        assert uri.startswith("model_uri=runs:/"), out.stdout[-2000:]
        client = store_client(checkout)  # the default store of the checkout
        run = client.get_run(uri.split("/")[1])
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
def test_debug_run_of_a_bad_pipeline_ends_failed(logged_model, tmp_path):

    from tests.docs.shell import store_client, user_checkout

    model = logged_model("1.10", "binary")
    bad = tmp_path / "scorer.zip"
    bad.write_bytes(b"this is not a zip file")
    with user_checkout("checkout-debug") as checkout:
        out = _debug_as_a_user(model.build, checkout, bad)
        assert out.returncode != 0
        client = store_client(checkout)
        ended = {ln.split()[2] for ln in out.stderr.splitlines() if ln.startswith("=== run ")}
        assert len(ended) == 1, out.stderr[-3000:]
        (run_id,) = ended
        assert client.get_run(run_id).info.status == "FAILED"
    assert "scorer.zip" in out.stderr


@pytest.mark.venv
@pytest.mark.mlflow_run
def test_debug_run_from_the_dai_110_project_env_bridges_the_default_store(
    repo_root: Path, tmp_path: Path
) -> None:
    """After ``make use-line LINE=1.10`` the debugger runs in a Python 3.8 / mlflow 2.17 env,
    which cannot open the default store: from a fresh shell it bridges it through the
    checkout's launcher MLflow, as ``mlflow run`` does."""
    import mlflow

    from tests.docs.shell import user_env
    from tests.fixtures_model import dai110_project_python, last_stdout_line, license_env_for
    from tests.fixtures_standin import get_standin

    build = get_standin("1.10", "binary")
    out = subprocess.run(
        [str(dai110_project_python()), str(repo_root / "launchers" / "debug_mlproject.py"),
         "-P", f"pipeline={build.zip_path}"],
        cwd=str(tmp_path), env=user_env(license_env_for(build, "1.10")),
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "through a loopback mlflow server" in out.stderr, out.stderr[-3000:]
    uri = last_stdout_line(out.stdout)
    assert uri.startswith("model_uri=runs:/"), out.stdout[-2000:]
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = mlflow.MlflowClient(tracking_uri=store).get_run(uri.split("/")[1])
    assert run.info.status == "FINISHED"
