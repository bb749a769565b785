"""``make bench-serve --profile``: py-spy's collapsed stacks read into layers and functions."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import serve_targets  # noqa: E402 - a script folder, not a package


def test_stacks_are_summed_by_layer_and_function(tmp_path: Path) -> None:
    root = 'process 7:"python -m dai_mlflow.model.serving";process 9:"worker"'
    stacks = tmp_path / "stacks.txt"
    stacks.write_text(
        f"{root};_run (dai_mlflow/model/serving/app.py:270);loads (json/__init__.py:346) 6\n"
        f"{root};_run (dai_mlflow/model/serving/app.py:271);loads (json/__init__.py:350) 2\n"
        f"{root};_loop (asyncio/base_events.py:1900) 1\n"
        f"{root};score_batch (scoring_h2oai_experiment_x/scorer.py:40) 1\n"
        "not a stack line\n"
    )
    lines = serve_targets.summarize_profile(stacks)
    assert lines[0] == (
        "  by layer: json (stdlib) 80%, HTTP + event loop 10%,"
        " other (the scorer, its libraries, the interpreter) 10%"
    )
    assert lines[1].split() == ["80.0%", "loads", "(json/__init__.py)"]
    assert len(lines) == 4


def test_a_missing_profile_says_so(tmp_path: Path) -> None:
    (line,) = serve_targets.summarize_profile(tmp_path / "none.txt")
    assert "was not written" in line
