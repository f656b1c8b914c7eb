"""A tiny HTTP/1.1 server for observability: ``GET /metrics``, ``GET /api/stats`` and the dashboard ``GET /``.

It runs on the server's own event loop (an asyncio ``Protocol``, like the socket server), so a scrape
reads the App's statistics between two callbacks, never concurrently with them; no thread, no extra
dependency. Only ``GET``/``HEAD`` of those three paths is answered; each connection carries one request
and is closed after the answer (``Connection: close``), which is all Prometheus and a polling page need.
"""

from __future__ import annotations

import asyncio
import importlib.resources
from typing import TYPE_CHECKING, Final, NoReturn, cast, final

import anyio
import orjson
import structlog

from .._metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from .._metrics import Metrics

__all__ = ["HttpServer", "dashboard_html"]

_log = structlog.get_logger("soloist.http")
_MAX_HEAD: Final = 16 * 1024


def dashboard_html() -> bytes:
    """The self-contained dashboard page (package data ``soloist/net/dashboard.html``)."""
    return importlib.resources.files(__package__ or "soloist.net").joinpath("dashboard.html").read_bytes()


def _response(status: str, content_type: str, body: bytes, *, head: bool = False) -> bytes:
    header = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
    ).encode()
    return header if head else header + body


class _HttpConnection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_HEAD:
                transport.write(_response("431 Request Header Fields Too Large", "text/plain", b"header too large\n"))
                transport.close()
            return
        request_line = bytes(self._buffer[: self._buffer.find(b"\r\n")]).decode("latin-1")
        transport.write(self._server.answer(request_line))
        transport.close()


@final
class HttpServer:
    """Serves :class:`~soloist._metrics.Metrics` over HTTP. Start with ``await tg.start(http.serve)``."""

    def __init__(self, metrics: Metrics, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self.requests = 0
        self._page = dashboard_html()

    def answer(self, request_line: str) -> bytes:
        """The full response to one request line such as ``GET /metrics HTTP/1.1``."""
        self.requests += 1
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _response("400 Bad Request", "text/plain", b"expected: GET <path> HTTP/1.1\n")
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            return _response("405 Method Not Allowed", "text/plain", f"{method} is not supported: use GET\n".encode())
        path = target.partition("?")[0]
        head = method == "HEAD"
        try:
            if path == "/metrics":
                return _response("200 OK", CONTENT_TYPE, self.metrics.render(), head=head)
            if path == "/api/stats":
                return _response("200 OK", "application/json", orjson.dumps(self.metrics.snapshot()), head=head)
            if path in ("/", "/index.html"):
                return _response("200 OK", "text/html; charset=utf-8", self._page, head=head)
        except Exception as exc:  # a bug in a collector must not take the server down: answer 500, log it
            _log.error("http_answer_failed", path=path, exc_info=exc)
            return _response("500 Internal Server Error", "text/plain", f"{type(exc).__name__}: {exc}\n".encode())
        return _response("404 Not Found", "text/plain", f"{path} not found: try /, /metrics or /api/stats\n".encode())

    async def serve(self, *, task_status: TaskStatus[HttpServer] = anyio.TASK_STATUS_IGNORED) -> NoReturn:
        """Listen until cancelled; ``task_status`` gets this server once :attr:`port` is the bound port."""
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(lambda: _HttpConnection(self), self.host, self.port)
        try:
            sockets = getattr(listener, "sockets", None) or ()
            if sockets:
                self.port = int(sockets[0].getsockname()[1])
            _log.info("http_listening", host=self.host, port=self.port)
            task_status.started(self)
            await anyio.sleep_forever()
        finally:
            listener.close()
            with anyio.move_on_after(1, shield=True):
                await listener.wait_closed()
        raise AssertionError("unreachable: serve() ends only by cancellation")  # pragma: no cover
