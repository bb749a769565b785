"""``dai-mlflow-score`` / ``python -m dai_mlflow.spark.cli``: csv/parquet in, parquet out.

A thin front door over :func:`dai_mlflow.spark.score_to_path` (``spark_inference/score.py`` is
the same command): the output is the input columns plus DAI's, moved into place only on success;
a failure is one ``Error:`` line and a non-zero exit. ``--help`` lists the options.
Python 3.8-safe. See spark_inference/README.md.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Tuple

import click

from dai_mlflow.cli import HELP, entry_point
from dai_mlflow.errors import DaiMlflowError
from dai_mlflow.spark.files import INPUT_FORMATS, validate_output
from dai_mlflow.spark.scoring import (
    DEFAULT_BATCH_SIZE,
    ENV_MANAGERS,
    download_model,
    precheck,
    preflight_predict,
    score_to_path,
)
from dai_mlflow.spark.session import build_session, parse_conf

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def _spark_conf(
    _ctx: object, _param: object, items: Tuple[str, ...]
) -> Tuple[Tuple[str, str], ...]:
    try:
        return parse_conf(items)
    except DaiMlflowError as e:
        raise click.BadParameter(str(e)) from e


@click.command(name="dai-mlflow-score", context_settings=HELP)
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
    "--conf",
    "spark_conf",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_spark_conf,
    help="a Spark conf, as spark-submit takes it (repeatable); spark-defaults.conf of "
    "SPARK_CONF_DIR is read as well",
)
@click.option(
    "--python",
    "executor_python",
    default=None,
    help="the executors' Python (spark.pyspark.python); default: theirs (this one when local)",
)
@click.option(
    "--env-root",
    default=None,
    help="uv/virtualenv: where executors keep model envs (default: their DAI_MLFLOW_ENV_ROOT "
    "or ~/.cache/dai-mlflow/envs)",
)
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
@click.option(
    "--overwrite",
    is_flag=True,
    help="replace --output even if it is not an earlier output of dai-mlflow (never the "
    "input, nor a folder holding it, /, home, the current or a project folder)",
)
def cli(
    model_uri: str,
    input_path: str,
    output_path: str,
    env_manager: str,
    input_format: Optional[str],
    master: str,
    spark_conf: Tuple[Tuple[str, str], ...],
    executor_python: Optional[str],
    env_root: Optional[str],
    batch_size: int,
    partitions: Optional[int],
    log_level: str,
    preflight: bool,
    add_metadata: bool,
    overwrite: bool,
) -> None:
    """Score INPUT with the model and write OUTPUT as parquet."""
    spark: Optional[SparkSession] = None
    # Before anything runs: an output that would replace what is not ours fails in a second.
    validate_output(output_path, [input_path], overwrite)
    try:
        with tempfile.TemporaryDirectory(prefix="dai-mlflow-score-") as tmp:
            # Model and input columns are checked before Spark starts: bad input fails in seconds.
            model_dir = download_model(model_uri, Path(tmp))
            spec = precheck(model_dir, input_path, input_format)
            if env_manager == "local" and preflight:
                preflight_predict(spec, input_path, input_format)
            spark = build_session(
                master, python=executor_python, log_level=log_level, conf=spark_conf
            )
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
                overwrite=overwrite,
                env_root=env_root,
                source_uri=model_uri,
            )
    finally:
        if spark is not None:
            spark.stop()
    click.echo(f"scored {input_path} -> {output_path} (env manager {env_manager})")


main = entry_point(cli)


if __name__ == "__main__":
    sys.exit(main())
