"""The Spark session dai-mlflow's jobs start (``spark_inference/score.py``, lifecycle ``batch``).

The executors' Python is their own unless ``python`` is given (on a ``local`` master: this
interpreter). dai_mlflow reaches workers through ``addPyFile``, not ``PYTHONPATH``. Confs come
from ``spark-defaults.conf`` and ``--conf``; on a non-local master, a driver that would ship a
license is refused before the session starts unless Spark authenticates and encrypts.
Driver side; Python 3.8-safe. See spark_inference/README.md, "On a cluster".
"""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING, Dict, Optional, Sequence, Tuple

from dai_mlflow.errors import DaiMlflowError
from dai_mlflow.spark import shipping

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def parse_conf(items: Sequence[str]) -> Tuple[Tuple[str, str], ...]:
    """``KEY=VALUE`` strings (``--conf``, as ``spark-submit`` takes them) as pairs."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DaiMlflowError(
                f"--conf {item!r} is not KEY=VALUE; e.g. --conf spark.authenticate=true"
            )
        pairs.append((key.strip(), value))
    return tuple(pairs)


def spark_defaults() -> Dict[str, str]:
    """``spark-defaults.conf`` as ``spark-submit`` finds it (``SPARK_CONF_DIR``, else
    ``SPARK_HOME/conf``); empty when there is none."""
    folder = os.environ.get("SPARK_CONF_DIR") or os.path.join(
        os.environ.get("SPARK_HOME", ""), "conf"
    )
    path = os.path.join(folder, "spark-defaults.conf")
    settings: Dict[str, str] = {}
    if not os.path.isfile(path):
        return settings
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.strip()
            if not line or line[0] in "#!":
                continue
            match = re.match(r"([^\s=:]+)\s*[=:\s]\s*(.*)$", line)
            if match:
                settings[match.group(1)] = match.group(2).strip()
    return settings


def build_session(
    master: str,
    app_name: str = "dai-mlflow-score",
    python: Optional[str] = None,
    log_level: str = "FATAL",
    conf: Sequence[Tuple[str, str]] = (),
) -> SparkSession:
    """A Spark session for a scoring job.

    Args:
        master: ``local[*]``, ``spark://host:port``, ``yarn``, ...
        app_name: the application's name.
        python: the executors' Python (``spark.pyspark.python``); default: theirs, or this
            interpreter on a local master.
        log_level: Spark's log level (the error that fails a job is reported anyway).
        conf: Spark confs (``spark-submit --conf``); they win over ``spark-defaults.conf`` of
            ``SPARK_CONF_DIR``, which Spark reads as ever.
    """
    from pyspark.sql import SparkSession

    if not shipping.is_local_master(master) and shipping.license_to_ship() is not None:
        # Checked again on the live session; here it saves connecting to a cluster that would
        # hold the driver for a minute when it requires authentication the driver lacks.
        shipping.check_secure_transport(master, {**spark_defaults(), **dict(conf)})
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
    )
    for key, value in conf:
        builder = builder.config(key, value)
    if python:
        builder = builder.config("spark.pyspark.python", python)
    elif master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(log_level)
    return spark
