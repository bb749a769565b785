"""Batch-score a logged DAI model on Spark: csv/parquet in, parquet out (input + DAI columns).

    python spark_inference/score.py --model-uri URI --input PATH --output PATH \
        [--env-manager local|uv|virtualenv] [--master local[*]] [--batch-size N] [--add-metadata]

``--env-manager local`` (default) scores in this interpreter's env: run it from
``venvs/spark_inference`` (``make spark-venv MODEL_URI=URI``). ``uv``/``virtualenv`` rebuild the
model's env offline with a local Python: run those from ``venvs/launcher``. The output is written
to a staging folder and moved to ``--output`` only on success; any failure prints one line
(``Error: ...``), exits non-zero and leaves ``--output`` as it was.

Thin front door: the scoring logic is ``dai_mlflow.spark.score_to_path``. Python 3.8-safe.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

import click

# Run by path from a checkout whose venv lacks the .pth (e.g. a plain pip env): find dai_mlflow.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from dai_mlflow.envmanagers import ENV_MANAGERS  # noqa: E402
from dai_mlflow.errors import DaiMlflowError  # noqa: E402
from dai_mlflow.spark import (  # noqa: E402
    DEFAULT_BATCH_SIZE,
    INPUT_FORMATS,
    download_model,
    precheck,
    preflight_predict,
    score_to_path,
)


def build_session(master: str, log_level: str = "FATAL") -> object:
    """A Spark session whose Python workers run this interpreter (and can import dai_mlflow)."""
    from pyspark.sql import SparkSession

    # Workers run $PYSPARK_PYTHON (else `python3` on PATH); spark.pyspark.python is not read here.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    python_path = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)
    spark = (
        SparkSession.builder.master(master)
        .appName("dai-mlflow-score")
        .config("spark.ui.enabled", "false")
        .config("spark.pyspark.python", sys.executable)
        .config("spark.pyspark.driver.python", sys.executable)
        .config("spark.executorEnv.PYTHONPATH", python_path)
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel(log_level)
    return spark


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model-uri", required=True, help="models:/name@alias, runs:/<id>/model or a path")
@click.option("--input", "input_path", required=True, help="csv or parquet file/folder")
@click.option("--output", "output_path", required=True, help="parquet folder to (re)place")
@click.option("--env-manager", type=click.Choice(ENV_MANAGERS), default="local", show_default=True)
@click.option(
    "--input-format",
    type=click.Choice(INPUT_FORMATS),
    default=None,
    help="default: from the input's extension",
)
@click.option("--master", default="local[*]", show_default=True, help="Spark master")
@click.option(
    "--batch-size",
    type=int,
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="rows per Arrow batch handed to the model",
)
@click.option("--partitions", type=int, default=None, help="scoring tasks (default: one per core)")
@click.option(
    "--log-level",
    default="FATAL",
    show_default=True,
    help="Spark log level (the error that fails the job is printed anyway)",
)
@click.option(
    "--preflight/--no-preflight",
    default=True,
    show_default=True,
    help="local: load the model and score the first rows before starting Spark",
)
@click.option("--add-metadata", is_flag=True, help="also write model_uri and scored_at columns")
def main(
    model_uri: str,
    input_path: str,
    output_path: str,
    env_manager: str,
    input_format: Optional[str],
    master: str,
    batch_size: int,
    partitions: Optional[int],
    log_level: str,
    preflight: bool,
    add_metadata: bool,
) -> None:
    """Score INPUT with the model and write OUTPUT as parquet."""
    spark = None
    try:
        with tempfile.TemporaryDirectory(prefix="dai-mlflow-score-") as tmp:
            # Model and input columns are checked before Spark starts: bad input fails in seconds.
            model_dir = download_model(model_uri, Path(tmp))
            spec = precheck(model_dir, input_path, input_format)
            if env_manager == "local" and preflight:
                preflight_predict(spec, input_path, input_format)
            spark = build_session(master, log_level)
            score_to_path(
                spark,
                str(model_dir),
                input_path,
                output_path,
                env_manager,
                input_format=input_format,
                partitions=partitions,
                batch_size=batch_size,
                add_metadata=add_metadata,
                source_uri=model_uri,
            )
    except DaiMlflowError as e:
        raise click.ClickException(str(e)) from e
    finally:
        if spark is not None:
            spark.stop()
    click.echo(f"scored {input_path} -> {output_path} (env manager {env_manager})")


if __name__ == "__main__":
    main()
