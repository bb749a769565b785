"""The front proxy of a local endpoint: owns the stable port, forwards each request, whole, to the
backends of the current route; an admin port (127.0.0.1, token) switches routes atomically.

``python -m dai_mlflow.lifecycle.deploy.proxy`` is started detached by :mod:`.admin`, never by
hand. Why a proxy, the switch and drain guarantees, limits: docs/deploy.md. Over 400 lines: the
router, its two handlers and the process share one lock and one life. Stdlib and
:mod:`dai_mlflow.model.http_limits`; Python 3.8-safe (runs on whichever Python ran ``deploy``).
"""

from __future__ import annotations

import argparse
import hmac
import http.client
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from dai_mlflow.model import http_limits as limits
from dai_mlflow.serve.rpc import RPC_PATH

# An answer to send: status, headers, body, Content-Type (None: the headers carry it).
Answer = Tuple[int, List[Tuple[str, str]], bytes, Optional[str]]

PROXY_FILE = "proxy.json"
TOKEN_ENV = "DAI_MLFLOW_PROXY_TOKEN"
TOKEN_HEADER = "X-Dai-Mlflow-Token"
VERSION_HEADER = "X-Dai-Mlflow-Model-Version"
URI_HEADER = "X-Dai-Mlflow-Model-Uri"
DEPLOYMENT_PATH = "/deployment"
BACKEND_TIMEOUT = 300.0
PROBE_INTERVAL = 1.0  # seconds between checks that the current backends accept connections
UP, DOWN = "up", "down"
_POLL = 0.1  # how soon serve_forever notices a shutdown (s)
# The admin port takes tiny routes from the deployer only.
ADMIN_LIMITS = limits.Limits(body_limit=1024 * 1024, client_timeout=10.0, max_connections=8)
# Hop-by-hop headers are the proxy's own business on each side (RFC 9110 7.6.1); so are the
# ones http.server writes itself (Server, Date) and the framing it recomputes.
_HOP = frozenset(
    ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
     "upgrade", "host", "content-length", "server", "date", "expect"]
)  # fmt: skip


class Route:
    """Where requests go: the backends of one model version (immutable)."""

    def __init__(self, data: Dict[str, Any]) -> None:
        self.data = dict(data)
        self.id = str(data["id"])
        self.version = str(data["version"])
        self.model_name = str(data.get("model_name", ""))
        self.model_uri = str(data.get("model_uri", ""))
        self.invocations = _host_port(str(data["invocations"]))
        self.rpc = _host_port(str(data["rpc"])) if data.get("rpc") else None

    def backends(self) -> Dict[str, Tuple[str, int]]:
        """Name (``invocations``, ``rpc``) → address of each backend."""
        found = {"invocations": self.invocations}
        if self.rpc is not None:
            found["rpc"] = self.rpc
        return found


def _host_port(url: str) -> Tuple[str, int]:
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = rest.rpartition(":")
    return host, int(port)


class Router:
    """The current route, the in-flight count of every route still in use, backend health."""

    def __init__(self, route: Route) -> None:
        self._lock = threading.Lock()
        self._route = route
        self._inflight: Dict[str, int] = {route.id: 0}
        self._served: Dict[str, int] = {route.id: 0}
        self._down: Dict[str, Dict[str, str]] = {}  # route id -> backend name -> why
        self.switched_at = time.time()

    def current(self) -> Route:
        """The route new requests take now."""
        with self._lock:
            return self._route

    def acquire(self) -> Route:
        """The route this request will use, counted as in flight until :meth:`release`."""
        with self._lock:
            route = self._route
            self._inflight[route.id] = self._inflight.get(route.id, 0) + 1
            return route

    def release(self, route: Route) -> None:
        """The backend is done with the request that :meth:`acquire` counted."""
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

    def mark(self, route: Route, backend: str, why: Optional[str]) -> None:
        """Record ``backend`` of ``route`` as down (``why``) or up (None)."""
        with self._lock:
            down = self._down.setdefault(route.id, {})
            if why is None:
                down.pop(backend, None)
            else:
                down[backend] = why

    def health(self, route: Route) -> Dict[str, str]:
        """Backend name → ``up`` / ``down`` for ``route``."""
        with self._lock:
            down = self._down.get(route.id, {})
            return {name: DOWN if name in down else UP for name in route.backends()}

    def deployment(self) -> Dict[str, Any]:
        """What ``GET /deployment`` answers: the current version and whether it serves."""
        with self._lock:
            route = self._route
            down = dict(self._down.get(route.id, {}))
        public = {k: route.data.get(k) for k in ("model_name", "version", "model_uri", "since")}
        public["status"] = DOWN if down else "serving"
        if down:
            public["error"] = "; ".join(down[name] for name in sorted(down))
        return public

    def state(self) -> Dict[str, Any]:
        """Current route, in-flight and served counts per route, current backends' health
        (the admin ``/-/state``)."""
        route = self.current()
        health = self.health(route)
        with self._lock:
            return {
                "route": self._route.data,
                "inflight": dict(self._inflight),
                "served": dict(self._served),
                "health": health,
                "switched_at": self.switched_at,
                "pid": os.getpid(),
            }


def down_message(route: Route, backend: str, address: Tuple[str, int]) -> str:
    """The one line a client gets while ``backend`` of ``route`` refuses connections."""
    name = f" of {route.model_name}" if route.model_name else ""
    redeploy = f" -P model_name={route.model_name}" if route.model_name else ""
    return (
        f"version {route.version}{name} is down: its {backend} server "
        f"({address[0]}:{address[1]}) refuses connections; start it again with "
        f"`mlflow run . -e deploy{redeploy}`"
    )


def probe(router: Router, stop: threading.Event, interval: float = PROBE_INTERVAL) -> None:
    """Until ``stop``: mark each backend of the current route up or down by whether its port
    accepts a connection (a busy server still accepts; a dead one refuses)."""
    while not stop.wait(interval):
        route = router.current()
        for name, address in route.backends().items():
            try:
                socket.create_connection(address, timeout=interval).close()
            except OSError:
                router.mark(route, name, down_message(route, name, address))
            else:
                router.mark(route, name, None)


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
        OSError / http.client.HTTPException: the backend could not be reached twice
            (``ConnectionRefusedError``: nothing listens there).
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


def refuses(target: Tuple[str, int], tries: int = 5, pause: float = 0.05) -> bool:
    """Whether ``target`` refuses connections (a few tries: a dying server's socket closes late)."""
    for _ in range(tries):
        try:
            socket.create_connection(target, timeout=1.0).close()
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
        time.sleep(pause)
    return False


class _PublicHandler(limits.LimitedHandler):
    server_version = "dai-mlflow-proxy"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # http.server's naming
        if self.path.split("?", 1)[0] == DEPLOYMENT_PATH:
            public = self.server.router.deployment()  # type: ignore[attr-defined]
            self._send(200, [], json.dumps(public).encode(), "application/json")
            return
        self._proxy()

    def do_POST(self) -> None:
        self._proxy()

    def _proxy(self) -> None:
        body = self.read_body_or_refuse()
        if body is None:
            return
        router: Router = self.server.router  # type: ignore[attr-defined]
        route = router.acquire()
        try:
            answer = self._forward(router, route, body)
        finally:
            # Counted while a backend works on it, not while a slow client reads the answer.
            router.release(route)
        self._send(*answer, route=route)

    def _forward(self, router: Router, route: Route, body: bytes) -> Answer:
        is_rpc = self.path.split("?", 1)[0] == RPC_PATH
        name = "rpc" if is_rpc else "invocations"
        target = route.rpc if is_rpc else route.invocations
        if target is None:
            msg = {"error": f"this deployment serves no {RPC_PATH}; deploy with rpc=true"}
            return 404, [], json.dumps(msg).encode(), "application/json"
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        try:
            status, out_headers, data = forward(target, self.command, self.path, headers, body)
        except (OSError, http.client.HTTPException) as e:
            # A backend killed a moment ago can still accept a connection and then reset it;
            # it is down as soon as nothing listens on its port any more.
            if not isinstance(e, ConnectionRefusedError) and not refuses(target):
                msg = {"error": f"backend of version {route.version} failed: {e}"}
                return 502, [], json.dumps(msg).encode(), "application/json"
            why = down_message(route, name, target)
            router.mark(route, name, why)
            return 503, [], json.dumps({"error": why}).encode(), "application/json"
        router.mark(route, name, None)
        kept = [(k, v) for k, v in out_headers if k.lower() not in _HOP]
        return status, kept, data, None

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

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no access log: the backends keep theirs


class _AdminHandler(limits.LimitedHandler):
    server_version = "dai-mlflow-proxy-admin"

    def _authorised(self) -> bool:
        """The token header matches (read before any body; compared in constant time)."""
        given = self.headers.get(TOKEN_HEADER, "").encode("utf-8", "surrogateescape")
        token = self.server.token.encode("utf-8")  # type: ignore[attr-defined]
        if hmac.compare_digest(given, token):
            return True
        self.send_refusal(403, "bad or missing token")
        return False

    def handle_expect_100(self) -> bool:
        """No ``100 Continue`` for a client without the token."""
        return self._authorised() and super().handle_expect_100()

    def do_GET(self) -> None:
        if not self._authorised():
            return
        if self.path == "/-/state":
            self._json(200, self.server.router.state())  # type: ignore[attr-defined]
        else:
            self._json(404, {"error": f"unknown path {self.path}"})

    def do_POST(self) -> None:
        if not self._authorised():
            return
        if self.path != "/-/route":
            self.send_refusal(404, f"unknown path {self.path}")
            return
        body = self.read_body_or_refuse()
        if body is None:
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

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"admin: {format % args}\n")


class ProxyServers:
    """The public and admin servers of one proxy, sharing a :class:`Router`."""

    def __init__(
        self,
        host: str,
        port: int,
        route: Route,
        token: str,
        server_limits: Optional[limits.Limits] = None,
    ) -> None:
        self.router = Router(route)
        self.public = limits.LimitedHTTPServer((host, port), _PublicHandler, server_limits)
        try:
            self.admin = limits.LimitedHTTPServer(("127.0.0.1", 0), _AdminHandler, ADMIN_LIMITS)
        except BaseException:
            self.public.server_close()
            raise
        self.public.router = self.admin.router = self.router  # type: ignore[attr-defined]
        self.admin.token = token  # type: ignore[attr-defined]
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []

    @property
    def port(self) -> int:
        """The public port."""
        return int(self.public.server_address[1])

    @property
    def admin_port(self) -> int:
        """The admin port (127.0.0.1)."""
        return int(self.admin.server_address[1])

    def start(self, public: bool = True) -> ProxyServers:
        """Serve the admin port and health probes in threads (and the public port, unless
        ``public`` is False: the caller then runs ``self.public.serve_forever()``)."""
        targets: List[Tuple[Callable[..., Any], Tuple[Any, ...]]] = [
            (self.admin.serve_forever, (_POLL,)),
            (probe, (self.router, self._stop)),
        ]
        if public:
            targets.append((self.public.serve_forever, (_POLL,)))
        for target, args in targets:
            thread = threading.Thread(target=target, args=args, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def close(self) -> None:
        """Stop serving and close both ports (after ``serve_forever`` ran on each)."""
        self._stop.set()
        for server in (self.public, self.admin):
            server.shutdown()
            server.server_close()


def run(
    state_dir: Path,
    host: str,
    port: int,
    route: Route,
    token: str,
    server_limits: Optional[limits.Limits] = None,
) -> int:
    """Serve until SIGTERM/SIGINT; 1 when the port cannot be bound."""
    try:
        servers = ProxyServers(host, port, route, token, server_limits)
    except OSError as e:
        print(f"dai_mlflow.proxy: error: cannot listen on {host}:{port}: {e}", file=sys.stderr)
        return 1
    warning = limits.bind_warning(host, servers.port)
    if warning:
        print(f"dai_mlflow.proxy: {warning}", file=sys.stderr, flush=True)
    info = {"pid": os.getpid(), "host": host, "port": servers.port,
            "admin_port": servers.admin_port}  # fmt: skip
    tmp = state_dir / f".{PROXY_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(info))
    tmp.replace(state_dir / PROXY_FILE)

    def _stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _stop)
    servers.start(public=False)
    print(f"dai_mlflow.proxy: http://{host}:{info['port']} -> version {route.version}", flush=True)
    try:
        servers.public.serve_forever(_POLL)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        servers.close()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m dai_mlflow.lifecycle.deploy.proxy --state-dir DIR --port P --route JSON``."""
    parser = argparse.ArgumentParser(prog="python -m dai_mlflow.lifecycle.deploy.proxy")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--route", required=True, help="the first route, as JSON")
    limits.add_arguments(parser)
    args = parser.parse_args(argv)
    token = os.environ.pop(TOKEN_ENV, "")
    if not token:
        parser.error(f"{TOKEN_ENV} is not set")
    try:
        server_limits = limits.from_arguments(args)
    except limits.LimitsError as e:
        parser.error(str(e))
    route = Route(json.loads(args.route))
    return run(args.state_dir, args.host, args.port, route, token, server_limits)


if __name__ == "__main__":
    sys.exit(main())
