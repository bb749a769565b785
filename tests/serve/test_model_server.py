"""The model's own server (``dai_mlflow.model.serving``) on live servers of both DAI lines.

One server per line is started for the module from the model env's Python, as the hooks'
``python -m dai_mlflow_model_hooks.serve`` and the launchers start it (the model's ``code/``
first on ``PYTHONPATH``), with 2 workers and the inference log on; MLflow's own server
(``mlflow models serve --env-manager local`` in the same env) answers the same bodies for
comparison. Checked: every input format and error answers like MLflow's server, 64 keep-alive
clients at once, merged requests each get exactly their rows, a bad row among good ones reaches
only its client, a killed worker is replaced, ``/metrics`` parses with prometheus_client's
parser, and ``monitor`` reads the inference log as its window.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pandas as pd
import pytest
import requests

from dai_mlflow.envs.processes import free_port, start_logged, stop_session, wait_answering
from tests.fixtures_model import LoggedDaiModel, get_logged_model, model_python, run_env
from tests.fixtures_serve import ServerPool, ServerSpec

pytestmark = [pytest.mark.serve, pytest.mark.venv]

LINES = [("1.10", "binary"), ("2", "multiclass")]
IDS = [f"{line}-{problem}" for line, problem in LINES]
TIMEOUT = 120
START_TIMEOUT = 600
_SET = re.compile(r"\{((?:'[^']*'(?:, )?)+)\}")


@dataclass
class OwnServer:
    model: LoggedDaiModel
    url: str
    proc: subprocess.Popen
    log: Path
    table: Path  # its inference log
    python: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_own_server(
    model: LoggedDaiModel,
    folder: Path,
    *options: str,
    name: str = "",
    version: str = "1",
) -> OwnServer:
    """The model's server from its env's Python, 2 workers unless ``options`` say otherwise
    (stopped by the caller); its inference log names ``name`` (default: the model's) and
    ``version``."""
    python = model_python(model)
    folder.mkdir(parents=True, exist_ok=True)
    env = run_env(model.license_env)
    env["HOME"] = str(folder)
    env["PYTHONPATH"] = str(model.local_dir / "code")
    env["DAI_MLFLOW_MODEL_NAME"] = name or model.model_name
    env["DAI_MLFLOW_MODEL_VERSION"] = version
    port = free_port()
    table = folder / "inference-log"
    cmd = [str(python), "-m", "dai_mlflow.model.serving", "--model-path", str(model.local_dir),
           "--port", str(port), "--workers", "2", "--log-requests", str(table),
           *options]  # fmt: skip
    log = folder / "server.log"
    # From this thread: the server gets SIGTERM when the thread that started it ends.
    proc = start_logged(cmd, env, log, cwd=folder)
    return OwnServer(model, f"http://127.0.0.1:{port}", proc, log, table, python)


def wait_own_server(server: OwnServer) -> OwnServer:
    """Wait until ``server`` answers ``/ping`` (stop it and fail if it does not)."""
    proc = server.proc
    why = wait_answering(f"{server.url}/ping", lambda: proc.poll() is None, START_TIMEOUT)
    if why:
        stop_session(proc)
        pytest.fail(f"the model's server {why}: {server.log_text()[-3000:]}")
    return server


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> Iterator[Dict[str, OwnServer]]:
    """The model's server of each line, started at once."""
    folder = tmp_path_factory.mktemp("own-servers")
    servers: Dict[str, OwnServer] = {}
    try:
        models = [get_logged_model(line, problem) for line, problem in LINES]
        for key, model in zip(IDS, models):
            servers[key] = start_own_server(model, folder / model.model_name)
        for server in servers.values():
            wait_own_server(server)
        yield servers
    finally:
        for server in servers.values():
            stop_session(server.proc)


@pytest.fixture(scope="module")
def mlflow_servers(serve_pool: ServerPool) -> Dict[str, Any]:
    """MLflow's own server of the same models, in the same envs."""
    specs = [ServerSpec("serve-local", line, problem) for line, problem in LINES]
    return dict(zip(IDS, serve_pool.start(specs)))


def _records(truth: Dict[str, Any], n: int = 5) -> List[Dict[str, Any]]:
    return [dict(r) for r in truth["records"][:n]]


def _bodies(truth: Dict[str, Any], csv_text: str) -> Dict[str, Dict[str, Any]]:
    """Name -> requests' kwargs: every input format, params, and bad bodies."""
    records = _records(truth)
    columns = list(records[0])
    split = {"columns": columns, "data": [[r[c] for c in columns] for r in records]}
    numeric = next(c for c, v in records[0].items() if isinstance(v, float))
    mistyped = _records(truth, 3)
    mistyped[1][numeric] = "not a number"
    missing = [{k: v for k, v in r.items() if k != numeric} for r in _records(truth, 2)]
    json_type = {"Content-Type": "application/json"}
    return {
        "dataframe_split": {"json": {"dataframe_split": split}},
        "dataframe_records": {"json": {"dataframe_records": records}},
        "instances": {"json": {"instances": records}},
        "inputs": {"json": {"inputs": records}},
        "csv": {"data": csv_text.encode(), "headers": {"Content-Type": "text/csv"}},
        "params": {"json": {"dataframe_records": records, "params": {"pred_contribs": True}}},
        "params_margin": {"json": {"dataframe_split": split, "params": {"output_margin": True}}},
        "mistyped": {"json": {"dataframe_records": mistyped}},
        "missing": {"json": {"dataframe_records": missing}},
        "both_flags": {
            "json": {
                "dataframe_records": records,
                "params": {"pred_contribs": True, "output_margin": True},
            }
        },  # fmt: skip
        "no_format": {"json": {"rows": records}},
        "not_json": {"data": b"{not json", "headers": json_type},
        "wrong_type": {"data": b"a,b\n1,2\n", "headers": {"Content-Type": "text/plain"}},
    }


def _sorted_set(match: Any) -> str:
    return "{" + ", ".join(sorted(match.group(1).split(", "))) + "}"


def _answer(resp: requests.Response) -> Any:
    try:
        body = resp.json()
    except ValueError:
        return resp.text
    if isinstance(body, dict):
        body.pop("stack_trace", None)  # MLflow's traceback differs by frame, not by meaning
        if isinstance(body.get("message"), str):  # a set's order differs by process
            body["message"] = _SET.sub(_sorted_set, body["message"])
    return body


@pytest.mark.parametrize("line", IDS)
def test_every_input_format_answers_like_mlflows_own_server(
    own, mlflow_servers, scorer_truth, line
) -> None:
    server, reference = own[line], mlflow_servers[line]
    truth = scorer_truth(server.model)
    csv_text = server.model.build.sample_input_csv.read_text()
    for name, kwargs in _bodies(truth, csv_text).items():
        ours = requests.post(f"{server.url}/invocations", timeout=TIMEOUT, **kwargs)
        theirs = requests.post(f"{reference.url}/invocations", timeout=TIMEOUT, **kwargs)
        assert ours.status_code == theirs.status_code, (name, ours.text[:500], theirs.text[:500])
        assert _answer(ours) == _answer(theirs), name
    for path in ("/ping", "/health", "/version"):
        ours = requests.get(f"{server.url}{path}", timeout=TIMEOUT)
        theirs = requests.get(f"{reference.url}{path}", timeout=TIMEOUT)
        assert (ours.status_code, ours.text) == (theirs.status_code, theirs.text), path


def _post_raw(sock: socket.socket, path: str, body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    sock.sendall(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return _post_answer(sock)


def test_64_keep_alive_clients_at_once_are_all_served(own, scorer_truth) -> None:
    """All connect first, then each sends 5 requests on its connection: no refusal, no reset."""
    server = own[IDS[0]]
    truth = scorer_truth(server.model)
    port = int(server.url.rsplit(":", 1)[1])
    records = _records(truth, len(truth["records"]))
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(64)]

    def client(i: int) -> List[Any]:
        answers = []
        for k in range(5):
            record = records[(i * 5 + k) % len(records)]
            body = json.dumps({"dataframe_records": [record]}).encode()
            answers.append(json.loads(_post_raw(sockets[i], "/invocations", body)))
        return answers

    try:
        with ThreadPoolExecutor(64) as pool:
            results = list(pool.map(client, range(64)))
    finally:
        for sock in sockets:
            sock.close()
    columns = truth["batch"]["columns"]
    for i, answers in enumerate(results):
        for k, answer in enumerate(answers):
            row = (i * 5 + k) % len(records)
            got = [answer["predictions"][0][c] for c in columns]
            assert got == truth["batch"]["values"][row]


@pytest.mark.parametrize("line", IDS)
def test_concurrent_clients_each_get_exactly_their_rows(own, scorer_truth, line) -> None:
    """32 clients at once, each with its own rows (1 to 3), over /invocations and /rpc."""
    server = own[line]
    truth = scorer_truth(server.model)
    records = _records(truth, len(truth["records"]))
    columns = truth["batch"]["columns"]
    before = _metric(server, "dai_mlflow_scorer_call_rows_count")

    def client(i: int) -> None:
        session = requests.Session()
        for k in range(6):
            picks = [(i + 7 * k + j) % len(records) for j in range(1 + (i + k) % 3)]
            rows = [records[p] for p in picks]
            if k % 2:
                resp = session.post(
                    f"{server.url}/rpc",
                    json={"id": i, "method": "score_batch", "params": {"rows": rows}},
                    timeout=TIMEOUT,
                )
                assert resp.json()["result"] == [truth["batch"]["values"][p] for p in picks]
            else:
                resp = session.post(
                    f"{server.url}/invocations", json={"dataframe_records": rows}, timeout=TIMEOUT
                )
                got = [[r[c] for c in columns] for r in resp.json()["predictions"]]
                assert got == [truth["batch"]["values"][p] for p in picks]

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(client, range(32)))
    calls = _metric(server, "dai_mlflow_scorer_call_rows_count") - before
    assert calls < 32 * 6, "no two requests ever shared a scorer call"


def test_a_bad_row_among_good_ones_fails_only_its_own_request(own, scorer_truth) -> None:
    server = own[IDS[0]]
    truth = scorer_truth(server.model)
    records = _records(truth, 10)
    numeric = next(c for c, v in records[0].items() if isinstance(v, float))
    bad = [dict(records[0], **{numeric: "not a number"})]
    alone = requests.post(
        f"{server.url}/invocations", json={"dataframe_records": bad}, timeout=TIMEOUT
    )
    assert alone.status_code == 400
    assert numeric in alone.json()["message"]
    columns = truth["batch"]["columns"]

    def client(i: int) -> Any:
        rows = bad if i == 5 else [records[i]]
        resp = requests.post(
            f"{server.url}/invocations", json={"dataframe_records": rows}, timeout=TIMEOUT
        )
        return resp.status_code, _answer(resp)

    for _ in range(3):  # sent together, so that they are merged
        with ThreadPoolExecutor(10) as pool:
            results = list(pool.map(client, range(10)))
        for i, (status, answer) in enumerate(results):
            if i == 5:
                assert (status, answer) == (400, _answer(alone))
            else:
                assert status == 200, answer
                got = [answer["predictions"][0][c] for c in columns]
                assert got == truth["batch"]["values"][i]


def test_a_bad_rpc_row_among_good_ones_gets_its_own_error_alone(own, scorer_truth) -> None:
    """/rpc score calls merged from the event loop: the bad one gets the error object it gets
    alone (same id), the others their rows; ids of every JSON kind come back as sent."""
    server = own[IDS[-1]]
    truth = scorer_truth(server.model)
    records = _records(truth, 10)
    numeric = next(c for c, v in records[0].items() if isinstance(v, float))
    bad = {c: v for c, v in records[0].items() if c != numeric}  # a column missing
    url = f"{server.url}/rpc"
    alone = requests.post(
        url, json={"id": "b", "method": "score", "params": {"row": bad}}, timeout=TIMEOUT
    ).json()
    assert alone["id"] == "b"
    assert numeric in alone["error"]["message"]

    def client(i: int) -> Any:
        request_id = "b" if i == 5 else [i, f"c{i}", i + 0.5, None][i % 4]
        row = bad if i == 5 else records[i]
        body = {"id": request_id, "method": "score", "params": {"row": row}}
        return request_id, requests.post(url, json=body, timeout=TIMEOUT).json()

    for _ in range(3):  # sent together, so that they are merged
        with ThreadPoolExecutor(10) as pool:
            results = list(pool.map(client, range(10)))
        for i, (request_id, answer) in enumerate(results):
            if i == 5:
                assert answer == alone
            else:
                assert answer == {
                    "jsonrpc": "2.0",
                    "id": request_id,
                    "result": truth["batch"]["values"][i],
                }


def _metrics_text(server: OwnServer) -> str:
    resp = requests.get(f"{server.url}/metrics", timeout=TIMEOUT)
    assert resp.status_code == 200
    return resp.text


def _metric(server: OwnServer, name: str) -> float:
    total = 0.0
    for line in _metrics_text(server).splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_parse_with_prometheus_clients_own_parser(own) -> None:
    server = own[IDS[1]]
    bad = requests.post(f"{server.url}/invocations", json={"rows": []}, timeout=TIMEOUT)
    assert bad.status_code == 400
    good = requests.post(f"{server.url}/invocations", json=_ping_body(server), timeout=TIMEOUT)
    assert good.status_code == 200
    text = _metrics_text(server)
    program = (
        "import json, sys\n"
        "from prometheus_client.parser import text_string_to_metric_families\n"
        "out = {f.name: [[s.name, s.labels, s.value] for s in f.samples]\n"
        "       for f in text_string_to_metric_families(sys.stdin.read())}\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run(
        [str(server.python), "-c", program], input=text, capture_output=True, text=True,
        timeout=TIMEOUT, check=True,
    )  # fmt: skip
    families = json.loads(proc.stdout)
    for name in ("dai_mlflow_requests", "dai_mlflow_request_errors",
                 "dai_mlflow_request_duration_seconds", "dai_mlflow_scorer_call_rows",
                 "dai_mlflow_model_info"):  # fmt: skip
        assert name in families, sorted(families)
    info = families["dai_mlflow_model_info"][0][1]
    assert info["model_name"] == server.model.model_name
    assert info["dai_version"]
    assert info["mlflow_version"].startswith("3.")
    routes = {tuple(sorted(s[1].items())) for s in families["dai_mlflow_requests"]}
    assert (("route", "/invocations"), ("status", "200")) in routes
    assert any(("route", "/invocations") in r and ("status", "400") not in r for r in routes)
    latency = [
        s for s in families["dai_mlflow_request_duration_seconds"] if s[0].endswith("_count")
    ]
    assert sum(s[2] for s in latency) > 0


def _ping_body(server: OwnServer) -> Dict[str, Any]:
    frame = pd.read_csv(server.model.build.sample_input_csv).head(2)
    return {"dataframe_records": frame.astype(object).where(frame.notna(), None).to_dict("records")}


def _workers(master: int) -> List[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(c) for c in children]


def test_a_killed_worker_is_replaced(own) -> None:
    server = own[IDS[0]]
    workers = _workers(server.proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        now = _workers(server.proc.pid)
        if len(now) == 2 and workers[0] not in now:
            break
        time.sleep(0.5)
    assert workers[0] not in _workers(server.proc.pid)
    assert len(_workers(server.proc.pid)) == 2
    assert f"worker {workers[0]} ended; starting another" in server.log_text()
    # Once the new worker counts its start, both answer again.
    while time.monotonic() < deadline and _metric(server, "dai_mlflow_worker_starts_total") < 3:
        time.sleep(0.5)
    assert _metric(server, "dai_mlflow_worker_starts_total") == 3
    for _ in range(20):  # new connections land on either worker
        assert requests.get(f"{server.url}/ping", timeout=TIMEOUT).status_code == 200


def test_monitor_reads_the_inference_log_as_its_window(own, lifecycle_store, tmp_path) -> None:
    from dai_mlflow.lifecycle import tables
    from dai_mlflow.lifecycle.monitor import MonitorRequest, monitor
    from dai_mlflow.lifecycle.validate import ValidateRequest, validate

    model = get_logged_model("1.10", "binary")
    name = "served_model"
    version = lifecycle_store.register(model.local_dir, name, "challenger")
    validate(ValidateRequest(name, model.build.holdout_csv))  # logs the version's baseline
    server = start_own_server(
        model, tmp_path / "server", "--workers", "1", name=name, version=version
    )
    wait_own_server(server)
    try:
        frame = pd.read_csv(model.build.sample_input_csv)
        rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
        for i in range(0, len(rows), 7):  # JSON rows and a CSV body
            requests.post(
                f"{server.url}/invocations",
                json={"dataframe_records": rows[i : i + 7]},
                timeout=TIMEOUT,
            ).raise_for_status()
        requests.post(
            f"{server.url}/invocations",
            data=frame.head(5).to_csv(index=False),
            headers={"Content-Type": "text/csv"},
            timeout=TIMEOUT,
        ).raise_for_status()
    finally:
        stop_session(server.proc)  # SIGTERM: the workers write what they hold
    day = time.strftime("%Y-%m-%d", time.gmtime())
    logged = tables.read_partitions(server.table, [day])
    assert len(logged) == len(rows) + 5
    assert set(logged["model_version"]) == {version}
    assert {"scored_at", "model_name", "model_uri"} <= set(logged.columns)
    result = monitor(MonitorRequest(name, str(server.table), str(tmp_path / "monitoring"), day))
    assert set(result.frame["model_version"]) == {version}
    assert set(result.frame["kind"]) == {"feature", "prediction"}


def test_sigterm_lets_a_call_being_scored_finish(scorer_truth, tmp_path) -> None:
    """SIGTERM (what ``docker stop`` and Kubernetes send) while a large call is being scored:
    the call is answered whole, then the server exits. The call is sent and SIGTERM follows
    once it has been read; if the answer was already back by then, the call is made larger."""
    import select

    model = get_logged_model("2", "multiclass")
    truth = scorer_truth(model)
    records = _records(truth, len(truth["records"]))
    server = wait_own_server(start_own_server(model, tmp_path / "server", "--workers", "1"))
    port = int(server.url.rsplit(":", 1)[1])
    try:
        rows = 40_000
        while True:
            sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            body = json.dumps({"dataframe_records": (records * (rows // len(records) + 1))[:rows]})
            head = (f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
            sock.sendall(head.encode() + body.encode())
            time.sleep(0.2)
            if not select.select([sock], [], [], 0)[0] or rows >= 320_000:
                break
            _post_answer(sock)  # answered already: larger
            sock.close()
            rows *= 4
        assert not select.select([sock], [], [], 0)[0], "answered before SIGTERM at any size"
        os.killpg(server.proc.pid, signal.SIGTERM)
        answer = json.loads(_post_answer(sock))
        sock.close()
        assert len(answer["predictions"]) == rows
        assert server.proc.wait(timeout=60) == 0, server.log_text()[-2000:]
    finally:
        stop_session(server.proc)


def _post_answer(sock: socket.socket) -> bytes:
    data = bytearray()
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1 << 20)
        assert chunk, "the server closed the connection"
        data += chunk
    end = data.index(b"\r\n\r\n")
    header, rest = bytes(data[:end]), data[end + 4 :]
    length = next(int(h.split(b":")[1]) for h in header.split(b"\r\n")
                  if h.lower().startswith(b"content-length:"))  # fmt: skip
    while len(rest) < length:
        chunk = sock.recv(1 << 20)
        assert chunk, f"the server closed the connection after {len(rest)} of {length} bytes"
        rest += chunk
    assert header.startswith(b"HTTP/1.1 200"), header + bytes(rest[:300])
    return bytes(rest)
