"""Batch-score a logged DAI pyfunc model on Spark with ``mlflow.pyfunc.spark_udf``.

``score(spark, model_uri, df)`` returns ``df`` plus one column per DAI output column (read from
the model's signature: ``<target>.<class>`` for classification, ``<target>`` for regression).
``score_to_path`` reads csv/parquet, scores, and writes parquet atomically; it is what
``spark_inference/score.py`` runs.

What this adds around ``spark_udf`` (each measured on mlflow 3.17.2 / pyspark 4.3):

* offline env building for ``uv``/``virtualenv`` with local interpreters
  (:mod:`dai_mlflow.envmanagers`), in a persistent env root shared by every model of a DAI
  version, so repeated jobs and new models of a seen version skip the build
  (:mod:`dai_mlflow.model_envs`; MLflow alone rebuilds per call, issue #12204);
* a pre-flight on the driver: the input must hold the signature's required columns, checked
  before any task starts;
* real errors instead of "Scoring timeout": a model server that fails to load or predict
  answers with its error (:mod:`dai_mlflow.spark_model_server`), a server that dies is noticed
  within milliseconds, and every model-side error reaches the driver as one marked line;
* the model is loaded once per Python worker (``local``) or once per task (``uv``/``virtualenv``,
  one model server per task, started ahead by the previous job of the same env:
  :mod:`dai_mlflow.warm_servers`), and the input is laid out as one task per core;
* BLAS/OpenMP threads per worker = ``spark.task.cpus``, so tasks x threads <= cores.

The worker-side hooks live in this module, so ``dai_mlflow`` must be importable by the Python
workers (``venvs/launcher`` and ``venvs/spark_inference`` have the checkout on their path).
Python 3.8-safe: it also runs in a Python 3.8 driver with PySpark 3.5 and MLflow 2.17.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import pandas as pd

from dai_mlflow.envmanagers import (
    BUILDING_ENV_MANAGERS,
    ENV_MANAGERS,
    env_build_env,
    model_server_env,
    patched_environ,
)
from dai_mlflow.errors import DaiMlflowError
from dai_mlflow.model_envs import persistent_model_envs
from dai_mlflow.warm_servers import patched_serve_stdin

MODEL_SERVER_SCRIPT = Path(__file__).resolve().parent / "spark_model_server.py"
ERROR_MARKER = "[dai-mlflow model error]"
SERVER_ERROR_KEY = "dai_mlflow_error"
ARROW_BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"
# Rows per Arrow batch sent to the model: large enough to amortise per-call overhead (a JSON
# round trip for uv/virtualenv), small enough to keep a batch's memory modest
# (benchmarks/spark_throughput.py).
DEFAULT_BATCH_SIZE = 20000
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
# A first request includes the model (and DAI scorer) load; a dead server is detected anyway.
MODEL_SERVER_REQUEST_TIMEOUT = "600"
PRED_COLUMN = "__dai_mlflow_prediction"
INPUT_FORMATS = ("csv", "parquet")


class SparkScoringError(DaiMlflowError):
    """Scoring failed in the model (missing license, scorer exception, ...) or in Spark."""


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


class OutputPathError(DaiMlflowError):
    """The output could not be written or moved into place; the previous output is intact."""


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
            python_version=_model_python(local_dir, model),
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


def _model_python(local_dir: Path, model: object) -> str:
    import yaml

    env_file = local_dir / "python_env.yaml"
    if env_file.is_file():
        data = yaml.safe_load(env_file.read_text()) or {}
        if data.get("python"):
            return str(data["python"])
    flavor = getattr(model, "flavors", {}).get("python_function", {})
    version = flavor.get("python_version")
    if not version:
        raise ModelSignatureError(f"{local_dir}: no python_env.yaml and no python_version")
    return str(version)


def download_model(model_uri: str, dst: Optional[Path] = None) -> Path:
    """Download (or locate) a model and return its local folder.

    ``models:/`` and ``runs:/`` URIs are resolved through ``dai_mlflow.tracking``, which bridges
    an MLflow 2.x driver (the Python 3.8 Spark venv) to a sqlite store made by MLflow 3.x.
    """
    import mlflow.artifacts

    if Path(model_uri).is_dir():
        return Path(model_uri).resolve()
    scheme = model_uri.split(":", 1)[0] if ":" in model_uri else ""
    store = contextlib.nullcontext()
    if scheme in ("models", "runs"):
        from dai_mlflow.tracking import tracking_store

        store = tracking_store()
    try:
        with store:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=model_uri, dst_path=str(dst) if dst else None
            )
    except DaiMlflowError:
        raise
    except Exception as e:
        raise SparkScoringError(f"cannot download model {model_uri}: {_one_line(e)}") from e
    return Path(path)


def input_columns(path: str, input_format: Optional[str] = None) -> Optional[List[str]]:
    """Column names of a local csv/parquet input without starting Spark; None if unknown."""
    local = Path(path)
    if not local.exists():
        return None
    try:
        fmt = input_format or _format_of(path)
        files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local]
        files = [f for f in files if not f.name.startswith((".", "_"))]
        if not files:
            return None
        if fmt == "csv":
            return list(pd.read_csv(files[0], nrows=0).columns)
        import pyarrow.parquet as pq

        return list(pq.read_schema(str(files[0])).names)
    except Exception:  # an unreadable file is reported by Spark, with its own message
        return None


_PANDAS_TYPES = {"double": "float64", "float": "float32", "long": "int64", "int": "int32"}


def _sample_rows(path: str, input_format: Optional[str], rows: int) -> Optional[pd.DataFrame]:
    """The first rows of a local csv/parquet input, read without Spark; None if not local."""
    local = Path(path)
    if not local.exists():
        return None
    fmt = input_format or _format_of(path)
    files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local]
    files = [f for f in files if not f.name.startswith((".", "_"))]
    if not files:
        return None
    if fmt == "csv":
        return pd.read_csv(files[0], nrows=rows)
    import pyarrow.parquet as pq

    return pq.ParquetFile(str(files[0])).read_row_group(0).to_pandas().head(rows)


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

    sample = _sample_rows(input_path, input_format, rows)
    if sample is None or sample.empty:
        return
    names = [name for name, _ in spec.inputs if name in sample.columns]
    frame = sample[names].copy()
    for name, typ in spec.inputs:
        if name in frame.columns and typ in _PANDAS_TYPES and frame[name].notna().all():
            frame[name] = frame[name].astype(_PANDAS_TYPES[typ])
        elif name in frame.columns and typ in ("double", "float"):
            frame[name] = frame[name].astype("float64")
    try:
        mlflow.pyfunc.load_model(str(spec.local_dir)).predict(frame)
    except Exception as e:
        raise SparkScoringError(f"scoring failed in the model: {_one_line(e)}") from e


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


def _task_cpus(spark: object) -> int:
    try:
        return max(1, int(spark.conf.get("spark.task.cpus", "1")))
    except (TypeError, ValueError):
        return 1


def thread_env(spark: object) -> Dict[str, str]:
    """Thread limits for the model: each task may use ``spark.task.cpus`` cores, no more."""
    threads = str(_task_cpus(spark))
    return dict.fromkeys(THREAD_VARS, threads)


@contextlib.contextmanager
def _worker_environment(
    spark: object, defaults: Dict[str, str], overrides: Dict[str, str]
) -> Iterator[None]:
    """Variables for Python workers started for UDFs created inside the block.

    PySpark copies ``SparkContext.environment`` into each UDF when the UDF column is built, and
    starts workers for it with those variables; BLAS reads them once, at import, so they must be
    there when the worker starts (``extra_env`` only reaches the model server).
    """
    env = spark.sparkContext.environment
    saved = dict(env)
    for key, value in defaults.items():
        env.setdefault(key, value)
    env.update(overrides)
    try:
        yield
    finally:
        env.clear()
        env.update(saved)


def _layout(df: object, partitions: int, env_manager: str) -> object:
    current = df.rdd.getNumPartitions()
    if current < partitions:
        return df.repartition(partitions)
    if current > partitions and env_manager in BUILDING_ENV_MANAGERS:
        # uv/virtualenv start one model server (one scorer) per task: few, long tasks.
        return df.coalesce(partitions)
    return df


def score(
    spark: object,
    model_uri: str,
    df: object,
    env_manager: str = "local",
    *,
    partitions: Optional[int] = None,
    batch_size: Optional[int] = None,
    add_metadata: bool = False,
    env: Optional[Dict[str, str]] = None,
    source_uri: Optional[str] = None,
) -> object:
    """Add the DAI output columns of ``model_uri`` to ``df``, scored with ``spark_udf``.

    Args:
        spark: the SparkSession.
        model_uri: any MLflow model URI (``models:/name@alias``, ``runs:/...``, a local folder).
        df: input; must hold the model's signature columns (others are carried through).
        env_manager: ``local`` (the driver's env, e.g. ``venvs/spark_inference``), ``uv`` or
            ``virtualenv`` (MLflow rebuilds the model's env, offline, with a local Python).
        partitions: tasks to score with (default: ``spark.sparkContext.defaultParallelism``).
        batch_size: rows per Arrow batch; sets ``spark.sql.execution.arrow.maxRecordsPerBatch``
            on the session when given.
        add_metadata: also add ``model_uri`` and ``scored_at`` (timestamp) columns.
        env: variables for the model on the workers, e.g. ``DRIVERLESS_AI_LICENSE_KEY`` from a
            secret store (workers otherwise see the environment Spark started with).
        source_uri: the URI written to the ``model_uri`` column (default: ``model_uri``).

    Returns:
        A lazy DataFrame: the input columns plus one column per DAI output column. Errors in the
        model surface when an action runs; :func:`translate_error` turns them into one line.

    Raises:
        InputColumnsError, ModelSignatureError, SparkScoringError, PythonNotFoundError: found
            on the driver, before any task runs.
    """
    import mlflow.pyfunc
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

    extra_env = {"MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": MODEL_SERVER_REQUEST_TIMEOUT}
    extra_env.update(thread_env(spark))
    build_env: Dict[str, str] = {}
    if env_manager in BUILDING_ENV_MANAGERS:
        build_env = env_build_env(spec.python_version)
        extra_env.update(build_env)
        extra_env.update(model_server_env())
    extra_env.update(
        {k: os.environ[k] for k in ("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT",) if k in os.environ}
    )
    extra_env.update(env or {})
    try:
        with patched_environ(build_env), persistent_model_envs(local_dir, env_manager):
            mlflow_udf = mlflow.pyfunc.spark_udf(
                spark,
                str(local_dir),
                result_type=spec.result_type(),
                env_manager=env_manager,
                extra_env=extra_env,
            )
    except DaiMlflowError:
        raise
    except Exception as e:
        raise SparkScoringError(
            f"preparing the model env ({env_manager}) failed: {_one_line(e)}"
        ) from e
    guarded = _guarded_udf(mlflow_udf, spec.result_type(), env_manager)

    target = partitions or spark.sparkContext.defaultParallelism
    laid_out = _layout(df, max(1, int(target)), env_manager)
    types = dict(spec.inputs)
    model_cols = [
        F.col(_q(name)).cast(types[name]).alias(name)
        for name, _ in spec.inputs
        if name in df.columns
    ]
    # uv/virtualenv hand ``env`` to the model server (extra_env); only local workers need it.
    worker_env = dict(env or {}) if env_manager == "local" else {}
    with _worker_environment(spark, thread_env(spark), worker_env):
        scored = laid_out.withColumn(PRED_COLUMN, guarded(F.struct(*model_cols)))
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


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


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
    return SparkScoringError(f"scoring failed: {_one_line(exc)}")


# ----------------------------------------------------------------------------- worker side


def _guarded_udf(mlflow_udf: object, result_type: str, env_manager: str) -> object:
    """Wrap MLflow's iterator UDF: worker hooks around it, errors marked on the way out."""
    from pyspark.sql.functions import pandas_udf

    raw = mlflow_udf.__wrapped__.func  # the generator MLflow wrapped with pandas_udf

    def dai_mlflow_score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        with worker_hooks(env_manager):
            try:
                yield from raw(batches)
            except Exception as e:
                cause = e
                while isinstance(cause.__cause__, ModelServerError):
                    cause = cause.__cause__
                message = str(cause) if isinstance(cause, ModelServerError) else _one_line(e)
                raise RuntimeError(f"{ERROR_MARKER} {message}") from e

    return pandas_udf(dai_mlflow_score, result_type)


class ModelServerError(RuntimeError):
    """Raised in a worker when the model server reports an error or dies."""


_loaded_models: Dict[str, object] = {}


def _load_model_once(original):  # noqa: ANN001, ANN202 - wraps mlflow.pyfunc.load_model
    def load_model(model_uri, *args, **kwargs):  # noqa: ANN001, ANN202
        key = json.dumps([str(model_uri), repr(args), repr(sorted(kwargs.items()))])
        if key not in _loaded_models:
            _loaded_models[key] = original(model_uri, *args, **kwargs)
        return _loaded_models[key]

    return load_model


class _TailingStream:
    """Iterates a model server's output like the pipe it wraps, keeping the last lines."""

    def __init__(self, stream: object) -> None:
        self._stream = stream
        self.tail: collections.deque = collections.deque(maxlen=200)
        self.finished = False

    def __iter__(self) -> Iterator[object]:
        try:
            for line in self._stream:
                self.tail.append(line.decode(errors="replace") if isinstance(line, bytes) else line)
                yield line
        finally:
            self.finished = True

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def _server_died(client: object) -> ModelServerError:
    proc = client.process
    stream = proc.stdout
    deadline = time.monotonic() + 2.0
    tailing = isinstance(stream, _TailingStream)
    while tailing and not stream.finished and time.monotonic() < deadline:
        time.sleep(0.01)
    lines = [ln.strip() for ln in getattr(stream, "tail", ()) if ln.strip()]
    marked = [ln.split(ERROR_MARKER, 1)[1].strip() for ln in lines if ERROR_MARKER in ln]
    errors = [ln for ln in lines if _PY_ERROR_LINE.match(ln)]
    detail = (marked or errors or lines or ["no output"])[-1]
    return ModelServerError(f"the model server exited with code {proc.poll()}: {detail}")


def _fast_invoke(self, data, params=None):  # noqa: ANN001, ANN202 - replaces a method
    """StdinScoringServerClient.invoke that polls in ms, notices a dead server and errors."""
    from mlflow.deployments import PredictionsResponse
    from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
    from mlflow.utils.proto_json_utils import dump_input_data

    if not self.output_json.exists():
        self.output_json.touch()
    request_id = str(uuid.uuid4())
    request = {
        "id": request_id,
        "data": dump_input_data(data, params=params),
        "output_file": str(self.output_json),
    }
    try:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
    except (OSError, ValueError) as e:
        raise _server_died(self) from e
    timeout = float(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get())
    started = time.monotonic()
    delay = 0.001
    while True:
        exited = self.process.poll() is not None
        try:
            text = self.output_json.read_text()
            answer = json.loads(text) if text.strip() else None
        except (OSError, ValueError):
            answer = None
        if answer is not None and answer.get("id") == request_id:
            if SERVER_ERROR_KEY in answer:
                raise ModelServerError(answer[SERVER_ERROR_KEY])
            self.output_json.write_text("")
            return PredictionsResponse.from_json(text)
        if exited:
            raise _server_died(self)
        if time.monotonic() - started > timeout:
            raise ModelServerError(
                f"no answer from the model server after {timeout:.0f}s "
                "(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT)"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _serve_stdin_tailed(original):  # noqa: ANN001, ANN202 - wraps PyFuncBackend.serve_stdin
    def serve_stdin(self, *args, **kwargs):  # noqa: ANN001, ANN202
        proc = original(self, *args, **kwargs)
        if proc.stdout is not None:
            proc.stdout = _TailingStream(proc.stdout)
        return proc

    return serve_stdin


@contextlib.contextmanager
def worker_hooks(env_manager: str) -> Iterator[None]:
    """Inside a Spark Python worker: load once (local) or serve through our server (uv, ...)."""
    import mlflow.pyfunc

    patches: List[Tuple[object, str, object]] = []

    def _patch(owner: object, name: str, value: object) -> None:
        if hasattr(owner, name):
            patches.append((owner, name, getattr(owner, name)))
            setattr(owner, name, value)

    if env_manager == "local":
        _patch(mlflow.pyfunc, "load_model", _load_model_once(mlflow.pyfunc.load_model))
    else:
        from mlflow.pyfunc import backend
        from mlflow.pyfunc.scoring_server.client import StdinScoringServerClient

        _patch(backend, "_STDIN_SERVER_SCRIPT", MODEL_SERVER_SCRIPT)
        _patch(StdinScoringServerClient, "invoke", _fast_invoke)
        warm = patched_serve_stdin(backend.PyFuncBackend.serve_stdin, MODEL_SERVER_SCRIPT)
        _patch(backend.PyFuncBackend, "serve_stdin", _serve_stdin_tailed(warm))
    try:
        yield
    finally:
        for owner, name, value in reversed(patches):
            setattr(owner, name, value)


# ----------------------------------------------------------------------------- files


def read_input(spark: object, path: str, input_format: Optional[str] = None) -> object:
    """Read csv (RFC 4180: header row, ``""`` escapes; inferred types) or parquet.

    The format follows the extension unless ``input_format`` is given.
    """
    fmt = input_format or _format_of(path)
    if fmt == "csv":
        return spark.read.csv(path, header=True, inferSchema=True, escape='"', multiLine=False)
    return spark.read.parquet(path)


def _format_of(path: str) -> str:
    name = path.rstrip("/").lower()
    if name.endswith(".csv") or name.endswith(".csv.gz"):
        return "csv"
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    local = Path(path)
    if local.is_dir():
        names = [p.name.lower() for p in local.iterdir()]
        if any(n.endswith(".csv") or n.endswith(".csv.gz") for n in names):
            return "csv"
        if any(n.endswith(".parquet") for n in names):
            return "parquet"
    raise SparkScoringError(
        f"cannot tell the format of {path}; name it *.csv or *.parquet or pass --input-format"
    )


class _HadoopFs:
    """The Hadoop FileSystem behind a path (local, hdfs, s3a, ...), via the JVM."""

    def __init__(self, spark: object, path: str) -> None:
        jvm = spark.sparkContext._jvm
        self._Path = jvm.org.apache.hadoop.fs.Path
        self.fs = self._Path(path).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())

    def path(self, path: str) -> object:
        return self._Path(path)

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(self._Path(path)))

    def delete(self, path: str) -> None:
        if self.exists(path):
            self.fs.delete(self._Path(path), True)

    def rename(self, src: str, dst: str) -> None:
        if not self.fs.rename(self._Path(src), self._Path(dst)):
            raise OutputPathError(f"could not move {src} to {dst}")


def _sibling(path: str, tag: str) -> str:
    base = path.rstrip("/")
    head, _, name = base.rpartition("/")
    sibling = f".{name}.{tag}-{uuid.uuid4().hex[:8]}"
    return f"{head}/{sibling}" if head else sibling


def write_atomically(spark: object, df: object, output: str) -> None:
    """Write ``df`` as parquet next to ``output``, then swap it in; on failure leave ``output``.

    Raises:
        SparkScoringError: the job failed (the model's error, one line).
        OutputPathError: the finished output could not be moved into place.
    """
    fs = _HadoopFs(spark, output)
    staging = _sibling(output, "staging")
    try:
        df.write.mode("errorifexists").parquet(staging)
    except Exception as e:
        with contextlib.suppress(Exception):
            fs.delete(staging)
        raise translate_error(e) from e
    backup = None
    try:
        if fs.exists(output):
            backup = _sibling(output, "previous")
            fs.rename(output, backup)
        fs.rename(staging, output)
    except Exception as e:
        if backup and not fs.exists(output):
            with contextlib.suppress(Exception):
                fs.rename(backup, output)
        with contextlib.suppress(Exception):
            fs.delete(staging)
        if isinstance(e, DaiMlflowError):
            raise
        raise OutputPathError(f"moving the output into {output} failed: {_one_line(e)}") from e
    if backup:
        fs.delete(backup)


def score_to_path(
    spark: object,
    model_uri: str,
    input_path: str,
    output_path: str,
    env_manager: str = "local",
    *,
    input_format: Optional[str] = None,
    partitions: Optional[int] = None,
    batch_size: Optional[int] = DEFAULT_BATCH_SIZE,
    add_metadata: bool = False,
    env: Optional[Dict[str, str]] = None,
    source_uri: Optional[str] = None,
) -> None:
    """Read ``input_path``, score it with :func:`score`, write parquet to ``output_path``.

    The output appears at ``output_path`` only when the whole job succeeded; whatever was there
    before is replaced then, and left untouched by any failure.

    Raises:
        DaiMlflowError: any expected failure, with a one-line message.
    """
    if input_format not in (None,) + INPUT_FORMATS:
        raise SparkScoringError(f"unknown input format {input_format!r}; use csv or parquet")
    try:
        df = read_input(spark, input_path, input_format)
    except DaiMlflowError:
        raise
    except Exception as e:
        raise SparkScoringError(f"cannot read {input_path}: {_one_line(e)}") from e
    previous = spark.conf.get(ARROW_BATCH_CONF, None)
    try:
        scored = score(
            spark,
            model_uri,
            df,
            env_manager,
            partitions=partitions,
            batch_size=batch_size,
            add_metadata=add_metadata,
            env=env,
            source_uri=source_uri,
        )
        write_atomically(spark, scored, output_path)
    finally:
        if previous is not None:
            spark.conf.set(ARROW_BATCH_CONF, previous)
