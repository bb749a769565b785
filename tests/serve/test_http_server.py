"""The model server's HTTP layer and batcher, without a model (``dai_mlflow.model.serving``).

An :class:`HttpServer` with an echo handler runs in a thread of this process; raw sockets check
keep-alive, pipelining, chunked bodies, ``Expect: 100-continue`` and the limits the project's
servers share (bad lengths 400, large bodies 413, slow or idle clients dropped). The batcher is
driven with a recording runner.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any, Iterator, List, Optional, Tuple

import pytest

from dai_mlflow.model.serving.app import error_json, fast_item
from dai_mlflow.model.serving.batching import Batcher, Item
from dai_mlflow.model.serving.http import HttpServer, Request

LIMIT = 1000


class EchoServer:
    """Answers every request with ``METHOD PATH BODY`` (HTTP 200)."""

    def __init__(self, client_timeout: float = 30.0) -> None:
        self.answers: List[Tuple[Optional[str], int]] = []
        self.loop = asyncio.new_event_loop()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.http = HttpServer(
            self.handle,
            error_json,
            lambda r, status, s: self.answers.append((r.path if r else None, status)),
            body_limit=LIMIT,
            request_timeout=client_timeout,
            keepalive_timeout=client_timeout,
        )
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def handle(self, request: Request) -> None:
        request.respond(200, f"{request.method} {request.path} ".encode() + request.body)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.http.start(self.sock))
        self.loop.run_forever()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.http.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


def _connect(server: EchoServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def _read_answer(sock: socket.socket, buffer: bytearray) -> Tuple[int, bytes]:
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buffer += chunk
    end = buffer.index(b"\r\n\r\n")
    head = bytes(buffer[:end]).decode("latin-1")
    length = int(next(h for h in head.split("\r\n") if h.lower().startswith("content-length:"))
                 .split(":")[1])  # fmt: skip
    del buffer[: end + 4]
    while len(buffer) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buffer += chunk
    body = bytes(buffer[:length])
    del buffer[:length]
    return int(head.split(" ")[1]), body


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed the connection (waits for it, up to the socket timeout)."""
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, socket.timeout):
        return False


def _post(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
        + body
    )


def test_keep_alive_and_pipelined_requests_are_answered_in_order(echo) -> None:
    sock = _connect(echo)
    buffer = bytearray()
    sock.sendall(_post("/a", b"1") + _post("/b", b"22") + b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _read_answer(sock, buffer) == (200, b"POST /a 1")
    assert _read_answer(sock, buffer) == (200, b"POST /b 22")
    assert _read_answer(sock, buffer) == (200, b"GET /c ")
    sock.sendall(_post("/d?x=1", b"333"))  # the same connection, later
    assert _read_answer(sock, buffer) == (200, b"POST /d 333")
    sock.close()


def test_chunked_bodies_and_expect_continue(echo) -> None:
    sock = _connect(echo)
    buffer = bytearray()
    chunked = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    sock.sendall(chunked + b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n")
    assert _read_answer(sock, buffer) == (200, b"POST /x abcde")
    sock.sendall(b"POST /y HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    sock.sendall(b"wxyz")
    assert _read_answer(sock, buffer) == (200, b"POST /y wxyz")
    sock.close()


@pytest.mark.parametrize(
    ("head", "status"),
    [
        ("Content-Length: -1\r\n", 400),
        ("Content-Length: +5\r\n", 400),
        ("Content-Length: 0x10\r\n", 400),
        ("Content-Length: 5\r\nContent-Length: 6\r\n", 400),
        ("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", 400),
        (f"Content-Length: {LIMIT + 1}\r\n", 413),
        ("Transfer-Encoding: gzip\r\n", 501),
    ],
)
def test_bad_lengths_and_large_bodies_are_refused_and_the_connection_closed(
    echo, head, status
) -> None:
    sock = _connect(echo)
    sock.sendall(f"POST /x HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode() + b"hello")
    got, body = _read_answer(sock, bytearray())
    assert got == status, body
    assert b"error_code" in body
    assert _closed(sock)
    assert _connect(echo)  # the server goes on


@pytest.mark.parametrize("size", [b"-1", b"zz", b"", b"0x5", str(LIMIT + 1).encode()])
def test_bad_or_large_chunks_are_refused(echo, size) -> None:
    sock = _connect(echo)
    hexsize = size if not size.isdigit() else format(int(size), "x").encode()
    sock.sendall(
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + hexsize + b"\r\nab\r\n"
    )
    status, _ = _read_answer(sock, bytearray())
    assert status == (413 if size.isdigit() else 400)
    assert _closed(sock)


def test_a_slow_client_gets_408_and_an_idle_one_is_closed() -> None:
    server = EchoServer(client_timeout=1.0)
    try:
        slow = _connect(server)
        slow.sendall(b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")  # never finishes
        idle = _connect(server)
        idle.sendall(_post("/a", b"1"))
        assert _read_answer(idle, bytearray()) == (200, b"POST /a 1")
        assert _read_answer(slow, bytearray())[0] == 408
        assert _closed(slow)
        assert _closed(idle)
    finally:
        server.close()


# ------------------------------------------------------------------------------ batching
class Recorder:
    def __init__(self) -> None:
        self.calls: List[List[Any]] = []
        self.done = threading.Event()

    def run(self, items: List[Item]) -> None:
        self.calls.append([i.payload for i in items])
        for item in items:
            item.done(item.payload, None)


def _drain(batcher: Batcher, items: List[Item], recorder: Recorder) -> None:
    for item in items:  # queued before the scorer thread runs: all there at once
        batcher.submit(item)
    batcher.start()
    deadline = time.monotonic() + 30
    while sum(len(c) for c in recorder.calls) < len(items) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_the_batcher_merges_equal_keys_up_to_the_row_cap() -> None:
    recorder = Recorder()
    answers: List[Any] = []
    batcher = Batcher(recorder.run, max_rows=5, max_wait=0.0)
    items = [Item("a", 2, f"a{i}", lambda r, e: answers.append(r)) for i in range(4)]
    items.insert(1, Item("b", 1, "b0", lambda r, e: answers.append(r)))
    items.append(Item(None, 1, "solo", lambda r, e: answers.append(r)))
    _drain(batcher, items, recorder)
    assert recorder.calls == [["a0", "a1"], ["b0"], ["a2", "a3"], ["solo"]]
    assert sorted(answers) == sorted(i.payload for i in items)


def test_without_batching_every_item_is_a_call_of_its_own() -> None:
    recorder = Recorder()
    batcher = Batcher(recorder.run, max_rows=100, max_wait=0.0, enabled=False)
    _drain(batcher, [Item("a", 1, i, lambda r, e: None) for i in range(3)], recorder)
    assert recorder.calls == [[0], [1], [2]]


# ------------------------------------------------------------------------------ parsing
def test_only_plain_json_bodies_of_one_format_are_merged() -> None:
    json_type = "application/json"
    split = b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1, "x"], [2, "y"]]}}'
    key, rows, _ = fast_item(split, json_type)
    assert (key, rows) == (("dataframe_split", ("a", "b"), ""), 2)
    records = b'{"dataframe_records": [{"a": 1}], "params": {"pred_contribs": true}}'
    assert fast_item(records, "application/json; charset=utf-8")[0] == (
        "dataframe_records", ("a",), '{"pred_contribs": true}'
    )  # fmt: skip
    for body, content_type in [
        (split, "text/csv"),
        (split, "application/json; charset=latin-1"),
        (b'{"dataframe_split": {"columns": ["a"], "data": [[1]], "index": [0]}}', json_type),
        (b'{"dataframe_records": [{"a": 1}, {"b": 2}]}', json_type),
        (b'{"dataframe_records": [{"a": 1}], "instances": [{"a": 1}]}', json_type),
        (b'{"inputs": {"a": [1, 2]}}', json_type),
        (b"[" * 100000, json_type),
        (b"{not json", json_type),
    ]:
        assert fast_item(body, content_type) is None, body[:60]
