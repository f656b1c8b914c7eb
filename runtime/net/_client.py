"""The client: many requests in flight on one connection, answers matched by id.

``async with Client.connect(host, port) as c`` opens the connection and starts two tasks in the
client's task group: a reader that matches answer lines to waiting requests by ``id``, and a writer
that sends whatever requests are queued in one write. A request costs a future, not a task; a caller
cancelled while waiting simply forgets its answer (a command already sent may still commit: resend it
with the same idempotency key to learn its outcome).

``c.subscribe(after)`` opens a second connection dedicated to the event stream (the protocol gives a
subscribing connection to its stream) and is read by the caller directly: no task.
"""

from __future__ import annotations

import asyncio
import itertools
import warnings
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

import anyio
import orjson

from .._errors import BadRequest, ConnectionLost, InternalError, TooLarge, error_from_wire
from .._messages import Answer
from ._framing import DEFAULT_MAX_LINE, LineSplitter

if TYPE_CHECKING:
    import os
    from collections.abc import Awaitable, Callable, Mapping
    from types import TracebackType

    from anyio.abc import ByteStream, TaskGroup

__all__ = ["Client", "EventStream"]

_ANSWER_LIMIT: Final = 256 << 20  # answers (a big query result, stats) may be far longer than requests
_OPTIONS: Final = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS


@dataclass(frozen=True, slots=True, kw_only=True)
class _Endpoint:
    """How to open one more connection to the same server (for subscriptions)."""

    address: str
    connect: Callable[[], Awaitable[ByteStream]]
    token: str | None
    max_line: int


def _tcp(host: str, port: int, timeout: float) -> Callable[[], Awaitable[ByteStream]]:
    async def connect() -> ByteStream:
        with anyio.fail_after(timeout):
            return await anyio.connect_tcp(host, port)

    return connect


def _unix(path: str | os.PathLike[str], timeout: float) -> Callable[[], Awaitable[ByteStream]]:
    async def connect() -> ByteStream:
        with anyio.fail_after(timeout):
            return await anyio.connect_unix(path)

    return connect


def _raise_for(answer: Mapping[str, object]) -> None:
    """Raise exactly the class the server raised (one wire code per class, see ``runtime/_errors.py``)."""
    if answer.get("ok") is True:
        return
    error = answer.get("error")
    if isinstance(error, dict):
        raise error_from_wire(error.get("code"), error.get("message"))
    raise InternalError.from_wire(f"malformed answer: {answer!r}")


@final
class Client:
    """A connection to a soloist server. Use ``async with Client.connect(...) as client``."""

    def __init__(self, endpoint: _Endpoint) -> None:
        self._endpoint = endpoint
        self._stream: ByteStream | None = None
        self._tg: TaskGroup | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, object]]] = {}
        self._outbox: list[bytes] = []
        self._wakeup = anyio.Event()
        self._lost: str | None = None  # why the connection is unusable, once it is
        self._orphan: str | None = None  # the last error answer with id null (e.g. too_large)

    @classmethod
    def connect(
        cls,
        host: str = "127.0.0.1",
        port: int = 7420,
        *,
        token: str | None = None,
        max_line: int = DEFAULT_MAX_LINE,
        connect_timeout: float = 10.0,
    ) -> Client:
        """A client for a TCP server; connects in ``async with``, authenticating if a token is given."""
        return cls(
            _Endpoint(
                address=f"{host}:{port}", connect=_tcp(host, port, connect_timeout), token=token, max_line=max_line
            )
        )

    @classmethod
    def connect_unix(
        cls,
        path: str | os.PathLike[str],
        *,
        token: str | None = None,
        max_line: int = DEFAULT_MAX_LINE,
        connect_timeout: float = 10.0,
    ) -> Client:
        """A client for a Unix-socket server; connects in ``async with``."""
        return cls(
            _Endpoint(address=f"unix:{path}", connect=_unix(path, connect_timeout), token=token, max_line=max_line)
        )

    @property
    def address(self) -> str:
        return self._endpoint.address

    # -- lifecycle ------------------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        if self._stream is not None:
            raise RuntimeError("this client is already connected")
        try:
            self._stream = await self._endpoint.connect()
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {self.address}: {exc}") from exc
        # The task group is entered here and exited in aclose(): the body of the caller's `async with`
        # must not run *through* the group, or its exceptions would come out wrapped in an ExceptionGroup.
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._read)
        tg.start_soon(self._write)
        try:
            if self._endpoint.token is not None:
                await self.auth(self._endpoint.token)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; requests still waiting get :class:`ConnectionLost`. Idempotent."""
        tg, self._tg = self._tg, None
        try:
            if tg is not None:
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)  # raises if *we* are being cancelled meanwhile
        finally:
            stream, self._stream = self._stream, None
            if stream is not None:
                with anyio.CancelScope(shield=True):
                    await stream.aclose()
            self._fail_all("the client was closed")

    # -- the two tasks --------------------------------------------------------------------------------

    async def _read(self) -> None:
        assert self._stream is not None
        stream = self._stream
        splitter = LineSplitter(_ANSWER_LIMIT)
        why = "the server closed the connection"
        try:
            while True:
                lines, too_long = splitter.feed(await stream.receive())
                for line in lines:
                    if line:
                        self._deliver(line)
                if too_long:
                    why = f"an answer line was longer than {_ANSWER_LIMIT} bytes"
                    return
        except anyio.EndOfStream:
            pass
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            why = f"the connection broke: {exc!r}"
        except Exception as exc:  # a bug in matching answers must not cancel the caller's body
            why = f"the client failed reading answers: {exc!r}"
        finally:
            self._fail_all(why)

    def _deliver(self, line: bytes) -> None:
        try:
            answer = orjson.loads(line)
        except orjson.JSONDecodeError:
            return
        if type(answer) is not dict:
            return
        rid = answer.get("id")
        future = self._waiting.pop(rid, None) if type(rid) is int else None
        if future is not None:
            if not future.done():
                future.set_result(answer)
        elif answer.get("ok") is False:
            error = answer.get("error")
            self._orphan = repr(error.get("message") if isinstance(error, dict) else error)

    async def _write(self) -> None:
        assert self._stream is not None
        stream = self._stream
        outbox = self._outbox
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = anyio.Event()
                while outbox:
                    data = b"".join(outbox)
                    outbox.clear()
                    await stream.send(data)
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            self._fail_all(f"the connection broke while sending: {exc!r}")

    def _fail_all(self, why: str) -> None:
        if self._lost is None:
            self._lost = why if self._orphan is None else f"{why} (last error from the server: {self._orphan})"
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(ConnectionLost(f"{self._lost}; the request got no answer"))
        self._outbox.clear()

    # -- requests -------------------------------------------------------------------------------------

    async def request(self, request: Mapping[str, object]) -> dict[str, object]:
        """Send one request (any op) and return its raw answer object. Raises only for connection trouble."""
        if self._lost is not None or self._stream is None:
            raise ConnectionLost(self._lost or "the client is not connected; use `async with Client.connect(...)`")
        if request.get("op") == "subscribe":
            raise BadRequest("use client.subscribe(): a subscribing connection is dedicated to its event stream")
        rid = next(self._ids)
        given = request.get("id")
        line = orjson.dumps({**request, "id": rid}, option=_OPTIONS)
        if len(line) - 1 > self._endpoint.max_line:
            raise TooLarge(
                f"the request is {len(line) - 1} bytes, over the {self._endpoint.max_line}-byte line limit; "
                "nothing was sent"
            )
        future: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        self._outbox.append(line)
        self._wakeup.set()
        try:
            answer = await future
        finally:
            self._waiting.pop(rid, None)
        answer["id"] = given  # the caller sees its own id (or null), not the connection's
        return answer

    async def _call(self, request: Mapping[str, object]) -> tuple[object, int | None]:
        answer = await self.request(request)
        _raise_for(answer)
        position = answer.get("position")
        return answer.get("result"), position if type(position) is int else None

    async def ping(self) -> int:
        """Round trip; returns the server's position (last committed, or replicated on a replica)."""
        _, position = await self._call({"op": "ping"})
        return position or 0

    async def auth(self, token: str) -> None:
        """Authenticate this connection (done by ``connect(..., token=...)``)."""
        await self._call({"op": "auth", "token": token})

    async def command(
        self,
        type: str,
        data: Mapping[str, object] | None = None,
        *,
        idempotency_key: str | None = None,
        timeout_ms: float | None = None,
    ) -> dict[str, object]:
        """Execute a command; ``{"position", "command_id", "duplicate"}``. Raises the runtime's errors."""
        request: dict[str, object] = {"op": "command", "type": type, "data": data or {}}
        if idempotency_key is not None:
            request["idempotency_key"] = idempotency_key
        if timeout_ms is not None:
            request["timeout_ms"] = timeout_ms
        result, _ = await self._call(request)
        if not isinstance(result, dict):
            raise InternalError.from_wire(f"malformed command result {result!r}")
        return result

    async def query(
        self,
        type: str,
        data: Mapping[str, object] | None = None,
        *,
        consistency: str = "eventual",
        min_position: int | None = None,
        timeout_ms: float | None = None,
    ) -> Answer:
        """Answer a query at the asked consistency; the answer carries the position it reflects."""
        request: dict[str, object] = {"op": "query", "type": type, "data": data or {}}
        if consistency != "eventual":
            request["consistency"] = consistency
        if min_position is not None:
            request["min_position"] = min_position
        if timeout_ms is not None:
            request["timeout_ms"] = timeout_ms
        result, position = await self._call(request)
        return Answer(result=result, position=position or 0)

    async def stats(self) -> dict[str, object]:
        """The server's statistics: writer queue and batches, replicas' positions and lag, connections."""
        result, _ = await self._call({"op": "stats"})
        if not isinstance(result, dict):
            raise InternalError.from_wire(f"malformed stats result {result!r}")
        return result

    def subscribe(self, after: int = 0) -> EventStream:
        """Every event after position ``after`` (0: all), in order, on a connection of its own.

        Use ``async with client.subscribe(p) as events: async for event in events: ...``.
        """
        return EventStream(self._endpoint, after)


@final
class EventStream:
    """The events of one subscription, as dicts ``{"position", "stream", "version", "type", "data", "recorded_at"}``."""

    def __init__(self, endpoint: _Endpoint, after: int) -> None:
        self._endpoint = endpoint
        self._after = after
        self.position = after  # the last position received
        self.log_id: str | None = None  # the id of the log the server serves (from the subscribe answer)
        self._stream: ByteStream | None = None
        self._splitter = LineSplitter(_ANSWER_LIMIT)
        self._events: deque[dict[str, object]] = deque()
        self._lines: deque[bytes] = deque()
        self._closed = False

    async def __aenter__(self) -> EventStream:
        await self._open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    def __del__(self) -> None:
        if self._stream is not None and not self._closed:
            warnings.warn(f"unclosed {self!r}; use `async with client.subscribe(...)`", ResourceWarning, stacklevel=1)

    async def _open(self) -> None:
        if self._stream is not None:
            return
        if self._closed:
            raise ConnectionLost("this event stream is closed")
        endpoint = self._endpoint
        try:
            self._stream = await endpoint.connect()
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {endpoint.address}: {exc}") from exc
        try:
            if endpoint.token is not None:
                await self._send({"id": "auth", "op": "auth", "token": endpoint.token})
                _raise_for(await self._answer())
            await self._send({"id": "subscribe", "op": "subscribe", "from_position": self._after})
            answer = await self._answer()
            _raise_for(answer)
            result = answer.get("result")
            log_id = result.get("log_id") if isinstance(result, dict) else None
            self.log_id = log_id if isinstance(log_id, str) else None
        except BaseException:
            await self.aclose()
            raise

    async def _send(self, request: Mapping[str, object]) -> None:
        assert self._stream is not None
        try:
            await self._stream.send(orjson.dumps(request, option=_OPTIONS))
        except (OSError, anyio.BrokenResourceError) as exc:
            raise ConnectionLost(f"cannot send to {self._endpoint.address}: {exc!r}") from exc

    def _decode(self, line: bytes) -> object:
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ConnectionLost(f"the server at {self._endpoint.address} sent a line that is not JSON: {exc}") from exc

    async def _line(self) -> bytes:
        while not self._lines:
            if self._stream is None:
                raise ConnectionLost("this event stream is closed")
            try:
                chunk = await self._stream.receive()
            except anyio.EndOfStream:
                raise ConnectionLost(
                    f"the server at {self._endpoint.address} closed the subscription after position {self.position}"
                ) from None
            except (OSError, anyio.BrokenResourceError) as exc:
                raise ConnectionLost(f"the subscription broke after position {self.position}: {exc!r}") from exc
            lines, too_long = self._splitter.feed(chunk)
            self._lines.extend(line for line in lines if line)
            if too_long:
                raise ConnectionLost(f"an event line was longer than {_ANSWER_LIMIT} bytes")
        return self._lines.popleft()

    async def _answer(self) -> dict[str, object]:
        """The next non-event line (an answer to auth/subscribe)."""
        while True:
            message = self._decode(await self._line())
            if isinstance(message, dict) and "event" not in message:
                return message

    def _take(self, line: bytes) -> None:
        message = self._decode(line)
        if not isinstance(message, dict):
            return
        event = message.get("event")
        if isinstance(event, dict):
            position = event.get("position")
            if type(position) is int:
                self.position = position
            self._events.append(event)
        elif message.get("ok") is False:
            _raise_for(message)

    async def receive_many(self) -> list[dict[str, object]]:
        """Every event already received (at least one, waiting for it if needed), in order."""
        await self._open()
        while not self._events:
            self._take(await self._line())
            while self._lines:
                self._take(self._lines.popleft())
        events = list(self._events)
        self._events.clear()
        return events

    async def receive(self) -> dict[str, object]:
        """The next event, waiting for it if needed."""
        await self._open()
        while not self._events:
            self._take(await self._line())
        return self._events.popleft()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> dict[str, object]:
        if self._closed:
            raise StopAsyncIteration
        return await self.receive()
