"""The Spark session dai-mlflow's jobs start (``spark_inference/score.py``, lifecycle ``batch``).

Nothing of the driver is imposed on the executors: their Python is their own, unless ``python``
is given (``spark.pyspark.python``). On a ``local`` master the executors *are* this machine, so
their Python defaults to this interpreter (``PYSPARK_PYTHON``), as a user running the job from
an activated venv expects. dai_mlflow itself reaches the workers through ``addPyFile``
(:mod:`.shipping`), not through a ``PYTHONPATH``.

Driver side; Python 3.8-safe.
"""

from __future__ import annotations

import os
import sys
from typing import Optional


def build_session(
    master: str,
    app_name: str = "dai-mlflow-score",
    python: Optional[str] = None,
    log_level: str = "FATAL",
) -> object:
    """A Spark session for a scoring job.

    Args:
        master: ``local[*]``, ``spark://host:port``, ``yarn``, ...
        app_name: the application's name.
        python: the executors' Python (``spark.pyspark.python``); default: theirs, or this
            interpreter on a local master.
        log_level: Spark's log level (the error that fails a job is reported anyway).
    """
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
    )
    if python:
        builder = builder.config("spark.pyspark.python", python)
    elif master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(log_level)
    return spark
