"""Batch-score a logged DAI model on Spark: csv/parquet in, parquet out (input + DAI columns).

    python spark_inference/score.py --model-uri URI --input PATH --output PATH \
        [--env-manager local|uv|virtualenv] [--master local[*] | spark://HOST:PORT]
        [--conf KEY=VALUE ...] [--python EXECUTOR_PYTHON] [--env-root DIR] [--batch-size N]
        [--add-metadata] [--overwrite]

``--env-manager local`` (default) scores in the executors' own env: run it from
``venvs/spark_inference`` (``make spark-venv MODEL_URI=URI``). ``uv``/``virtualenv`` build the
model's env on each executor, offline, with a local Python: run those from ``venvs/launcher``.
``--help`` lists every option. The checkout's front door of ``dai-mlflow-score``
(:mod:`dai_mlflow.spark.cli`), which a ``pip install`` of the package provides. Python 3.8-safe.
"""

import os
import sys

# Run by path from an env without dai_mlflow installed: take this checkout's.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.append(_ROOT)
# A Python 3.8 Spark venv (MLflow 2.17) reads models:/ URIs of an MLflow 3 sqlite store through
# an MLflow 3 interpreter: this checkout's launcher venv, unless one is named.
_LAUNCHER = os.path.join(_ROOT, "venvs", "launcher", "bin", "python")
if os.path.exists(_LAUNCHER):
    os.environ.setdefault("DAI_MLFLOW_SERVER_PYTHON", _LAUNCHER)

from dai_mlflow.spark.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
