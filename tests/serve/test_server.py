"""``mlflow models serve`` of logged DAI models, against live servers on loopback.

Five servers, started once for the module: env manager ``local`` (from the model's own env:
MLflow 2.17 / Python 3.8 for DAI 1.10, MLflow 3 / Python 3.11 for DAI 2), plain ``mlflow models
serve --env-manager uv`` from ``venvs/launcher`` (offline) for both lines (a DAI 1.10 env serves
through the serving shim the model carries: gunicorn and MLflow 2.17), and ``python -m
dai_mlflow.serve.server --env-manager uv`` for DAI 1.10 (MLflow 3 restores the env, the env's MLflow
2.17 serves). Every body format scores exactly what the scorer's own ``score_batch`` gives; a
missing or mistyped column is a 400 that names it, and the server keeps serving; without a
license the server stops with an error that says so; with a license that fails verification
(the DAI 1.10 scorer calls ``sys.exit(-1)``) every request is answered with an error naming the
license, and the server keeps answering ``/ping``.
"""

from __future__ import annotations

from typing import Any, Dict, List

import pandas as pd
import pytest
import requests

from tests.fixtures_serve import LiveServer, ServerPool, ServerSpec

pytestmark = [pytest.mark.serve, pytest.mark.venv]

SERVERS = [
    ServerSpec("serve-local", "1.10", "binary"),
    ServerSpec("serve-local", "2", "multiclass"),
    ServerSpec("serve-wrapped-uv", "1.10", "binary"),
    ServerSpec("serve-uv", "1.10", "binary"),
    ServerSpec("serve-uv", "2", "multiclass"),
]
INVALID_LICENSE = ServerSpec("serve-uv", "1.10", "binary", license="invalid")
IDS = [s.name for s in SERVERS]
FORMATS = ("dataframe_split", "dataframe_records", "instances", "csv")
TIMEOUT = 120


NO_LICENSE = [
    ServerSpec("serve-local", "1.10", "binary", license="none"),
    ServerSpec("serve-uv", "2", "multiclass", license="none"),
]


@pytest.fixture(scope="module")
def servers(serve_pool: ServerPool) -> Dict[ServerSpec, LiveServer]:
    """All servers, started at once, reused by every test of the module (the unlicensed ones
    start alongside; they are expected to stop)."""
    serve_pool.restore_envs([*SERVERS, *NO_LICENSE])  # before any of them starts
    for spec in NO_LICENSE:
        serve_pool.launch(spec)
    return dict(zip(SERVERS, serve_pool.start([*SERVERS, INVALID_LICENSE])))


def _records(truth: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [dict(r) for r in truth["records"]]


def _body(fmt: str, records: List[Dict[str, Any]], server: LiveServer) -> Dict[str, Any]:
    if fmt == "csv":
        text = server.model.build.sample_input_csv.read_text()
        return {"data": text.encode(), "headers": {"Content-Type": "text/csv"}}
    if fmt == "dataframe_split":
        columns = list(records[0])
        payload: Any = {"columns": columns, "data": [[r[c] for c in columns] for r in records]}
    else:
        payload = records
    return {"json": {fmt: payload}}


def _invoke(server: LiveServer, **kwargs: Any) -> requests.Response:
    return requests.post(f"{server.url}/invocations", timeout=TIMEOUT, **kwargs)


def _table(predictions: List[Dict[str, Any]], columns: List[str]) -> List[List[float]]:
    return [[row[c] for c in columns] for row in predictions]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("spec", SERVERS, ids=IDS)
def test_each_body_format_scores_like_the_scorer(servers, scorer_truth, spec, fmt) -> None:
    server = servers[spec]
    truth = scorer_truth(server.model)
    resp = _invoke(server, **_body(fmt, _records(truth), server))
    assert resp.status_code == 200, resp.text[:2000]
    predictions = resp.json()["predictions"]
    expected = truth["batch"]
    assert list(predictions[0]) == expected["columns"]
    assert _table(predictions, expected["columns"]) == expected["values"]


@pytest.mark.parametrize("spec", SERVERS, ids=IDS)
def test_contributions_through_params(servers, scorer_truth, spec) -> None:
    server = servers[spec]
    truth = scorer_truth(server.model)
    body = {"dataframe_records": _records(truth), "params": {"pred_contribs": True}}
    resp = _invoke(server, json=body)
    assert resp.status_code == 200, resp.text[:2000]
    expected = truth["batch_contribs"]
    assert _table(resp.json()["predictions"], expected["columns"]) == expected["values"]


@pytest.mark.parametrize("spec", SERVERS, ids=IDS)
def test_bad_input_is_a_400_naming_the_column_and_serving_goes_on(
    servers, scorer_truth, spec
) -> None:
    server = servers[spec]
    truth = scorer_truth(server.model)
    numeric = next(c for c, v in truth["records"][0].items() if isinstance(v, float))

    missing = _records(truth)[:3]
    for row in missing:
        del row[numeric]
    resp = _invoke(server, json={"dataframe_records": missing})
    assert resp.status_code == 400, resp.text[:2000]
    assert numeric in resp.json()["message"]

    mistyped = _records(truth)[:3]
    mistyped[1][numeric] = "not a number"
    resp = _invoke(server, **_body("dataframe_split", mistyped, server))
    assert resp.status_code == 400, resp.text[:2000]
    assert numeric in resp.json()["message"]

    frame = pd.read_csv(server.model.build.sample_input_csv)
    csv = {"Content-Type": "text/csv"}
    resp = _invoke(server, data=frame.drop(columns=[numeric]).to_csv(index=False), headers=csv)
    assert resp.status_code == 400, resp.text[:2000]
    assert numeric in resp.json()["message"]
    # A CSV body is parsed by MLflow with the signature's dtypes before the model sees it:
    # still a 400, but pandas' message names the value, not the column.
    frame[numeric] = frame[numeric].astype(object)
    frame.loc[1, numeric] = "not a number"
    resp = _invoke(server, data=frame.to_csv(index=False), headers=csv)
    assert resp.status_code == 400, resp.text[:2000]
    assert "not a number" in resp.json()["message"]

    both = {"dataframe_records": _records(truth)[:2]}
    both["params"] = {"pred_contribs": True, "output_margin": True}
    resp = _invoke(server, json=both)
    assert resp.status_code == 400, resp.text[:2000]
    assert "cannot both be true" in resp.json()["message"]

    resp = _invoke(server, json={"dataframe_records": _records(truth)})
    assert resp.status_code == 200, resp.text[:2000]
    expected = truth["batch"]
    assert _table(resp.json()["predictions"], expected["columns"]) == expected["values"]


@pytest.mark.parametrize("spec", NO_LICENSE, ids=lambda s: s.name)
def test_without_a_license_the_server_stops_and_says_so(servers, serve_pool, spec) -> None:
    server = serve_pool.launch(spec)
    try:
        server.proc.wait(timeout=600)
    finally:
        serve_pool.stop(spec)
    assert server.proc.returncode != 0
    assert "no Driverless AI license found" in server.log_text()


def test_a_license_that_fails_verification_is_named_and_the_server_lives_on(
    servers, serve_pool
) -> None:
    """The DAI 1.10 scorer calls sys.exit(-1) on it: the gunicorn worker survives, answers."""
    server = serve_pool.get(INVALID_LICENSE)
    body = {"dataframe_records": _sample_records(server)}
    for _ in range(2):  # the same answer again: the worker was not lost
        resp = _invoke(server, json=body)
        assert resp.status_code == 500, resp.text[:2000]
        message = resp.json()["message"]
        assert "sys.exit(-1)" in message
        assert "License check failed" in message
        assert requests.get(f"{server.url}/ping", timeout=TIMEOUT).status_code == 200
    assert server.proc.poll() is None


def _sample_records(server: LiveServer) -> List[Dict[str, Any]]:
    frame = pd.read_csv(server.model.build.sample_input_csv).head(3)
    return [
        {k: (None if pd.isna(v) else v) for k, v in r.items()} for r in frame.to_dict("records")
    ]


def test_an_env_whose_interpreter_is_gone_is_removed_for_a_rebuild(tmp_path) -> None:
    """A restored env made from an interpreter folder that was deleted since (a cleaned
    ~/.cache) would run the PATH's Python; it is removed so that MLflow builds it again."""
    from dai_mlflow.serve.server import drop_orphaned_envs

    home = tmp_path / "tools" / "py3.8.18"
    home.mkdir(parents=True)
    for name, where in (("mlflow-kept", home), ("mlflow-orphan", tmp_path / "gone")):
        (tmp_path / "envs" / name).mkdir(parents=True)
        (tmp_path / "envs" / name / "pyvenv.cfg").write_text(f"home = {where}\nuv = 0.13\n")
    (tmp_path / "envs" / "mlflow-half-built").mkdir()  # no pyvenv.cfg yet: left alone
    assert drop_orphaned_envs(tmp_path / "envs") == [tmp_path / "envs" / "mlflow-orphan"]
    assert sorted(p.name for p in (tmp_path / "envs").iterdir()) == [
        "mlflow-half-built",
        "mlflow-kept",
    ]
