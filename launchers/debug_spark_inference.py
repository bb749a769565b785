"""Debug Spark batch scoring: the model's `predict` in *this* process first, then `spark_udf`.

`spark_udf` runs the model in Python worker processes (and, with `uv`/`virtualenv`, in a model
server inside them), so an IDE's breakpoints in the model code never hit (MLflow issue #14312).
This launcher, run with `venvs/spark_inference/bin/python` (`make spark-venv MODEL_URI=…`):

1. downloads the model and checks the input's columns against its signature (as score.py does);
2. with `--sample N`, loads the pyfunc with `mlflow.pyfunc.load_model` here and calls `predict`
   on the first N input rows in this process — breakpoints in `dai_mlflow/model/pyfunc.py` and in
   the DAI scorer hit now — and prints the pid `predict` ran in;
3. unless `--sample-only`, scores the whole input with local Spark and MLflow's own
   `mlflow.pyfunc.spark_udf(env_manager="local")` (the documented plain path; the model runs in
   this venv's Python workers), writing the parquet `spark_inference/score.py` writes.

    venvs/spark_inference/bin/python launchers/debug_spark_inference.py \\
        --model-uri models:/churn@challenger --input in.csv --output out.parquet --sample 5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: find this checkout's dai_mlflow
    sys.path.insert(1, str(ROOT))
# models:/ URIs of an MLflow 3 sqlite store, from the Python 3.8 Spark venv: read through an
# MLflow 3 interpreter, this checkout's launcher venv unless one is named.
if (ROOT / "venvs" / "launcher" / "bin" / "python").exists():
    os.environ.setdefault("DAI_MLFLOW_SERVER_PYTHON", str(ROOT / "venvs/launcher/bin/python"))

from dai_mlflow.errors import DaiMlflowError  # noqa: E402


def read_sample(path: str, rows: int, input_format: Optional[str] = None):
    """The first ``rows`` rows of a csv or parquet input, as pandas."""
    import pandas as pd

    fmt = input_format or ("parquet" if not path.lower().endswith(".csv") else "csv")
    if fmt == "csv":
        return pd.read_csv(path, nrows=rows)
    return pd.read_parquet(path).head(rows)


def _as_signature_types(frame, schema):
    """Cast columns to the signature's types, as Spark does before the UDF sees them.

    pandas reads an integer csv column as int64, which MLflow refuses to cast to a `double`
    input ("Can not safely convert int64 to float64"); Spark hands the model doubles.
    """
    from dai_mlflow.model.hooks.stdin_server import cast_to_schema

    if schema is None:
        return frame
    return cast_to_schema(
        frame, [(c.name, str(getattr(c.type, "name", c.type))) for c in schema.inputs]
    )


def predict_in_driver(model_dir: Path, sample) -> tuple[object, List[int]]:
    """Load the pyfunc here and predict ``sample``; return (predictions, pids predict ran in)."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(str(model_dir))
    sample = _as_signature_types(sample, model.metadata.get_input_schema())
    python_model = model.unwrap_python_model()
    pids: List[int] = []
    original = python_model.predict

    def traced_predict(*args, **kwargs):  # same as predict
        pids.append(os.getpid())
        return original(*args, **kwargs)  # step in here to reach DaiScoringModel.predict

    python_model.predict = traced_predict
    return model.predict(sample), pids


def run(args: argparse.Namespace) -> int:
    """Sample in the driver, then (unless --sample-only) the Spark job; return the exit code."""
    from dai_mlflow.spark import download_model, precheck, validate_output

    if not args.sample_only:  # a refused output fails before the model is even downloaded
        validate_output(args.output, [args.input], args.overwrite)
    with tempfile.TemporaryDirectory(prefix="dai-mlflow-debug-") as tmp:
        model_dir = download_model(args.model_uri, Path(tmp))
        precheck(model_dir, args.input, args.input_format)
        if args.sample:
            sample = read_sample(args.input, args.sample, args.input_format)
            predictions, pids = predict_in_driver(model_dir, sample)
            print(predictions.to_string(max_rows=args.sample))
            print(f"in-driver sample: predict ran in pid {pids[0]} (this process: {os.getpid()})")
        if args.sample_only:
            return 0
        from dai_mlflow.spark.session import build_session

        spark = build_session(args.master, "dai-mlflow-debug", log_level=args.log_level)
        try:
            plain_spark_udf(
                spark, model_dir, args.input, args.output, args.input_format, args.overwrite
            )
        finally:
            spark.stop()
    print(f"scored {args.input} -> {args.output} (plain spark_udf, env manager local)")
    return 0


def plain_spark_udf(
    spark: object,
    model_dir: Path,
    input_path: str,
    output: str,
    input_format: Optional[str],
    overwrite: bool = False,
) -> None:
    """``mlflow.pyfunc.spark_udf(env_manager="local")`` on the input, written all or nothing."""
    import mlflow.pyfunc
    from pyspark.sql import functions as F

    from dai_mlflow.spark import ModelSpec, read_input, translate_error, write_atomically

    spec = ModelSpec.from_dir(model_dir)
    df = read_input(spark, input_path, input_format)
    udf = mlflow.pyfunc.spark_udf(
        spark, str(model_dir), result_type=spec.result_type(), env_manager="local"
    )
    names = [name for name, _ in spec.inputs]
    columns = [F.col(f"`{n}`").cast(dict(spec.inputs)[n]).alias(n) for n in names]
    scored = df.withColumn("__dai", udf(F.struct(*columns)))
    out = [F.col(f"`{c}`") for c in df.columns]
    out += [F.col("__dai").getField(n).alias(n) for n in spec.output_names]
    write_atomically(
        spark,
        scored.select(*out),
        output,
        translate_error,
        overwrite=overwrite,
        inputs=[input_path],
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI: score.py's options for env manager local, plus --sample / --sample-only."""
    parser = argparse.ArgumentParser(
        prog="debug_spark_inference.py",
        description="Debug Spark scoring: predict on a sample in this process, then spark_udf.",
    )
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--input", required=True, help="csv or parquet")
    parser.add_argument("--output", help="parquet folder (required unless --sample-only)")
    parser.add_argument("--input-format", choices=("csv", "parquet"))
    parser.add_argument(
        "--sample", type=int, default=0, metavar="N",
        help="first predict N input rows in this process (breakpoints hit)",
    )  # fmt: skip
    parser.add_argument("--sample-only", action="store_true", help="stop after the sample")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace --output even if it is not an earlier output (as score.py --overwrite)",
    )  # fmt: skip
    parser.add_argument("--master", default="local[1]", help="Spark master (default local[1])")
    parser.add_argument("--log-level", default="FATAL")
    args = parser.parse_args(argv)
    if not args.sample_only and not args.output:
        parser.error("--output is required unless --sample-only")
    if args.sample_only and not args.sample:
        parser.error("--sample-only needs --sample N")
    try:
        return run(args)
    except DaiMlflowError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
