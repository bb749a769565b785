"""The Spark side of ``batch``: score one input and replace one date partition of the table.

``python -m dai_mlflow.lifecycle.batch_job --model-dir DIR --model-name N --model-version V
--input PATH --table DIR --date YYYY-MM-DD [...]`` (``--help``), run by :mod:`.batch` in the
champion's Spark venv or ``venvs/launcher``; no tracking server needed. Prints
``batch_result=<rows>``, or one error line and exit 1 with the table left as it was.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import click

from dai_mlflow import outputs
from dai_mlflow.cli import HELP, entry_point
from dai_mlflow.errors import DaiMlflowError, one_line

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

JOB_RESULT_PREFIX = "batch_result="
DEFAULT_MASTER = "local[*]"


@dataclass(frozen=True)
class PartitionJob:
    """One date partition to score: the downloaded model, what it is, the input and table."""

    model_dir: Path
    model_name: str
    model_version: str
    input_path: str
    table: str
    day: str
    env_manager: str
    overwrite: bool = False


def score_partition(spark: SparkSession, job: PartitionJob) -> int:
    """Score the input and swap it in as the date's partition; return the row count."""
    from pyspark.sql import functions as F

    from dai_mlflow.lifecycle import tables
    from dai_mlflow.spark import read_input, score, translate_error

    model_uri = f"models:/{job.model_name}/{job.model_version}"
    df = read_input(spark, job.input_path)
    scored = score(spark, str(job.model_dir), df, job.env_manager, source_uri=model_uri)
    scored = scored.select(
        "*",
        F.lit(job.model_name).alias("model_name"),
        F.lit(str(job.model_version)).alias("model_version"),
        F.lit(model_uri).alias("model_uri"),
        F.current_timestamp().alias("scored_at"),
    )

    def _write(staging: Path) -> None:
        try:
            scored.write.mode("errorifexists").parquet(str(staging))
        except Exception as e:
            raise translate_error(e) from e

    target = tables.replace_partition(
        Path(job.table),
        job.day,
        _write,
        kind=outputs.BATCH_TABLE,
        overwrite=job.overwrite,
        inputs=[job.input_path],
    )
    return tables.row_count(target)


@click.command(name="python -m dai_mlflow.lifecycle.batch_job", context_settings=HELP)
@click.option("--model-dir", required=True, type=click.Path(path_type=Path))
@click.option("--model-name", required=True)
@click.option("--model-version", required=True)
@click.option("--input", "input_path", required=True)
@click.option("--table", required=True)
@click.option("--date", "day", required=True)
@click.option("--env-manager", default="local", show_default=True)
@click.option("--master", default=DEFAULT_MASTER, show_default=True)
@click.option("--python", "executor_python", default=None, help="the executors' Python")
@click.option("--overwrite", is_flag=True, help="write into a table folder that is not ours")
def cli(master: str, executor_python: Optional[str], **fields: Any) -> None:
    """Score the input into the date's partition; print ``batch_result=<rows>``."""
    from dai_mlflow.spark import precheck, preflight_predict
    from dai_mlflow.spark.session import build_session

    job = PartitionJob(**fields)
    spec = precheck(job.model_dir, job.input_path)
    if job.env_manager == "local":
        preflight_predict(spec, job.input_path)
    spark = build_session(master, "dai-mlflow-batch", python=executor_python)
    try:
        rows = score_partition(spark, job)
    except DaiMlflowError:
        raise
    except Exception as e:  # an unexpected error still ends as one line
        raise click.ClickException(one_line(e)) from e
    finally:
        spark.stop()
    click.echo(f"{JOB_RESULT_PREFIX}{rows}")


main = entry_point(cli)


if __name__ == "__main__":
    sys.exit(main())
