"""Helpers for the socket tests: an App of the toy bank served on an ephemeral port, and a raw connection."""

from __future__ import annotations

from collections import deque
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

import anyio
import orjson

from soloist import App
from soloist.net import Server
from tests.toy import BANK

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from anyio.abc import SocketStream

    from soloist import Domain

__all__ = ["RawConnection", "raw", "serving"]


@asynccontextmanager
async def serving(
    path: Path,
    *,
    domain: Domain[Any, Any, Any, Any] = BANK,
    replicas: int = 2,
    app_options: dict[str, Any] | None = None,
    **server_options: Any,
) -> AsyncIterator[tuple[App, Server]]:
    """An App on ``path/bank.db`` and a Server for it on 127.0.0.1:<ephemeral port>."""
    async with (
        App(domain, path / "bank.db", replicas=replicas, **(app_options or {})) as app,
        anyio.create_task_group() as tg,
    ):
        server = cast("Server", await tg.start(Server(app, port=0, **server_options).serve))
        try:
            yield app, server
        finally:
            tg.cancel_scope.cancel()


class RawConnection:
    """A plain socket speaking lines: send bytes or objects, read answers one line at a time."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self._buffer = b""
        self._lines: deque[bytes] = deque()

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def request(self, **request: object) -> None:
        await self.stream.send(orjson.dumps(request) + b"\n")

    async def line(self) -> bytes | None:
        """The next line, or None at end of stream."""
        while not self._lines:
            try:
                chunk = await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                return None
            data = self._buffer + chunk
            *complete, self._buffer = data.split(b"\n")
            self._lines.extend(complete)
        return self._lines.popleft()

    async def answer(self) -> dict[str, Any]:
        line = await self.line()
        assert line is not None, "the server closed the connection"
        message = orjson.loads(line)
        assert isinstance(message, dict)
        return message

    async def answers(self, n: int) -> dict[object, dict[str, Any]]:
        """The next ``n`` answers, by id."""
        by_id: dict[object, dict[str, Any]] = {}
        for _ in range(n):
            message = await self.answer()
            by_id[message.get("id")] = message
        return by_id

    async def closed(self) -> bool:
        """True once the server has closed the connection (reads past any remaining lines)."""
        while True:
            if await self.line() is None:
                return True


@asynccontextmanager
async def raw(server: Server) -> AsyncIterator[RawConnection]:
    async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
        yield RawConnection(stream)
