"""A DAI scorer that ends its process on a bad license never ends its caller's.

DAI 1.x scorers (and the 1.10 stand-in) print why on stderr and call ``sys.exit(-1)`` when the
license exists but fails verification. Each path that builds a scorer turns that into a one-line
error naming the license, and the calling process lives on:

* ``mlflow.pyfunc.load_model(m).predict(df)`` in the model's own env raises; the interpreter goes
  on to its next statement;
* ``spark_inference/score.py`` with ``--env-manager local`` (the model's Spark venv), ``uv`` and
  ``virtualenv`` (from ``venvs/launcher``) ends with ``Error: ...`` naming the license as its
  last line, exit 1, and an output that was already at ``--output`` is left as it was.

Serving (``mlflow models serve``: a 500 naming the license, ``/ping`` still answers) and
``dai_mlflow.serve.rpc`` (exit 1 at start-up) are covered in ``test_serve.py`` and ``test_rpc.py``.
The license file here is forged (``forged_license``): nothing of a real license.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.fixtures_model import LAUNCHER_BIN, REPO_ROOT, model_python, run_env
from tests.fixtures_spark import get_spark_venv
from tests.fixtures_standin import forged_license

SCORE_PY = REPO_ROOT / "spark_inference" / "score.py"
PREDICT = """
import sys
import mlflow.pyfunc
import pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
frame = pd.read_csv(sys.argv[2]).head(5)
frame = frame.astype({c: "float64" for c in frame.select_dtypes("integer").columns})
try:
    model.predict(frame)
except Exception as e:
    print("RAISED", type(e).__name__, str(e).splitlines()[0])
print("ALIVE")
"""


def _env(tmp_path: Path) -> dict:
    env = run_env({"DRIVERLESS_AI_LICENSE_FILE": str(forged_license(tmp_path / "forged.sig"))})
    env["HOME"] = str(tmp_path)  # no license of the developer's
    return env


@pytest.mark.venv
def test_pyfunc_predict_raises_and_the_process_lives_on(logged_model, tmp_path: Path) -> None:
    model = logged_model("1.10", "binary")
    proc = subprocess.run(
        [str(model_python(model)), "-c", PREDICT, str(model.local_dir)]
        + [str(model.build.sample_input_csv)],
        cwd=str(tmp_path),
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[-1] == "ALIVE"
    raised = lines[-2]
    assert raised.startswith("RAISED ScorerImportError the DAI scorer called sys.exit(-1)")
    assert "License check failed" in raised


@pytest.mark.venv
@pytest.mark.spark
@pytest.mark.parametrize("env_manager", ["local", "uv", "virtualenv"])
def test_score_py_ends_with_a_line_naming_the_license(
    logged_model, tmp_path: Path, env_manager: str
) -> None:
    model = logged_model("1.10", "binary")
    python = get_spark_venv(model) if env_manager == "local" else LAUNCHER_BIN / "python"
    output = tmp_path / "scored.parquet"
    pd.DataFrame({"previous": [1, 2]}).to_parquet(output)  # an earlier job's output
    before = output.read_bytes()
    cmd = [str(python), str(SCORE_PY), "--model-uri", str(model.local_dir)]
    cmd += ["--input", str(model.build.sample_input_csv), "--output", str(output)]
    cmd += ["--env-manager", env_manager, "--overwrite"]  # the file is not a folder of ours
    started = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=str(tmp_path), env=_env(tmp_path), capture_output=True, text=True, timeout=1500
    )
    seconds = time.monotonic() - started
    print(f"score.py --env-manager {env_manager} failed after {seconds:.1f}s")
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1]
    assert last.startswith("Error: scoring failed in the model:"), proc.stderr[-3000:]
    assert "sys.exit(-1)" in last
    assert "License check failed" in last
    assert output.read_bytes() == before
