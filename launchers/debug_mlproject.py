"""Run an MLproject entry point in *this* process, exactly as `mlflow run` sets it up.

`mlflow run` starts the entry point in a `bash -c` subprocess, where an IDE's breakpoints never
hit. This launcher does the same set-up with MLflow's own project code — reads `MLproject`,
applies parameter types and defaults (`path` params must exist and become absolute), resolves
the experiment, creates the run with the same tags and params, sets `MLFLOW_RUN_ID`,
`MLFLOW_TRACKING_URI` and `MLFLOW_EXPERIMENT_ID` — then runs the entry point's Python command
in-process (`runpy`), and ends the run FINISHED, or FAILED on an error or non-zero exit.

Run it with the project env's interpreter, so the code runs where `mlflow run` would run it:

    venvs/mlproject/bin/python launchers/debug_mlproject.py -P pipeline=path/to/scorer.zip

It takes `mlflow run`'s arguments: `-e/--entry-point`, repeated `-P key=value`,
`--experiment-name`/`--experiment-id`, `--run-name`. The last stdout line is the entry point's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import runpy
import shlex
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from launchers/: make dai_mlflow importable
    sys.path.insert(1, str(ROOT))
# In the DAI 1.10 project env (MLflow 2.17) the default store (sqlite, made by MLflow 3) is
# bridged through an MLflow 3 interpreter: `mlflow run` finds its own in the process tree; here,
# this checkout's launcher venv, unless one is named.
if (ROOT / "venvs" / "launcher" / "bin" / "python").exists():
    os.environ.setdefault("DAI_MLFLOW_SERVER_PYTHON", str(ROOT / "venvs/launcher/bin/python"))

from dai_mlflow.errors import DaiMlflowError, report_error  # noqa: E402


class DebugLaunchError(Exception):
    """The project or its parameters cannot be run in-process; the message says why."""


def parse_params(pairs: Sequence[str]) -> Dict[str, str]:
    """Turn repeated ``key=value`` strings into a dict, as `mlflow run -P` does."""
    params: Dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DebugLaunchError(f"-P takes key=value, got {pair!r}")
        params[key] = value
    return params


@contextlib.contextmanager
def _argv_and_path(argv: List[str], work_dir: str) -> Iterator[None]:
    """Give the entry point the argv, sys.path[0] and cwd it would have under `mlflow run`."""
    saved_argv, saved_path, saved_cwd = sys.argv[:], sys.path[:], os.getcwd()
    sys.argv = argv
    sys.path.insert(0, work_dir)
    os.chdir(work_dir)
    try:
        yield
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        os.chdir(saved_cwd)


def run_command_in_process(command: str, work_dir: str) -> int:
    """Run ``python script.py …`` or ``python -m module …`` here; return its exit code."""
    argv = shlex.split(command)
    if not argv or Path(argv[0]).name not in ("python", "python3"):
        raise DebugLaunchError(
            f"entry point command {command!r} is not a Python command; run it with `mlflow run`"
        )
    try:
        if argv[1:2] == ["-m"]:
            with _argv_and_path([argv[2], *argv[3:]], work_dir):
                runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
        else:
            script = str(Path(work_dir, argv[1]))
            with _argv_and_path([script, *argv[2:]], work_dir):
                runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        if e.code is None or e.code == 0:
            return 0
        if not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
            return 1
        return e.code
    return 0


def _tracking_context() -> contextlib.AbstractContextManager:
    """The store `mlflow run` would use: MLFLOW_TRACKING_URI, else the embedded default.

    `mlflow run` (MLflow 3.x) defaults to `sqlite:///<cwd>/mlflow.db`; the project env may run
    MLflow 2.17, which cannot open that store, so the library bridges it (dai_mlflow.tracking).
    """
    from dai_mlflow.tracking import tracking_store

    return tracking_store()


def _experiment_id(name: Optional[str], experiment_id: Optional[str]) -> str:
    """As `mlflow run` picks it: the named experiment (made if missing), the given id, or the
    default experiment."""
    from mlflow import MlflowClient

    if name:
        client = MlflowClient()
        found = client.get_experiment_by_name(name)
        return found.experiment_id if found else client.create_experiment(name)
    return experiment_id or "0"


def debug_run(
    entry_point: str,
    params: Dict[str, str],
    experiment_name: Optional[str] = None,
    experiment_id: Optional[str] = None,
    run_name: Optional[str] = None,
    project_dir: Path = ROOT,
) -> int:
    """Set up a run as `mlflow run` does and run the entry point in-process.

    Returns:
        The entry point's exit code (0 when the run ended FINISHED).
    """
    from mlflow import tracking
    from mlflow.projects import utils as project_utils
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    with _tracking_context():
        work_dir = project_utils.fetch_and_validate_project(
            str(project_dir), None, entry_point, params
        )
        project = project_utils.load_project(work_dir)
        experiment_id = _experiment_id(experiment_name, experiment_id)
        run = project_utils.get_or_create_run(
            None, str(project_dir), experiment_id, work_dir, None, entry_point, params
        )
        run_id = run.info.run_id
        client = tracking.MlflowClient()
        if run_name:
            client.set_tag(run_id, MLFLOW_RUN_NAME, run_name)
        status = "FAILED"
        try:
            (command,) = project_utils.get_entry_point_command(project, entry_point, params, None)
            os.environ.update(project_utils.get_run_env_vars(run_id, experiment_id))
            print(f"=== debug run {run_id}: {command} (pid {os.getpid()}) ===", file=sys.stderr)
            code = run_command_in_process(command, work_dir)
            status = "FINISHED" if code == 0 else "FAILED"
            return code
        finally:
            client.set_terminated(run_id, status)
            print(f"=== run {run_id} ended {status} ===", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI: same arguments as `mlflow run .` for the parts that apply in-process."""
    parser = argparse.ArgumentParser(
        prog="debug_mlproject.py",
        description="Run this project's MLproject entry point in-process (for a debugger).",
    )
    parser.add_argument("-e", "--entry-point", default="main")
    parser.add_argument("-P", "--param", action="append", default=[], metavar="KEY=VALUE")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--experiment-name", default=os.environ.get("MLFLOW_EXPERIMENT_NAME"))
    group.add_argument("--experiment-id", default=os.environ.get("MLFLOW_EXPERIMENT_ID"))
    parser.add_argument("--run-name")
    args = parser.parse_args(argv)
    try:
        params = parse_params(args.param)
        return debug_run(
            args.entry_point, params, args.experiment_name, args.experiment_id, args.run_name
        )
    except DebugLaunchError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    except DaiMlflowError as e:  # e.g. the tracking store cannot be reached or bridged
        return report_error(e)
    except Exception as e:  # MLflow's own validation errors (missing param, bad path, …)
        if type(e).__name__ in ("ExecutionException", "MlflowException"):
            print(f"Error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
