"""``python -m dai_mlflow.serve.rpc``: DAI's JSON-RPC protocol over logged models, on live servers.

Two servers, started once for the module: DAI 1.10 from ``venvs/launcher`` (the model env is
restored with uv and the server re-executes there, on Python 3.8) and DAI 2 in the model's own
env (``--env-manager local``). Every method answers what the scorer itself answers, in DAI's
shapes; bad requests get DAI's JSON-RPC error object and the server keeps serving; without a
license the server does not start and says why in one line. Unit tests that start nothing:
the protocol helpers, ``rpc.handle`` over the real methods of a fake scorer, and each
command's ``--help`` (every option and its default).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from typing import Any, Dict, List

import pytest
import requests

from dai_mlflow.model import http_limits
from dai_mlflow.serve import rpc
from dai_mlflow.serve.rpc import (
    DEFAULT_ENV_MANAGER,
    DEFAULT_HOST,
    DEFAULT_PORT,
    ENV_MANAGERS,
    RpcError,
    decode_body,
    experiment_hash,
    to_jsonable,
)
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
def _help(module: str, flag: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LAUNCHER_BIN / "python"), "-m", module, flag],
        cwd=str(REPO_ROOT),
        env={**os.environ, "COLUMNS": "200"},  # argparse and click wrap at the terminal width
        capture_output=True,
        text=True,
        timeout=120,
    )


def _options(text: str) -> Dict[str, str]:
    """Help text -> each option's flags (``-h, --help``) -> its help, continuation lines joined."""
    entries: Dict[str, str] = {}
    flags = ""
    for line in text.split("ptions:", 1)[1].splitlines():
        found = re.match(r"\s{2}((?:-\w, )?--?[\w-]+)(?: [\w{},|\[\]]+)?(?:\s+(.*))?$", line)
        if found:
            flags = found.group(1)
            entries[flags] = found.group(2) or ""
        elif flags and line.strip():
            entries[flags] = (entries[flags] + " " + line.strip()).strip()
    return entries


def test_help_of_the_rpc_command_names_every_option_and_its_default() -> None:
    """``python -m dai_mlflow.serve.rpc --help`` (and ``-h``): exit 0, the model URI required,
    every other option with the default the command uses."""
    proc = _help("dai_mlflow.serve.rpc", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert _help("dai_mlflow.serve.rpc", "-h").stdout == proc.stdout
    usage = " ".join(proc.stdout.split("\n\n", 1)[0].split())
    assert usage.startswith("usage: python -m dai_mlflow.serve.rpc [-h] --model-uri MODEL_URI [")
    managers = ",".join(ENV_MANAGERS)
    assert _options(proc.stdout) == {
        "-h, --help": "show this help message and exit",
        "--model-uri": "models:/NAME@ALIAS, runs:/..., path",
        "--host": f"(default {DEFAULT_HOST}; another address warns: no authentication, no TLS)",
        "--port": f"(default {DEFAULT_PORT}; 0: any free)",
        "--env-manager": "uv/virtualenv: restore the model's env as `mlflow models serve` does "
        "and run there; local: this interpreter is the model's env "
        f"(default {DEFAULT_ENV_MANAGER})",
        "--access-log": "log each request to stderr",
        "--body-limit": "larger request bodies get HTTP 413 (default "
        f"${http_limits.BODY_LIMIT_ENV} or {http_limits.DEFAULT_BODY_LIMIT}, 64 MiB)",
        "--client-timeout": "close a connection that sends nothing, or does not finish sending a "
        "request or taking an answer, within this time (default "
        f"${http_limits.CLIENT_TIMEOUT_ENV} or {http_limits.DEFAULT_CLIENT_TIMEOUT:g})",
        "--max-connections": "connections served at once (a thread each); more wait to be served "
        f"(default ${http_limits.MAX_CONNECTIONS_ENV} or {http_limits.DEFAULT_MAX_CONNECTIONS})",
    }
    assert f"--env-manager {{{managers}}}" in proc.stdout


def test_the_rpc_command_serves_with_the_defaults_its_help_prints(monkeypatch) -> None:
    """What ``main`` hands on when only the model is given: the help's defaults."""
    from dai_mlflow.serve import server

    for name in (http_limits.BODY_LIMIT_ENV, http_limits.CLIENT_TIMEOUT_ENV,
                 http_limits.MAX_CONNECTIONS_ENV):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    calls: List[tuple] = []
    monkeypatch.setattr(rpc, "_serve_here", lambda *args: calls.append(("here", *args)) or 0)
    monkeypatch.setattr(server, "run_model_server", lambda *args: calls.append(("env", *args)) or 0)
    assert rpc.main(["--model-uri", "models:/churn@champion"]) == 0
    assert rpc.main(["--model-uri", "models:/churn@champion", "--env-manager", "local"]) == 0
    limits = http_limits.Limits(
        http_limits.DEFAULT_BODY_LIMIT,
        http_limits.DEFAULT_CLIENT_TIMEOUT,
        http_limits.DEFAULT_MAX_CONNECTIONS,
    )
    assert calls == [
        ("env", "models:/churn@champion", "127.0.0.1", 9090, "uv", http_limits.argv_of(limits)),
        ("here", "models:/churn@champion", "127.0.0.1", 9090, False, limits),
    ]


def test_help_of_the_serve_command_names_every_option_and_its_default() -> None:
    """``python -m dai_mlflow.serve --help``: exit 0, every option; ``-h`` is ``--host`` there
    (as in ``mlflow models serve``), so ``--help`` is the only way to the help."""
    proc = _help("dai_mlflow.serve", "--help")
    assert proc.returncode == 0, proc.stderr
    assert _options(proc.stdout) == {
        "-m, --model-uri": "models:/NAME@ALIAS, runs:/..., a path [required]",
        "-h, --host": "[default: 127.0.0.1]",
        "-p, --port": "[default: 5000]",
        "-w, --workers": "server workers",
        "-t, --timeout": "request timeout (s)",
        "--env-manager": "[default: uv]",
        "--max-batch-rows": "most rows per scorer call",
        "--max-wait-ms": "longest wait to merge requests",
        "--no-batching": "one scorer call per request",
        "--log-requests": "inference log (parquet)",
        "--body-limit": "(default 64 MiB)",
        "--help": "Show this message and exit.",
    }


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


# ------------------------------------------------------------------------------ rpc.handle
MODULE = "scoring_h2oai_experiment_6a77d0a4_6a25_11ea_becf_0242ac110002"


class FakeScorer:
    """A DAI ``Scorer`` of two columns and two classes; records what it was asked."""

    def __init__(self, labels: Any = ("no", "yes")) -> None:
        self.labels = labels
        self.calls: List[tuple] = []

    def get_column_names(self) -> tuple:
        return ("x", "plan")

    def get_transformed_column_names(self) -> list:
        return ["0_x", "1_plan"]

    def get_target_labels(self) -> Any:
        import numpy as np

        return None if self.labels is None else np.array(self.labels)

    def score(self, values: list, **kwargs: Any) -> list:
        import numpy as np

        self.calls.append(("score", values, kwargs))
        if values[0] == "boom":
            raise ValueError("could not convert string to float: 'boom'")
        return [np.float32(0.25), float("nan")]


def _service(scorer: FakeScorer, predicted: List[tuple]) -> rpc.ScoringService:
    """The real JSON-RPC methods over a fake scorer; ``predict`` answers column sums."""
    import pandas as pd

    from dai_mlflow.model.pyfunc import parse_params

    def predict(frame: Any, params: Any = None) -> Any:
        predicted.append((list(frame.columns), frame.values.tolist(), dict(params)))
        return pd.DataFrame({"y.no": [0.5] * len(frame), "y.yes": [0.5] * len(frame)})

    return rpc.ScoringService(
        scorer,
        MODULE,
        predict=predict,
        prepare=lambda f: f,
        run_in_workdir=contextlib.nullcontext,
        parse_flags=parse_params,
    )


def _handle(service: Any, request: Any) -> tuple:
    body = request if isinstance(request, bytes) else json.dumps(request).encode()
    return rpc.handle(service, body)


def _ok(result: Any, request_id: Any = 7) -> tuple:
    return 200, {"jsonrpc": "2.0", "id": request_id, "result": result}


def _err(message: str, request_id: Any = 7, status: int = 200) -> tuple:
    return status, {"jsonrpc": "2.0", "id": request_id, "error": {"code": 1, "message": message}}


def test_handle_answers_the_metadata_methods() -> None:
    service = _service(FakeScorer(), [])
    ask = {"id": 7, "params": {}}
    assert _handle(service, {**ask, "method": "get_hash"}) == _ok(
        "6a77d0a4-6a25-11ea-becf-0242ac110002"
    )
    assert _handle(service, {**ask, "method": "get_column_names"}) == _ok(["x", "plan"])
    assert _handle(service, {**ask, "method": "get_transformed_column_names"}) == _ok(
        ["0_x", "1_plan"]
    )
    assert _handle(service, {**ask, "method": "get_target_labels"}) == _ok(["no", "yes"])
    regression = _service(FakeScorer(labels=None), [])
    assert _handle(regression, {**ask, "method": "get_target_labels", "id": "a"}) == _ok([], "a")
    assert _handle(regression, {**ask, "method": "get_hash", "id": None})[1]["id"] is None


def test_handle_scores_a_row_by_name_or_as_a_list_with_its_flags() -> None:
    scorer = FakeScorer()
    service = _service(scorer, [])
    # Values reach the scorer as sent (text, like DAI's clients); NaN comes back as DAI's max.
    row = {"plan": "a", "x": "1.5"}
    assert _handle(service, {"id": 7, "method": "score", "params": {"row": row}}) == _ok(
        [0.25, sys.float_info.max]
    )
    _handle(service, {"id": 7, "method": "score", "params": {"row": [2, "b"], "pred_contribs": 1}})
    assert scorer.calls == [
        ("score", ["1.5", "a"], {}),
        ("score", [2, "b"], {"pred_contribs": True}),
    ]


def test_handle_scores_a_batch_through_the_model_predict() -> None:
    predicted: List[tuple] = []
    service = _service(FakeScorer(), predicted)
    rows = [{"x": 1.0, "plan": "a"}, [2.0, "b"]]
    ask = {"id": 7, "method": "score_batch"}
    assert _handle(service, {**ask, "params": {"rows": rows, "output_margin": "true"}}) == _ok(
        [[0.5, 0.5], [0.5, 0.5]]
    )
    assert predicted == [
        (["x", "plan"], [[1.0, "a"], [2.0, "b"]], {"output_margin": True, "pred_contribs": False})
    ]
    assert _handle(service, {**ask, "params": {"rows": []}}) == _ok([])
    assert len(predicted) == 1  # nothing to score: the model is not called


def test_handle_answers_a_bad_score_request_with_the_error_object() -> None:
    service = _service(FakeScorer(), [])
    ask = {"id": 7, "method": "score"}
    assert _handle(service, {**ask, "params": {"row": {"x": 1}}}) == _err(
        "row is missing 1 column(s): 'plan'"
    )
    assert _handle(service, {**ask, "params": {"row": [1]}}) == _err(
        "row list has 1 values, the model takes 2: 'x', 'plan'"
    )
    assert _handle(service, {**ask, "params": {"row": "x=1"}}) == _err(
        "'row' must be an object keyed by column name, got a string"
    )
    both = {"row": [1, "a"], "pred_contribs": True, "output_margin": True}
    assert _handle(service, {**ask, "params": both}) == _err(
        "ScoringError: pred_contribs and output_margin cannot both be true (DAI rule)"
    )
    status, answer = _handle(service, {**ask, "params": {"row": [1, "a"], "rowz": 1}})
    assert status == 200
    assert re.fullmatch(
        r"TypeError: (ScoringService\.)?score\(\) got an unexpected keyword argument 'rowz'",
        answer["error"]["message"],
    )
    # The scorer's own failure: one line, and the next request is served.
    assert _handle(service, {**ask, "params": {"row": ["boom", "a"]}}) == _err(
        "ValueError: could not convert string to float: 'boom'"
    )
    batch = {"id": 7, "method": "score_batch"}
    assert _handle(service, {**batch, "params": {"rows": {"x": 1}}}) == _err(
        "'rows' must be a list of row objects, got an object"
    )
    assert _handle(service, {**batch, "params": {"rows": [[1, "a"], {"plan": "b"}]}}) == _err(
        "rows[1] is missing 1 column(s): 'x'"
    )
    assert _handle(service, {**ask, "params": {"row": [1, "a"]}})[0] == 200


def test_handle_answers_a_bad_request_with_the_error_object() -> None:
    service = _service(FakeScorer(), [])
    assert _handle(service, {"id": 7, "method": "nope", "params": {}}) == _err(
        "Method not found: nope"
    )
    assert _handle(service, {"id": 7, "method": "m" * 500, "params": {}}) == _err(
        "Method not found: " + "m" * 200
    )
    assert _handle(service, {"id": 7, "method": ["score"], "params": {}}) == _err(
        "Method not found: a list"
    )
    assert _handle(service, {"id": 7, "method": "call", "params": {}}) == _err(
        "Method not found: call"  # the service's other attributes are not methods
    )
    assert _handle(service, {"id": 7, "method": "score", "params": [[1, "a"]]}) == _err(
        "Bad request: want 'params' by-name, got [[1, \"a\"]]"
    )
    assert _handle(service, {"id": 7, "method": "score"}) == _err(
        "Bad request: want 'params' in RPC request."
    )
    assert _handle(service, {"id": 7, "params": {}}) == _err(
        "Bad request: want 'method' in RPC request."
    )
    # Without a usable id the answer's id is null.
    assert _handle(service, {"method": "get_hash", "params": {}}) == _err(
        "Bad request: want 'id' in RPC request.", None
    )
    assert _handle(service, {"id": {"n": 1}, "method": "get_hash", "params": {}}) == _err(
        "Bad request: 'id' must be a string, a number or null (JSON-RPC 2.0), got an object", None
    )
    assert _handle(service, [1, 2]) == _err(
        "Bad request: want a JSON-RPC request object, got a list.", None
    )
    status, answer = _handle(service, b"{not json")
    assert (status, answer["id"]) == (400, None)
    assert answer["error"]["message"].startswith("Bad request: body is not JSON (")
    assert _handle(service, b"") == _err(
        "Bad request: empty body; send a JSON-RPC request object", None, 400
    )
