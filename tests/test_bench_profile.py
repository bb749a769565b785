"""``make bench-serve --profile``: py-spy's collapsed stacks read into steps, layers, functions."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import serve_targets  # a script folder, not a package


def test_worker_stacks_are_summed_by_step_layer_and_function(tmp_path: Path) -> None:
    root = 'process 5:"launcher";process 7:"python -m dai_mlflow.model.serving"'
    worker = f'{root};process 9:"python -m dai_mlflow.model.serving"'
    app = "dai_mlflow/model/serving/app.py"
    stacks = tmp_path / "stacks.txt"
    stacks.write_text(
        f"{root};run (dai_mlflow/model/serving/cli.py:296) 50\n"  # the supervisor: left out
        f"{worker};_run_invocations ({app}:270);fast_item ({app}:99);"
        "loads (json/__init__.py:346) 6\n"
        f"{worker};_run_invocations ({app}:271);DaiScoringModel.predict (dai_mlflow/model/"
        "pyfunc.py:293);Scorer.score_batch (scoring_h2oai_experiment_x/scorer.py:40) 2\n"
        f"{worker};_loop (asyncio/base_events.py:1900) 1\n"
        f"{worker};EpollSelector.select (selectors.py:468) 1\n"
        "not a stack line\n"
    )
    lines = serve_targets.summarize_profile(stacks)
    assert lines[0].startswith("  by step: HTTP read + parse 0%, body JSON parsed 60%, ")
    assert "the model's predict 20%" in lines[0]
    assert lines[1] == (
        "  by layer: json (stdlib) 60%, other (the scorer, its libraries, the interpreter) 20%,"
        " HTTP + event loop 10%, waiting (select, condition) 10%"
    )
    assert lines[2].split() == ["60.0%", "loads", "(json/__init__.py)"]
    assert len(lines) == 6


def test_a_missing_profile_says_so(tmp_path: Path) -> None:
    (line,) = serve_targets.summarize_profile(tmp_path / "none.txt")
    assert "was not written" in line
