"""Rows/s of a DAI model: raw ``Scorer.score_batch`` vs dai_mlflow's Spark paths (local, uv).

    venvs/launcher/bin/python benchmarks/spark_throughput.py [--dai-version 2] [--problem binary]
        [--rows 1000000] [--batch-size 20000] [--cores N] [--skip-uv]

By default the model is the DAI-shaped stand-in logged by the tests' fixture (cached under
``tests/.cache``); ``--model-uri URI --sample CSV`` benchmarks any logged model instead. The
sample rows are repeated to ``--rows`` rows of parquet. Measurements, each timing only the
scoring (not Spark start-up or env builds):

1. raw: ``Scorer().score_batch`` over batches of ``--batch-size`` rows in one process (one core),
   in the model's Spark venv (``dai_mlflow.envs.spark_venv``, the env ``make spark-venv`` builds);
2. local: ``dai_mlflow.spark.score(env_manager="local")`` in that venv, ``local[cores]``: the
   model loaded in each Python worker;
3. floor: the same rows through a pandas UDF that does nothing, laid out as ``score`` lays them
   out: what Spark and Arrow cost per row whatever the model;
4. uv (cross-version): ``score(env_manager="uv")`` from this (launcher: Python 3.11, PySpark 4)
   interpreter: the model in its own env's server, batches as Arrow IPC over pipes.

The input is one parquet file per core, as a real table has many files, so Spark reads one
partition per core and no shuffle is timed. Spark runs are timed twice (the first starts workers
and loads the model; the second is reported). Printed per path: rows/s, microseconds per row per
core, and the targets: local <= 1.15 x (floor + raw) per row; uv >= 0.7 x local per core.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

_RAW = r"""
import glob, importlib, json, os, sys, tempfile, time, zipfile
import pandas as pd
path, module, batch, pipeline = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
# The experiment wheel is not in the shared env (one env per DAI line): import it as the model does.
code = tempfile.mkdtemp(prefix="bench-experiment-")
zipfile.ZipFile(glob.glob(os.path.join(pipeline, module + "-*.whl"))[0]).extractall(code)
sys.path.insert(0, code)
df = pd.read_parquet(path)
scorer = importlib.import_module(module).Scorer()
scorer.score_batch(df.iloc[:100])
start = time.perf_counter()
rows = 0
for i in range(0, len(df), batch):
    rows += len(scorer.score_batch(df.iloc[i:i + batch]))
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - start}))
"""


def _spark_phase(args: argparse.Namespace) -> Dict[str, float]:
    """Inside one interpreter: score the parquet with dai_mlflow.spark and time the action."""
    from dai_mlflow.spark import score
    from dai_mlflow.spark.session import build_session

    spark = build_session(f"local[{args.cores}]", "dai-mlflow-bench")
    result: Dict[str, float] = {}
    try:
        df = spark.read.parquet(args.data).cache()
        result["rows"] = df.count()
        scored = score(spark, args.model_uri, df, args.phase, batch_size=args.batch_size)
        # The first run starts the Python workers and loads the model (raw excludes Scorer()).
        result["first_seconds"] = _time_noop(scored)
        result["seconds"] = _time_noop(scored)
        if args.phase == "local":
            floor = _identity(df, args.cores)
            _time_noop(floor)  # timed twice too: the first run starts a new UDF's workers
            result["floor_seconds"] = _time_noop(floor)
    finally:
        spark.stop()
    return result


def _time_noop(df: object) -> float:
    start = time.perf_counter()
    df.write.format("noop").mode("overwrite").save()
    return time.perf_counter() - start


def _identity(df: object, partitions: int) -> object:
    """The same rows through a pandas UDF that does nothing: Spark + Arrow's own cost."""
    from pyspark.sql import functions as F

    from dai_mlflow.spark.scoring import _layout

    def same(batches: Iterator[pd.DataFrame]) -> Iterator[pd.Series]:
        for batch in batches:
            yield pd.Series(0.0, index=batch.index)

    udf = F.pandas_udf(same, "double")
    cols = [F.col("`" + c.replace("`", "``") + "`") for c in df.columns]
    return _layout(df, partitions).withColumn("floor", udf(F.struct(*cols)))


def _run_json(cmd: List[str], env: Dict[str, str]) -> Dict[str, float]:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tempfile.mkdtemp())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"benchmark step failed: {' '.join(cmd[:3])} ... (exit {proc.returncode})")
    return json.loads(lines[-1])


def _prepare(args: argparse.Namespace) -> Dict[str, str]:
    """Model URI, sample, license env; the Spark venv; the parquet of --rows rows."""
    from dai_mlflow.envs.spark_venv import build_spark_env

    env = dict(os.environ)
    if args.model_uri:
        sample = Path(args.sample)
    else:
        from tests.fixtures_model import get_logged_model

        model = get_logged_model(args.dai_version, args.problem)
        args.model_uri = str(model.local_dir)
        sample = model.build.sample_input_csv
        env.update(model.license_env)
    venv = REPO_ROOT / "tests" / ".cache" / "venvs" / f"spark-bench-{args.dai_version}"
    python, _ = build_spark_env(args.model_uri, venv, quiet=True)
    base = pd.read_csv(sample)
    reps = -(-args.rows // len(base))
    data = pd.concat([base] * reps, ignore_index=True).iloc[: args.rows]
    out = Path(tempfile.mkdtemp(prefix="dai-mlflow-bench-")) / "input.parquet"
    out.mkdir()
    per_file = -(-len(data) // args.cores)
    for i in range(args.cores):
        part = data.iloc[i * per_file : (i + 1) * per_file]
        part.to_parquet(out / f"part-{i:05d}.parquet", index=False)
    env["DAI_MLFLOW_BENCH_PYTHON"] = str(python)
    env["DAI_MLFLOW_BENCH_DATA"] = str(out)
    return env


def _scorer_module(model_uri: str) -> str:
    import yaml

    mlmodel = yaml.safe_load((Path(model_uri) / "MLmodel").read_text())
    config = mlmodel["flavors"]["python_function"].get("config") or {}
    module = config.get("scorer_module") or mlmodel.get("metadata", {}).get("scorer_module")
    if not module:
        raise SystemExit("cannot find the scorer module in MLmodel's model_config")
    return str(module)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the three measurements and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dai-version", default="2", choices=("1.10", "2"))
    parser.add_argument("--problem", default="binary")
    parser.add_argument("--model-uri", help="a local model folder (default: the stand-in)")
    parser.add_argument("--sample", help="csv of input rows for --model-uri")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=20000)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-uv", action="store_true")
    parser.add_argument("--phase", choices=("local", "uv"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        print(json.dumps(_spark_phase(args)))
        return 0
    env = _prepare(args)
    python, data = env["DAI_MLFLOW_BENCH_PYTHON"], env["DAI_MLFLOW_BENCH_DATA"]
    module = _scorer_module(args.model_uri)
    pipeline = str(Path(args.model_uri) / "artifacts" / "scoring-pipeline")
    raw_cmd = [python, "-c", _RAW, data, module, str(args.batch_size), pipeline]
    results = {"raw": _run_json(raw_cmd, env)}
    common = [
        "--model-uri",
        args.model_uri,
        "--data",
        data,
        "--cores",
        str(args.cores),
        "--batch-size",
        str(args.batch_size),
    ]
    me = str(Path(__file__).resolve())
    results["local"] = _run_json([python, me, "--phase", "local", *common], env)
    local = results["local"]
    results["floor"] = {"rows": local["rows"], "seconds": local["floor_seconds"]}
    if not args.skip_uv:
        results["uv"] = _run_json([sys.executable, me, "--phase", "uv", *common], env)
    _report(args, results)
    return 0


def _report(args: argparse.Namespace, results: Dict[str, Dict[str, float]]) -> None:
    """The table, per core, and how each path stands against its target."""
    us = {}  # microseconds per row per core
    print(f"model {args.model_uri}, {args.rows} rows, batch {args.batch_size}, {args.cores} cores")
    print(f"{'path':8}{'rows/s':>12}{'cores':>7}{'us/row/core':>13}  first run")
    for name, r in results.items():
        cores = 1 if name == "raw" else args.cores
        rate = r["rows"] / r["seconds"]
        us[name] = 1e6 * cores / rate
        first = f"  {r['first_seconds']:.1f}s" if "first_seconds" in r else ""
        print(f"{name:8}{rate:12.0f}{cores:7d}{us[name]:13.2f}{first}")
    bound = us["floor"] + us["raw"]
    ratio = us["local"] / bound
    verdict = "meets" if ratio <= 1.15 else "misses"
    print(f"local = {ratio:.2f} x (floor + raw) per row: {verdict} the target (<= 1.15)")
    if "uv" in us:
        share = us["local"] / us["uv"]
        verdict = "meets" if share >= 0.7 else "misses"
        print(f"uv throughput = {share:.2f} x local per core: {verdict} the target (>= 0.7)")


if __name__ == "__main__":
    sys.exit(main())
