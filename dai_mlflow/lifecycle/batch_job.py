"""The Spark side of ``batch``: score one input and replace one date partition of the table.

``python -m dai_mlflow.lifecycle.batch_job --model-dir DIR --model-name N --model-version V
--input PATH --table DIR --date YYYY-MM-DD [--env-manager local] [--master local[*]]
[--python EXECUTOR_PYTHON]``

Run by :mod:`.batch` in the champion's Spark venv (Python 3.8 + PySpark 3.5 for DAI 1.10) or in
``venvs/launcher``; needs no tracking server (the model folder is already downloaded). Prints
``batch_result=<rows>`` on success, ``Error: <one line>`` and exit 1 on failure, leaving the
table as it was.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import click

from dai_mlflow.cli import HELP, run_click
from dai_mlflow.errors import DaiMlflowError, one_line

JOB_RESULT_PREFIX = "batch_result="


def score_partition(
    spark: object,
    model_dir: Path,
    model_name: str,
    model_version: str,
    input_path: str,
    table: str,
    day: str,
    env_manager: str,
) -> int:
    """Score the input and swap it in as the date's partition; return the row count."""
    from pyspark.sql import functions as F

    from dai_mlflow.lifecycle import tables
    from dai_mlflow.spark import read_input, score, translate_error

    model_uri = f"models:/{model_name}/{model_version}"
    df = read_input(spark, input_path)
    scored = score(spark, str(model_dir), df, env_manager, source_uri=model_uri)
    scored = scored.select(
        "*",
        F.lit(model_name).alias("model_name"),
        F.lit(str(model_version)).alias("model_version"),
        F.lit(model_uri).alias("model_uri"),
        F.current_timestamp().alias("scored_at"),
    )

    def _write(staging: Path) -> None:
        try:
            scored.write.mode("errorifexists").parquet(str(staging))
        except Exception as e:
            raise translate_error(e) from e

    target = tables.replace_partition(Path(table), day, _write)
    return tables.row_count(target)


@click.command(name="python -m dai_mlflow.lifecycle.batch_job", context_settings=HELP)
@click.option("--model-dir", required=True, type=click.Path(path_type=Path))
@click.option("--model-name", required=True)
@click.option("--model-version", required=True)
@click.option("--input", "input_path", required=True)
@click.option("--table", required=True)
@click.option("--date", "day", required=True)
@click.option("--env-manager", default="local", show_default=True)
@click.option("--master", default="local[*]", show_default=True)
@click.option("--python", "executor_python", default=None, help="the executors' Python")
def cli(
    model_dir: Path,
    model_name: str,
    model_version: str,
    input_path: str,
    table: str,
    day: str,
    env_manager: str,
    master: str,
    executor_python: Optional[str],
) -> None:
    """Score the input into the date's partition; print ``batch_result=<rows>``."""
    from dai_mlflow.spark import precheck, preflight_predict
    from dai_mlflow.spark.session import build_session

    spec = precheck(model_dir, input_path)
    if env_manager == "local":
        preflight_predict(spec, input_path)
    spark = build_session(master, "dai-mlflow-batch", python=executor_python)
    try:
        rows = score_partition(
            spark, model_dir, model_name, model_version, input_path, table, day, env_manager
        )
    except DaiMlflowError:
        raise
    except Exception as e:  # an unexpected error still ends as one line
        raise click.ClickException(one_line(e)) from e
    finally:
        spark.stop()
    click.echo(f"{JOB_RESULT_PREFIX}{rows}")


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m dai_mlflow.lifecycle.batch_job ...``; its exit code."""
    return run_click(cli, argv)


if __name__ == "__main__":
    sys.exit(main())
