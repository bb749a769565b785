"""The deploy endpoint's front proxy, with stand-in backends on loopback (no model; seconds).

Switching routes without a mix or a drop; the HTTP limits it shares with the JSON-RPC server
(malformed lengths, body limit, slow clients); the admin port checking its token before it
reads anything; a client that stops reading not holding a drain; a dead backend answered with a
quick 503 and reported by ``GET /deployment``; the warning of a bind beyond loopback.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from dai_mlflow.lifecycle.deploy import proxy
from dai_mlflow.model.http_limits import Limits

TOKEN = "test-token-0123456789abcdef"
CLIENT_TIMEOUT = 20.0


class _Echo(BaseHTTPRequestHandler):
    """A stand-in backend: answers its own port and the body length, after ``delay`` seconds;
    ``answer_bytes`` > 0 answers that many bytes instead."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer(b"")

    def do_POST(self) -> None:
        self._answer(self.rfile.read(int(self.headers["Content-Length"])))

    def _answer(self, body: bytes) -> None:
        time.sleep(self.server.delay)  # type: ignore[attr-defined]
        size = self.server.answer_bytes  # type: ignore[attr-defined]
        if size:
            out = b"x" * size
        else:
            out = json.dumps({"port": self.server.server_address[1], "len": len(body)}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


def _backend(delay: float = 0.0, answer_bytes: int = 0, port: int = 0) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), _Echo)
    server.delay = delay  # type: ignore[attr-defined]
    server.answer_bytes = answer_bytes  # type: ignore[attr-defined]
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


def _stop(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


def _route(version: str, invocations: ThreadingHTTPServer, rpc: Any = None) -> proxy.Route:
    def url(server: ThreadingHTTPServer) -> str:
        return f"http://127.0.0.1:{server.server_address[1]}"

    return proxy.Route({"id": f"r{version}", "version": version, "model_name": "churn",
                        "model_uri": f"models:/churn/{version}", "invocations": url(invocations),
                        "rpc": url(rpc) if rpc is not None else None})  # fmt: skip


@contextlib.contextmanager
def _proxy(route: proxy.Route, limits: Optional[Limits] = None) -> Iterator[proxy.ProxyServers]:
    servers = proxy.ProxyServers("127.0.0.1", 0, route, TOKEN, limits).start()
    try:
        yield servers
    finally:
        servers.close()


def _post(port: int, path: str, body: bytes) -> tuple:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    try:
        conn.request("POST", path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.getheader(proxy.VERSION_HEADER), json.loads(resp.read())
    finally:
        conn.close()


def _get_json(port: int, path: str, headers: Optional[Dict[str, str]] = None) -> Dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    try:
        conn.request("GET", path, headers=headers or {})
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def _raw(port: int, data: bytes) -> Tuple[int, Dict[str, Any]]:
    """Send ``data``, keep the socket open, read one response: (status, JSON body)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
    try:
        sock.sendall(data)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, json.loads(resp.read())
    finally:
        sock.close()


def _wait(condition: Callable[[], bool], seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_each_request_is_served_wholly_from_the_route_it_started_on():
    """Requests in flight when the route switches finish on the old backend (and are counted
    until they do, which is what deploy's drain waits for); the next ones go to the new one."""
    old, new = _backend(delay=0.3), _backend(delay=0.3)
    routes = [_route("1", old), _route("2", new)]
    try:
        with _proxy(routes[0]) as servers:
            router, port = servers.router, servers.port
            answers: List[tuple] = []
            threads = [
                threading.Thread(target=lambda: answers.append(_post(port, "/invocations", b"x")))
                for _ in range(4)
            ]
            for t in threads:
                t.start()
            assert _wait(lambda: router.state()["inflight"]["r1"] == 4)
            assert router.switch(routes[1])["version"] == "1"
            after = _post(port, "/invocations", b"abc")
            for t in threads:
                t.join()
            assert answers == [(200, "1", {"port": old.server_address[1], "len": 1})] * 4
            assert after == (200, "2", {"port": new.server_address[1], "len": 3})
            assert router.state()["inflight"]["r1"] == 0  # drained
            # A chunked body arrives whole; /rpc without an rpc backend is a clear 404.
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
            conn.putrequest("POST", "/invocations")
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            conn.send(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            assert json.loads(conn.getresponse().read())["len"] == 11
            status, version, body = _post(port, "/rpc", b"{}")
            assert (status, version) == (404, "2")
            assert "rpc=true" in body["error"]
    finally:
        _stop(old)
        _stop(new)


def test_malformed_lengths_and_bodies_over_the_limit_are_refused_unread():
    backend = _backend()
    try:
        with _proxy(_route("1", backend), Limits(body_limit=4096)) as servers:
            port = servers.port
            # The client keeps its side open: a proxy that reads "until the end" never answers.
            for value in ("-1", "-5", "+5", "0x10"):
                head = f"POST /invocations HTTP/1.1\r\nContent-Length: {value}\r\n\r\nabc"
                status, body = _raw(port, head.encode())
                assert status == 400, value
                assert "Content-Length" in body["error"]
            chunked = b"POST /invocations HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            for size in (b"-1", b"-5", b"zz"):
                status, body = _raw(port, chunked + size + b"\r\nhello\r\n")
                assert status == 400, size
                assert "chunk size" in body["error"]
            status, body = _raw(port, chunked + b"1000\r\n" + b"x" * 4096 + b"\r\n1\r\n")
            assert status == 413
            status, body = _raw(port, b"POST /invocations HTTP/1.1\r\nContent-Length: 9999\r\n\r\n")
            assert status == 413
            assert "limit" in body["error"]
            assert _post(port, "/invocations", b"fine")[0] == 200
    finally:
        _stop(backend)


def test_a_client_that_sends_nothing_is_dropped_after_the_timeout():
    backend = _backend()
    try:
        with _proxy(_route("1", backend), Limits(client_timeout=0.5)) as servers:
            sock = socket.create_connection(("127.0.0.1", servers.port), timeout=CLIENT_TIMEOUT)
            assert sock.recv(1) == b""  # closed by the proxy
            sock.close()
            assert _post(servers.port, "/invocations", b"x")[0] == 200
    finally:
        _stop(backend)


def test_a_client_that_stops_reading_its_answer_does_not_stay_in_flight():
    """What deploy's drain waits for is the backend's work, not a client's reading."""
    backend = _backend(answer_bytes=64 * 1024 * 1024)  # more than every socket buffer holds
    try:
        with _proxy(_route("1", backend), Limits(client_timeout=0.5)) as servers:
            sock = socket.create_connection(("127.0.0.1", servers.port), timeout=CLIENT_TIMEOUT)
            sock.sendall(b"POST /invocations HTTP/1.1\r\nContent-Length: 1\r\n\r\nx")
            router = servers.router
            assert _wait(lambda: router.state()["served"]["r1"] == 1)  # the backend answered
            assert router.state()["inflight"]["r1"] == 0
            # The proxy gives up writing after the timeout: the client finds the answer cut.
            time.sleep(1.5)
            received = 0
            with contextlib.suppress(ConnectionResetError):
                while True:
                    chunk = sock.recv(1024 * 1024)
                    if not chunk:
                        break
                    received += len(chunk)
            sock.close()
            assert received < 64 * 1024 * 1024
    finally:
        _stop(backend)


def _admin(port: int, method: str, path: str, body: Optional[bytes], token: str) -> tuple:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    try:
        conn.request(method, path, body=body, headers={proxy.TOKEN_HEADER: token})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_the_admin_port_checks_the_token_before_it_reads_the_body():
    one, two = _backend(), _backend()
    try:
        with _proxy(_route("1", one)) as servers:
            admin = servers.admin_port
            # 200 MB announced, none sent: a bad token is refused at once, the body never read.
            head = (f"POST /-/route HTTP/1.1\r\n{proxy.TOKEN_HEADER}: wrong\r\n"
                    "Content-Length: 200000000\r\n\r\n")  # fmt: skip
            assert _raw(admin, head.encode()) == (403, {"error": "bad or missing token"})
            expect = head.replace("\r\n\r\n", "\r\nExpect: 100-continue\r\n\r\n")
            assert _raw(admin, expect.encode())[0] == 403  # no "100 Continue" first
            no_token = "POST /-/route HTTP/1.1\r\nContent-Length: 200000000\r\n\r\n"
            assert _raw(admin, no_token.encode())[0] == 403
            assert _admin(admin, "GET", "/-/state", None, TOKEN[:-1] + "x")[0] == 403
            # A large body with a bad token (sent whole by the client) gets the 403, not a reset.
            status, _ = _admin(admin, "POST", "/-/route", b"x" * (8 * 1024 * 1024), "wrong")
            assert status == 403
            # The right token switches; the admin port takes small bodies only.
            data = json.dumps(_route("2", two).data).encode()
            status, answer = _admin(admin, "POST", "/-/route", data, TOKEN)
            assert (status, answer["previous"]["version"]) == (200, "1")
            big = b"x" * (2 * 1024 * 1024)
            assert _admin(admin, "POST", "/-/route", big, TOKEN)[0] == 413
            assert _admin(admin, "GET", "/-/state", None, TOKEN)[1]["route"]["version"] == "2"
    finally:
        _stop(one)
        _stop(two)


def test_a_dead_backend_gets_a_quick_503_and_deployment_says_down():
    invocations, rpc = _backend(), _backend()
    rpc_port = rpc.server_address[1]
    try:
        with _proxy(_route("1", invocations, rpc)) as servers:
            port = servers.port
            assert _get_json(port, proxy.DEPLOYMENT_PATH)["status"] == "serving"
            assert _post(port, "/rpc", b"{}")[0] == 200
            _stop(rpc)  # its port now refuses connections, as a killed server's does

            status, version, body = _post(port, "/rpc", b"{}")
            assert (status, version) == (503, "1")
            assert "version 1 of churn is down" in body["error"]
            assert "mlflow run . -e deploy -P model_name=churn" in body["error"]
            assert "\n" not in body["error"]
            assert _post(port, "/invocations", b"x")[0] == 200  # the other backend serves on
            deployment = _get_json(port, proxy.DEPLOYMENT_PATH)
            assert deployment["status"] == "down"
            assert "rpc server" in deployment["error"]
            state = _get_json(servers.admin_port, "/-/state", {proxy.TOKEN_HEADER: TOKEN})
            assert state["health"] == {"invocations": "up", "rpc": "down"}
            # Found by the probe too, with no request: the invocations backend dies next.
            _stop(invocations)
            assert _wait(lambda: servers.router.health(servers.router.current())["invocations"]
                         == "down")  # fmt: skip
            # Back on its port (a restart by hand): the probe sees it and the route serves again.
            rpc = _backend(port=rpc_port)
            invocations = _backend(port=invocations.server_address[1])
            assert _wait(lambda: _get_json(port, proxy.DEPLOYMENT_PATH)["status"] == "serving")
            assert _post(port, "/rpc", b"{}")[0] == 200
    finally:
        for server in (invocations, rpc):
            with contextlib.suppress(OSError, ValueError):
                _stop(server)


def test_a_bind_beyond_loopback_warns_that_there_is_no_authentication_or_tls(tmp_path: Path):
    backend = _backend()
    env = {**os.environ, proxy.TOKEN_ENV: TOKEN}
    route = json.dumps(_route("1", backend).data)
    cmd = [sys.executable, "-m", "dai_mlflow.lifecycle.deploy.proxy", "--state-dir", str(tmp_path),
           "--host", "0.0.0.0", "--port", "0", "--route", route]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait(lambda: (tmp_path / proxy.PROXY_FILE).is_file() or proc.poll() is not None)
        info = json.loads((tmp_path / proxy.PROXY_FILE).read_text())
        assert _post(info["port"], "/invocations", b"x")[0] == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        _stop(backend)
    (warning,) = [line for line in err.splitlines() if "warning" in line]
    assert "no authentication and no TLS" in warning
