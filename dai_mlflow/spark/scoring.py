"""Batch-score a logged DAI model on Spark: local, on a standalone cluster, or anywhere else.

:func:`score` returns ``df`` plus DAI's output columns (named by the model's signature);
:func:`score_to_path` reads csv/parquet, scores and writes parquet all or nothing. The driver
checks the model and the input before any task and ships them (:mod:`.shipping`); executors
score in :mod:`.worker`. MLflow's public API only. Driver side; Python 3.8-safe (also a Python
3.8 driver with PySpark 3.5 and MLflow 2.17). See spark_inference/README.md.
"""

from __future__ import annotations

import contextlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple

from dai_mlflow.envs.model_env import ENV_MANAGERS, model_python_version
from dai_mlflow.errors import DaiMlflowError, one_line
from dai_mlflow.model.hooks.stdin_server import cast_to_schema
from dai_mlflow.spark import shipping, worker
from dai_mlflow.spark.files import (
    INPUT_FORMATS,
    SparkScoringError,
    input_columns,
    read_input,
    sample_rows,
    validate_output,
    write_atomically,
)
from dai_mlflow.tracking import download_model

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

ERROR_MARKER = worker.ERROR_MARKER
ARROW_BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"
# Rows per Arrow batch sent to the model: large enough to amortise per-batch overhead, small
# enough to keep a batch's memory modest (benchmarks/spark_throughput.py).
DEFAULT_BATCH_SIZE = 20000
PRED_COLUMN = "__dai_mlflow_prediction"


class InputColumnsError(DaiMlflowError):
    """The input lacks columns the model's signature requires."""

    def __init__(self, missing: Sequence[str], available: Sequence[str]) -> None:
        self.missing = list(missing)
        super().__init__(
            f"input is missing column(s) {self.missing} that the model needs "
            f"(input has {list(available)[:20]}); add them or score another file"
        )


class ModelSignatureError(DaiMlflowError):
    """The model cannot be scored on Spark as logged (no signature, name clashes)."""


# Spark type names for MLflow ColSpec types (mlflow.types.DataType names).
_SPARK_TYPES = {
    "double": "double",
    "float": "float",
    "long": "long",
    "integer": "int",
    "boolean": "boolean",
    "string": "string",
    "binary": "binary",
    "datetime": "timestamp",
}


@dataclass(frozen=True)
class ModelSpec:
    """What the driver needs to know about a downloaded model before scoring it."""

    local_dir: Path
    python_version: str
    inputs: Tuple[Tuple[str, str], ...]
    required_inputs: Tuple[str, ...]
    outputs: Tuple[Tuple[str, str], ...]

    @classmethod
    def from_dir(cls, local_dir: Path) -> ModelSpec:
        """Read MLmodel's signature and python_env.yaml of a downloaded model."""
        from mlflow.models import Model

        model = Model.load(str(local_dir / "MLmodel"))
        in_schema = model.get_input_schema()
        out_schema = model.get_output_schema()
        if in_schema is None or not in_schema.has_input_names():
            raise ModelSignatureError(
                f"{local_dir}: the model has no named input signature; log it with one"
            )
        if out_schema is None or not out_schema.has_input_names():
            raise ModelSignatureError(
                f"{local_dir}: the model has no named output signature, so the DAI output "
                "columns are unknown; log it with signature=ModelSignature(inputs, outputs)"
            )
        return cls(
            local_dir=local_dir,
            python_version=model_python_version(local_dir),
            inputs=tuple((s.name, _spark_type(s)) for s in in_schema.inputs),
            required_inputs=tuple(in_schema.required_input_names()),
            outputs=tuple((s.name, _spark_type(s)) for s in out_schema.inputs),
        )

    @property
    def output_names(self) -> List[str]:
        """DAI output column names, in signature order."""
        return [name for name, _ in self.outputs]

    def result_type(self) -> str:
        """Spark DDL of the struct the UDF returns."""
        return ", ".join(f"`{name}` {typ}" for name, typ in self.outputs)


def _spark_type(spec: object) -> str:
    type_name = getattr(getattr(spec, "type", None), "name", None)
    if type_name not in _SPARK_TYPES:
        raise ModelSignatureError(
            f"signature column {getattr(spec, 'name', spec)!r} has type {type_name!r}; "
            f"spark scoring supports {sorted(_SPARK_TYPES)}"
        )
    return _SPARK_TYPES[type_name]


def preflight_predict(
    spec: ModelSpec, input_path: str, input_format: Optional[str] = None, rows: int = 5
) -> None:
    """Load the model in this process and score the input's first rows, before Spark starts.

    For ``env_manager="local"`` the driver's env is the workers' env, so a missing license, a
    scorer that cannot be imported or built, or a scorer exception shows here in seconds instead
    of after the JVM, the workers and the first task have started. Costs one model load.

    Raises:
        SparkScoringError: the model failed; the message is its error, one line.
    """
    import mlflow.pyfunc

    sample = sample_rows(input_path, input_format, rows)
    if sample is None or sample.empty:
        return
    names = [name for name, _ in spec.inputs if name in sample.columns]
    try:
        # As Spark hands the model its columns: in the signature's types.
        frame = cast_to_schema(sample[names], spec.inputs)
        mlflow.pyfunc.load_model(str(spec.local_dir)).predict(frame)
    except Exception as e:
        raise SparkScoringError(f"scoring failed in the model: {one_line(e)}") from e


def precheck(model_dir: Path, input_path: str, input_format: Optional[str] = None) -> ModelSpec:
    """Fail fast, before Spark starts: the model is scorable and a local input has its columns."""
    spec = ModelSpec.from_dir(model_dir)
    columns = input_columns(input_path, input_format)
    if columns is not None:
        validate_input(spec, columns)
    return spec


# ----------------------------------------------------------------------------- driver side


def validate_input(spec: ModelSpec, columns: Sequence[str]) -> None:
    """Raise InputColumnsError when ``columns`` lack a required model input."""
    present = set(columns)
    missing = [name for name in spec.required_inputs if name not in present]
    if missing:
        raise InputColumnsError(missing, columns)
    clash = [name for name in spec.output_names if name in present]
    if clash:
        raise ModelSignatureError(
            f"input already has column(s) {clash} that the model outputs; "
            "drop or rename them before scoring"
        )


def _task_cpus(spark: SparkSession) -> int:
    try:
        return max(1, int(spark.conf.get("spark.task.cpus", "1") or "1"))
    except (TypeError, ValueError):
        return 1


def thread_env(spark: SparkSession) -> Dict[str, str]:
    """Thread limits for the model: each task may use ``spark.task.cpus`` cores, no more."""
    return dict.fromkeys(worker.THREAD_VARS, str(_task_cpus(spark)))


@contextlib.contextmanager
def _worker_environment(spark: SparkSession, defaults: Dict[str, str]) -> Iterator[None]:
    """Variables for Python workers started for UDFs created inside the block.

    PySpark copies ``SparkContext.environment`` into each UDF when the UDF column is built, and
    starts workers for it with those variables. BLAS reads its thread count once, at import, so
    for ``env_manager="local"`` (the model runs in the worker) it must be there at start.
    """
    env = spark.sparkContext.environment
    saved = dict(env)
    for key, value in defaults.items():
        env.setdefault(key, value)
    try:
        yield
    finally:
        env.clear()
        env.update(saved)


def _layout(df: DataFrame, partitions: int) -> DataFrame:
    """At least one task per core (a model server per Python worker serves every task)."""
    if df.rdd.getNumPartitions() < partitions:
        return df.repartition(partitions)
    return df


def plan(
    spark: SparkSession,
    local_dir: Path,
    env_manager: str,
    env: Optional[Dict[str, str]] = None,
    env_root: Optional[str] = None,
) -> worker.ScoringPlan:
    """Ship what the executors need and describe it for them (see :mod:`.shipping`)."""
    shipping.ship_package(spark)
    # The runtime wheels go only where an env may have to be built.
    shipped = shipping.ship_model(spark, local_dir, runtime=env_manager != "local")
    licensed = shipping.ship_license(spark, env)
    # A shipped license leaves the closure; license variables that shipped nothing (empty, or a
    # missing file: no secret) still override the executors' own, as the caller asked.
    license_vars = (worker.LICENSE_KEY_ENV, worker.LICENSE_FILE_ENV) if licensed else ()
    others = {k: v for k, v in (env or {}).items() if k not in license_vars}
    return worker.ScoringPlan(
        model_file=shipped.model_file,
        model_key=shipped.model_key,
        env_manager=env_manager,
        env_root=env_root,
        license=licensed,
        env=tuple(sorted(others.items())),
        threads=_task_cpus(spark),
        runtime=shipped.runtime,
        runtime_key=shipped.runtime_key,
        env_id=shipped.env_id,
    )


def score(
    spark: SparkSession,
    model_uri: str,
    df: DataFrame,
    env_manager: str = "local",
    *,
    partitions: Optional[int] = None,
    batch_size: Optional[int] = None,
    add_metadata: bool = False,
    env: Optional[Dict[str, str]] = None,
    env_root: Optional[str] = None,
    source_uri: Optional[str] = None,
) -> DataFrame:
    """Add the DAI output columns of ``model_uri`` to ``df``.

    Args:
        spark: the SparkSession (any master).
        model_uri: any MLflow model URI (``models:/name@alias``, ``runs:/...``, a local folder).
        df: input; must hold the model's signature columns (others are carried through).
        env_manager: ``local`` (default): the executors' Python *is* the model's env (e.g.
            ``venvs/spark_inference``); ``uv`` or ``virtualenv``: each executor builds the
            model's env (offline, with a local Python of the model's version) and scores in a
            model server there: what a cluster whose Python is not the model's needs.
        partitions: tasks to score with (default: ``spark.sparkContext.defaultParallelism``).
        batch_size: rows per Arrow batch; sets ``spark.sql.execution.arrow.maxRecordsPerBatch``.
        add_metadata: also add ``model_uri`` and ``scored_at`` (timestamp) columns.
        env: variables for the model on the executors; license variables in it
            (``DRIVERLESS_AI_LICENSE_KEY`` from a secret store) win over the driver's own.
        env_root: where executors keep model envs (default: their ``DAI_MLFLOW_ENV_ROOT`` or
            ``~/.cache/dai-mlflow/envs``).
        source_uri: the URI written to the ``model_uri`` column (default: ``model_uri``).

    Returns:
        A lazy DataFrame: the input columns plus one column per DAI output column. Errors in the
        model surface when an action runs; :func:`translate_error` turns them into one line.

    Raises:
        InputColumnsError, ModelSignatureError, SparkScoringError: found on the driver, before
            any task runs.
    """
    from pyspark.sql import functions as F

    if env_manager not in ENV_MANAGERS:
        raise SparkScoringError(f"unknown env manager {env_manager!r}; use one of {ENV_MANAGERS}")
    local_dir = download_model(model_uri)
    spec = ModelSpec.from_dir(local_dir)
    validate_input(spec, df.columns)
    if env_manager == "local":
        _warn_python_mismatch(spec)
    if batch_size:
        spark.conf.set(ARROW_BATCH_CONF, str(int(batch_size)))
    udf = worker.make_udf(plan(spark, local_dir, env_manager, env, env_root), spec.result_type())
    laid_out = _layout(df, max(1, int(partitions or spark.sparkContext.defaultParallelism)))
    types = dict(spec.inputs)
    model_cols = [
        F.col(_q(name)).cast(types[name]).alias(name)
        for name, _ in spec.inputs
        if name in df.columns
    ]
    defaults = thread_env(spark) if env_manager == "local" else {}
    with _worker_environment(spark, defaults):
        scored = laid_out.withColumn(PRED_COLUMN, udf(F.struct(*model_cols)))
    out = [F.col(_q(c)) for c in df.columns]
    out += [F.col(PRED_COLUMN).getField(name).alias(name) for name in spec.output_names]
    if add_metadata:
        out += [
            F.lit(source_uri or model_uri).alias("model_uri"),
            F.current_timestamp().alias("scored_at"),
        ]
    return scored.select(*out)


def _q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _warn_python_mismatch(spec: ModelSpec) -> None:
    mine = ".".join(map(str, sys.version_info[:2]))
    theirs = ".".join(spec.python_version.split(".")[:2])
    if mine != theirs:
        print(
            f"warning: env_manager=local runs the model on this Python ({mine}) but it was "
            f"logged with Python {theirs}; build venvs/spark_inference (make spark-venv) or use "
            "--env-manager uv",
            file=sys.stderr,
        )


_PY_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)): (.+)$")


def translate_error(exc: BaseException) -> DaiMlflowError:
    """Turn an exception from a Spark action into a one-line :class:`SparkScoringError`."""
    if isinstance(exc, DaiMlflowError):
        return exc
    text = str(exc)
    marked = re.findall(re.escape(ERROR_MARKER) + r" (.+)", text)
    if marked:
        return SparkScoringError(f"scoring failed in the model: {marked[-1].strip()}")
    errors = [m for m in (_PY_ERROR_LINE.match(ln.strip()) for ln in text.splitlines()) if m]
    if errors:
        return SparkScoringError(f"scoring failed: {errors[-1].group(1)}: {errors[-1].group(2)}")
    return SparkScoringError(f"scoring failed: {one_line(exc)}")


def score_to_path(
    spark: SparkSession,
    model_uri: str,
    input_path: str,
    output_path: str,
    env_manager: str = "local",
    *,
    input_format: Optional[str] = None,
    batch_size: Optional[int] = DEFAULT_BATCH_SIZE,
    overwrite: bool = False,
    **options: Any,
) -> None:
    """Read ``input_path``, score it with :func:`score`, write parquet to ``output_path``.

    ``options`` are :func:`score`'s (``partitions``, ``add_metadata``, ``env``, ``env_root``,
    ``source_uri``); ``input_format`` is ``csv`` or ``parquet`` (default: from the extension).

    The output appears at ``output_path`` only when the whole job succeeded, and is left
    untouched by any failure. An existing ``output_path`` is replaced only when it is an
    earlier output of dai-mlflow, or with ``overwrite=True``; never when it is, holds or lies
    inside the input, nor when it is ``/``, the home, current or a project folder
    (:mod:`dai_mlflow.outputs`).

    Raises:
        DaiMlflowError: any expected failure, with a one-line message
            (:class:`~dai_mlflow.outputs.OutputRefusedError` before anything runs).
    """
    if input_format not in (None,) + INPUT_FORMATS:
        raise SparkScoringError(f"unknown input format {input_format!r}; use csv or parquet")
    validate_output(output_path, [input_path], overwrite, spark)
    try:
        df = read_input(spark, input_path, input_format)
    except DaiMlflowError:
        raise
    except Exception as e:
        raise SparkScoringError(f"cannot read {input_path}: {one_line(e)}") from e
    previous = spark.conf.get(ARROW_BATCH_CONF, None)
    try:
        scored = score(spark, model_uri, df, env_manager, batch_size=batch_size, **options)
        write_atomically(
            spark, scored, output_path, translate_error, overwrite=overwrite, inputs=[input_path]
        )
    finally:
        if previous is not None:
            spark.conf.set(ARROW_BATCH_CONF, previous)
