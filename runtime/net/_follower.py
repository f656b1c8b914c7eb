"""A replica process: keep a follower ``App`` in step with the writer, over the socket protocol.

:meth:`Follower.run` subscribes to the writer (the *upstream*) from the local log's position, turns
each received run of events into :class:`~soloist.RecordedEvent` objects (``data`` decoded with the
domain's event registry) and hands them to ``app.replicate`` in batches: one local transaction per
batch, then the local broadcast feeds the local replicas. If the upstream goes away it reconnects
with exponential backoff and resumes from the local position: no gap, no duplicate.

``strong`` queries on a replica must reflect the *writer's* position at the time of the query, which
the replica cannot know from the stream alone (events may still be in flight). So the follower asks:
:meth:`Follower.head_future` sends a ``ping`` to the writer on a control connection and uses the
position of its answer. Probes are batched: every query arriving while a probe is out joins the next
one, so N concurrent strong queries cost at most two round trips, and a probe is always sent *after*
the queries it serves arrived. If the writer cannot be reached, strong queries get ``timeout``
(:class:`UpstreamUnavailable`); eventual and session queries keep working from the local replicas.

A replica follows one log only. The ``subscribe`` answer names the log the upstream serves (``log_id``);
the first contact of an empty replica log records it in the local log's meta table, and from then on an
upstream serving another log (a different writer, or its writer restarted on a new file) is refused with
:class:`~soloist.LogMismatch`, which stops the follower (``soloist replica`` exits 1) before anything of
that log is appended.

What a replica's log does not have: command ids and idempotency keys (they are not on the wire).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn, final

import anyio
import structlog

from .._errors import CQRSError, LogCorrupted, LogMismatch
from .._messages import RecordedEvent
from ._client import Client, EventStream, _Endpoint, _tcp
from ._errors import ConnectionLost, UpstreamUnavailable
from ._framing import DEFAULT_MAX_LINE

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from .._app import App

__all__ = ["Follower", "FollowerStatistics", "parse_address"]

_log = structlog.get_logger("soloist.follower")


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` -> ``("host", port)``; ``ValueError`` naming the problem otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:7420), got {address!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True, kw_only=True)
class FollowerStatistics:
    upstream: str
    connected: bool
    position: int  # replicated locally
    upstream_position: int  # the newest writer position this follower has seen (events or probes)
    lag_events: int
    reconnects: int
    batches: int
    events: int
    probes: int
    last_error: str | None


def _recorded(wire: dict[str, object], app: App) -> RecordedEvent:
    position, stream, version = wire.get("position"), wire.get("stream"), wire.get("version")
    type_name, recorded_at = wire.get("type"), wire.get("recorded_at")
    if (
        type(position) is not int
        or type(stream) is not str
        or type(version) is not int
        or type(type_name) is not str
        or not isinstance(recorded_at, int | float)
    ):
        raise LogCorrupted(f"malformed event from the upstream: {wire!r}")
    schema = wire.get("schema")  # the version of "data" as the writer sent it (absent from older writers)
    data = app.events.decode(type_name, wire.get("data"), schema=schema if type(schema) is int else None)
    return RecordedEvent(
        position=position,
        stream=stream,
        version=version,
        type=type_name,
        data=data,
        recorded_at=float(recorded_at),
        schema=app.events.current_schema(type_name, schema if type(schema) is int else 1),
    )


@final
class Follower:
    """Follows an upstream writer into a follower ``App``. Start with ``await tg.start(follower.run)``."""

    def __init__(
        self,
        app: App,
        upstream: str,
        *,
        token: str | None = None,
        max_batch: int = 4096,
        backoff: tuple[float, float] = (0.05, 2.0),
        connect_timeout: float = 5.0,
        probe_timeout: float = 5.0,
    ) -> None:
        if app.follower_of is None:
            raise ValueError("a Follower needs an App started with follower_of=...")
        self.app = app
        self._host, self._port = parse_address(upstream)
        self.address = upstream
        self._token = token
        self._max_batch = max_batch
        self._backoff = backoff
        self._connect_timeout = connect_timeout
        self._probe_timeout = probe_timeout
        self._connected = anyio.Event()
        self._is_connected = False
        self._upstream_position = 0
        self._reconnects = 0
        self._batches = 0
        self._events = 0
        self._probes = 0
        self._last_error: str | None = None
        self._probe_wanted = anyio.Event()
        self._probe_waiters: list[asyncio.Future[int]] = []

    def statistics(self) -> FollowerStatistics:
        position = self.app.position
        upstream = max(self._upstream_position, position)
        return FollowerStatistics(
            upstream=self.address,
            connected=self._is_connected,
            position=position,
            upstream_position=upstream,
            lag_events=upstream - position,
            reconnects=self._reconnects,
            batches=self._batches,
            events=self._events,
            probes=self._probes,
            last_error=self._last_error,
        )

    async def wait_connected(self) -> None:
        """Wait until the follower has subscribed to the upstream (at least once)."""
        await self._connected.wait()

    # -- following ------------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> NoReturn:
        """Follow the upstream forever (until cancelled), reconnecting with backoff; answer probes."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._probe_loop)
            task_status.started()
            await self._follow()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _follow(self) -> NoReturn:
        low, high = self._backoff
        delay = low
        endpoint = _Endpoint(
            address=self.address,
            connect=_tcp(self._host, self._port, self._connect_timeout),
            token=self._token,
            max_line=DEFAULT_MAX_LINE,
        )
        while True:
            after = self.app.position
            try:
                async with EventStream(endpoint, after) as events:
                    await self._check_log_id(events.log_id)
                    self._is_connected = True
                    self._connected.set()
                    _log.info("follower_subscribed", upstream=self.address, after=after)
                    while True:
                        received = await events.receive_many()
                        await self._apply(received)
                        delay = low
            except (ConnectionLost, OSError, TimeoutError) as exc:
                self._last_error = str(exc)
                _log.warning("follower_disconnected", upstream=self.address, error=str(exc), retry_s=delay)
            except LogMismatch as exc:  # another log, or the writer's was replaced: following it would corrupt ours
                self._last_error = str(exc)
                _log.error("follower_wrong_log", upstream=self.address, local=exc.local, served=exc.upstream)
                raise
            except CQRSError as exc:  # a malformed or non-continuous event: retrying from our position may help
                self._last_error = str(exc)
                _log.error("follower_failed", upstream=self.address, error=str(exc), retry_s=delay)
            except Exception as exc:  # a bug (in decoding an event, say): a replica keeps serving reads
                self._last_error = f"{type(exc).__name__}: {exc}"
                _log.error("follower_crashed", upstream=self.address, retry_s=delay, exc_info=exc)
            finally:
                self._is_connected = False
            await anyio.sleep(delay)  # backoff between reconnects (not ordering: a real wait)
            delay = min(delay * 2, high)
            self._reconnects += 1

    async def _check_log_id(self, served: str | None) -> None:
        """Refuse an upstream serving another log than the one our local log copies (LogMismatch).

        The first contact of an empty replica log records the upstream's log id in the local log's meta
        table; from then on the replica log belongs to that log. A writer restarted on a new file (or a
        different writer behind the same address) has another id, and is refused at every reconnect.
        """
        log = self.app.log
        if served is None:
            _log.warning("follower_unverified_upstream", upstream=self.address, reason="no log_id in its answer")
            return
        local = log.upstream_log_id
        if local is None:
            if self.app.position > 0:  # a replica log made before log ids were recorded: adopt, say so
                _log.warning(
                    "follower_adopted_upstream", upstream=self.address, log_id=served, position=self.app.position
                )
            await log.set_upstream_log_id(served)
            return
        if local != served:
            raise LogMismatch(str(log.path), local, served, self.address)

    async def _apply(self, received: list[dict[str, object]]) -> None:
        app = self.app
        position = app.position
        batch: list[RecordedEvent] = []
        for wire in received:
            event = _recorded(wire, app)
            if event.position <= position:
                continue  # already replicated (cannot happen with one subscription; harmless anyway)
            batch.append(event)
            if len(batch) >= self._max_batch:
                await app.replicate(batch)
                self._count(batch)
                batch = []
        if batch:
            await app.replicate(batch)
            self._count(batch)

    def _count(self, batch: list[RecordedEvent]) -> None:
        self._batches += 1
        self._events += len(batch)
        self._upstream_position = max(self._upstream_position, batch[-1].position)

    # -- the writer's position, for strong queries ----------------------------------------------------

    def head_future(self) -> asyncio.Future[int]:
        """A future of the writer's position, from a probe sent after this call."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._probe_waiters.append(future)
        self._probe_wanted.set()
        return future

    async def _probe_loop(self) -> NoReturn:
        while True:
            await self._probe_wanted.wait()
            waiters: list[asyncio.Future[int]] = []
            try:
                async with Client.connect(
                    self._host, self._port, token=self._token, connect_timeout=self._connect_timeout
                ) as client:
                    while True:
                        self._probe_wanted = anyio.Event()
                        waiters, self._probe_waiters = self._probe_waiters, []
                        with anyio.fail_after(self._probe_timeout):
                            position = await client.ping()
                        self._probes += 1
                        self._upstream_position = max(self._upstream_position, position)
                        for waiter in waiters:
                            if not waiter.done():
                                waiter.set_result(position)
                        waiters = []
                        await self._probe_wanted.wait()
            except (CQRSError, OSError, TimeoutError) as exc:
                error = UpstreamUnavailable(
                    f"cannot learn the writer's position from {self.address} ({exc}); strong queries need "
                    "the writer: retry, or use session/eventual consistency"
                )
                waiters += self._probe_waiters
                self._probe_waiters = []
                self._probe_wanted = anyio.Event()
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(error)
