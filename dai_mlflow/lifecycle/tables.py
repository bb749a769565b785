"""Date-partitioned parquet tables (``<table>/date=YYYY-MM-DD/*.parquet``) on a local filesystem.

A partition is only ever replaced whole: written to a hidden sibling, then swapped in with one
``renameat2(RENAME_EXCHANGE)`` (two renames with roll-back where refused); a killed writer's
hidden siblings are removed by the next writer. Only tables that are ours are written, unless
``overwrite``. docs/lifecycle.md ("Output table"). Python 3.8-safe (the Spark job imports it).
"""

from __future__ import annotations

import re
from datetime import date as Date
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import pandas as pd

from dai_mlflow import outputs
from dai_mlflow.lifecycle.errors import LifecycleError

PARTITION_COLUMN = "date"


def validate_date(text: str) -> str:
    """``YYYY-MM-DD`` or a one-line error."""
    try:
        return Date.fromisoformat(text.strip()).isoformat()
    except ValueError as e:
        raise LifecycleError(f"date {text!r} is not YYYY-MM-DD") from e


def partition_date(day: str) -> str:
    """The partition a run writes or reads up to: ``day``, or today (UTC) when empty."""
    return validate_date(day) if day else datetime.now(timezone.utc).date().isoformat()


def local_table(path: str) -> Path:
    """The local folder of a table path (``file:`` prefixes allowed; other schemes are not).

    Raises:
        LifecycleError: a remote URI (``s3://``, ``dbfs:/``...): use its local mount instead.
    """
    text = path.strip()
    if not text:
        raise LifecycleError("the table path is empty")
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif text.startswith("file:"):
        text = text[len("file:") :]
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", text):
        raise LifecycleError(
            f"table {path!r}: only local paths are supported (on Databricks use the /dbfs/... "
            "or /Volumes/... mount)"
        )
    return Path(text).expanduser().resolve()


def partition_dir(table: Path, day: str) -> Path:
    return table / f"{PARTITION_COLUMN}={day}"


def replace_partition(
    table: Path,
    day: str,
    write: Callable[[Path], None],
    *,
    kind: Optional[str] = None,
    overwrite: bool = False,
    inputs: Sequence[str] = (),
) -> Path:
    """Replace (or create) the ``date=day`` partition with what ``write(staging)`` writes.

    ``write`` gets a path that does not exist yet (Spark's ``errorifexists`` is fine) and must
    leave parquet files in it. Only that partition is touched; the table must be ours
    (:func:`check_table`; of ``kind`` when given). Returns the partition folder.

    Raises:
        OutputRefusedError: the table or partition is not ours (nothing was changed).
        LifecycleError: ``write`` produced no parquet file, or the swap failed (table unchanged).
        Exception: whatever ``write`` raised (the table is unchanged).
    """
    day = validate_date(day)
    check_table(table, kind, inputs, overwrite)
    target = partition_dir(table, day)
    outputs.check_partition(target, overwrite)
    with outputs.claimed(target) as staging:
        write(staging)
        if not staging.is_dir() or not any(staging.glob("*.parquet")):
            raise LifecycleError(f"writing partition {target.name} of {table} produced no data")
        outputs.check_partition(target, overwrite)  # again: the job may have run for hours
        if outputs.marker_kind(table) is None or (kind and outputs.marker_kind(table) != kind):
            outputs.write_marker(table, kind or outputs.TABLE)
        try:
            outputs.swap_in(staging, target)
        except OSError as e:
            raise LifecycleError(
                f"moving partition {target.name} into {table} failed: {e}; the table is unchanged"
            ) from e
    return target


def check_table(
    table: Path,
    kind: Optional[str],
    inputs: Sequence[str] = (),
    overwrite: bool = False,
    option: str = "table",
) -> None:
    """Refuse a table folder that is not ours, or that is or holds an input (one line).

    Raises:
        OutputRefusedError: with what to do (``-P overwrite=true`` where that is allowed).
    """
    outputs.check_table(table, kind, inputs, overwrite, option)


def write_frame(
    table: Path,
    day: str,
    frame: pd.DataFrame,
    *,
    kind: Optional[str] = None,
    overwrite: bool = False,
    inputs: Sequence[str] = (),
) -> Path:
    """Replace the ``date=day`` partition with ``frame`` (one parquet file, no date column)."""
    data = frame.drop(columns=[PARTITION_COLUMN], errors="ignore")

    def _write(staging: Path) -> None:
        staging.mkdir(parents=True)
        data.to_parquet(staging / "part-00000.parquet", index=False)

    return replace_partition(table, day, _write, kind=kind, overwrite=overwrite, inputs=inputs)


def partitions(table: Path) -> List[str]:
    """Dates of the table's partitions, sorted."""
    if not table.is_dir():
        return []
    prefix = PARTITION_COLUMN + "="
    return sorted(
        p.name[len(prefix) :] for p in table.iterdir() if p.is_dir() and p.name.startswith(prefix)
    )


def row_count(folder: Path) -> int:
    """Rows in a partition folder, from the parquet footers (no data is read)."""
    import pyarrow.parquet as pq

    files = [f for f in folder.glob("*.parquet") if not f.name.startswith((".", "_"))]
    return sum(pq.ParquetFile(str(f)).metadata.num_rows for f in files)


def read_partitions(table: Path, days: Sequence[str]) -> pd.DataFrame:
    """The rows of the given partitions (missing ones are skipped) plus the ``date`` column.

    Raises:
        LifecycleError: none of the partitions exists.
    """
    import pyarrow.parquet as pq

    frames = []
    for day in days:
        folder = partition_dir(table, day)
        files = sorted(
            f for f in folder.glob("*.parquet") if not f.name.startswith((".", "_"))
        ) if folder.is_dir() else []  # fmt: skip
        for f in files:
            frame = pq.read_table(str(f)).to_pandas()
            frame[PARTITION_COLUMN] = day
            frames.append(frame)
    if not frames:
        raise LifecycleError(
            f"{table} has no partition for {list(days)}; existing: {partitions(table)[-5:]}"
        )
    return pd.concat(frames, ignore_index=True)
