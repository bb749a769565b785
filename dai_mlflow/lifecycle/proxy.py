"""The front proxy of a local deployment: owns the stable port, forwards to one backend at a time.

``python -m dai_mlflow.lifecycle.proxy --state-dir DIR --port PORT`` (started detached by
:mod:`.endpoint`, never by hand) listens on ``HOST:PORT`` and forwards every request, whole, to
the backend servers of the *current route*: ``POST /rpc`` to the version's JSON-RPC server (when
it has one), everything else (``/invocations``, ``/ping``, ``/health``, ``/version``) to its
``mlflow models serve``. ``GET /deployment`` answers the route itself (model name, version,
URI). Every forwarded answer carries ``X-Dai-Mlflow-Model-Version`` (and ``-Model-Uri``).

Switching versions (the admin API, on a second port bound to 127.0.0.1, each call carrying the
token the deployer put in the proxy's environment):

- ``POST /-/route`` with a new route replaces the current one in one assignment under a lock;
  a request takes the route *and* counts itself in that route's in-flight counter under the
  same lock, so every request is served wholly by the old version or wholly by the new one,
  never a mix, and none is dropped: the old backends keep serving what they already have;
- ``GET /-/state`` reports the current route and the requests still in flight per route, so
  the deployer stops the old backends only once their count is zero (drained).

The listening socket never closes during a switch, so clients (keep-alive or not) see no
refused connection. A backend connection that turns out stale (the backend closed an idle
keep-alive connection) is retried once on a fresh connection: scoring requests are idempotent.

On start the proxy writes ``proxy.json`` (pid, ports) into the state folder; SIGTERM stops it.
Stdlib only, Python 3.8-safe (it runs on whichever Python ran ``deploy``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from dai_mlflow.serve.rpc import MAX_BODY_BYTES, RPC_PATH

PROXY_FILE = "proxy.json"
TOKEN_ENV = "DAI_MLFLOW_PROXY_TOKEN"
TOKEN_HEADER = "X-Dai-Mlflow-Token"
VERSION_HEADER = "X-Dai-Mlflow-Model-Version"
URI_HEADER = "X-Dai-Mlflow-Model-Uri"
DEPLOYMENT_PATH = "/deployment"
BACKEND_TIMEOUT = 300.0
# Hop-by-hop headers are the proxy's own business on each side (RFC 9110 7.6.1); so are the
# ones http.server writes itself (Server, Date) and the framing it recomputes.
_HOP = frozenset(
    ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
     "upgrade", "host", "content-length", "server", "date"]
)  # fmt: skip


class Route:
    """Where requests go: the backends of one model version (immutable)."""

    def __init__(self, data: Dict[str, Any]) -> None:
        self.data = dict(data)
        self.id = str(data["id"])
        self.version = str(data["version"])
        self.model_uri = str(data.get("model_uri", ""))
        self.invocations = _host_port(str(data["invocations"]))
        self.rpc = _host_port(str(data["rpc"])) if data.get("rpc") else None


def _host_port(url: str) -> Tuple[str, int]:
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = rest.rpartition(":")
    return host, int(port)


class Router:
    """The current route and the in-flight count of every route still in use."""

    def __init__(self, route: Route) -> None:
        self._lock = threading.Lock()
        self._route = route
        self._inflight: Dict[str, int] = {route.id: 0}
        self._served: Dict[str, int] = {route.id: 0}
        self.switched_at = time.time()

    def acquire(self) -> Route:
        """The route this request will use, counted as in flight until :meth:`release`."""
        with self._lock:
            route = self._route
            self._inflight[route.id] = self._inflight.get(route.id, 0) + 1
            return route

    def release(self, route: Route) -> None:
        """The request that :meth:`acquire` counted is answered."""
        with self._lock:
            self._inflight[route.id] -= 1
            self._served[route.id] = self._served.get(route.id, 0) + 1

    def switch(self, route: Route) -> Dict[str, Any]:
        """Make ``route`` current; return the previous route's data."""
        with self._lock:
            previous = self._route
            self._route = route
            self._inflight.setdefault(route.id, 0)
            self._served.setdefault(route.id, 0)
            self.switched_at = time.time()
            return previous.data

    def state(self) -> Dict[str, Any]:
        """Current route, in-flight and served counts per route (the admin ``/-/state``)."""
        with self._lock:
            return {
                "route": self._route.data,
                "inflight": dict(self._inflight),
                "served": dict(self._served),
                "switched_at": self.switched_at,
                "pid": os.getpid(),
            }


class _Backends(threading.local):
    """Per-thread keep-alive connections to backends."""

    def __init__(self) -> None:
        self.conns: Dict[Tuple[str, int], http.client.HTTPConnection] = {}

    def get(self, target: Tuple[str, int], fresh: bool) -> http.client.HTTPConnection:
        """This thread's connection to ``target`` (a new one when ``fresh``)."""
        conn = self.conns.get(target)
        if fresh and conn is not None:
            conn.close()
            conn = None
        if conn is None:
            conn = http.client.HTTPConnection(target[0], target[1], timeout=BACKEND_TIMEOUT)
            self.conns[target] = conn
        return conn


_BACKENDS = _Backends()


def forward(
    target: Tuple[str, int], method: str, path: str, headers: Dict[str, str], body: bytes
) -> Tuple[int, Sequence[Tuple[str, str]], bytes]:
    """Send one request to a backend; (status, headers, body). One retry on a stale connection.

    Raises:
        OSError / http.client.HTTPException: the backend could not be reached twice.
    """
    for attempt in (0, 1):
        conn = _BACKENDS.get(target, fresh=attempt == 1)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.will_close:
                conn.close()
            return resp.status, resp.getheaders(), data
        except (OSError, http.client.HTTPException):
            conn.close()
            if attempt == 1:
                raise
    raise AssertionError("unreachable")


class _PublicHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dai-mlflow-proxy"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.split("?", 1)[0] == DEPLOYMENT_PATH:
            route = self.server.router.state()["route"]  # type: ignore[attr-defined]
            public = {k: route.get(k) for k in ("model_name", "version", "model_uri", "since")}
            self._send(200, [], json.dumps(public).encode(), "application/json")
            return
        self._proxy(b"")

    def do_POST(self) -> None:  # noqa: N802
        try:
            body = self._read_body()
        except ValueError as e:
            self.close_connection = True
            self._send(413, [], json.dumps({"error": str(e)}).encode(), "application/json")
            return
        self._proxy(body)

    def _read_body(self) -> bytes:
        """The request body, by Content-Length or chunked (forwarded with a Content-Length)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts, size = [], 0
            while True:
                n = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if n == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(parts)
                size += n
                if size > MAX_BODY_BYTES:
                    raise ValueError(f"body over {MAX_BODY_BYTES} bytes")
                parts.append(self.rfile.read(n))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise ValueError(f"body over {MAX_BODY_BYTES} bytes")
        return self.rfile.read(length) if length else b""

    def _proxy(self, body: bytes) -> None:
        router: Router = self.server.router  # type: ignore[attr-defined]
        route = router.acquire()
        try:
            is_rpc = self.path.split("?", 1)[0] == RPC_PATH
            target = route.rpc if is_rpc else route.invocations
            if target is None:
                msg = {"error": f"this deployment serves no {RPC_PATH}; deploy with rpc=true"}
                self._send(404, [], json.dumps(msg).encode(), "application/json", route)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            try:
                status, out_headers, data = forward(target, self.command, self.path, headers, body)
            except (OSError, http.client.HTTPException) as e:
                msg = {"error": f"backend of version {route.version} failed: {e}"}
                self._send(502, [], json.dumps(msg).encode(), "application/json", route)
                return
            kept = [(k, v) for k, v in out_headers if k.lower() not in _HOP]
            self._send(status, kept, data, None, route)
        finally:
            router.release(route)

    def _send(
        self,
        status: int,
        headers: Sequence[Tuple[str, str]],
        body: bytes,
        content_type: Optional[str],
        route: Optional[Route] = None,
    ) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if content_type:
            self.send_header("Content-Type", content_type)
        if route is not None:
            self.send_header(VERSION_HEADER, route.version)
            self.send_header(URI_HEADER, route.model_uri)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # no access log: the backends keep theirs


class _AdminHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dai-mlflow-proxy-admin"

    def _authorised(self) -> bool:
        if self.headers.get(TOKEN_HEADER, "") == self.server.token:  # type: ignore[attr-defined]
            return True
        self._json(403, {"error": "bad or missing token"})
        return False

    def do_GET(self) -> None:  # noqa: N802
        if not self._authorised():
            return
        if self.path == "/-/state":
            self._json(200, self.server.router.state())  # type: ignore[attr-defined]
        else:
            self._json(404, {"error": f"unknown path {self.path}"})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if not self._authorised():
            return
        if self.path != "/-/route":
            self._json(404, {"error": f"unknown path {self.path}"})
            return
        try:
            route = Route(json.loads(body))
        except (ValueError, KeyError, TypeError) as e:
            self._json(400, {"error": f"bad route: {e}"})
            return
        previous = self.server.router.switch(route)  # type: ignore[attr-defined]
        self._json(200, {"previous": previous, "route": route.data})

    def _json(self, status: int, payload: Dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        sys.stderr.write(f"admin: {format % args}\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Many clients connect at once under load; the default backlog (5) refuses some.
    request_queue_size = 256


def run(state_dir: Path, host: str, port: int, route: Route, token: str) -> int:
    """Serve until SIGTERM/SIGINT; 1 when the port cannot be bound."""
    router = Router(route)
    try:
        public = _Server((host, port), _PublicHandler)
    except OSError as e:
        print(f"dai_mlflow.proxy: error: cannot listen on {host}:{port}: {e}", file=sys.stderr)
        return 1
    admin = _Server(("127.0.0.1", 0), _AdminHandler)
    public.router = admin.router = router  # type: ignore[attr-defined]
    admin.token = token  # type: ignore[attr-defined]
    info = {"pid": os.getpid(), "host": host, "port": public.server_address[1],
            "admin_port": admin.server_address[1]}  # fmt: skip
    tmp = state_dir / f".{PROXY_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(info))
    tmp.replace(state_dir / PROXY_FILE)

    def _stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _stop)
    threading.Thread(target=admin.serve_forever, daemon=True).start()
    print(f"dai_mlflow.proxy: http://{host}:{info['port']} -> version {route.version}", flush=True)
    try:
        public.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        public.server_close()
        admin.server_close()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m dai_mlflow.lifecycle.proxy --state-dir DIR --port P --route JSON``."""
    parser = argparse.ArgumentParser(prog="python -m dai_mlflow.lifecycle.proxy")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--route", required=True, help="the first route, as JSON")
    args = parser.parse_args(argv)
    token = os.environ.pop(TOKEN_ENV, "")
    if not token:
        parser.error(f"{TOKEN_ENV} is not set")
    return run(args.state_dir, args.host, args.port, Route(json.loads(args.route)), token)


if __name__ == "__main__":
    sys.exit(main())
