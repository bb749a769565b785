"""Run a click command as a front door: its exit code, and a one-line ``error: ...`` on stderr
for expected failures (click turns :class:`~dai_mlflow.errors.DaiMlflowError` into
``ClickException`` at the edge). Python 3.8-safe (the project env runs it)."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import click


def run_click(command: click.Command, argv: Optional[Sequence[str]] = None) -> int:
    """Run ``command`` with ``argv`` (default: ``sys.argv[1:]``); return its exit code."""
    try:
        command.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except click.ClickException as e:
        print(f"error: {e.format_message()}", file=sys.stderr, flush=True)
        return 1
    except click.exceptions.Abort:
        return 1
    return 0
