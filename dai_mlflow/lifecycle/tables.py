"""Date-partitioned parquet tables (``<table>/date=YYYY-MM-DD/*.parquet``) on a local filesystem.

A partition is only ever replaced whole: the new data is written to a hidden sibling
(``<table>/.date=D.staging-<id>``; readers such as Spark and pyarrow skip names starting with
``.`` or ``_``), then swapped into place with one ``renameat2(RENAME_EXCHANGE)`` (Linux), so a
reader sees the old partition or the new one, never both, never a half-written one, and a re-run
for the same date leaves exactly one copy. Where the kernel or filesystem refuses the exchange,
the swap falls back to two renames with roll-back (a reader may then briefly see no partition).
Any failure before the swap removes the staging folder and leaves the table as it was.

Stdlib + pandas/pyarrow; Python 3.8-safe (the Spark job in a DAI 1.10 env imports it too).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import uuid
from datetime import date as Date
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, List, Sequence

import pandas as pd

from dai_mlflow.lifecycle.errors import LifecycleError

PARTITION_COLUMN = "date"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_SYS_RENAMEAT2_X86_64 = 316


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


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths; False when the OS cannot (then nothing changed)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    fn = getattr(libc, "renameat2", None)
    args = (_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        rc = fn(*args)
    elif os.uname().machine == "x86_64":
        rc = libc.syscall(_SYS_RENAMEAT2_X86_64, *args)
    else:
        return False
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(staging: Path, target: Path) -> None:
    if not target.exists():
        staging.rename(target)
        return
    if _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the previous partition
        return
    backup = target.with_name(f".{target.name}.previous-{uuid.uuid4().hex[:8]}")
    target.rename(backup)
    try:
        staging.rename(target)
    except OSError:
        with contextlib.suppress(OSError):
            backup.rename(target)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def replace_partition(table: Path, day: str, write: Callable[[Path], None]) -> Path:
    """Replace (or create) the ``date=day`` partition with what ``write(staging)`` writes.

    ``write`` gets a path that does not exist yet (Spark's ``errorifexists`` is fine) and must
    leave parquet files in it. Returns the partition folder.

    Raises:
        LifecycleError: ``write`` produced no parquet file, or the swap failed (table unchanged).
        Exception: whatever ``write`` raised (the table is unchanged).
    """
    day = validate_date(day)
    table.mkdir(parents=True, exist_ok=True)
    target = partition_dir(table, day)
    staging = table / f".{target.name}.staging-{uuid.uuid4().hex[:8]}"
    try:
        write(staging)
        if not staging.is_dir() or not any(staging.glob("*.parquet")):
            raise LifecycleError(f"writing partition {target.name} of {table} produced no data")
        _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def write_frame(table: Path, day: str, frame: pd.DataFrame) -> Path:
    """Replace the ``date=day`` partition with ``frame`` (one parquet file, no date column)."""
    data = frame.drop(columns=[PARTITION_COLUMN], errors="ignore")

    def _write(staging: Path) -> None:
        staging.mkdir(parents=True)
        data.to_parquet(staging / "part-00000.parquet", index=False)

    return replace_partition(table, day, _write)


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
