"""The warm model server a Spark Python worker keeps for its next job (dai_mlflow.warm_servers).

Without Spark: the real ``spark_model_server.py`` in the launcher's own env (an MLflow
``Environment`` whose activate command puts this interpreter first on PATH), two small pyfunc
models that answer differently, and MLflow's own ``StdinScoringServerClient``:

- the second server of an env is the spare the first call left, and it serves the model it is
  handed, not the previous one;
- a different env (here: one changed environment variable, as a new license would be) never
  gets the spare: a new server starts and the spare is stopped;
- a waiting spare exits when its stdin closes and after its idle time;
- ``DAI_MLFLOW_WARM_SERVERS=0`` leaves MLflow's ``serve_stdin`` in charge.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from shlex import quote

import pandas as pd
import pytest

from dai_mlflow import warm_servers
from dai_mlflow.spark import MODEL_SERVER_SCRIPT

START_TIMEOUT = 120.0


def _save_model(folder: Path, add: int) -> str:
    import mlflow.pyfunc

    code = folder / f"add_{add}.py"
    code.write_text(
        "import mlflow.pyfunc\n"
        "from mlflow.models import set_model\n\n"
        "class Add(mlflow.pyfunc.PythonModel):\n"
        "    def predict(self, context, model_input, params=None):\n"
        f"        return model_input[['x']] + {add}\n\n"
        "set_model(Add())\n"
    )
    path = folder / f"model_{add}"
    mlflow.pyfunc.save_model(str(path), python_model=str(code))
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("warm-models")
    return {add: _save_model(folder, add) for add in (1, 2)}


@pytest.fixture
def environment():
    from mlflow.utils.environment import Environment

    bin_dir = quote(str(Path(sys.executable).parent))
    return Environment(f"export PATH={bin_dir}:$PATH")


@pytest.fixture(autouse=True)
def _no_spares_left(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    yield
    for proc in list(warm_servers._spare.values()):
        warm_servers.stop(proc)
    warm_servers._spare.clear()


def _predict(proc, x: float) -> float:
    from mlflow.pyfunc.scoring_server.client import StdinScoringServerClient

    client = StdinScoringServerClient(proc)
    started = time.monotonic()
    while True:
        try:
            out = client.invoke(pd.DataFrame({"x": [x]})).get_predictions()
            return float(pd.DataFrame(out).iloc[0, 0])
        except Exception:
            if proc.poll() is not None or time.monotonic() - started > START_TIMEOUT:
                raise
            time.sleep(0.2)


def _serve(environment, model: str):
    return warm_servers.serve(
        environment, MODEL_SERVER_SCRIPT, model, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def _wait_exit(proc, seconds: float = 60.0) -> int:
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"server {proc.pid} still running after {seconds}s") from None


def test_next_server_is_the_spare_and_serves_the_model_it_is_given(environment, models):
    first, warm = _serve(environment, models[1])
    assert not warm
    spare = warm_servers.spare_pid()
    assert spare is not None
    assert spare != first.pid
    assert _predict(first, 10.0) == 11.0

    second, warm = _serve(environment, models[2])
    assert warm
    assert second.pid == spare
    assert _predict(second, 10.0) == 12.0
    assert warm_servers.spare_pid() not in (None, first.pid, second.pid)
    for proc in (first, second):
        warm_servers.stop(proc)


def test_a_changed_environment_never_gets_the_spare(environment, models, monkeypatch):
    first, _ = _serve(environment, models[1])
    old_spare = warm_servers._spare[next(iter(warm_servers._spare))]
    monkeypatch.setenv("DRIVERLESS_AI_LICENSE_FILE", "/elsewhere/license.sig")
    second, warm = _serve(environment, models[2])
    assert not warm
    assert second.pid != old_spare.pid
    _wait_exit(old_spare)
    assert _predict(second, 1.0) == 3.0
    for proc in (first, second):
        warm_servers.stop(proc)


def test_a_waiting_spare_exits_on_stdin_close_and_after_its_idle_time(
    environment, models, monkeypatch
):
    _serve(environment, models[1])[0].kill()
    spare = next(iter(warm_servers._spare.values()))
    warm_servers.stop(spare)
    assert _wait_exit(spare) in (0, -15)

    monkeypatch.setenv("DAI_MLFLOW_WARM_SERVER_IDLE", "1")
    idle = warm_servers._start(
        environment,
        MODEL_SERVER_SCRIPT,
        dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert _wait_exit(idle, START_TIMEOUT) == 0


def test_spares_off_leaves_mlflow_in_charge(monkeypatch):
    calls = []

    def original(self, model_uri, stdout=None, stderr=None, **kw):
        calls.append(model_uri)
        return "mlflow's server"

    monkeypatch.setenv(warm_servers.WARM_SERVERS_ENV, "0")
    serve_stdin = warm_servers.patched_serve_stdin(original, MODEL_SERVER_SCRIPT)
    assert serve_stdin(object(), "/some/model") == "mlflow's server"
    assert calls == ["/some/model"]
    assert not warm_servers._spare
