"""Spark scoring's files: read csv/parquet inputs, write parquet outputs all or nothing.

* :func:`read_input`: RFC 4180 csv (header row, ``""`` escapes, inferred types) or parquet, by
  extension unless told;
* :func:`write_atomically`: the output is written to a staging folder beside the target and
  swapped in only when the job succeeded; whatever was at the target before is left untouched
  by any failure. Works on any Hadoop filesystem (local, hdfs, s3a, ...) through the JVM;
* :func:`input_columns` / :func:`sample_rows`: a local input's columns and first rows without
  Spark, so bad input fails before Spark starts.

Driver side; Python 3.8-safe.
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Callable, List, Optional

import pandas as pd

from dai_mlflow.errors import DaiMlflowError, one_line

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


def read_input(spark: object, path: str, input_format: Optional[str] = None) -> object:
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


class _HadoopFs:
    """The Hadoop FileSystem behind a path (local, hdfs, s3a, ...), via the JVM."""

    def __init__(self, spark: object, path: str) -> None:
        jvm = spark.sparkContext._jvm
        self._Path = jvm.org.apache.hadoop.fs.Path
        self.fs = self._Path(path).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())

    def path(self, path: str) -> object:
        return self._Path(path)

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(self._Path(path)))

    def delete(self, path: str) -> None:
        if self.exists(path):
            self.fs.delete(self._Path(path), True)

    def rename(self, src: str, dst: str) -> None:
        if not self.fs.rename(self._Path(src), self._Path(dst)):
            raise OutputPathError(f"could not move {src} to {dst}")


def _sibling(path: str, tag: str) -> str:
    base = path.rstrip("/")
    head, _, name = base.rpartition("/")
    sibling = f".{name}.{tag}-{uuid.uuid4().hex[:8]}"
    return f"{head}/{sibling}" if head else sibling


def write_atomically(
    spark: object, df: object, output: str, translate: Callable[[BaseException], Exception]
) -> None:
    """Write ``df`` as parquet next to ``output``, then swap it in; on failure leave ``output``.

    Args:
        spark: the session.
        df: what to write.
        output: the target folder (any Hadoop path).
        translate: turns the job's exception into the error to raise (one line).

    Raises:
        OutputPathError: the finished output could not be moved into place.
    """
    fs = _HadoopFs(spark, output)
    staging = _sibling(output, "staging")
    try:
        df.write.mode("errorifexists").parquet(staging)
    except Exception as e:
        with contextlib.suppress(Exception):
            fs.delete(staging)
        raise translate(e) from e
    backup = None
    try:
        if fs.exists(output):
            backup = _sibling(output, "previous")
            fs.rename(output, backup)
        fs.rename(staging, output)
    except Exception as e:
        if backup and not fs.exists(output):
            with contextlib.suppress(Exception):
                fs.rename(backup, output)
        with contextlib.suppress(Exception):
            fs.delete(staging)
        if isinstance(e, DaiMlflowError):
            raise
        raise OutputPathError(f"moving the output into {output} failed: {one_line(e)}") from e
    if backup:
        fs.delete(backup)
