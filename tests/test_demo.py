"""`make demo`'s output: one line a step on the screen, the commands' output in the log."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dai_mlflow.demo import DemoError, Steps


def test_a_step_shows_one_line_and_logs_its_output(tmp_path: Path, capsys) -> None:
    log = tmp_path / "demo.log"
    steps = Steps(2, log)
    out = steps.run("say hello", [sys.executable, "-c", "print('hello'); print('noise' * 3)"])
    screen = capsys.readouterr().out
    assert out.splitlines() == ["hello", "noisenoisenoise"]
    assert screen.startswith("[1/2] say hello ... done in ")
    assert screen.count("\n") == 1
    assert "noisenoisenoise" not in screen
    assert "noisenoisenoise" in log.read_text()


def test_a_failed_step_prints_its_whole_output_and_names_the_log(tmp_path: Path, capsys) -> None:
    log = tmp_path / "demo.log"
    steps = Steps(1, log)
    program = "import sys; print('line one'); sys.exit('the real error')"
    with pytest.raises(DemoError, match="exit code 1") as info:
        steps.run("fail", [sys.executable, "-c", program])
    screen = capsys.readouterr().out
    assert "line one" in screen
    assert "the real error" in screen
    assert str(log) in str(info.value)
    assert "the real error" in log.read_text()
