"""The Spark side of ``batch``: score one input and replace one date partition of the table.

``python -m dai_mlflow.lifecycle.batch_job --model-dir DIR --model-name N --model-version V
--input PATH --table DIR --date YYYY-MM-DD [--env-manager local] [--master local[*]]
[--python EXECUTOR_PYTHON]``

Run by :mod:`.batch` in the champion's Spark venv (Python 3.8 + PySpark 3.5 for DAI 1.10) or in
``venvs/launcher``; needs no tracking server (the model folder is already downloaded). Prints
``batch_result=<rows>`` on success, ``error: <one line>`` and exit 1 on failure, leaving the
table as it was.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from dai_mlflow.errors import DaiMlflowError


def score_partition(spark: object, args: argparse.Namespace) -> int:
    """Score ``args.input`` and swap it in as the date's partition; return the row count."""
    from pyspark.sql import functions as F

    from dai_mlflow.lifecycle import tables
    from dai_mlflow.spark import read_input, score, translate_error

    model_uri = f"models:/{args.model_name}/{args.model_version}"
    df = read_input(spark, args.input)
    scored = score(spark, args.model_dir, df, args.env_manager, source_uri=model_uri)
    scored = scored.select(
        "*",
        F.lit(args.model_name).alias("model_name"),
        F.lit(str(args.model_version)).alias("model_version"),
        F.lit(model_uri).alias("model_uri"),
        F.current_timestamp().alias("scored_at"),
    )

    def _write(staging: Path) -> None:
        try:
            scored.write.mode("errorifexists").parquet(str(staging))
        except Exception as e:
            raise translate_error(e) from e

    target = tables.replace_partition(Path(args.table), args.date, _write)
    return tables.row_count(target)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dai_mlflow.lifecycle.batch_job")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--model-version", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--date", required=True)
    parser.add_argument("--env-manager", default="local")
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--python", default=None, help="the executors' Python")
    args = parser.parse_args(argv)
    spark = None
    try:
        from dai_mlflow.spark import precheck, preflight_predict

        spec = precheck(Path(args.model_dir), args.input)
        if args.env_manager == "local":
            preflight_predict(spec, args.input)
        from dai_mlflow.spark.session import build_session

        spark = build_session(args.master, "dai-mlflow-batch", python=args.python)
        rows = score_partition(spark, args)
    except DaiMlflowError as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", flush=True)
        return 1
    except Exception as e:  # an unexpected error still ends as one line
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"error: {type(e).__name__}: {first}", flush=True)
        return 1
    finally:
        if spark is not None:
            spark.stop()
    print(f"batch_result={rows}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
