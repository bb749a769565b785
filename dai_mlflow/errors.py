"""Error hierarchy of dai_mlflow, and how anything is said: one note prefix, one error prefix.

Every expected failure raises a :class:`DaiMlflowError` subclass whose one-line message says how
to fix it; only the command-line edge (:mod:`dai_mlflow.cli`) catches it and prints
:func:`report_error`'s ``Error: <message>``. Progress goes to stderr through :func:`say`
(``[dai-mlflow] ...``); :func:`one_line` shows any exception in one line.
Stdlib only: this module is imported inside the DAI scorer's pinned env (Python 3.8).
"""

from __future__ import annotations

import sys
from typing import Iterable

NOTE_PREFIX = "[dai-mlflow]"
ERROR_PREFIX = "Error:"


def say(message: str) -> None:
    """A progress note on stderr: ``[dai-mlflow] <message>``."""
    print(f"{NOTE_PREFIX} {message}", file=sys.stderr, flush=True)


def report_error(error: object) -> int:
    """Print ``Error: <error>`` on stderr, on one line (the one error line of every command);
    return 1."""
    text = " ".join(str(error).split("\n"))
    print(f"{ERROR_PREFIX} {text}", file=sys.stderr, flush=True)
    return 1


class DaiMlflowError(Exception):
    """Base class of every error dai_mlflow raises on purpose."""


class PythonNotFoundError(DaiMlflowError):
    """No local interpreter matches a requested Python version."""

    def __init__(self, version: str, searched: Iterable[str]) -> None:
        self.version = version
        self.searched = list(searched)
        where = ", ".join(self.searched) or "nowhere"
        super().__init__(
            f"Python {version} not found (searched: {where}); install it with "
            f"`pyenv install {version}` or `uv python install {version}`, or set "
            f"{python_env_var(version)}=/path/to/python{'.'.join(version.split('.')[:2])}"
        )


class VenvBuildError(DaiMlflowError):
    """Creating a virtualenv or installing into it failed; the half-built env was removed."""

    def __init__(self, dest: str, step: str, detail: str) -> None:
        self.dest = dest
        self.step = step
        super().__init__(f"building {dest} failed while {step}: {detail} (nothing was left behind)")


class PipelineError(DaiMlflowError):
    """A scoring pipeline (scorer.zip or scoring-pipeline/ folder) is missing or malformed."""


class LicenseNotFoundError(DaiMlflowError):
    """No Driverless AI license was found at scoring time."""


def python_env_var(version: str) -> str:
    """Name of the env var that overrides interpreter discovery for ``version`` (major.minor)."""
    major_minor = "_".join(version.split(".")[:2])
    return f"DAI_MLFLOW_PYTHON_{major_minor}"


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``: how any exception is shown in one line."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
