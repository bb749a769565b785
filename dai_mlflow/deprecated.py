"""Old ``python -m dai_mlflow.X`` names, kept working for one release after a rename."""

from __future__ import annotations

import runpy

from dai_mlflow.errors import say


def run_renamed(old: str, new: str) -> None:
    """Say ``old`` is deprecated (one line on stderr, naming ``new``), then run ``new``."""
    say(f"`python -m {old}` is deprecated and goes in the next release: use `python -m {new}`")
    runpy.run_module(new, run_name="__main__", alter_sys=True)
