"""Scheduled batch scoring: ``mlflow run . -e batch -P model_name=NAME -P input=PATH -P table=DIR``.

:func:`batch` resolves ``NAME@champion`` once, checks the input against its signature, runs
:mod:`.batch_job` (Spark) in a subprocess in the champion's Spark venv (or this interpreter for
``env_manager=uv|virtualenv``), and records the run. Which Python runs where, and the output
table: docs/lifecycle.md. Python 3.8-safe: runs in the project env (no pyspark needed here).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from dai_mlflow.envs.locks import file_lock
from dai_mlflow.envs.model_env import ENV_MANAGERS
from dai_mlflow.errors import ERROR_PREFIX, say
from dai_mlflow.lifecycle import registry, scoring, tables
from dai_mlflow.lifecycle.batch_job import DEFAULT_MASTER, JOB_RESULT_PREFIX
from dai_mlflow.lifecycle.errors import LifecycleError
from dai_mlflow.outputs import BATCH_TABLE, check_partition

# Relative to the project folder `mlflow run` runs the entry point in (the checkout).
DEFAULT_SPARK_VENV = Path("venvs") / "spark_inference"
# Where this dai_mlflow is imported from: the job's driver imports the same one.
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
METADATA_COLUMNS = ("model_name", "model_version", "model_uri", "scored_at")
JOB_ERROR_PREFIX = ERROR_PREFIX + " "


@dataclass(frozen=True)
class BatchResult:
    """The run, the version scored and the partition it wrote."""

    run_id: str
    model_uri: str
    partition: Path
    rows: int


@dataclass(frozen=True)
class BatchRequest(registry.ModelRequest):
    """Inputs of :func:`batch`."""

    input: Path
    table: str
    day: str = ""
    alias: str = registry.CHAMPION
    env_manager: str = "local"
    spark_venv: Optional[Path] = None
    master: str = DEFAULT_MASTER
    python: str = ""
    overwrite: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.env_manager not in ENV_MANAGERS:
            raise LifecycleError(f"env_manager {self.env_manager!r}: use one of {ENV_MANAGERS}")
        scoring.data_format(self.input)
        tables.partition_date(self.day)
        # A table that is not ours, or that holds the input, is refused before anything runs.
        tables.check_table(
            tables.local_table(self.table), BATCH_TABLE, [str(self.input)], self.overwrite
        )


def spark_venv_python(model_dir: Path, dest: Path) -> Path:
    """Build or reuse ``dest`` as the model's Spark venv (its env + pyspark + pyarrow)."""
    from dai_mlflow.envs.spark_venv import spec_for_model_dir
    from dai_mlflow.envs.venvs import ensure_venv

    with file_lock(dest.with_name(dest.name + ".lock")):
        spec = spec_for_model_dir(model_dir, site_paths=[str(PACKAGE_PARENT)])
        python, built = ensure_venv(spec, dest, quiet=True, progress=lambda _m: None)
    say(f"spark venv {'built' if built else 'reused'}: {dest}")
    return python


def _has_pyspark() -> bool:
    import importlib.util

    return importlib.util.find_spec("pyspark") is not None


def job_python(request: BatchRequest, model_dir: Path) -> Path:
    """The interpreter that runs the Spark job's driver (see the module docstring)."""
    if request.env_manager != "local" and _has_pyspark():
        return Path(sys.executable)
    return spark_venv_python(model_dir, (request.spark_venv or DEFAULT_SPARK_VENV).resolve())


def job_command(
    request: BatchRequest, day: str, python: Path, model_dir: Path, ref: registry.ModelVersionRef
) -> List[str]:
    """The ``python -m dai_mlflow.lifecycle.batch_job ...`` command line for partition ``day``."""
    return [
        str(python),
        "-m",
        "dai_mlflow.lifecycle.batch_job",
        "--model-dir", str(model_dir),
        "--model-name", ref.name,
        "--model-version", ref.version,
        "--input", str(request.input.resolve()),
        "--table", str(tables.local_table(request.table)),
        "--date", day,
        "--env-manager", request.env_manager,
        "--master", request.master,
        *(["--python", request.python] if request.python else []),
        *(["--overwrite"] if request.overwrite else []),
    ]  # fmt: skip


def _job_env() -> dict:
    # The job runs in the champion's Spark venv: a PYSPARK_PYTHON meant for another driver (a
    # shell's, or an in-process session's) would give its workers another Python (--python
    # names the executors' Python of a cluster).
    dropped = ("PYTHONHOME", "VIRTUAL_ENV", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["PYTHONPATH"] = str(PACKAGE_PARENT)  # the job imports this dai_mlflow
    env.pop("MLFLOW_RUN_ID", None)  # the job does no tracking
    return env


def run_job(command: List[str]) -> int:
    """Run the Spark job; return the rows written.

    Raises:
        LifecycleError: the job failed (its one-line error, and where its full output was
            kept; the table is unchanged).
    """
    proc = subprocess.run(command, env=_job_env(), capture_output=True, text=True)
    result = [ln for ln in proc.stdout.splitlines() if ln.startswith(JOB_RESULT_PREFIX)]
    if proc.returncode == 0 and result:
        return int(result[-1].split("=", 1)[1])
    lines = [ln.strip() for ln in (proc.stdout + "\n" + proc.stderr).splitlines()]
    errors = [ln[len(JOB_ERROR_PREFIX) :] for ln in lines if ln.startswith(JOB_ERROR_PREFIX)]
    detail = errors[-1] if errors else next((ln for ln in reversed(lines) if ln), "no output")
    with tempfile.NamedTemporaryFile(
        "w", prefix="dai-mlflow-batch-job-", suffix=".log", delete=False
    ) as log:
        log.write(proc.stdout + "\n" + proc.stderr)
    raise LifecycleError(f"batch scoring failed: {detail} (job output: {log.name})")


def batch(request: BatchRequest) -> BatchResult:
    """Score the input with ``NAME@champion`` and replace the date's partition of the table.

    Raises:
        DaiMlflowError: any expected failure (one line); the table is unchanged and the run
            ends FAILED.
    """
    import mlflow

    with mlflow.start_run() as run:
        day = tables.partition_date(request.day)
        registry.log_params_once(
            {
                "model_name": request.model_name,
                "alias": request.alias,
                "input": str(request.input),
                "table": str(tables.local_table(request.table)),
                "date": day,
                "env_manager": request.env_manager,
            }
        )
        table = tables.local_table(request.table)
        check_partition(tables.partition_dir(table, day), request.overwrite)
        ref = registry.require_alias(request.model_name, request.alias)
        registry.log_params_once({"model_version": ref.version})
        work = Path(tempfile.mkdtemp(prefix="dai-mlflow-batch-"))
        try:
            model_dir = registry.download(ref, work / "model")
            _check_input(model_dir, request.input)
            python = job_python(request, model_dir)
            say(f"scoring {request.input} with {ref.uri} into date={day} ({python})")
            rows = run_job(job_command(request, day, python, model_dir, ref))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        partition = tables.partition_dir(tables.local_table(request.table), day)
        mlflow.log_metric("rows", rows)
        mlflow.set_tag(registry.TAG_PREFIX + "partition", str(partition))
        say(f"wrote {rows} rows to {partition}")
        return BatchResult(run.info.run_id, ref.uri, partition, rows)


def _check_input(model_dir: Path, path: Path) -> None:
    """Fail before Spark starts when the input lacks model columns or has reserved ones."""
    from dai_mlflow.spark import input_columns, precheck

    precheck(model_dir, str(path))
    columns = input_columns(str(path)) or []
    clash = [c for c in (*METADATA_COLUMNS, tables.PARTITION_COLUMN) if c in columns]
    if clash:
        raise LifecycleError(
            f"{path} has column(s) {clash} that batch adds; rename them before scoring"
        )
