"""Spark outputs replace only what is ours (``dai_mlflow.spark.files.write_atomically``, score.py).

The path rules themselves are unit-tested in ``tests/test_outputs.py``; here the Spark writer and
the issue's own reproduction: ``score.py --input data/in.csv --output data`` with a notes.txt
beside the input used to exit 0 and leave ``data/`` holding only parquet parts.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from dai_mlflow.outputs import MARKER_NAME, OutputRefusedError
from dai_mlflow.spark import translate_error, write_atomically
from tests.fixtures_model import run_env

REPO_ROOT = Path(__file__).resolve().parents[2]
SCORE_PY = REPO_ROOT / "spark_inference" / "score.py"
LAUNCHER_PYTHON = REPO_ROOT / "venvs" / "launcher" / "bin" / "python"


def _listing(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.spark
def test_write_atomically_replaces_earlier_outputs_and_refuses_the_rest(spark, tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine\n")
    with pytest.raises(OutputRefusedError, match="pass --overwrite to replace it"):
        write_atomically(spark, spark.range(3), str(theirs), translate_error)
    assert _listing(theirs) == {"notes.txt": b"mine\n"}

    # A folder Spark wrote (its _SUCCESS) is an earlier output; ours get the marker too.
    plain = tmp_path / "plain"
    spark.range(2).write.parquet(str(plain))
    write_atomically(spark, spark.range(3), str(plain), translate_error)
    assert sorted(pd.read_parquet(plain)["id"]) == [0, 1, 2]
    assert (plain / MARKER_NAME).is_file()
    write_atomically(spark, spark.range(4), str(plain), translate_error)  # again: ours
    assert sorted(pd.read_parquet(plain)["id"]) == [0, 1, 2, 3]

    write_atomically(spark, spark.range(1), str(theirs), translate_error, overwrite=True)
    assert sorted(pd.read_parquet(theirs)["id"]) == [0]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.spark
@pytest.mark.venv
def test_score_py_refuses_to_replace_the_input_folder_and_reruns_into_its_own_output(
    logged_model, tmp_path
):
    """The issue's reproduction on a DAI 2 model, then the same job twice into a new folder."""
    model = logged_model("2", "binary")
    work = tmp_path / "work"
    data = work / "data"
    data.mkdir(parents=True)
    shutil.copy(model.build.sample_input_csv, data / "in.csv")
    (data / "notes.txt").write_text("keep me\n")
    before = _listing(data)
    env = run_env(model.license_env)

    def score(output: str, *extra: str) -> subprocess.CompletedProcess:
        cmd = [str(LAUNCHER_PYTHON), str(SCORE_PY), "--model-uri", str(model.local_dir)]
        cmd += ["--input", "data/in.csv", "--output", output, "--env-manager", "uv"]
        cmd += ["--master", "local[1]", *extra]
        return subprocess.run(
            cmd, cwd=str(work), env=env, capture_output=True, text=True, timeout=900
        )

    for extra in ((), ("--overwrite",)):
        refused = score("data", *extra)
        assert refused.returncode == 1, refused.stderr[-2000:]
        lines = [ln for ln in refused.stderr.splitlines() if ln.strip()]
        assert lines[-1].startswith("Error: --output data holds the input data/in.csv; "), lines
        assert "write the output to a new folder" in lines[-1]
        assert _listing(data) == before  # nothing deleted, nothing added

    rows = len(pd.read_csv(data / "in.csv"))
    for _ in range(2):  # the second run replaces the first one's output: it is ours
        done = score("scored")
        assert done.returncode == 0, done.stderr[-3000:]
        assert len(pd.read_parquet(work / "scored")) == rows
        assert (work / "scored" / MARKER_NAME).is_file()
    assert sorted(p.name for p in work.iterdir()) == ["data", "scored"]
    assert _listing(data) == before
