"""Child processes that run another Python: what they must not inherit, and how they end.

* :data:`FOREIGN_PYTHON_VARS`: variables a Spark Python worker (or any activated env) carries
  that point a child interpreter of *another* env at the wrong packages (``PYTHONPATH`` naming the
  driver's ``pyspark.zip``, ``VIRTUAL_ENV``, ...). Servers started in a model's env drop them.
* :func:`parent_death_signal`: run in a child before it ``exec``s (``preexec_fn``), so that it
  gets SIGTERM when the process that started it dies, even by SIGKILL (Linux ``prctl``).

Stdlib only; Python 3.8-safe.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
from typing import Dict, Mapping

FOREIGN_PYTHON_VARS = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "VIRTUAL_ENV",
    "SPARK_HOME",
    "PYSPARK_PYTHON",
    "PYSPARK_DRIVER_PYTHON",
    "PYSPARK_GATEWAY_PORT",
    "PYSPARK_GATEWAY_SECRET",
)
_PR_SET_PDEATHSIG = 1


def without_foreign_python(environ: Mapping[str, str]) -> Dict[str, str]:
    """``environ`` minus :data:`FOREIGN_PYTHON_VARS`."""
    return {k: v for k, v in environ.items() if k not in FOREIGN_PYTHON_VARS}


def parent_death_signal() -> None:
    """In a child, before ``exec``: SIGTERM when its parent dies (no-op where unsupported)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
