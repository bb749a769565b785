"""The JSON-RPC server's HTTP layer against hostile or careless clients (no model; seconds).

Every test gets its server from one seam, :func:`start_server`: a factory that serves a service
(an object with ``call(method, params)``, what :class:`dai_mlflow.serve.rpc.ScoringService` is)
under given :class:`~dai_mlflow.model.http_limits.Limits` and yields the base URL. Two are
in :data:`FACTORIES`: ``python -m dai_mlflow.serve.rpc``'s stdlib server, and the HTTP layer of
the server each model carries with ``/rpc`` routed as its worker routes it; a server that
answers ``POST /rpc`` joins by adding its factory there. Where the model's server differs from
the contract the tests state, they are expected failures that name the difference. The service
is a fake: these tests are about HTTP, not scoring.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Tuple

import pytest

from dai_mlflow.model import http_limits
from dai_mlflow.model.http_limits import Limits
from dai_mlflow.serve import rpc

Factory = Callable[[Any, Limits], ContextManager[str]]
CLIENT_TIMEOUT = 20.0  # how long a test client waits for what must come much sooner


@contextlib.contextmanager
def stdlib_rpc_server(service: Any, limits: Limits) -> Iterator[str]:
    """``python -m dai_mlflow.serve.rpc``'s server (:func:`rpc.build_server`) in a thread."""
    server = rpc.build_server(service, "127.0.0.1", 0, limits)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def model_server_http(service: Any, limits: Limits) -> Iterator[str]:
    """The HTTP layer of the server each model carries (``dai_mlflow.model.serving.http``) in
    a thread's event loop, ``/rpc`` routed as its worker routes it (``rpc.answer`` on a pool)."""
    from dai_mlflow.model.serving.app import error_json
    from dai_mlflow.model.serving.http import HttpServer

    loop = asyncio.new_event_loop()
    pool = ThreadPoolExecutor(16)

    def route(request: Any) -> None:
        if request.path != "/rpc":
            request.respond(404, error_json(404, f"Not found: {request.path}"))
            return
        future = loop.run_in_executor(pool, rpc.answer, service, request.body)
        future.add_done_callback(lambda f: request.respond(*f.result()))

    server = HttpServer(route, error_json, lambda *_: None, body_limit=limits.body_limit,
                        request_timeout=limits.client_timeout,
                        keepalive_timeout=limits.client_timeout,
                        max_connections=limits.max_connections)  # fmt: skip
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(http_limits.LISTEN_BACKLOG)
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start(sock))
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(30)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        pool.shutdown(wait=False)
        sock.close()


FACTORIES = [
    pytest.param(stdlib_rpc_server, id="serve.rpc"),
    pytest.param(model_server_http, id="model-server"),
]
# Where the model's server differs from these tests' contract (reported, not yet settled).
REFUSALS_NOT_JSON_RPC = (
    "the model's server answers its own 400/413 on /rpc with MLflow's error body, "
    "not DAI's JSON-RPC error object"
)


def _refusal(factory: Factory, answer: Dict[str, Any]) -> str:
    """The message of DAI's error object in a refusal (status checked before)."""
    error = answer.get("error")
    if not isinstance(error, dict) and factory is model_server_http:
        pytest.xfail(REFUSALS_NOT_JSON_RPC)
    assert error["code"] == rpc.ERROR_CODE
    return error["message"]


@pytest.fixture(params=FACTORIES)
def start_server(request) -> Factory:
    """The seam: ``with start_server(service, limits) as url: ...``."""
    return request.param


class FakeService:
    """Answers every method with its name and params; counts calls running at once."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def call(self, method: str, params: Dict[str, Any]) -> Any:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(self.delay)
            return {"method": method, "params": params}
        finally:
            with self._lock:
                self.running -= 1


def _address(url: str) -> Tuple[str, int]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


def _connect(url: str) -> socket.socket:
    sock = socket.create_connection(_address(url), timeout=CLIENT_TIMEOUT)
    sock.settimeout(CLIENT_TIMEOUT)
    return sock


def _read_response(sock: socket.socket) -> Tuple[int, Dict[str, Any]]:
    """Status and JSON body of the next response on ``sock``."""
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    return resp.status, json.loads(resp.read())


def _request(body: bytes, extra: str = "") -> bytes:
    head = f"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def _post(url: str, payload: Any) -> Tuple[int, Dict[str, Any]]:
    conn = http.client.HTTPConnection(*_address(url), timeout=CLIENT_TIMEOUT)
    try:
        conn.request("POST", "/rpc", body=json.dumps(payload).encode())
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


GET_HASH = {"id": 1, "method": "get_hash", "params": {}}


def test_a_negative_or_malformed_content_length_is_400_not_an_unbounded_read(start_server):
    answers = []
    with start_server(FakeService(), Limits()) as url:
        for value in ("-1", "-5", "+5", "0x10", "1e3", "5, 6"):
            sock = _connect(url)
            # The client keeps its side open: a server that reads "until the end" never answers.
            sock.sendall(f"POST /rpc HTTP/1.1\r\nContent-Length: {value}\r\n\r\nabc".encode())
            status, answer = _read_response(sock)
            sock.close()
            assert status == 400, value
            answers.append(answer)
        assert _post(url, GET_HASH)[0] == 200
    for answer in answers:
        assert "Content-Length" in _refusal(start_server, answer)


def test_chunked_bodies_are_read_and_a_negative_chunk_size_is_400(start_server):
    body = json.dumps(GET_HASH).encode()
    with start_server(FakeService(), Limits()) as url:
        sock = _connect(url)
        head = b"POST /rpc HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        sock.sendall(head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        assert _read_response(sock) == (200, {"jsonrpc": "2.0", "id": 1, "result": {
            "method": "get_hash", "params": {}}})  # fmt: skip
        answers = []
        for size in (b"-1", b"-5", b"-0x10", b"zz", b"+5"):
            sock = _connect(url)
            sock.sendall(head + size + b"\r\n" + body)
            status, answer = _read_response(sock)
            sock.close()
            assert status == 400, size
            answers.append(answer)
    for answer in answers:
        assert "chunk size" in _refusal(start_server, answer)


def test_a_body_over_the_limit_is_413_without_being_read(start_server):
    with start_server(FakeService(), Limits(body_limit=4096)) as url:
        sock = _connect(url)
        sock.sendall(b"POST /rpc HTTP/1.1\r\nContent-Length: 200000000\r\n\r\n")  # no body sent
        status, first = _read_response(sock)
        assert status == 413
        # A client that sends its whole body first (no Expect) reads the 413 too, not a reset.
        status, answer = _post(url, {**GET_HASH, "params": {"pad": "x" * 10000}})
        assert status == 413
        # Expect: 100-continue: refused before the client sends the body.
        sock = _connect(url)
        sock.sendall(b"POST /rpc HTTP/1.1\r\nContent-Length: 10000\r\nExpect: 100-continue\r\n\r\n")
        assert _read_response(sock)[0] == 413
        assert _post(url, GET_HASH)[0] == 200
    assert http_limits.BODY_LIMIT_ENV in _refusal(start_server, first)


def test_a_client_that_sends_nothing_is_dropped_after_the_timeout(start_server):
    with start_server(FakeService(), Limits(client_timeout=0.5)) as url:
        idle = _connect(url)
        assert idle.recv(1) == b""  # closed by the server, well before the client's timeout
        # A keep-alive connection idle between requests is dropped the same way.
        sock = _connect(url)
        sock.sendall(_request(json.dumps(GET_HASH).encode()))
        assert _read_response(sock)[0] == 200
        assert sock.recv(1) == b""


def test_a_client_that_sends_slowly_is_dropped_after_the_timeout(start_server):
    """One byte every 0.1 s never lets a per-read timeout of 0.5 s fire; the request's own
    deadline does."""
    data = _request(json.dumps({**GET_HASH, "params": {"pad": "x" * 100}}).encode())
    with start_server(FakeService(), Limits(client_timeout=0.5)) as url:
        sock = _connect(url)
        sent = 0
        with contextlib.suppress(OSError):  # a reset or broken pipe once the server closed
            for byte in data:
                sock.send(bytes([byte]))
                sent += 1
                time.sleep(0.1)
        assert sent < len(data), "the server took the whole slow request"
        sock.close()
        assert _post(url, GET_HASH)[0] == 200


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _body(request_id: str = "3", method: str = '"get_hash"', params: str = "{}") -> str:
    """A JSON-RPC request with its parts given as JSON text."""
    return '{"id": ' + request_id + ', "method": ' + method + ', "params": ' + params + "}"


DEEP = [
    (_body(request_id=_nested(600)), 200),
    (_body(request_id=_nested(600), method='"nope"'), 200),
    (_body(request_id=_nested(100_000)), 400),
    (_body(method='"score"', params='{"row": ' + _nested(100_000) + "}"), 400),
    (_body(method=_nested(600)), 200),
    (_body(method='"score"', params=_nested(600)), 200),
]
DEEP_IDS = ["id-600", "id-600-bad-method", "id-100k", "row-100k", "method-600", "params-600"]


@pytest.mark.parametrize(("body", "status"), DEEP, ids=DEEP_IDS)
def test_deeply_nested_json_gets_an_error_answer(start_server, body, status):
    with start_server(FakeService(), Limits()) as url:
        sock = _connect(url)
        sock.sendall(_request(body.encode()))
        got, answer = _read_response(sock)
        assert got == status
        assert answer["error"]["code"] == rpc.ERROR_CODE
        assert "\n" not in answer["error"]["message"]
        assert answer["id"] in (None, 3)
        assert _post(url, GET_HASH)[0] == 200


@pytest.mark.parametrize(("body", "status"), DEEP, ids=DEEP_IDS)
def test_handle_never_raises_on_deep_nesting(body, status):
    got, payload = rpc.handle(FakeService(), body.encode())
    assert (got, payload["error"]["code"]) == (status, rpc.ERROR_CODE)
    got, data = rpc.answer(FakeService(), body.encode())
    assert json.loads(data)["error"]["code"] == rpc.ERROR_CODE


def test_connections_beyond_the_thread_bound_wait_and_are_all_served(start_server):
    if start_server is model_server_http:
        pytest.xfail("the model's server answers 503 to connections beyond --max-connections")
    service = FakeService(delay=0.2)
    results: List[int] = []
    with start_server(service, Limits(max_connections=3)) as url:

        def client() -> None:
            results.append(_post(url, GET_HASH)[0])

        threads = [threading.Thread(target=client) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert results == [200] * 12
    assert service.most_at_once <= 3


def test_64_keep_alive_clients_at_once_are_all_served(start_server):
    """No connection refused or reset below the thread bound (the default: 128)."""
    outcomes: List[str] = []
    lock = threading.Lock()
    with start_server(FakeService(), Limits()) as url:
        barrier = threading.Barrier(64)

        def client(n: int) -> None:
            conn = http.client.HTTPConnection(*_address(url), timeout=CLIENT_TIMEOUT)
            try:
                conn.connect()
                barrier.wait(timeout=30)  # all 64 connected before any request
                for i in range(10):
                    payload = {"id": n * 100 + i, "method": "get_hash", "params": {}}
                    conn.request("POST", "/rpc", body=json.dumps(payload).encode())
                    resp = conn.getresponse()
                    answer = json.loads(resp.read())
                    ok = resp.status == 200 and answer["id"] == payload["id"]
                    with lock:
                        outcomes.append("ok" if ok else f"HTTP {resp.status}")
            except Exception as e:  # a refused or reset connection is a failure
                with lock:
                    outcomes.append(f"{type(e).__name__}: {e}")
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(n,)) for n in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert [o for o in outcomes if o != "ok"] == []
    assert len(outcomes) == 640


# ------------------------------------------------------------------------------ configuration
def test_limits_come_from_flags_then_environment_then_defaults():
    assert Limits.from_env({}) == Limits()
    assert Limits().body_limit == 64 * 1024 * 1024
    env = {
        http_limits.BODY_LIMIT_ENV: "2048",
        http_limits.CLIENT_TIMEOUT_ENV: "5",
        http_limits.MAX_CONNECTIONS_ENV: "7",
    }
    assert Limits.from_env(env) == Limits(2048, 5.0, 7)
    assert Limits.from_env(env, body_limit=1, max_connections=9) == Limits(1, 5.0, 9)
    bad = [
        (http_limits.CLIENT_TIMEOUT_ENV, "soon"),
        (http_limits.CLIENT_TIMEOUT_ENV, "-1"),
        (http_limits.MAX_CONNECTIONS_ENV, "0"),
        (http_limits.BODY_LIMIT_ENV, "64M"),
    ]
    for name, value in bad:
        with pytest.raises(http_limits.LimitsError, match=name):
            Limits.from_env({name: value})


def test_a_bind_beyond_loopback_is_warned_about():
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert http_limits.bind_warning(host, 9090) is None, host
    for host in ("0.0.0.0", "::", "", "10.1.2.3"):
        warning = http_limits.bind_warning(host, 9090)
        assert warning is not None, host
        assert "no authentication" in warning
        assert "no TLS" in warning
        assert "\n" not in warning


def test_the_rpc_command_warns_before_it_loads_the_model(tmp_path, capsys):
    code = rpc.main(["--model-uri", str(tmp_path / "none"), "--env-manager", "local",
                     "--host", "0.0.0.0", "--port", "0"])  # fmt: skip
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert "no authentication and no TLS" in lines[0]
    assert lines[-1].startswith("Error: cannot load")
