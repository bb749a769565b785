"""Commands renamed by the package's new layout keep their old names for one release."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Old `python -m` name (in the previous release's README, docs or launchers) -> the new one.
RENAMED = {
    "dai_mlflow.rpc": "dai_mlflow.serve.rpc",
    "dai_mlflow.pythons": "dai_mlflow.envs.pythons",
    "dai_mlflow.venvs": "dai_mlflow.envs.venvs",
    "dai_mlflow.spark_env": "dai_mlflow.envs.spark_venv",
}


def _help(module: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-W", "ignore", "-m", module, "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_an_old_name_runs_the_new_command_with_one_note(old: str) -> None:
    new = RENAMED[old]
    theirs, ours = _help(new), _help(old)
    assert ours.returncode == 0, ours.stderr[-2000:]
    assert ours.stdout == theirs.stdout
    note = ours.stderr.splitlines()[0]
    assert f"`python -m {old}` is deprecated" in note
    assert f"use `python -m {new}`" in note
