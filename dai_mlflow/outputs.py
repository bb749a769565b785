"""What an output may replace, and how it is swapped in: the one rule of every writer.

Scoring and the lifecycle tables write a new path, or replace an earlier output of dai-mlflow
(:data:`MARKER_NAME` or Spark's ``_SUCCESS``, parquet parts only); anything else needs
``overwrite``, and the input, its folders, ``/``, home, cwd and project folders are refused even
then. Writes go to a hidden staging sibling, swapped in when complete, under ``.<name>.lock``.
Remote URIs get the path rules only. Stdlib only; Python 3.8-safe (the lifecycle's Spark job
runs in a DAI 1.10 env). See spark_inference/README.md, "What --output may replace".
Over 400 lines: the one rule of every writer, local and remote, kept in one place.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from dai_mlflow.errors import DaiMlflowError

MARKER_NAME = "_DAI_MLFLOW_OUTPUT"
TOOL = "dai-mlflow"
SCORED = "scored"  # kinds written in the marker
BATCH_TABLE = "batch-table"
MONITOR_TABLE = "monitor-table"
TABLE = "table"  # a table written with no particular kind
_PARTITION_NAME = re.compile(r"^date=\d{4}-\d{2}-\d{2}$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:staging|previous)-[0-9a-f]{8}$")
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_SYS_RENAMEAT2_X86_64 = 316


class OutputRefusedError(DaiMlflowError):
    """The output path may not be written or replaced; nothing was changed."""


class OutputLocationError(DaiMlflowError):
    """The folder of the output cannot be written (permissions, a file in the way)."""


# ----------------------------------------------------------------------------- paths


def is_remote(path: str) -> bool:
    """True for a URI with a scheme other than ``file:`` (``hdfs://``, ``s3a://``, ``dbfs:/``)."""
    match = _SCHEME.match(path.strip())
    return match is not None and match.group(1).lower() != "file"


def local_path(path: str) -> Path:
    """The absolute local path of ``path`` (``file:`` prefixes allowed; symlinks kept)."""
    text = path.strip()
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif text.startswith("file:"):
        text = text[len("file:") :]
    return Path(os.path.abspath(os.path.expanduser(text)))


def _real(path: Path) -> Path:
    return Path(os.path.realpath(str(path)))


def _within(inner: Path, outer: Path) -> bool:
    """``inner`` is ``outer`` or lies below it."""
    return inner == outer or outer in inner.parents


def _remote_key(path: str) -> Tuple[str, str]:
    """(scheme://authority, normalised path) of a remote URI, for the overlap rules."""
    text = path.strip()
    scheme, _, rest = text.partition(":")
    authority = ""
    if rest.startswith("//"):
        authority, _, rest = rest[2:].partition("/")
        rest = "/" + rest
    return f"{scheme.lower()}://{authority}", os.path.normpath("/" + rest.lstrip("/"))


def _protected(output: Path) -> Optional[str]:
    """Why ``output`` may never be replaced, or None."""
    home = _real(Path(os.path.expanduser("~")))
    cwd = _real(Path.cwd())
    if output == Path(output.anchor):
        return "the filesystem root"
    if _within(home, output):
        return "your home folder" if output == home else "a folder holding your home folder"
    if _within(cwd, output):
        return "the current folder" if output == cwd else "a folder holding the current folder"
    if output.is_dir() and any((output / name).exists() for name in ("MLproject", ".git")):
        return "a project folder (it holds MLproject or .git)"
    return None


def _overlap(output: Path, inputs: Sequence[str]) -> Optional[str]:
    for given in inputs:
        if not given or is_remote(given):
            continue
        source = _real(local_path(given))
        if output == source:
            return f"is the input {given}"
        if _within(source, output):
            return f"holds the input {given}"
        if _within(output, source):
            return f"lies inside the input folder {given}"
    return None


def _remote_rules(output: str, inputs: Sequence[str], option: str) -> None:
    base, path = _remote_key(output)
    if path == "/":
        raise OutputRefusedError(
            f"{option} {output} is the root of its filesystem, which is never replaced; "
            "name a folder inside it"
        )
    for given in inputs:
        if not given or not is_remote(given):
            continue
        other_base, other = _remote_key(given)
        if other_base != base:
            continue
        if other == path or other.startswith(path.rstrip("/") + "/"):
            raise OutputRefusedError(
                f"{option} {output} is or holds the input {given}; write the output elsewhere"
            )
        if path.startswith(other.rstrip("/") + "/"):
            raise OutputRefusedError(
                f"{option} {output} lies inside the input folder {given}; write it elsewhere"
            )


# ----------------------------------------------------------------------------- ours or not


def write_marker(folder: Path, kind: str) -> None:
    """Write :data:`MARKER_NAME` (tool, version, kind; nothing secret) into ``folder``."""
    record = {
        "tool": TOOL,
        "version": _version(),
        "kind": kind,
        "written_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    (folder / MARKER_NAME).write_text(json.dumps(record) + "\n")


def marker_kind(folder: Path) -> Optional[str]:
    """The kind recorded in ``folder``'s marker, or None when there is no valid marker."""
    try:
        record = json.loads((folder / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("tool") != TOOL:
        return None
    return str(record.get("kind", ""))


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("dai-mlflow")
    except Exception:  # a checkout on PYTHONPATH, not installed
        return "unknown"


def _is_data_file(name: str) -> bool:
    """A file Spark or dai-mlflow writes into a parquet folder."""
    return (
        (name.startswith("part-") and ".parquet" in name)
        or (name.startswith(".") and name.endswith(".crc"))
        or name in ("_SUCCESS", MARKER_NAME)
    )


def foreign_entries(folder: Path) -> List[str]:
    """Entries of a parquet output folder that dai-mlflow and Spark do not write there."""
    return sorted(p.name for p in folder.iterdir() if not (p.is_file() and _is_data_file(p.name)))


def is_our_output(folder: Path) -> bool:
    """An earlier output: marker or ``_SUCCESS``, and only parquet parts and ``.crc`` files."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    ours = marker_kind(folder) == SCORED or (folder / "_SUCCESS").is_file()
    return ours and not foreign_entries(folder)


def _table_foreign(table: Path) -> List[str]:
    foreign = []
    for p in table.iterdir():
        if p.name == MARKER_NAME or _LEFTOVER.match(p.name) or p.name.endswith(".lock"):
            continue
        if p.is_dir() and not p.is_symlink() and _PARTITION_NAME.match(p.name):
            continue
        foreign.append(p.name)
    return sorted(foreign)


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


# ----------------------------------------------------------------------------- the checks


def check_output(
    output: str,
    inputs: Sequence[str] = (),
    overwrite: bool = False,
    option: str = "--output",
    overwrite_hint: str = "pass --overwrite",
) -> None:
    """Refuse an output that would replace what is not ours (see the module docstring).

    Args:
        output: the path or URI to write.
        inputs: what the job reads (paths or URIs); the output may not overlap them.
        overwrite: the user allowed replacing a path that is not an earlier output.
        option: how the output is named in messages (``--output``, ``table``).
        overwrite_hint: how the user allows it (``pass --overwrite``, ``set -P overwrite=true``).

    Raises:
        OutputRefusedError: one line saying what to do; nothing was changed.
    """
    if is_remote(output):
        _remote_rules(output, inputs, option)
        return
    path = local_path(output)
    if path.is_symlink():
        raise OutputRefusedError(
            f"{option} {output} is a symbolic link; give the folder it points to, or a new path"
        )
    real = _real(path)
    why = _overlap(real, inputs)
    if why:
        raise OutputRefusedError(
            f"{option} {output} {why}; write the output to a new folder outside the input"
        )
    why = _protected(real)
    if why:
        raise OutputRefusedError(
            f"{option} {output} is {why}, which is never replaced, not even with overwrite; "
            "name a new folder for the output"
        )
    if not path.exists() or overwrite:
        return
    if path.is_dir():
        if is_our_output(path):
            return
        found = _listing(foreign_entries(path)) or "no _SUCCESS or marker file"
        what = f"a folder that dai-mlflow did not write (it holds {found})"
    else:
        what = "a file that dai-mlflow did not write"
    raise OutputRefusedError(
        f"{option} {output} exists and is {what}; choose a new path, or {overwrite_hint} "
        "to replace it"
    )


def check_table(
    table: Path,
    kind: Optional[str],
    inputs: Sequence[str] = (),
    overwrite: bool = False,
    option: str = "table",
    overwrite_hint: str = "set -P overwrite=true",
) -> None:
    """Refuse a date-partitioned table folder that is not ours (:func:`check_output`'s rules).

    A table is ours when it holds our marker (of the same ``kind``, when given and recorded),
    or (written before markers) only ``date=YYYY-MM-DD`` partition folders. With ``overwrite``
    any folder that passes the path rules is accepted; only the partition written is replaced.

    Raises:
        OutputRefusedError: one line saying what to do; nothing was changed.
    """
    check_output(str(table), inputs, True, option, overwrite_hint)
    if overwrite or not table.exists():
        return
    if not table.is_dir():
        raise OutputRefusedError(
            f"{option} {table} is a file, not a table folder; choose a new path, or "
            f"{overwrite_hint} to replace it"
        )
    found = marker_kind(table)
    if kind and found not in (None, TABLE, kind):
        raise OutputRefusedError(
            f"{option} {table} is a dai-mlflow {found}, not a {kind}; choose another folder, "
            f"or {overwrite_hint} to write into it"
        )
    foreign = _table_foreign(table)
    if foreign:
        raise OutputRefusedError(
            f"{option} {table} is a folder that dai-mlflow did not write (it holds "
            f"{_listing(foreign)}); choose a new folder, or {overwrite_hint} to write a "
            "date partition into it"
        )


def check_partition(
    folder: Path, overwrite: bool, option: str = "table", hint: str = "set -P overwrite=true"
) -> None:
    """Refuse replacing a partition folder that holds more than parquet data files."""
    if overwrite or not folder.exists():
        return
    foreign = foreign_entries(folder) if folder.is_dir() else [folder.name]
    if foreign or folder.is_symlink():
        raise OutputRefusedError(
            f"{option} partition {folder} holds files dai-mlflow did not write "
            f"({_listing(foreign) or 'a link'}); move them away, or {hint} to replace it"
        )


# ----------------------------------------------------------------------------- writing


def _lock_path(parent: Path, name: str) -> Path:
    return parent / f".{name}.lock"


def _try_lock(path: Path, block: bool) -> Optional[int]:
    """An fd holding an flock on ``path`` (created), or None when another process holds it.

    The holder removes the file when done; a waiter that then got the lock of a removed file
    opens it again.
    """
    while True:
        fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        try:
            if os.fstat(fd).st_ino == os.stat(str(path)).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _unlock(path: Path, fd: int) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
    os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(str(path)):
        with contextlib.suppress(OSError):
            path.unlink()


def _only_data(folder: Path) -> bool:
    """A real folder holding nothing but what Spark or dai-mlflow write (any depth)."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    for path in folder.rglob("*"):
        if path.is_symlink() or (path.is_file() and not _is_data_file(path.name)):
            return False
    return True


def _clear_leftovers_of(parent: Path, name: str) -> None:
    """Remove the hidden siblings of ``name`` a killed writer left (its lock is held).

    A writer killed between moving the old ``name`` aside and moving the new one in leaves
    ``name`` missing and ``.previous-*`` whole: that is put back first. Only folders of data
    files are removed; anything else found there is left alone.
    """
    target = parent / name
    for entry in sorted(parent.glob(f".{name}.previous-*")):
        if not _LEFTOVER.match(entry.name):
            continue
        if not os.path.lexists(str(target)):
            with contextlib.suppress(OSError):
                entry.rename(target)
                continue
        if _only_data(entry):
            _remove(entry)
    for entry in parent.glob(f".{name}.staging-*"):
        if _LEFTOVER.match(entry.name) and _only_data(entry):
            _remove(entry)


def clear_leftovers(parent: Path, skip: str = "") -> None:
    """Remove what killed writers left beside any output in ``parent`` (live ones are kept)."""
    if not parent.is_dir():
        return
    names = {m.group("name") for m in map(_LEFTOVER.match, os.listdir(str(parent))) if m}
    for name in sorted(names - {skip}):
        lock = _lock_path(parent, name)
        fd = _try_lock(lock, block=False)
        if fd is None:  # a live writer
            continue
        try:
            _clear_leftovers_of(parent, name)
        finally:
            _unlock(lock, fd)


@contextlib.contextmanager
def claimed(target: Path) -> Iterator[Path]:
    """Hold ``target``'s write lock; yield a fresh staging path beside it (not created).

    Leftovers of killed writers of ``target`` and of its siblings are removed first. The
    staging path is removed on exit unless it was swapped in.
    """
    parent = target.parent
    lock = _lock_path(parent, target.name)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd = _try_lock(lock, block=True)
    except OSError as e:
        raise OutputLocationError(
            f"cannot write into {parent}: {e.strerror or e}; choose a folder you can write"
        ) from e
    assert fd is not None
    try:
        _clear_leftovers_of(parent, target.name)
        clear_leftovers(parent, skip=target.name)
        staging = parent / f".{target.name}.staging-{uuid.uuid4().hex[:8]}"
        try:
            yield staging
        finally:
            _remove(staging)
    finally:
        _unlock(lock, fd)


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


def swap_in(staging: Path, target: Path) -> None:
    """Put ``staging`` at ``target``; what was there is removed only once the new one is in.

    One ``renameat2(RENAME_EXCHANGE)`` where Linux allows it (readers see old or new, never
    neither); else two renames with roll-back.
    """
    if not os.path.lexists(str(target)):
        staging.rename(target)
        return
    if _exchange(staging, target):
        _remove(staging)  # now holds the previous output
        return
    backup = target.with_name(f".{target.name}.previous-{uuid.uuid4().hex[:8]}")
    target.rename(backup)
    try:
        staging.rename(target)
    except OSError:
        with contextlib.suppress(OSError):
            backup.rename(target)
        raise
    _remove(backup)
