"""``python -m dai_mlflow.serve.rpc``: DAI's JSON-RPC protocol over logged models, on live servers.

Two servers, started once for the module: DAI 1.10 from ``venvs/launcher`` (the model env is
restored with uv and the server re-executes there, on Python 3.8) and DAI 2 in the model's own
env (``--env-manager local``). Every method answers what the scorer itself answers, in DAI's
shapes; bad requests get DAI's JSON-RPC error object and the server keeps serving; without a
license the server does not start and says why in one line. The protocol helpers have unit
tests that start nothing.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any, Dict

import pytest
import requests

from dai_mlflow.serve.rpc import RpcError, decode_body, experiment_hash, to_jsonable
from tests.fixtures_model import LAUNCHER_BIN, REPO_ROOT
from tests.fixtures_serve import LiveServer, ServerPool, ServerSpec

SERVERS = [
    ServerSpec("rpc-uv", "1.10", "binary"),
    ServerSpec("rpc-local", "2", "regression"),
]
NO_LICENSE = ServerSpec("rpc-uv", "1.10", "binary", license="none")
INVALID_LICENSE = ServerSpec("rpc-uv", "1.10", "binary", license="invalid")
IDS = [s.name for s in SERVERS]
TIMEOUT = 120


@pytest.fixture(scope="module")
def servers(serve_pool: ServerPool) -> Dict[ServerSpec, LiveServer]:
    """Both servers (and the unlicensed one, which is expected to stop), started at once."""
    serve_pool.restore_envs([*SERVERS, NO_LICENSE])  # before any of them starts
    serve_pool.launch(NO_LICENSE)
    serve_pool.launch(INVALID_LICENSE)
    return dict(zip(SERVERS, serve_pool.start(SERVERS)))


def _rpc(server: LiveServer, method: str, params: Any, request_id: Any = 7) -> Dict[str, Any]:
    body = {"id": request_id, "method": method, "params": params}
    resp = requests.post(f"{server.url}/rpc", json=body, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text[:2000]
    assert resp.headers["Content-Type"] == "application/json"
    answer = resp.json()
    assert answer["jsonrpc"] == "2.0"
    assert answer["id"] == request_id
    return answer


def _result(server: LiveServer, method: str, params: Any) -> Any:
    answer = _rpc(server, method, params)
    assert "error" not in answer, answer
    return answer["result"]


def _error(server: LiveServer, method: str, params: Any) -> str:
    answer = _rpc(server, method, params)
    assert "result" not in answer, answer
    assert answer["error"]["code"] == 1
    message = answer["error"]["message"]
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------ live servers
@pytest.mark.serve
@pytest.mark.venv
@pytest.mark.parametrize("spec", SERVERS, ids=IDS)
def test_metadata_methods_answer_like_the_scorer(servers, scorer_truth, spec) -> None:
    server = servers[spec]
    truth = scorer_truth(server.model)
    assert _result(server, "get_hash", {}) == server.model.build.experiment_key
    assert _result(server, "get_column_names", {}) == truth["columns"]
    assert _result(server, "get_transformed_column_names", {}) == truth["transformed"]
    assert _result(server, "get_target_labels", {}) == (truth["labels"] or [])


@pytest.mark.serve
@pytest.mark.venv
@pytest.mark.parametrize("spec", SERVERS, ids=IDS)
def test_score_rows_sent_as_text_like_dai_clients(servers, scorer_truth, spec) -> None:
    """DAI's generated clients send every value as text; ``score`` gets them as they are."""
    server = servers[spec]
    truth = scorer_truth(server.model)
    for values, expected in zip(truth["text_rows"], truth["score"]):
        row = dict(zip(truth["columns"], values))
        assert _result(server, "score", {"row": row}) == expected
    for values, expected in zip(truth["text_rows"], truth["score_contribs"]):
        row = dict(zip(truth["columns"], values))
        assert _result(server, "score", {"row": row, "pred_contribs": True}) == expected


@pytest.mark.serve
@pytest.mark.venv
@pytest.mark.parametrize("spec", SERVERS, ids=IDS)
def test_score_batch_like_the_scorer(servers, scorer_truth, spec) -> None:
    server = servers[spec]
    truth = scorer_truth(server.model)
    rows = truth["records"]
    assert _result(server, "score_batch", {"rows": rows}) == truth["batch"]["values"]
    contribs = _result(server, "score_batch", {"rows": rows, "pred_contribs": True})
    assert contribs == truth["batch_contribs"]["values"]
    margin = _result(server, "score_batch", {"rows": rows, "output_margin": True})
    assert margin == truth["batch_margin"]["values"]
    assert _result(server, "score_batch", {"rows": []}) == []


@pytest.mark.serve
@pytest.mark.venv
@pytest.mark.parametrize("spec", SERVERS, ids=IDS)
def test_score_batch_of_text_rows(servers, scorer_truth, spec) -> None:
    """Text values (DAI clients) parse to the numbers the scorer scored from the csv."""
    server = servers[spec]
    truth = scorer_truth(server.model)
    rows = [dict(zip(truth["columns"], values)) for values in truth["text_rows"]]
    result = _result(server, "score_batch", {"rows": rows})
    expected = truth["batch"]["values"][: len(rows)]
    assert result == [pytest.approx(e, rel=1e-12, abs=1e-12) for e in expected]


@pytest.mark.serve
@pytest.mark.venv
@pytest.mark.parametrize("spec", SERVERS, ids=IDS)
def test_bad_requests_get_the_error_object_and_serving_goes_on(servers, scorer_truth, spec) -> None:
    server = servers[spec]
    truth = scorer_truth(server.model)
    row = dict(truth["records"][0])
    numeric = next(c for c, v in row.items() if isinstance(v, float))

    partial = {c: v for c, v in row.items() if c != numeric}
    assert numeric in _error(server, "score", {"row": partial})
    assert numeric in _error(server, "score_batch", {"rows": [row, partial]})
    assert numeric in _error(server, "score_batch", {"rows": [{**row, numeric: "abc"}]})
    assert "cannot both be true" in _error(
        server, "score", {"row": row, "pred_contribs": True, "output_margin": True}
    )
    assert "unexpected keyword argument" in _error(server, "score", {"row": row, "rowz": 1})
    assert _error(server, "nope", {}) == "Method not found: nope"
    assert "'params' by-name" in _error(server, "score", [row])

    url = f"{server.url}/rpc"
    for body, needle in (
        ({"method": "get_hash", "params": {}}, "want 'id'"),
        ({"id": 1, "params": {}}, "want 'method'"),
        ({"id": 1, "method": "get_hash"}, "want 'params'"),
    ):
        answer = requests.post(url, json=body, timeout=TIMEOUT).json()
        assert answer["error"]["code"] == 1
        assert needle in answer["error"]["message"]
    for data in (b"", b"{not json"):
        resp = requests.post(url, data=data, timeout=TIMEOUT)
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == 1
    assert requests.get(url, timeout=TIMEOUT).status_code == 405

    assert _result(server, "get_hash", {}) == server.model.build.experiment_key
    assert _result(server, "score_batch", {"rows": [row]}) == truth["batch"]["values"][:1]


@pytest.mark.serve
@pytest.mark.venv
def test_dai_1_10_is_served_from_its_python_3_8_env(servers) -> None:
    server = servers[SERVERS[0]]
    assert "with Python 3.8." in server.log_text()
    assert "HTTP scoring service listening on port" in server.log_text()


@pytest.mark.serve
@pytest.mark.venv
def test_without_a_license_the_server_does_not_start_and_says_why(servers, serve_pool) -> None:
    server = serve_pool.launch(NO_LICENSE)
    assert server.proc.wait(timeout=600) == 1
    lines = [ln for ln in server.log_text().splitlines() if ln.strip()]
    assert lines, server.log_text()[-2000:]
    assert lines[-1].startswith("Error: no Driverless AI license found")


@pytest.mark.serve
@pytest.mark.venv
def test_a_license_that_fails_verification_stops_the_server_naming_it(servers, serve_pool) -> None:
    """The DAI 1.10 scorer calls sys.exit(-1) while it is built at start-up: one line says why."""
    server = serve_pool.launch(INVALID_LICENSE)
    assert server.proc.wait(timeout=600) == 1
    lines = [ln for ln in server.log_text().splitlines() if ln.strip()]
    assert lines[-1].startswith("Error: the DAI scorer called sys.exit(-1)")
    assert "License check failed" in lines[-1]


# ------------------------------------------------------------------------------ unit
@pytest.mark.parametrize("module", ["dai_mlflow.serve.rpc", "dai_mlflow.serve"])
def test_help(module: str) -> None:
    proc = subprocess.run(
        [str(LAUNCHER_BIN / "python"), "-m", module, "--help"],
        cwd=str(REPO_ROOT),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--model-uri" in proc.stdout
    assert "--env-manager" in proc.stdout


def test_experiment_hash_is_the_uuid_of_the_module() -> None:
    module = "scoring_h2oai_experiment_6a77d0a4_6a25_11ea_becf_0242ac110002"
    assert experiment_hash(module) == "6a77d0a4-6a25-11ea-becf-0242ac110002"
    assert experiment_hash("scoring_h2oai_experiment_dovudusu") == "dovudusu"


def test_bodies_are_json_or_read_with_literal_backslashes_like_dai() -> None:
    assert decode_body(b'{"id": 1, "row": {"Plan \\"Tier\\"": "a"}}')["row"] == {'Plan "Tier"': "a"}
    # Not JSON (a raw backslash): DAI's server reads backslashes literally, so does this one.
    assert decode_body(b'{"a\\q": 1}') == {"a\\q": 1}
    for body in (b"", b"  ", b"{nope"):
        with pytest.raises(RpcError) as err:
            decode_body(body)
        assert err.value.status == 400


def test_results_encode_nan_like_dai() -> None:
    import numpy as np

    assert to_jsonable([np.float64("nan"), np.float32(1.5), np.int64(3)]) == [
        sys.float_info.max,
        1.5,
        3,
    ]
    assert to_jsonable(np.float32("nan")) == float(np.finfo(np.float32).max)
    assert to_jsonable({"x": float("-inf")}) == {"x": -sys.float_info.max}
