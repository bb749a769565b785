"""The executor side of the Spark path without Spark: the model server and a worker's servers.

A real ``arrow_server`` in the DAI 1.10 model env (Python 3.8, MLflow 2.17), driven by
``dai_mlflow.spark.worker`` from this (Python 3.11) interpreter, as a Spark Python worker does:

- batches go as Arrow IPC and come back as the scorer's own ``score_batch``;
- a bad batch is answered with the model's error at once, and the server serves the next one;
- a server that dies is noticed when its pipe closes, with its last words; one whose worker
  goes away (its requests pipe closes) ends by itself;
- a failed load (no license) is the model's own one-line error;
- per worker: the same model again is the same server, model loaded; a new model of the same
  env gets the spare (imports done) and a new spare is started; spares can be turned off.

``SparkFiles`` is the one thing stood in for (a dict of shipped files), since no Spark runs.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Dict, Iterator

import pandas as pd
import pytest

from dai_mlflow.spark import shipping, worker
from tests.fixtures_model import MODEL_ENV_ROOT, LoggedDaiModel, model_python

pytestmark = pytest.mark.venv
ROWS = 50


def _batch(model: LoggedDaiModel) -> pd.DataFrame:
    frame = pd.read_csv(model.build.sample_input_csv).head(ROWS)
    return frame.astype(dict.fromkeys(frame.select_dtypes("number").columns, "float64"))


def _license_environ(model: LoggedDaiModel) -> Dict[str, str]:
    env = worker.without_foreign_python(os.environ)
    env.update(model.license_env)
    return env


@pytest.fixture
def server(logged_model, tmp_path: Path) -> Iterator[worker.ModelServer]:
    model = logged_model("1.10", "binary")
    started = worker.ModelServer(
        model_python(model),
        worker.hooks_package(tmp_path),
        _license_environ(model),
        tmp_path,
    )
    yield started
    started.stop()


def _expected(model: LoggedDaiModel, expected_scores) -> pd.DataFrame:
    expected = expected_scores(model, model.build.sample_input_csv).head(ROWS)
    return expected.drop(columns=["row_id"])


def test_batches_come_back_as_the_scorers_own(server, logged_model, expected_scores) -> None:
    model = logged_model("1.10", "binary")
    assert server.load(model.local_dir) >= 0.0
    got = server.score(_batch(model), None)
    pd.testing.assert_frame_equal(got, _expected(model, expected_scores), rtol=1e-12)


def test_a_bad_batch_is_answered_with_the_error_and_serving_goes_on(
    server, logged_model, expected_scores
) -> None:
    model = logged_model("1.10", "binary")
    server.load(model.local_dir)
    dropped = model.build.input_columns[0]
    with pytest.raises(worker.ModelError, match=f"missing 1 column.*{dropped}"):
        server.score(_batch(model).drop(columns=[dropped]), None)
    assert server.alive()
    got = server.score(_batch(model), None)
    pd.testing.assert_frame_equal(got, _expected(model, expected_scores), rtol=1e-12)


def test_a_dead_server_is_noticed_with_its_last_words(server, logged_model) -> None:
    model = logged_model("1.10", "binary")
    server.load(model.local_dir)
    os.kill(server.proc.pid, signal.SIGKILL)
    with pytest.raises(worker.ModelError, match="the model server exited with code -9"):
        server.score(_batch(model), None)


def test_a_server_whose_worker_is_gone_ends_by_itself(server, logged_model) -> None:
    server.load(logged_model("1.10", "binary").local_dir)
    server.requests.close()  # what the worker's exit does; no signal is sent
    assert server.proc.wait(timeout=60) == 0


def test_a_failed_load_is_the_models_own_error(logged_model, tmp_path: Path) -> None:
    model = logged_model("1.10", "binary")
    environ = worker.without_foreign_python(os.environ)
    environ["HOME"] = str(tmp_path)  # no license anywhere
    started = worker.ModelServer(
        model_python(model), worker.hooks_package(tmp_path), environ, tmp_path
    )
    try:
        with pytest.raises(worker.ModelError, match="LicenseNotFoundError: no Driverless AI"):
            started.load(model.local_dir)
        assert started.proc.wait(timeout=60) == 1
    finally:
        started.stop()


# ------------------------------------------------------------------------------ per worker
@pytest.fixture
def shipped(logged_model, tmp_path: Path, monkeypatch) -> Dict[str, worker.ScoringPlan]:
    """Plans of two DAI 1.10 models (one env), their files 'shipped' into a folder; one
    license, shipped once, as the driver ships it."""
    files: Dict[str, Path] = {}
    plans = {}
    lic = tmp_path / "license"
    source = logged_model("1.10", "binary").license_env["DRIVERLESS_AI_LICENSE_FILE"]
    lic.write_bytes(Path(source).read_bytes())
    files[lic.name] = lic
    for problem in ("binary", "regression"):
        model = logged_model("1.10", problem)
        key = shipping.model_key(model.local_dir)
        archive = shutil.make_archive(str(tmp_path / f"model-{key}"), "zip", model.local_dir)
        files[Path(archive).name] = Path(archive)
        plans[problem] = worker.ScoringPlan(
            model_file=Path(archive).name,
            model_key=key,
            env_manager="uv",
            env_root=str(MODEL_ENV_ROOT),
            license=("file", lic.name),
        )
    monkeypatch.setattr(worker, "_spark_file", lambda name: files[name])
    yield plans
    for server in [*worker._loaded.values(), *worker._spares.values()]:
        server.stop()
    worker._loaded.clear()
    worker._spares.clear()


def test_same_model_same_server_new_model_takes_the_spare(shipped) -> None:
    first = worker.server_for(shipped["binary"])
    assert worker.server_for(shipped["binary"]) is first  # kept, model loaded
    spare = next(iter(worker._spares.values()))
    second = worker.server_for(shipped["regression"])
    assert second is spare  # the spare of the same env, its imports done
    assert not first.alive()  # the server of the model before was stopped
    assert next(iter(worker._spares.values())) not in (first, second)  # a new spare waits


def test_spares_can_be_turned_off(shipped, monkeypatch) -> None:
    monkeypatch.setenv(worker.WARM_SERVERS_ENV, "0")
    worker.server_for(shipped["binary"])
    assert worker._spares == {}


# ------------------------------------------------------------------------------ faults
def _pids(scorer) -> int:
    return scorer.server.proc.pid


def test_a_server_killed_mid_job_is_replaced_and_the_batch_scored_again(
    shipped, logged_model, expected_scores
) -> None:
    model = logged_model("1.10", "binary")
    score_batch = worker.scorer(shipped["binary"])
    first = _pids(score_batch)
    os.kill(first, signal.SIGKILL)
    got = score_batch(_batch(model))
    pd.testing.assert_frame_equal(got, _expected(model, expected_scores), rtol=1e-12)
    assert _pids(score_batch) != first


def test_a_model_error_is_not_retried(shipped, logged_model) -> None:
    model = logged_model("1.10", "binary")
    score_batch = worker.scorer(shipped["binary"])
    server = score_batch.server
    dropped = model.build.input_columns[0]
    with pytest.raises(worker.ModelError, match=f"missing 1 column.*{dropped}") as info:
        score_batch(_batch(model).drop(columns=[dropped]))
    assert not isinstance(info.value, worker.ServerDied)
    assert score_batch.server is server
    assert server.alive()


def test_a_batch_that_kills_every_server_fails_after_bounded_restarts(
    shipped, logged_model, monkeypatch
) -> None:
    model = logged_model("1.10", "binary")
    score_batch = worker.scorer(shipped["binary"])
    started = []
    real_score = worker.ModelServer.score

    def deadly(server, frame, params):  # the batch's effect: the server dies on it
        started.append(server.proc.pid)
        os.kill(server.proc.pid, signal.SIGKILL)
        return real_score(server, frame, params)

    monkeypatch.setattr(worker.ModelServer, "score", deadly)
    with pytest.raises(worker.ServerDied, match="exited with code -9"):
        score_batch(_batch(model))
    assert len(set(started)) == worker.SERVER_RESTARTS + 1
