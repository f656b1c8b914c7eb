"""The socket server: an asyncio ``Protocol`` per connection, speaking docs/protocol.md.

Why a Protocol and not streams: splitting each received chunk on ``\\n`` and answering every complete
line with one ``transport.write`` reached ~390k pipelined requests/s on this machine; a streams
server (``readuntil`` + ``drain`` per request) 69k (STYLE.md, "Hot paths").

How a request is answered, cheapest first:

- ``ping``, ``stats``, ``auth``, eventual (and already satisfied session/strong) queries are answered
  synchronously inside ``data_received``: no task, no hop. All answers produced by one chunk are
  joined and written with one ``transport.write``.
- ``command`` costs no task either: ``app.submit_nowait`` gives a future and a done-callback writes the
  answer. A query that must wait for a replica to reach a position does the same with the replica's
  future, plus a ``call_later`` timer for its timeout. Answers produced by callbacks are appended to
  the connection's buffer and flushed by one ``loop.call_soon``, so a group commit of N commands on
  one connection becomes one write.
- ``subscribe`` needs a task (it reads the log while catching up): it runs in the server's anyio task
  group, and the connection is dedicated to the stream from then on.

Backpressure, per connection: at most ``max_in_flight`` requests wait for answers; at the cap the
server stops parsing (unparsed lines stay in a backlog) and calls ``pause_reading`` until answers
drain. When the client does not read its answers the transport calls ``pause_writing``; the server
then stops reading too, and a subscription stops sending until ``resume_writing``.

Graceful stop (cancel :meth:`Server.serve`): stop listening, stop reading every connection, answer
what is in flight (bounded by ``shutdown_grace``), flush, close. The ``App`` exits after the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import os
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn, Protocol, final

import anyio
import structlog

from .._errors import Closed, CQRSError
from ._connection import Connection
from ._framing import DEFAULT_MAX_LINE
from ._ops import Ops

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from anyio.abc import TaskGroup, TaskStatus

    from .._app import App

__all__ = ["Server", "ServerStatistics", "Upstream"]

_log = structlog.get_logger("soloist.server")
_ROOM_CHECK = 0.002  # seconds between looks at the writer's queue while connections are held


class Upstream(Protocol):
    """What a replica process's server needs from its link to the writer (see :mod:`._follower`)."""

    @property
    def address(self) -> str: ...

    def head_future(self) -> asyncio.Future[int]:
        """The writer's committed position, asked *after* this call (for ``strong`` queries)."""
        ...

    def statistics(self) -> object: ...


class _Reporter(Protocol):
    """Something beside the App whose figures the ``stats`` op carries (the JetStream publisher)."""

    def statistics(self) -> object: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerStatistics:
    connections: int
    peak_connections: int
    accepted: int
    requests: int
    errors: int
    in_flight: int
    subscriptions: int
    paused: int  # connections whose reading is paused (in-flight cap or a client not reading)


@final
class Server:
    """Serves one :class:`~soloist.App` on TCP or a Unix socket. Start with ``await tg.start(server.serve)``."""

    def __init__(
        self,
        app: App,
        *,
        host: str = "127.0.0.1",
        port: int = 7420,
        unix_path: str | os.PathLike[str] | None = None,
        token: str | None = None,
        max_line: int = DEFAULT_MAX_LINE,
        max_in_flight: int = 1024,
        idle_timeout: float = 300.0,
        shutdown_grace: float = 10.0,
        upstream: Upstream | None = None,
        publisher: _Reporter | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        if idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be positive, got {idle_timeout}")
        self.app = app
        self.host = host
        self.port = port
        self.unix_path = os.fspath(unix_path) if unix_path is not None else None
        self._token = token.encode() if token is not None else None
        self.max_line = max_line
        self.max_in_flight = max_in_flight
        self.idle_timeout = idle_timeout
        self.shutdown_grace = shutdown_grace
        self.upstream = upstream
        self.publisher = publisher  # a writer's JetStream publisher: its position and lag in ``stats``
        self._tg: TaskGroup | None = None
        self.ops: Ops | None = None  # made in serve(), on the loop that serves
        self._connections: set[Connection] = set()
        self._held: set[Connection] = set()  # waiting for room in the writer's queue (Connection.hold)
        self._room_check: asyncio.TimerHandle | None = None
        self._stopping = False
        self._all_closed: anyio.Event | None = None
        self._peak = 0
        self._accepted = 0
        self.requests = 0
        self.errors = 0
        self.requests_by_op: Counter[str] = Counter()  # for soloist._metrics; the fast path's queries counted per chunk
        self.errors_by_code: Counter[str] = Counter()

    @property
    def address(self) -> str:
        """Where the server listens: ``host:port`` (the bound port once serving) or ``unix:PATH``."""
        return f"unix:{self.unix_path}" if self.unix_path is not None else f"{self.host}:{self.port}"

    def statistics(self) -> ServerStatistics:
        conns = self._connections
        return ServerStatistics(
            connections=len(conns),
            peak_connections=self._peak,
            accepted=self._accepted,
            requests=self.requests,
            errors=self.errors,
            in_flight=sum(c.in_flight for c in conns),
            subscriptions=sum(1 for c in conns if c.subscribed),
            paused=sum(1 for c in conns if c.read_paused),
        )

    def token_matches(self, given: str) -> bool:
        expected = self._token
        return expected is None or hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected)

    @property
    def needs_auth(self) -> bool:
        return self._token is not None

    # -- lifecycle ------------------------------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[Server] = anyio.TASK_STATUS_IGNORED) -> NoReturn:
        """Listen and serve until cancelled; then stop gracefully (see the module docstring)."""
        loop = asyncio.get_running_loop()
        self.ops = Ops(self)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            listener: asyncio.AbstractServer
            if self.unix_path is not None:
                listener = await loop.create_unix_server(lambda: Connection(self), self.unix_path)
            else:
                listener = await loop.create_server(lambda: Connection(self), self.host, self.port, backlog=1024)
                sockets = getattr(listener, "sockets", None) or ()
                if sockets:
                    self.port = int(sockets[0].getsockname()[1])
            try:
                _log.info(
                    "server_listening",
                    host=None if self.unix_path else self.host,
                    port=None if self.unix_path else self.port,
                    unix=self.unix_path,
                    role=self.app.role,
                    auth=self._token is not None,
                )
                task_status.started(self)
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await self._shutdown(listener)
                tg.cancel_scope.cancel()
        raise AssertionError("unreachable: serve() ends only by cancellation")  # pragma: no cover

    async def _shutdown(self, listener: asyncio.AbstractServer) -> None:
        listener.close()
        self._stopping = True
        in_flight = sum(c.in_flight for c in self._connections)
        closed = self._all_closed = anyio.Event()
        for conn in list(self._connections):
            conn.stop()
        if not self._connections:
            closed.set()
        with anyio.move_on_after(self.shutdown_grace) as scope:
            await closed.wait()
        if scope.cancelled_caught:
            _log.warning("server_stop_forced", connections=len(self._connections))
            for conn in list(self._connections):
                conn.abort()
        with anyio.move_on_after(1):
            await listener.wait_closed()
        if self.unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.unix_path)
        _log.info("server_stopped", answered_in_flight=in_flight, requests=self.requests)

    # -- connection bookkeeping -----------------------------------------------------------------------

    def _register(self, conn: Connection) -> bool:
        if self._stopping:
            return False
        self._connections.add(conn)
        self._accepted += 1
        if len(self._connections) > self._peak:
            self._peak = len(self._connections)
        return True

    def hold(self, conn: Connection) -> None:
        """Keep ``conn`` from reading until the writer's queue is at most half full (checked every 2 ms
        while anyone is held: a timer only under overload, nothing on the normal path)."""
        self._held.add(conn)
        if self._room_check is None:
            self._room_check = asyncio.get_running_loop().call_later(_ROOM_CHECK, self._check_room)

    def _check_room(self) -> None:
        self._room_check = None
        if not self._held:
            return
        try:
            stats = self.app.writer.statistics()
            room = stats.queue_depth * 2 <= stats.queue_capacity
        except CQRSError:  # no writer any more (stopping, stepped down): let them read and be answered
            room = True
        if room:
            held, self._held = self._held, set()
            for conn in held:
                conn.unhold()
        else:
            self._room_check = asyncio.get_running_loop().call_later(_ROOM_CHECK, self._check_room)

    def _unregister(self, conn: Connection) -> None:
        self._connections.discard(conn)
        self._held.discard(conn)
        if not self._connections and self._all_closed is not None:
            self._all_closed.set()

    def _start_task(self, fn: Callable[[], Coroutine[object, object, None]]) -> None:
        if self._tg is None or self._stopping:
            raise Closed("the server is stopping")
        self._tg.start_soon(fn)

    def stats_payload(self) -> dict[str, object]:
        """The ``stats`` result: every field of the app's statistics, plus the server's (and the upstream link's,
        or the JetStream publisher's)."""
        s = self.app.statistics()
        payload: dict[str, object] = {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}
        payload["server"] = self.statistics()
        if self.upstream is not None:
            payload["upstream"] = self.upstream.statistics()
        if self.publisher is not None:
            payload["publisher"] = self.publisher.statistics()
        return payload
