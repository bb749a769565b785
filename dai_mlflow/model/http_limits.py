"""Limits every HTTP server of the project applies: body size, timeouts, handler threads, bind.

:class:`Limits` (flags or ``DAI_MLFLOW_SERVE_*`` variables), :func:`read_body` (strict
``Content-Length`` or chunked, 413 above the limit), :func:`bind_warning` (beyond loopback) and
:class:`LimitedHTTPServer`/:class:`LimitedHandler` (bounded connections, slow clients dropped).
Stdlib only and Python 3.8-safe: it ships in every model's ``code/``, and is copied beside
``dai_mlflow_rpc.py`` as :data:`SCRIPT_NAME` for older models. See docs/serving.md, "Limits".
Over 400 lines: one file, since it is also copied beside the JSON-RPC script.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Mapping, Optional, Protocol

BODY_LIMIT_ENV = "DAI_MLFLOW_SERVE_BODY_LIMIT"
CLIENT_TIMEOUT_ENV = "DAI_MLFLOW_SERVE_CLIENT_TIMEOUT"
MAX_CONNECTIONS_ENV = "DAI_MLFLOW_SERVE_MAX_CONNECTIONS"
DEFAULT_BODY_LIMIT = 64 * 1024 * 1024
DEFAULT_CLIENT_TIMEOUT = 60.0
DEFAULT_MAX_CONNECTIONS = 128
# Connections beyond the bound wait here, so it is far above the clients we expect.
LISTEN_BACKLOG = 1024
# The name of this file when copied beside a script that imports it (see the docstring).
SCRIPT_NAME = "dai_mlflow_http_limits.py"
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")
_LENGTH = re.compile(r"[0-9]{1,18}")
_MAX_LINE = 8192  # a chunk-size line or a trailer line
_MAX_TRAILER_LINES = 100
_TICK = 0.2  # how often the watchdog looks at deadlines (s)
_LINGER = 2.0  # after an early answer, how long unread request bytes are discarded (s)


class LimitsError(ValueError):
    """A limit given by flag or environment is not valid (one-line message)."""


@dataclass(frozen=True)
class Limits:
    """What one server allows.

    Args:
        body_limit: bytes; larger request bodies are answered 413 without being read.
        client_timeout: seconds a connection may wait between requests, take to send one
            request (line and headers, then body), or take to receive one answer.
        max_connections: connections served at once (a thread each); more wait, accepted by
            the kernel, until one ends.
    """

    body_limit: int = DEFAULT_BODY_LIMIT
    client_timeout: float = DEFAULT_CLIENT_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    def __post_init__(self) -> None:
        if self.body_limit < 1:
            raise LimitsError(
                f"--body-limit / {BODY_LIMIT_ENV} must be at least 1 (bytes), got {self.body_limit}"
            )
        if not self.client_timeout > 0:
            raise LimitsError(
                f"--client-timeout / {CLIENT_TIMEOUT_ENV} must be > 0 (seconds), "
                f"got {self.client_timeout}"
            )
        if self.max_connections < 1:
            raise LimitsError(
                f"--max-connections / {MAX_CONNECTIONS_ENV} must be at least 1, "
                f"got {self.max_connections}"
            )

    @classmethod
    def from_env(
        cls,
        environ: Optional[Mapping[str, str]] = None,
        body_limit: Optional[int] = None,
        client_timeout: Optional[float] = None,
        max_connections: Optional[int] = None,
    ) -> Limits:
        """Given values first, then the environment's ``DAI_MLFLOW_SERVE_*``, then defaults.

        Raises:
            LimitsError: a value is not a number or out of range.
        """
        env = os.environ if environ is None else environ
        if body_limit is None:
            body_limit = _number(env, BODY_LIMIT_ENV, int, DEFAULT_BODY_LIMIT)
        if client_timeout is None:
            client_timeout = _number(env, CLIENT_TIMEOUT_ENV, float, DEFAULT_CLIENT_TIMEOUT)
        if max_connections is None:
            max_connections = _number(env, MAX_CONNECTIONS_ENV, int, DEFAULT_MAX_CONNECTIONS)
        return cls(int(body_limit), float(client_timeout), int(max_connections))


def _number(env: Mapping[str, str], name: str, kind: Any, default: Any) -> Any:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise LimitsError(f"{name}={text!r} is not {what}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--body-limit``, ``--client-timeout``, ``--max-connections`` (defaults: the
    environment's ``DAI_MLFLOW_SERVE_*``, then ours)."""
    parser.add_argument(
        "--body-limit", type=int, default=None, metavar="BYTES",
        help=f"larger request bodies get HTTP 413 (default ${BODY_LIMIT_ENV} or "
             f"{DEFAULT_BODY_LIMIT}, 64 MiB)",
    )  # fmt: skip
    parser.add_argument(
        "--client-timeout", type=float, default=None, metavar="SECONDS",
        help="close a connection that sends nothing, or does not finish sending a request or "
             f"taking an answer, within this time (default ${CLIENT_TIMEOUT_ENV} or "
             f"{DEFAULT_CLIENT_TIMEOUT:g})",
    )  # fmt: skip
    parser.add_argument(
        "--max-connections", type=int, default=None, metavar="N",
        help="connections served at once (a thread each); more wait to be served "
             f"(default ${MAX_CONNECTIONS_ENV} or {DEFAULT_MAX_CONNECTIONS})",
    )  # fmt: skip


def from_arguments(args: argparse.Namespace) -> Limits:
    """The :class:`Limits` of parsed :func:`add_arguments` flags.

    Raises:
        LimitsError: a value is not valid.
    """
    return Limits.from_env(None, args.body_limit, args.client_timeout, args.max_connections)


def argv_of(limits: Limits) -> List[str]:
    """The flags that give a child server these limits."""
    return [
        "--body-limit", str(limits.body_limit),
        "--client-timeout", repr(limits.client_timeout),
        "--max-connections", str(limits.max_connections),
    ]  # fmt: skip


# ------------------------------------------------------------------------------ binding
def is_loopback(host: str) -> bool:
    """True when ``host`` names this machine only (127.0.0.0/8, ::1, ``localhost``)."""
    name = host.strip().strip("[]")
    if not name:
        return False  # "" binds every interface
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def bind_warning(host: str, port: Any) -> Optional[str]:
    """The one-line warning to print when a server listens beyond loopback; None on loopback."""
    if is_loopback(host):
        return None
    return (
        f"warning: listening on {host or '*'}:{port}, reachable from other machines: this "
        "server has no authentication and no TLS, so anyone who can reach the port can score "
        "the model and read its column names, in clear text; serve on 127.0.0.1 behind an "
        "authenticating TLS proxy, or only on a network you trust"
    )


# ------------------------------------------------------------------------------ bodies
class Headers(Protocol):
    """A request's headers: ``http.server``'s message, or a plain dict."""

    def get(self, name: str, /) -> Optional[str]: ...


class Reader(Protocol):
    """Where a body is read from: a handler's ``rfile`` (or ``io.BytesIO``)."""

    def read(self, size: int, /) -> bytes: ...

    def readline(self, size: int, /) -> bytes: ...


class BodyError(Exception):
    """A request body that is refused: ``status`` (400, 411, 413, 501) and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def content_length(headers: Headers) -> Optional[int]:
    """The request's ``Content-Length``; None when absent.

    Raises:
        BodyError: not a plain non-negative number, given twice with different values, or given
            with ``Transfer-Encoding`` (a request smuggling shape).
    """
    values = _all(headers, "Content-Length")
    if not values:
        return None
    if headers.get("Transfer-Encoding") is not None:
        raise BodyError(400, "Bad request: both Content-Length and Transfer-Encoding")
    texts = {v.strip() for v in values}
    if len(texts) != 1:
        raise BodyError(400, "Bad request: conflicting Content-Length headers")
    text = texts.pop()
    if not _LENGTH.fullmatch(text):
        raise BodyError(400, f"Bad request: Content-Length {text[:40]!r} is not a byte count")
    return int(text)


def _all(headers: Headers, name: str) -> List[str]:
    get_all = getattr(headers, "get_all", None)
    if get_all is not None:
        return list(get_all(name) or [])
    value = headers.get(name)
    return [] if value is None else [value]


def too_large(limit: int) -> BodyError:
    """The 413 of a body over ``limit`` bytes."""
    return BodyError(
        413,
        f"Request body larger than {limit} bytes, this server's limit "
        f"(--body-limit or {BODY_LIMIT_ENV})",
    )


def read_body(headers: Headers, rfile: Reader, limit: int) -> bytes:
    """The request body, by ``Content-Length`` or chunked; ``b""`` when the request has none.

    Raises:
        BodyError: 400 (malformed length or chunk, body cut short), 413 (over ``limit``; the
            body is not read), 501 (a transfer coding other than chunked).
    """
    length = content_length(headers)  # refuses a Content-Length beside Transfer-Encoding
    coding = headers.get("Transfer-Encoding")
    if coding is not None:
        if coding.strip().lower() != "chunked":
            raise BodyError(501, f"Transfer-Encoding {coding[:40]!r} is not supported")
        return _read_chunked(rfile, limit)
    if not length:
        return b""
    if length > limit:
        raise too_large(limit)
    body = rfile.read(length)
    if len(body) != length:
        raise BodyError(400, f"Bad request: the body ended after {len(body)} of {length} bytes")
    return body


def _read_chunked(rfile: Reader, limit: int) -> bytes:
    parts: List[bytes] = []
    size = 0
    while True:
        line = rfile.readline(_MAX_LINE + 1)
        if not line.endswith(b"\n"):
            raise BodyError(400, "Bad request: a chunk size line is cut short or too long")
        text = line.split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(text):
            shown = text[:40].decode("latin-1")
            raise BodyError(400, f"Bad request: chunk size {shown!r} is not a hex byte count")
        n = int(text, 16)
        if n == 0:
            for _ in range(_MAX_TRAILER_LINES):
                trailer = rfile.readline(_MAX_LINE + 1)
                if not trailer.endswith(b"\n"):
                    raise BodyError(400, "Bad request: the chunked body's trailer is cut short")
                if not trailer.strip():
                    return b"".join(parts)
            raise BodyError(400, "Bad request: too many trailer lines")
        size += n
        if size > limit:
            raise too_large(limit)
        data = rfile.read(n)
        if len(data) != n or rfile.readline(3).strip():
            raise BodyError(400, "Bad request: a chunk is cut short or not followed by CRLF")
        parts.append(data)


# ------------------------------------------------------------------------------ server
class _Watchdog:
    """Shuts down the connections whose current phase outlived its deadline (one thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: Dict[Any, float] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deadlines", daemon=True)
        self._thread.start()

    def arm(self, handler: Any, seconds: float) -> None:
        with self._lock:
            self._due[handler] = time.monotonic() + seconds

    def disarm(self, handler: Any) -> None:
        with self._lock:
            self._due.pop(handler, None)

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(_TICK):
            now = time.monotonic()
            with self._lock:
                late = [h for h, due in self._due.items() if due <= now]
                for handler in late:
                    del self._due[handler]
                    # Under the lock: a handler that disarms now waits, then sees timed_out.
                    handler.timed_out = True
                    with contextlib.suppress(OSError):
                        handler.connection.shutdown(socket.SHUT_RDWR)


class LimitedHTTPServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` with :class:`Limits`: a thread per connection, at most
    ``limits.max_connections`` at once; the next ones wait, accepted, for a free slot."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: Any, handler: Any, limits: Optional[Limits] = None) -> None:
        self.limits = limits or Limits.from_env()
        self._slots = threading.BoundedSemaphore(self.limits.max_connections)
        self._closing = threading.Event()
        self.watchdog = _Watchdog()
        try:
            super().__init__(address, handler)
        except BaseException:
            self.watchdog.stop()
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start the connection's thread once a slot is free (the accept loop waits for it)."""
        while not self._slots.acquire(timeout=0.5):
            if self._closing.is_set():
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Serve one connection in its thread; free its slot when it ends."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def shutdown(self) -> None:
        """Stop ``serve_forever`` (also while it waits for a free slot)."""
        self._closing.set()
        super().shutdown()

    def server_close(self) -> None:
        """Close the listening socket and stop the watchdog."""
        self._closing.set()
        self.watchdog.stop()
        super().server_close()


class LimitedHandler(BaseHTTPRequestHandler):
    """A keep-alive ``BaseHTTPRequestHandler`` under its server's :class:`Limits`.

    Each phase has ``client_timeout`` seconds: waiting for the next request line, reading the
    headers, reading the body (:meth:`read_request_body`), writing the answer (the socket's own
    timeout, which bounds a whole ``sendall``). Scoring in between is not timed. A phase that
    runs out closes the connection.
    """

    server: LimitedHTTPServer
    protocol_version = "HTTP/1.1"
    timed_out = False
    _linger = False

    @property
    def limits(self) -> Limits:
        """The server's limits."""
        return self.server.limits

    def setup(self) -> None:
        """Every blocking socket call times out (a ``sendall`` as a whole)."""
        super().setup()
        self.connection.settimeout(self.limits.client_timeout)

    def handle_one_request(self) -> None:
        """One request; the wait for it and any socket error end the connection quietly."""
        watchdog = self.server.watchdog
        watchdog.arm(self, self.limits.client_timeout)
        try:
            super().handle_one_request()
        except OSError:  # reset, broken pipe, timed out, shut down by the watchdog
            self.close_connection = True
        finally:
            watchdog.disarm(self)
        if self.timed_out:
            self.close_connection = True

    def parse_request(self) -> bool:
        """Headers within the client timeout; False when they did not arrive."""
        watchdog = self.server.watchdog
        watchdog.arm(self, self.limits.client_timeout)
        ok = super().parse_request()
        watchdog.disarm(self)
        if self.timed_out:
            self.close_connection = True
            return False
        return ok

    def handle_expect_100(self) -> bool:
        """A body over the limit is refused before the client sends it."""
        try:
            length = content_length(self.headers)
        except BodyError as e:
            self.send_refusal(e.status, e.message)
            return False
        if length is not None and length > self.limits.body_limit:
            self.send_refusal(413, too_large(self.limits.body_limit).message)
            return False
        return super().handle_expect_100()

    def send_refusal(self, status: int, message: str) -> None:
        """Answer an error before the body is read (overridden for the protocol's error shape).

        The default: ``{"error": message}``.
        """
        import json

        self.send_unread(status, json.dumps({"error": message}).encode(), "application/json")

    def read_request_body(self) -> bytes:
        """The body, within the client timeout and the body limit.

        Raises:
            BodyError: refused (answer it with :meth:`send_refusal`, which closes the
                connection: the rest of the body is never read).
        """
        watchdog = self.server.watchdog
        watchdog.arm(self, self.limits.client_timeout)
        try:
            body = read_body(self.headers, self.rfile, self.limits.body_limit)
        finally:
            watchdog.disarm(self)
        if self.timed_out:
            raise BodyError(408, "Request timeout: the body did not arrive in time")
        return body

    def read_body_or_refuse(self) -> Optional[bytes]:
        """The body, or None once the refusal (413, 400, 408) has been answered."""
        try:
            return self.read_request_body()
        except BodyError as e:
            self.send_refusal(e.status, e.message)
            return None

    def send_unread(self, status: int, body: bytes, content_type: str) -> None:
        """Answer and close, the request body left unread (discarded briefly on close, so the
        client reads this answer rather than a reset)."""
        self.close_connection = True
        self._linger = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def finish(self) -> None:
        """Flush; after :meth:`send_unread`, discard what the client still sends for a moment."""
        try:
            super().finish()
        except OSError:
            return
        if self._linger and not self.timed_out:
            try:
                self.connection.shutdown(socket.SHUT_WR)
                deadline = time.monotonic() + _LINGER
                self.connection.settimeout(_TICK)
                while time.monotonic() < deadline and self.connection.recv(65536):
                    pass
            except OSError:
                pass
