"""Seconds from a model URI to its first prediction on Spark (env manager uv), in one run.

Scenarios, timed after Spark is up (``dai_mlflow.spark.score`` + ``collect()`` of one small
batch, consumed whole, as a job does: a Python worker whose output is cut short, e.g. by
``limit()``, is not reused and the next job pays its start-up again):

  (a) cold start: an empty env root and an empty experiment-wheel cache (uv's own package
      cache stays warm, as on any machine that has installed these pins once);
  (b) a new model of a DAI line seen in (a): the env is reused, only its experiment wheel is
      extracted; the Python worker hands the model to the spare server of that env it started
      after (a) (imports done);
  (c) the same model as (b) again, in the next job of the same Spark application: the worker's
      server still has it loaded;
  (m) MLflow's plain ``spark_udf(env_manager="uv")`` on the model of (b): a fresh temporary
      env per call (MLflow issue #12204). Offline Python discovery is given to it (the
      interpreter links of ``dai_mlflow.envs.offline``), nothing else.

With ``--runtime-mb N`` (and ``--runtime-files M``), the same is measured for two stand-in
pipelines of real size (a runtime wheel of N MiB and M modules, byte-identical across the two),
built and logged (``mlflow run``, envs in the benchmark's scratch env root) before Spark starts,
not timed:

  (A) the first heavy model in the application (its env was built by ``mlflow run``'s check in
      the same env root, so the executor finds it; the runtime is sent with it);
  (B) a new heavy model of the DAI version of (A): only its thin part is sent;
  (C) the model of (B) again.

Targets: (b) <= 1 s, (c) <= 0.5 s; heavy: (B) <= 2.5 s and (B) <= (b) + 1 s, (C) <= 0.5 s.
``DAI_MLFLOW_WARM_SERVERS=0`` measures (b) without spares.

Run from ``venvs/launcher`` (DAI 2 models: MLflow's plain spark_udf cannot run a Python 3.8
model from a PySpark 4 driver; with ``--line 1.10`` (m) reports its error)::

    venvs/launcher/bin/python benchmarks/model_switch.py \\
        --model-uri models:/dai_2_binary/1 --second-model-uri models:/dai_2_regression/1 \\
        --tracking-uri sqlite:///mlflow.db --license-file ~/license.sig

With no URIs it uses the stand-in models logged by the test suite (``tests/.cache``).
``make bench-switch SWITCH_ARGS="--runtime-mb 800 --runtime-files 3000"`` adds the heavy scenarios
(about 3 GB of scratch disk; a few minutes more).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def _spark():
    from dai_mlflow.spark.session import build_session

    return build_session("local[1]", "dai-mlflow-model-switch")


def _input(spark, model_uri: str, rows: int):
    from mlflow.models import Model

    from dai_mlflow.spark import download_model

    local = download_model(model_uri)
    example = Model.load(str(local / "MLmodel")).load_input_example(str(local))
    frame = example.sample(n=rows, replace=True, random_state=0).reset_index(drop=True)
    return spark.createDataFrame(frame)


def _timed(fn: Callable[[], object]) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def _ours(spark, model_uri: str, df, env: Dict[str, str]) -> Callable[[], object]:
    from dai_mlflow.spark import score

    return lambda: score(spark, model_uri, df, "uv", env=env).collect()


def _plain_mlflow(spark, model_uri: str, df, env: Dict[str, str]) -> Callable[[], object]:
    import mlflow.pyfunc
    from pyspark.sql import functions as F

    from dai_mlflow.envs.offline import env_build_env, patched_environ
    from dai_mlflow.spark import ModelSpec, download_model

    def run() -> object:
        local = download_model(model_uri)
        spec = ModelSpec.from_dir(local)
        with patched_environ(env_build_env(spec.python_version)):
            udf = mlflow.pyfunc.spark_udf(
                spark, str(local), result_type=spec.result_type(), env_manager="uv", extra_env=env
            )
        cols = [F.col(f"`{name}`") for name, _ in spec.inputs]
        return df.withColumn("p", udf(F.struct(*cols))).collect()

    return run


def _license_env(args: argparse.Namespace) -> Dict[str, str]:
    if args.license_file:
        return {"DRIVERLESS_AI_LICENSE_FILE": str(Path(args.license_file).expanduser().resolve())}
    return {
        k: os.environ[k]
        for k in ("DRIVERLESS_AI_LICENSE_KEY", "DRIVERLESS_AI_LICENSE_FILE")
        if k in os.environ
    }


def _test_cache_models(line: str) -> Dict[str, str]:
    """URIs, tracking URI and license of the stand-in models the test suite logged."""
    from tests.fixtures_model import get_logged_model

    first = get_logged_model(line, "binary")
    second = get_logged_model(line, "regression")
    return {
        "first": str(first.local_dir),
        "second": str(second.local_dir),
        "license": first.license_env,  # type: ignore[dict-item]
    }


def _heavy_models(scratch: Path, line: str, runtime_mb: int, runtime_files: int) -> List[str]:
    """Two heavy stand-ins of one DAI version, logged by ``mlflow run``: their model folders."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import mlflow_run as run_bench

    from dai_mlflow.standin import build_pipeline

    cwd = scratch / "heavy-cwd"
    cwd.mkdir()
    models = []
    for seed in (2, 3):
        started = time.monotonic()
        build = build_pipeline(
            scratch / f"heavy{seed}", line, "binary", seed, runtime_mb, runtime_files
        )
        env = run_bench._env(build.license_path)
        env["DAI_MLFLOW_ENV_ROOT"] = os.environ["DAI_MLFLOW_ENV_ROOT"]
        before = set(cwd.glob("mlruns/*/*/artifacts/model/MLmodel"))
        run_bench._checked(
            "mlflow run of a heavy pipeline",
            run_bench._mlflow_run(REPO_ROOT, {"pipeline": str(build.zip_path)}, cwd, env),
        )
        (mlmodel,) = set(cwd.glob("mlruns/*/*/artifacts/model/MLmodel")) - before
        shutil.rmtree(build.folder)
        build.zip_path.unlink()
        models.append(str(mlmodel.parent))
        size = sum(f.stat().st_size for f in mlmodel.parent.rglob("*") if f.is_file()) / 1e6
        print(
            f"heavy model {seed - 1} ({size:.0f} MB) built and logged in "
            f"{time.monotonic() - started:.0f}s (not counted)",
            flush=True,
        )
    return models


def main(argv: Optional[list] = None) -> int:
    """Run the four scenarios and print seconds and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", help="model for the cold start (a)")
    parser.add_argument("--second-model-uri", help="another model of the same DAI line (b, c, m)")
    parser.add_argument("--tracking-uri", help="resolves models:/ and runs:/ URIs")
    parser.add_argument("--license-file", help="else DRIVERLESS_AI_LICENSE_KEY/_FILE")
    parser.add_argument("--line", default="2", help="test-cache models to use without URIs")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument(
        "--runtime-mb", type=int, default=0, help="also time heavy stand-ins (MiB of runtime)"
    )
    parser.add_argument("--runtime-files", type=int, default=3000, help="modules of it")
    args = parser.parse_args(argv)
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    if args.model_uri and args.second_model_uri:
        first, second, lic = args.model_uri, args.second_model_uri, _license_env(args)
    else:
        cached = _test_cache_models(args.line)
        first, second, lic = cached["first"], cached["second"], cached["license"]  # type: ignore[assignment]
    scratch = Path(tempfile.mkdtemp(prefix="dai-mlflow-switch-bench-"))
    os.environ["DAI_MLFLOW_ENV_ROOT"] = str(scratch / "envs")
    os.environ["DAI_MLFLOW_EXPERIMENT_CACHE"] = str(scratch / "experiments")
    try:
        heavy: List[str] = []
        if args.runtime_mb:
            heavy = _heavy_models(scratch, args.line, args.runtime_mb, args.runtime_files)
        started = time.monotonic()
        spark = _spark()
        print(f"spark up in {time.monotonic() - started:.1f}s (not counted)", flush=True)
        df_first = _input(spark, first, args.rows)
        df_second = _input(spark, second, args.rows)
        results = {}
        results["a"] = _timed(_ours(spark, first, df_first, lic))
        results["b"] = _timed(_ours(spark, second, df_second, lic))
        results["c"] = _timed(_ours(spark, second, df_second, lic))
        if heavy:
            df_heavy = [_input(spark, m, args.rows) for m in heavy]
            # The light models' license (any stand-in license fits any stand-in): one license
            # in the whole run, so a spare server fits the next model as in (b).
            results["A"] = _timed(_ours(spark, heavy[0], df_heavy[0], lic))
            results["B"] = _timed(_ours(spark, heavy[1], df_heavy[1], lic))
            results["C"] = _timed(_ours(spark, heavy[1], df_heavy[1], lic))
        try:
            results["m"] = _timed(_plain_mlflow(spark, second, df_second, lic))
        except Exception as e:  # reported, not fatal
            from dai_mlflow.spark import translate_error

            print(f"(m) MLflow's plain spark_udf failed: {translate_error(e)}")
        spark.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    labels = {
        "a": "(a) cold start (empty env root + wheel cache)",
        "b": "(b) new model of a seen DAI line",
        "c": "(c) same model again",
        "A": f"(A) first {args.runtime_mb} MiB-runtime model, env built by mlflow run",
        "B": f"(B) new model of (A)'s DAI version, {args.runtime_mb} MiB runtime",
        "C": "(C) same model as (B) again",
        "m": '(m) MLflow spark_udf(env_manager="uv"), model of (b)',
    }
    from dai_mlflow.spark.worker import spares_enabled

    spares = "on" if spares_enabled() else "off (DAI_MLFLOW_WARM_SERVERS=0)"
    print(f"\nseconds from model URI to first prediction ({args.rows} rows, Spark already up;")
    print(f"spare model servers {spares}):")
    for key, label in labels.items():
        if key in results:
            print(f"  {label:<56} {results[key]:7.1f} s")
    print("ratios:")
    ratios = [("a", "b", "cold start vs new model of a seen line")]
    if "m" in results:
        ratios += [
            ("m", "b", "MLflow plain vs new model of a seen line"),
            ("m", "c", "MLflow plain vs same model again"),
        ]
    for top, bottom, label in ratios:
        print(f"  ({top})/({bottom}) {label:<44} {results[top] / results[bottom]:6.1f}x")
    print(f"  target (b) <= 1 s: {'met' if results['b'] <= 1.0 else 'NOT met'}")
    print(f"  target (c) <= 0.5 s: {'met' if results['c'] <= 0.5 else 'NOT met'}")
    if "B" in results:
        b, big = results["b"], results["B"]
        print(f"  target (B) <= 2.5 s: {'met' if big <= 2.5 else 'NOT met'}")
        print(
            f"  target (B) <= (b) + 1 s: (B) - (b) = {big - b:.1f} s "
            + ("met" if big <= b + 1.0 else "NOT met")
        )
        print(f"  target (C) <= 0.5 s: {'met' if results['C'] <= 0.5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
