"""The one file lock of dai-mlflow: builds, extractions and deploys that other processes share.

An exclusive ``flock`` on a file beside what is guarded (``<env>.lock``), held for a ``with``
block: concurrent ``mlflow run``s, Spark tasks of one executor and servers started together wait
for one another instead of racing. Stdlib only; Python 3.8-safe.
"""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created with its folder) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
