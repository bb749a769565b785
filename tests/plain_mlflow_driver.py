"""A user's driver with plain MLflow and PySpark: no dai_mlflow anywhere on this side.

Run by ``tests/model/test_plain_mlflow.py`` with the interpreter of a driver env
(``venvs/launcher``: Python 3.11 / MLflow 3 / PySpark 4, or a Python 3.8 / MLflow 2.17 /
PySpark 3.5 Spark venv),
the way a data scientist calls MLflow in a notebook::

    python tests/plain_mlflow_driver.py --model-uri URI --input rows.parquet --out-dir DIR \
        [--spark uv,virtualenv] [--predict uv]

``--input`` holds ``row_id`` plus the model's input columns. For each ``--spark`` env manager it
writes ``DIR/spark-<env manager>.parquet`` (``row_id`` + the model's output columns) from
``mlflow.pyfunc.spark_udf(spark, uri, env_manager=...)`` on ``struct(*inputs)``; for each
``--predict`` env manager, ``DIR/predict-<env manager>.json`` from ``mlflow.models.predict``.
Python 3.8-safe.
"""

import argparse
import sys
import time
from pathlib import Path


def _spark(model_uri: str, input_path: str, out_dir: Path, env_managers: list) -> None:
    import mlflow.pyfunc
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    spark = (
        SparkSession.builder.master("local[2]")
        .appName("plain-mlflow-driver")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    try:
        df = spark.read.parquet(input_path)
        inputs = [c for c in df.columns if c != "row_id"]
        for env_manager in env_managers:
            started = time.monotonic()
            udf = mlflow.pyfunc.spark_udf(spark, model_uri, env_manager=env_manager)
            scored = df.select(
                "row_id", udf(F.struct(*[F.col(f"`{c}`") for c in inputs])).alias("p")
            )
            scored.select("row_id", "p.*").toPandas().to_parquet(
                str(out_dir / f"spark-{env_manager}.parquet")
            )
            print(f"spark_udf {env_manager}: {time.monotonic() - started:.1f}s", flush=True)
    finally:
        spark.stop()


def _predict(model_uri: str, input_path: str, out_dir: Path, env_managers: list) -> None:
    import mlflow.models
    import pandas as pd

    frame = pd.read_parquet(input_path).drop(columns=["row_id"])
    for env_manager in env_managers:
        started = time.monotonic()
        mlflow.models.predict(
            model_uri,
            input_data=frame,
            env_manager=env_manager,
            output_path=str(out_dir / f"predict-{env_manager}.json"),
        )
        print(f"models.predict {env_manager}: {time.monotonic() - started:.1f}s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--spark", default="", help="comma-separated env managers")
    parser.add_argument("--predict", default="", help="comma-separated env managers")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    spark = [m for m in args.spark.split(",") if m]
    predict = [m for m in args.predict.split(",") if m]
    if spark:
        _spark(args.model_uri, args.input, args.out_dir, spark)
    if predict:
        _predict(args.model_uri, args.input, args.out_dir, predict)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] == "dai_mlflow")
    if leaked:
        print(f"Error: the driver imported {leaked}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
