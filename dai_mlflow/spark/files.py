"""Spark scoring's files: read csv/parquet inputs, write parquet outputs all or nothing.

:func:`read_input` (RFC 4180 csv or parquet, by extension unless told); :func:`write_atomically`
(a local output staged beside the target and swapped in on success, under the rules of
:mod:`dai_mlflow.outputs`; remote URIs by Spark's own modes); :func:`input_columns` /
:func:`sample_rows` (a local input checked without Spark, so bad input fails before Spark
starts). Driver side; Python 3.8-safe. See spark_inference/README.md.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence
from xml.etree import ElementTree

import pandas as pd

from dai_mlflow import outputs
from dai_mlflow.errors import DaiMlflowError, one_line
from dai_mlflow.outputs import OutputRefusedError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


INPUT_FORMATS = ("csv", "parquet")


class SparkScoringError(DaiMlflowError):
    """Scoring failed in the model (missing license, scorer exception, ...) or in Spark."""


class OutputPathError(DaiMlflowError):
    """The output could not be written or moved into place; the previous output is intact."""


def _local_files(path: str) -> List[Path]:
    local = Path(path)
    files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local]
    return [f for f in files if not f.name.startswith((".", "_"))]


def input_columns(path: str, input_format: Optional[str] = None) -> Optional[List[str]]:
    """Column names of a local csv/parquet input without starting Spark; None if unknown."""
    local = Path(path)
    if not local.exists():
        return None
    try:
        fmt = input_format or _format_of(path)
        files = _local_files(path)
        if not files:
            return None
        if fmt == "csv":
            return list(pd.read_csv(files[0], nrows=0).columns)
        import pyarrow.parquet as pq

        return list(pq.read_schema(str(files[0])).names)
    except Exception:  # an unreadable file is reported by Spark, with its own message
        return None


def sample_rows(path: str, input_format: Optional[str], rows: int) -> Optional[pd.DataFrame]:
    """The first rows of a local csv/parquet input, read without Spark; None if not local."""
    local = Path(path)
    if not local.exists():
        return None
    fmt = input_format or _format_of(path)
    files = _local_files(path)
    if not files:
        return None
    if fmt == "csv":
        return pd.read_csv(files[0], nrows=rows)
    import pyarrow.parquet as pq

    return pq.ParquetFile(str(files[0])).read_row_group(0).to_pandas().head(rows)


def read_input(spark: SparkSession, path: str, input_format: Optional[str] = None) -> DataFrame:
    """Read csv (RFC 4180: header row, ``""`` escapes; inferred types) or parquet.

    The format follows the extension unless ``input_format`` is given.
    """
    fmt = input_format or _format_of(path)
    if fmt == "csv":
        return spark.read.csv(path, header=True, inferSchema=True, escape='"', multiLine=False)
    return spark.read.parquet(path)


def format_of(path: str) -> Optional[str]:
    """``csv`` or ``parquet`` from the name, or from the files of a local folder; None when
    neither tells."""
    kinds = {".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet", ".pq": "parquet"}
    local = Path(path)
    names = [path.rstrip("/")] + ([f.name for f in _local_files(path)] if local.is_dir() else [])
    for name in names:
        for suffix, kind in kinds.items():
            if name.lower().endswith(suffix):
                return kind
    return None


def _format_of(path: str) -> str:
    found = format_of(path)
    if found is None:
        raise SparkScoringError(
            f"cannot tell the format of {path}; name it *.csv or *.parquet or pass --input-format"
        )
    return found


def default_fs(spark: Optional[SparkSession] = None) -> str:
    """Hadoop's default filesystem: where Spark writes a path given without a scheme.

    From ``spark.hadoop.fs.defaultFS`` of the session, else ``fs.defaultFS`` of a
    ``core-site.xml`` in ``HADOOP_CONF_DIR``, ``YARN_CONF_DIR`` or ``SPARK_CONF_DIR``, else
    ``file:///``. Read without the JVM (PySpark has no public API for Hadoop's configuration).
    """
    if spark is not None:
        with contextlib.suppress(Exception):
            value = spark.conf.get("spark.hadoop.fs.defaultFS", None)
            if value:
                return str(value)
    for var in ("HADOOP_CONF_DIR", "YARN_CONF_DIR", "SPARK_CONF_DIR"):
        site = Path(os.environ.get(var) or "/nonexistent") / "core-site.xml"
        if site.is_file():
            with contextlib.suppress(Exception):
                for prop in ElementTree.parse(str(site)).getroot().iter("property"):
                    if (prop.findtext("name") or "").strip() in ("fs.defaultFS", "fs.default.name"):
                        return (prop.findtext("value") or "").strip() or "file:///"
    return "file:///"


def is_local_output(output: str, spark: Optional[SparkSession] = None) -> bool:
    """True when ``output`` is a path of this machine's filesystem as Spark resolves it."""
    if outputs.is_remote(output):
        return False
    return output.strip().startswith("file:") or not outputs.is_remote(default_fs(spark))


def _qualified(path: str, spark: Optional[SparkSession]) -> str:
    """``path`` as a URI: scheme-less paths on a remote default filesystem get its prefix."""
    if not path or outputs.is_remote(path) or path.strip().startswith("file:"):
        return path
    fs = default_fs(spark)
    return fs.rstrip("/") + "/" + path.strip().lstrip("/") if outputs.is_remote(fs) else path


def validate_output(
    output: str,
    inputs: Sequence[str] = (),
    overwrite: bool = False,
    spark: Optional[SparkSession] = None,
) -> None:
    """Refuse an ``--output`` that would replace what is not ours (:mod:`dai_mlflow.outputs`).

    Raises:
        OutputRefusedError: one line saying what to do; nothing was changed.
    """
    if is_local_output(output, spark):
        outputs.check_output(output, inputs, overwrite)
    else:
        given = [_qualified(i, spark) for i in inputs]
        outputs.check_output(_qualified(output, spark), given, overwrite)


def _already_exists(exc: BaseException) -> bool:
    text = str(exc)
    return "PATH_ALREADY_EXISTS" in text or "already exists" in text


def write_atomically(
    spark: SparkSession,
    df: DataFrame,
    output: str,
    translate: Callable[[BaseException], Exception],
    *,
    overwrite: bool = False,
    inputs: Sequence[str] = (),
) -> None:
    """Write ``df`` as parquet to ``output``, all or nothing, replacing only what is ours.

    A local ``output`` is written to a hidden staging folder beside it, marked as ours
    (:data:`dai_mlflow.outputs.MARKER_NAME`) and swapped in when complete; any failure leaves
    what was there. A remote one (``hdfs://``, ``s3a://``, ``dbfs:/``..., or a path on a remote
    default filesystem) is written by Spark itself: ``errorifexists``, or ``overwrite`` (Spark
    removes the old folder as the write starts) when ``overwrite`` is set.

    Args:
        spark: the session.
        df: what to write.
        output: the target folder.
        translate: turns the job's exception into the error to raise (one line).
        overwrite: allow replacing a path that is not an earlier output (never the input).
        inputs: what the job reads; the output may not be, hold or lie inside them.

    Raises:
        OutputRefusedError: the output may not be written there (checked before the job).
        OutputPathError: the finished output could not be moved into place.
    """
    validate_output(output, inputs, overwrite, spark)
    if not is_local_output(output, spark):
        _write_remote(df, _qualified(output, spark), translate, overwrite)
        return
    target = outputs.local_path(output)
    as_uri = output.strip().startswith("file:")
    with outputs.claimed(target) as staging:
        try:
            df.write.mode("errorifexists").parquet(staging.as_uri() if as_uri else str(staging))
        except Exception as e:
            raise translate(e) from e
        if not staging.is_dir():
            raise OutputPathError(
                f"Spark did not write {output} to this machine (its default filesystem is "
                f"{default_fs(spark)}?); give --output as a full URI such as hdfs://HOST/path"
            )
        outputs.write_marker(staging, outputs.SCORED)
        # Checked again: the path may have changed while the job ran.
        validate_output(output, inputs, overwrite, spark)
        try:
            outputs.swap_in(staging, target)
        except OSError as e:
            raise OutputPathError(
                f"moving the output into {output} failed: {one_line(e)}; what was there is intact"
            ) from e


def _write_remote(
    df: DataFrame, output: str, translate: Callable[[BaseException], Exception], overwrite: bool
) -> None:
    try:
        df.write.mode("overwrite" if overwrite else "errorifexists").parquet(output)
    except Exception as e:
        if not overwrite and _already_exists(e):
            raise OutputRefusedError(
                f"--output {output} already exists; dai-mlflow cannot see what a remote folder "
                "holds, so it writes only new ones there: choose a new path, or pass "
                "--overwrite to replace it"
            ) from e
        raise translate(e) from e
