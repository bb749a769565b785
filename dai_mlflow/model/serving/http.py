"""A small asyncio HTTP/1.1 server: keep-alive, pipelining, limits and timeouts.

Stdlib only: uvicorn/starlette are not in a Python 3.8 model env, and adding them would change
every model env. It parses what scoring clients send and refuses the rest: 413 over the body
limit, 400/431 for malformed lengths or headers, 408 for a slow request. A route handler calls
``request.respond(...)`` once, from the event loop thread; answers leave in request order.
Python 3.8-safe. See docs/serving.md, "Why this stack".
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from dai_mlflow.model import http_limits as limits

DEFAULT_BODY_LIMIT = limits.DEFAULT_BODY_LIMIT
HEADER_LIMIT = 64 * 1024
# A request must arrive whole within this long once it started, and an idle keep-alive
# connection is closed after as long (the other servers' default: http_limits).
REQUEST_TIMEOUT = limits.DEFAULT_CLIENT_TIMEOUT
KEEPALIVE_TIMEOUT = limits.DEFAULT_CLIENT_TIMEOUT
MAX_CONNECTIONS = limits.DEFAULT_MAX_CONNECTIONS
REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
JSON = "application/json"


class Request:
    """One parsed request; :meth:`respond` sends its answer."""

    __slots__ = ("method", "path", "headers", "body", "started", "rpc_error", "_conn", "_done")

    def __init__(
        self, conn: HttpConnection, method: str, path: str, headers: Dict[str, str], body: bytes
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.started = time.monotonic()
        self.rpc_error = False
        self._conn = conn
        self._done = False

    def respond(self, status: int, body: bytes, content_type: str = JSON) -> None:
        """Send the answer (once; later calls are ignored). Event loop thread only."""
        if self._done:
            return
        self._done = True
        self._conn.finish(self, status, body, content_type)


class HttpError(Exception):
    """A request the server refuses before routing it; the connection is closed after."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _content_length(value: str) -> int:
    # Digits only: "-1", "+5", "0x10", " 5 5" and empty values are refused, not guessed.
    text = value.strip()
    if not text.isdigit() or not text.isascii():
        raise HttpError(400, f"Bad request: malformed Content-Length {value!r}")
    return int(text)


class HttpConnection(asyncio.Protocol):
    """One client connection; requests are handled one at a time, in order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: Any = None
        self.buffer = bytearray()
        self.busy: Optional[Request] = None  # the request being answered
        self.closing = False
        self.paused = False
        self.last_active = time.monotonic()
        self.request_started = 0.0  # when the first byte of an incomplete request came
        self.sent_continue = False

    @property
    def in_progress(self) -> bool:
        """A request has begun to arrive, is being answered, or its answer is still being sent
        (a stop lets all three finish)."""
        if self.busy is not None or self.buffer:
            return True
        transport = self.transport
        return bool(transport and not transport.is_closing() and transport.get_write_buffer_size())

    # ------------------------------------------------------------------ asyncio callbacks
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Answers leave in one write; no Nagle delay behind a client's delayed ACK.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.connections.add(self)
        if len(self.server.connections) > self.server.max_connections:
            self._fail(HttpError(503, "Service unavailable: too many connections"))

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.server.connections.discard(self)
        self.closing = True

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if not self.buffer and self.busy is None:
            self.request_started = self.last_active
        self.buffer += data
        if self.busy is None:
            self._next()
        elif len(self.buffer) > HEADER_LIMIT and not self.paused:
            self.paused = True  # pipelined bytes pile up while an answer is pending
            self.transport.pause_reading()

    # ------------------------------------------------------------------ parsing
    def _next(self) -> None:
        while not self.closing and self.busy is None and self.buffer:
            try:
                request = self._parse()
            except HttpError as e:
                self._fail(e)
                return
            if request is None:
                return
            self.busy = request
            self.sent_continue = False
            self.server.requests_seen += 1
            try:
                self.server.handler(request)
            except Exception as e:  # a handler bug answers 500, never kills the loop
                request.respond(500, self.server.error_body(500, f"{type(e).__name__}: {e}"))

    def _parse(self) -> Optional[Request]:
        buf = self.buffer
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > HEADER_LIMIT:
                raise HttpError(431, "Bad request: request headers too large")
            return None
        if end > HEADER_LIMIT:
            raise HttpError(431, "Bad request: request headers too large")
        try:
            head = bytes(buf[:end]).decode("latin-1")
        except UnicodeDecodeError as e:  # pragma: no cover - latin-1 decodes any byte
            raise HttpError(400, "Bad request: unreadable headers") from e
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise HttpError(400, f"Bad request: malformed request line {lines[0][:100]!r}")
        method, target, version = parts
        headers: Dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise HttpError(400, f"Bad request: malformed header line {line[:100]!r}")
            key = name.lower()
            value = value.strip()
            if key == "content-length" and key in headers and headers[key] != value:
                raise HttpError(400, "Bad request: conflicting Content-Length headers")
            headers[key] = value
        start = end + 4
        chunked = "transfer-encoding" in headers
        if chunked:
            if headers["transfer-encoding"].lower() != "chunked":
                raise HttpError(501, "Transfer-Encoding other than chunked is not supported")
            if "content-length" in headers:
                raise HttpError(400, "Bad request: both Content-Length and Transfer-Encoding")
            parsed = self._chunked(start)
            if parsed is None:
                self._maybe_continue(headers, version)
                return None
            body, consumed = parsed
        else:
            length = _content_length(headers.get("content-length", "0") or "0")
            if length > self.server.body_limit:
                raise HttpError(413, limits.too_large(self.server.body_limit).message)
            if len(buf) - start < length:
                self._maybe_continue(headers, version)
                return None
            body = bytes(buf[start : start + length])
            consumed = start + length
        del buf[:consumed]
        keep_alive = version == "HTTP/1.1"
        connection = headers.get("connection", "").lower()
        if "close" in connection:
            keep_alive = False
        elif "keep-alive" in connection:
            keep_alive = True
        if not keep_alive:
            self.closing_after = True
        path = target.split("?", 1)[0]
        request = Request(self, method, path, headers, body)
        request.started = self.request_started or request.started
        return request

    def _chunked(self, start: int) -> Optional[Tuple[bytes, int]]:
        buf = self.buffer
        pos = start
        body = bytearray()
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                if len(buf) - pos > 1024:
                    raise HttpError(400, "Bad request: malformed chunk size")
                return None
            size_text = bytes(buf[pos:line_end]).split(b";", 1)[0].strip()
            try:
                if (
                    not size_text
                    or size_text.startswith((b"-", b"+"))
                    or size_text[:2]
                    in (
                        b"0x",
                        b"0X",
                    )
                ):
                    raise ValueError(size_text)
                size = int(size_text, 16)
            except ValueError as e:
                raise HttpError(400, f"Bad request: malformed chunk size {size_text[:20]!r}") from e
            if len(body) + size > self.server.body_limit:
                raise HttpError(413, limits.too_large(self.server.body_limit).message)
            data_start = line_end + 2
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", line_end)
                if buf[data_start : data_start + 2] == b"\r\n":
                    return bytes(body), data_start + 2
                if trailer_end < 0:
                    return None
                return bytes(body), trailer_end + 4
            if len(buf) < data_start + size + 2:
                return None
            if buf[data_start + size : data_start + size + 2] != b"\r\n":
                raise HttpError(400, "Bad request: chunk longer than its size")
            body += buf[data_start : data_start + size]
            pos = data_start + size + 2

    def _maybe_continue(self, headers: Dict[str, str], version: str) -> None:
        if (
            not self.sent_continue
            and version == "HTTP/1.1"
            and headers.get("expect", "").lower() == "100-continue"
        ):
            self.sent_continue = True
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    # ------------------------------------------------------------------ answering
    closing_after = False

    def finish(self, request: Request, status: int, body: bytes, content_type: str) -> None:
        """Write ``request``'s answer and go on with the next pipelined request."""
        if self.busy is not request:
            return
        self.busy = None
        close = self.closing_after
        self.server.answered(request, status, time.monotonic() - request.started)
        if self.closing or self.transport is None or self.transport.is_closing():
            return
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            + ("Connection: close\r\n\r\n" if close else "\r\n")
        ).encode("latin-1")
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)
        self.last_active = time.monotonic()
        self.request_started = self.last_active if self.buffer else 0.0
        if close:
            self.closing = True
            self.transport.close()
            return
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        if self.buffer:
            self._next()

    def _fail(self, error: HttpError) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        body = self.server.error_body(error.status, str(error))
        head = (
            f"HTTP/1.1 {error.status} {REASONS.get(error.status, 'Error')}\r\n"
            f"Content-Type: {JSON}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode("latin-1")
        self.transport.write(head + body)
        self.server.answered(None, error.status, 0.0)
        self.closing = True
        self.buffer.clear()
        self.transport.close()

    def sweep(self, now: float) -> None:
        """Close this connection when it idled or a request took too long to arrive."""
        if self.closing or self.busy is not None:
            return
        if self.buffer or self.request_started:
            if now - (self.request_started or self.last_active) > self.server.request_timeout:
                self._fail(HttpError(408, "Request timeout: the request did not arrive in time"))
        elif now - self.last_active > self.server.keepalive_timeout:
            self.closing = True
            self.transport.close()


class HttpServer:
    """Serves ``handler(request)`` on a listening socket in the running event loop.

    Args:
        handler: called with each :class:`Request` (event loop thread); it must call
            ``request.respond`` eventually.
        error_body: ``(status, message) -> bytes`` for answers the server itself gives.
        answered: ``(request or None, status, seconds)`` after each answer (metrics).
    """

    def __init__(
        self,
        handler: Callable[[Request], None],
        error_body: Callable[[int, str], bytes],
        answered: Callable[[Optional[Request], int, float], None],
        body_limit: int = DEFAULT_BODY_LIMIT,
        request_timeout: float = REQUEST_TIMEOUT,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.handler = handler
        self.error_body = error_body
        self.answered = answered
        self.body_limit = body_limit
        self.request_timeout = request_timeout
        self.keepalive_timeout = keepalive_timeout
        self.max_connections = max_connections
        self.connections: set[HttpConnection] = set()
        self.requests_seen = 0
        self._servers: List[Any] = []

    async def start(self, sock: socket.socket) -> None:
        """Accept connections on ``sock`` (already bound and listening)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: HttpConnection(self), sock=sock)
        self._servers.append(server)
        loop.call_later(1.0, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in list(self.connections):
            conn.sweep(now)
        asyncio.get_running_loop().call_later(1.0, self._sweep)

    def waiting_connections(self) -> int:
        """Open connections with no request pending: the clients that may send next."""
        return sum(1 for c in self.connections if c.busy is None and not c.closing)

    def close(self) -> None:
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
