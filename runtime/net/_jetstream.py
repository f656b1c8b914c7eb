"""The read side past one machine: committed batches fanned out through a NATS JetStream stream.

Two actors, one on each side of the broker (docs/jetstream.md has the picture):

- :class:`JetStreamPublisher` runs beside the writer. It reads committed batches from an ordinary
  :class:`~soloist.Subscription` (``app.subscribe(after)``): a bounded buffer that, on overflow, falls
  back to reading the log. That *is* the outbox between the writer and NATS: the writer never waits
  for the publisher, and when NATS is slow or down the publisher simply falls behind and catches up
  from the log later. It publishes only what the broadcast hands out, i.e. only durable events.
  Each message carries a run of committed events (at most ``max_events``, at most ``max_bytes``) and
  the headers ``Nats-Msg-Id: <log_id>:<first>-<last>`` (the broker drops a re-sent message),
  ``Nats-Expected-Last-Sequence`` (a second publisher, or a stale one, is refused by the broker instead
  of interleaving), ``Soloist-Log-Id``, ``Soloist-First``, ``Soloist-Last``, ``Soloist-Head`` (the
  writer's position when the message was sent) and, for live batches, ``Soloist-Committed-At`` (the
  commit's wall-clock time, from which replicas measure their lag). On (re)connection it resumes after
  the ``Soloist-Last`` of the stream's last message, so a restart of either side publishes no gap and no
  duplicate.

- :class:`JetStreamFollower` feeds a follower ``App`` (a replica process) from the stream. It applies
  positions strictly in order and skips what it already holds; when the next message starts past its
  position it re-reads the stream from the right sequence, and if the stream no longer holds the
  missing positions (it keeps a bounded history) it fills the gap from a :class:`_History`: the writer
  over the socket (``--upstream``, a ``subscribe`` from its position) or, given ``--upstream-db``, the
  writer's PostgreSQL log read directly (its log id checked like the stream's). It refuses a stream
  that carries another log (:class:`~soloist.WrongLog`): the log id is in every message's headers and
  in the stream's description, and the replica remembers the log it follows in ``<db>.jetstream``
  beside its own SQLite log. After a ``kill -9`` it resumes from its durable position, found in the stream by a
  binary search over the messages' ``Soloist-Last``.

Payload: one msgspec-JSON array of ``[position, stream, version, type, schema, data, recorded_at]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn, Protocol, final

import anyio
import msgspec
import nats
import nats.errors
import nats.js.errors
import orjson
import structlog
from nats.js import api

from .._errors import CQRSError, LogCorrupted, WrongLog
from .._log import StoredRow, decode_rows
from .._messages import RecordedEvent, encode
from .._store import describe_target
from ._client import EventStream, _Endpoint, _tcp
from ._errors import ConnectionLost, UpstreamUnavailable
from ._follower import Follower, _recorded, parse_address
from ._framing import DEFAULT_MAX_LINE

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Sequence

    from anyio.abc import TaskStatus
    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from .._app import App

__all__ = [
    "JetStreamFollower",
    "JetStreamFollowerStatistics",
    "JetStreamPublisher",
    "JetStreamPublisherStatistics",
    "default_stream_name",
    "subject_of",
]

_log = structlog.get_logger("soloist.jetstream")

_WIRE_ROW = tuple[int, str, int, str, int, msgspec.Raw, float]
_decode_rows: Final = msgspec.json.Decoder(list[_WIRE_ROW]).decode
_DESCRIPTION: Final = "soloist log "
_WRONG_LAST_SEQUENCE: Final = 10071  # JetStream's err_code for a failed Nats-Expected-Last-Sequence
_NATS_ERRORS: Final = (nats.errors.Error, OSError, asyncio.TimeoutError, TimeoutError)


def default_stream_name(domain: str) -> str:
    """``soloist-<domain>``, reduced to the characters a stream name may hold."""
    return "soloist-" + re.sub(r"[^A-Za-z0-9_-]", "_", domain)


def subject_of(stream: str) -> str:
    """The one subject a stream carries: ``soloist.<stream>.batch``."""
    return f"soloist.{stream}.batch"


def _check_stream_name(stream: str) -> str:
    if not stream or re.search(r"[\s.*>/\\]", stream):
        raise ValueError(f"a JetStream stream name may not be empty or hold spaces, '.', '*', '>', '/': {stream!r}")
    return stream


def _log_id_of(description: str | None) -> str | None:
    if description is not None and description.startswith(_DESCRIPTION):
        return description[len(_DESCRIPTION) :]
    return None


def _connect_options(url: str, timeout: float) -> dict[str, object]:
    # No client-side reconnection: a lost connection ends the session and our own loop starts a new one
    # from the durable truth (the stream's last message, or the replica's log), so nothing is buffered
    # in the client while NATS is away.
    async def quiet(exc: Exception) -> None:
        _log.debug("nats_client_error", url=url, error=str(exc))

    return {
        "servers": [url],
        "allow_reconnect": False,
        "connect_timeout": timeout,
        "error_cb": quiet,
        "max_reconnect_attempts": 0,
    }


async def _close(nc: NATS) -> None:
    with anyio.move_on_after(2, shield=True), contextlib.suppress(Exception):
        await nc.close()


def _encode_rows(events: Sequence[RecordedEvent]) -> bytes:
    return encode([(e.position, e.stream, e.version, e.type, e.schema, e.data, e.recorded_at) for e in events])


class _Again(Exception):
    """Not a failure of NATS: the session must start again at once (from the right place)."""


class _NatsLink:
    """What the publisher and the JetStream follower share: sessions on a NATS connection, reconnecting with
    backoff, and the last error (``statistics().last_error``, :meth:`wait_error`). A subclass says what one
    session does, what a stream of another log does to it, and how soon it goes again after :class:`_Again`."""

    role: str  # in the log lines: jetstream_<role>_unreachable / _refused / _interrupted
    url: str
    stream: str
    _timeout: float
    _backoff: tuple[float, float]

    def _init_link(self) -> None:
        self._connected = False
        self._sessions = 0
        self._last_error: str | None = None
        self._errored = anyio.Event()

    async def _session(self, nc: NATS) -> None:
        raise NotImplementedError

    async def _refused(self, exc: WrongLog) -> NoReturn:
        raise NotImplementedError

    def _again(self, exc: _Again, delay: float) -> float:
        raise NotImplementedError

    async def _sessions_forever(self) -> NoReturn:
        """Connect, run a session, and again after a backoff (``_backoff``: first, longest), forever."""
        low, high = self._backoff
        delay = low
        while True:
            try:
                nc = await nats.connect(**_connect_options(self.url, self._timeout))  # type: ignore[arg-type]
            except _NATS_ERRORS as exc:
                self._note_error(f"jetstream_{self.role}_unreachable", exc, delay)
            else:
                self._sessions += 1
                try:
                    await self._session(nc)
                except WrongLog as exc:
                    self._last_error = str(exc)
                    self._errored.set()
                    _log.error(f"jetstream_{self.role}_refused", stream=self.stream, error=str(exc))
                    await self._refused(exc)
                except _Again as exc:
                    delay = self._again(exc, delay)
                except (*_NATS_ERRORS, CQRSError) as exc:
                    self._note_error(f"jetstream_{self.role}_interrupted", exc, delay)
                finally:
                    self._connected = False
                    await _close(nc)
            await anyio.sleep(delay)  # a real backoff, not ordering
            delay = min(max(delay, low) * 2, high)

    async def wait_error(self) -> str:
        """Wait until a failure is recorded (bound it with ``anyio.fail_after``); its text."""
        await self._errored.wait()
        assert self._last_error is not None
        return self._last_error

    def _note_error(self, event: str, exc: BaseException, delay: float) -> None:
        self._last_error = f"{type(exc).__name__}: {exc}"
        self._errored.set()
        _log.warning(event, url=self.url, stream=self.stream, error=self._last_error, retry_s=delay)


# -- the publisher ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class JetStreamPublisherStatistics:
    url: str
    stream: str
    connected: bool
    published_position: int  # the last position the stream holds, as far as this publisher knows
    lag_events: int  # the writer's position minus published_position: the outbox's depth
    messages: int
    events: int
    sessions: int
    resyncs: int  # times the publisher re-read the stream's last message (fence, duplicate, reconnect)
    last_error: str | None


class _Resync(_Again):
    """The stream is not where this publisher thought: read its last message again."""


@final
class JetStreamPublisher(_NatsLink):
    """Publishes every committed batch of a writer ``App``. Start with ``await tg.start(publisher.run)``."""

    role = "publisher"

    def __init__(
        self,
        app: App,
        url: str,
        stream: str | None = None,
        *,
        max_events: int = 1000,
        max_bytes: int = 512 * 1024,
        buffer: int = 65536,
        publish_timeout: float = 2.0,
        backoff: tuple[float, float] = (0.05, 2.0),
        max_msgs: int = -1,
    ) -> None:
        if app.follower_of is not None:
            raise ValueError("a JetStreamPublisher publishes a writer's log; this App is a follower")
        self.app = app
        self.url = url
        self.stream = _check_stream_name(stream or default_stream_name(app.domain.name))
        self.subject = subject_of(self.stream)
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._buffer = buffer
        self._timeout = publish_timeout
        self._backoff = backoff
        self._max_msgs = max_msgs
        self._published = 0
        self._last_seq = 0
        self._messages = 0
        self._events = 0
        self._resyncs = 0
        self._progress = anyio.Event()
        self._init_link()

    @property
    def log_id(self) -> str:
        return self.app.log_id  # App.log is SQLite's: a writer on PostgreSQL publishes too

    def statistics(self) -> JetStreamPublisherStatistics:
        return JetStreamPublisherStatistics(
            url=self.url,
            stream=self.stream,
            connected=self._connected,
            published_position=self._published,
            lag_events=max(0, self.app.position - self._published),
            messages=self._messages,
            events=self._events,
            sessions=self._sessions,
            resyncs=self._resyncs,
            last_error=self._last_error,
        )

    async def wait_published(self, position: int) -> None:
        """Wait until the stream holds ``position`` (bound it with ``anyio.fail_after``)."""
        while self._published < position:
            await self._progress.wait()

    def _advance(self, position: int) -> None:
        self._published = position
        self._progress.set()
        self._progress = anyio.Event()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> NoReturn:
        """Publish forever (until cancelled), reconnecting with backoff; a stream of another log stops it.

        On :class:`WrongLog` it logs ``jetstream_publisher_refused`` and publishes nothing more (the writer
        keeps serving: it never depends on NATS); ``statistics().last_error`` says why.
        """
        task_status.started()
        await self._sessions_forever()

    async def _refused(self, exc: WrongLog) -> NoReturn:
        await anyio.sleep_forever()  # the writer keeps serving (it never depends on NATS); publishing stops, loudly
        raise AssertionError("unreachable")  # pragma: no cover

    def _again(self, exc: _Again, delay: float) -> float:
        self._note_error(f"jetstream_{self.role}_interrupted", exc, delay)
        return self._backoff[0]  # not a failure of NATS: go again at once

    async def _session(self, nc: NATS) -> None:
        js = nc.jetstream(timeout=self._timeout)
        await self._ensure_stream(js)
        after = await self._resume_point(js)
        self._connected = True
        _log.info("jetstream_publisher_connected", url=self.url, stream=self.stream, after=after, seq=self._last_seq)
        with self.app.subscribe(after, buffer=self._buffer) as outbox:
            while True:
                batch = await outbox.receive()
                events = list(batch.events)
                committed_at = batch.committed_at
                while len(events) < self._max_events:  # coalesce what is already waiting: fewer round trips
                    more = outbox.receive_nowait()
                    if more is None:
                        break
                    events.extend(more.events)
                    committed_at = more.committed_at
                # the commit's wall-clock time, for the replicas' lag (None when the events came from the log)
                wall = None if committed_at is None else time.time() - (time.monotonic() - committed_at)
                for start in range(0, len(events), self._max_events):
                    await self._publish(js, events[start : start + self._max_events], wall)

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        try:
            info = await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(
                name=self.stream,
                subjects=[self.subject],
                description=_DESCRIPTION + self.log_id,
                storage=api.StorageType.FILE,
                max_msgs=self._max_msgs,
                duplicate_window=120.0,
            )
            _log.info("jetstream_stream_created", stream=self.stream, subject=self.subject, log_id=self.log_id)
            return
        found = _log_id_of(info.config.description)
        if found is not None and found != self.log_id:
            raise WrongLog(f"JetStream stream {self.stream!r}", self.log_id, found)

    async def _resume_point(self, js: JetStreamContext) -> int:
        """The last position the stream holds (from its last message), 0 if it is empty; remembers its seq."""
        self._resyncs += 1
        info = await js.stream_info(self.stream)
        last_seq = info.state.last_seq
        position = 0
        if last_seq and info.state.messages:
            message = await js.get_msg(self.stream, last_seq)
            headers = message.headers or {}
            found = headers.get("Soloist-Log-Id")
            if found != self.log_id:
                raise WrongLog(f"JetStream stream {self.stream!r} (message {last_seq})", self.log_id, str(found))
            position = int(headers["Soloist-Last"])
        if position > self.app.position:
            raise LogCorrupted(
                f"JetStream stream {self.stream!r} holds positions of this log up to {position}, but the log ends "
                f"at {self.app.position}: was it restored from an older copy? Publishing waits; delete the stream "
                "(its replicas then refill from the writer) or restore the newer log"
            )
        self._last_seq = last_seq
        self._advance(position)
        return position

    async def _publish(self, js: JetStreamContext, events: list[RecordedEvent], committed_at: float | None) -> None:
        if not events:
            return
        payload = _encode_rows(events)
        if len(payload) > self._max_bytes and len(events) > 1:
            half = len(events) // 2
            await self._publish(js, events[:half], committed_at)
            await self._publish(js, events[half:], committed_at)
            return
        first, last = events[0].position, events[-1].position
        headers = {
            "Nats-Msg-Id": f"{self.log_id}:{first}-{last}",
            "Nats-Expected-Last-Sequence": str(self._last_seq),
            "Soloist-Log-Id": self.log_id,
            "Soloist-First": str(first),
            "Soloist-Last": str(last),
            "Soloist-Head": str(self.app.position),
        }
        if committed_at is not None:
            headers["Soloist-Committed-At"] = repr(committed_at)
        try:
            ack = await js.publish(self.subject, payload, timeout=self._timeout, stream=self.stream, headers=headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                raise _Resync(f"the stream moved past sequence {self._last_seq} (another publisher?)") from exc
            raise
        if ack.duplicate:
            raise _Resync(f"the stream already held positions {first}..{last}")
        self._last_seq = ack.seq
        self._messages += 1
        self._events += len(events)
        self._advance(last)


# -- the follower -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class JetStreamFollowerStatistics:
    url: str
    stream: str
    upstream: str | None
    connected: bool
    log_id: str | None
    position: int  # replicated locally
    stream_seq: int  # the stream sequence of the last message applied
    upstream_position: int  # the newest writer position seen (Soloist-Head, probes)
    lag_events: int
    lag_samples: int  # applied messages in the last lag_window seconds, which the four figures below summarise
    lag_ms_p50: float | None  # the writer's commit (Soloist-Committed-At) -> applied here (wall clocks)
    lag_ms_p99: float | None
    lag_events_p50: float | None  # Soloist-Head - position, at each applied message
    lag_events_p99: float | None
    messages: int
    events: int
    skipped: int  # events already held (a re-sent or overlapping message)
    gaps_refetched: int  # gaps closed by re-reading the stream
    gaps_filled: int  # events fetched from the history (--upstream or --upstream-db): the stream lacked them
    sessions: int
    probes: int
    last_error: str | None


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


class _Gap(_Again):
    """A message starts past the local position: read the stream again from the right sequence."""


class _History(Protocol):
    """Where a gap the stream no longer holds is filled from: the writer's socket, or its PostgreSQL log."""

    where: str  # in messages and log lines

    def events(self, after: int) -> AsyncGenerator[list[RecordedEvent]]:
        """The log's events past ``after`` in position order, a chunk at a time, for as long as the caller
        reads (an async generator: the caller closes it, which releases the connection)."""
        ...


class _WriterSocket:
    """History from the writer over the socket: a ``subscribe`` from a position (``--upstream``)."""

    def __init__(self, app: App, address: str, token: str | None, timeout: float) -> None:
        host, port = parse_address(address)
        self._app = app
        self._endpoint = _Endpoint(
            address=address, connect=_tcp(host, port, timeout), token=token, max_line=DEFAULT_MAX_LINE
        )
        self.where = f"the writer at {address} (--upstream)"

    async def events(self, after: int) -> AsyncGenerator[list[RecordedEvent]]:
        async with EventStream(self._endpoint, after) as stream:
            while True:
                yield [_recorded(wire, self._app) for wire in await stream.receive_many()]


class _PostgresLog:
    """History read from the writer's PostgreSQL log directly (``--upstream-db``), once its log id is checked."""

    def __init__(self, app: App, dsn: str, check_log: Callable[[str | None, str], None]) -> None:
        self._app = app
        self._dsn = dsn
        self._check_log = check_log
        self.where = f"the log {describe_target(dsn)} (--upstream-db)"

    async def events(self, after: int) -> AsyncGenerator[list[RecordedEvent]]:
        from .._postgres import PostgresStore  # only a replica given --upstream-db imports the driver

        store = PostgresStore(self._dsn, self._app.events, create=False)  # read, never create a log there
        try:
            await store.open()
            self._check_log(store.log_id, self.where)  # WrongLog, as for a stream of another log
            while True:
                chunk = await store.read(after)
                if not chunk:
                    raise LogCorrupted(
                        f"{self.where} ends at position {after}, but the stream holds later positions: "
                        "is it the log this stream's writer appends to?"
                    )
                yield chunk
                after = chunk[-1].position
        finally:
            with anyio.move_on_after(5, shield=True):
                await store.aclose()


@final
class JetStreamFollower(_NatsLink):
    """Feeds a follower ``App`` from a JetStream stream. Start with ``await tg.start(follower.run)``."""

    role = "follower"

    def __init__(
        self,
        app: App,
        url: str,
        stream: str | None = None,
        *,
        upstream: str | None = None,
        token: str | None = None,
        upstream_db: str | None = None,
        idle: float = 1.0,
        timeout: float = 5.0,
        backoff: tuple[float, float] = (0.05, 2.0),
        pending_msgs: int = 65536,
        max_messages: int = 256,
        samples: int = 8192,
        lag_window: float = 10.0,
    ) -> None:
        if app.follower_of is None:
            raise ValueError("a JetStreamFollower needs an App started with follower_of=...")
        self.app = app
        self.url = url
        self.stream = _check_stream_name(stream or default_stream_name(app.domain.name))
        self.subject = subject_of(self.stream)
        self.upstream = upstream
        self._probe = Follower(app, upstream, token=token) if upstream is not None else None
        # the log's older history: the writer's PostgreSQL log when given (no load on the writer), else its socket
        self._history: _History | None = (
            _PostgresLog(app, upstream_db, self._check_log)
            if upstream_db is not None
            else _WriterSocket(app, upstream, token, timeout)
            if upstream is not None
            else None
        )
        self._idle = idle
        self._timeout = timeout
        self._backoff = backoff
        self._pending_msgs = pending_msgs
        self._max_messages = max_messages  # messages applied in one local transaction, at most
        self._state_path = Path(f"{os.fspath(app.path)}.jetstream")
        self._log_id: str | None = self._load_log_id()
        self._seq = 0
        self._expect = 0
        self._head = 0
        # (monotonic time, ms, events) per applied message; statistics() summarises the last lag_window seconds
        self._lag: deque[tuple[float, float, int]] = deque(maxlen=samples)
        self._lag_window = lag_window
        self._messages = 0
        self._events = 0
        self._skipped = 0
        self._refetched = 0
        self._filled = 0
        self._subscribed = anyio.Event()
        self._progress = anyio.Event()
        self._init_link()

    # -- Upstream (what the Server needs for strong queries and stats) ---------------------------------

    @property
    def address(self) -> str:
        return self.upstream or f"(no --upstream; stream {self.stream} at {self.url})"

    def head_future(self) -> asyncio.Future[int]:
        """The writer's position, asked after this call (a ping over the socket to ``--upstream``)."""
        if self._probe is not None:
            return self._probe.head_future()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        future.set_exception(
            UpstreamUnavailable(
                f"this replica follows the JetStream stream {self.stream!r} without --upstream HOST:PORT, so it "
                "cannot ask the writer its position: start it with --upstream, or use session/eventual consistency"
            )
        )
        return future

    def statistics(self) -> JetStreamFollowerStatistics:
        position = self.app.position
        upstream_position = max(self._head, position)
        probes = self._probe.statistics().probes if self._probe is not None else 0
        since = time.monotonic() - self._lag_window
        recent = [sample for sample in self._lag if sample[0] >= since]
        lag_ms = sorted(sample[1] for sample in recent)
        lag_events = sorted(float(sample[2]) for sample in recent)
        return JetStreamFollowerStatistics(
            url=self.url,
            stream=self.stream,
            upstream=self.upstream,
            connected=self._connected,
            log_id=self._log_id,
            position=position,
            stream_seq=self._seq,
            upstream_position=upstream_position,
            lag_events=upstream_position - position,
            lag_samples=len(recent),
            lag_ms_p50=_quantile(lag_ms, 0.5),
            lag_ms_p99=_quantile(lag_ms, 0.99),
            lag_events_p50=_quantile(lag_events, 0.5),
            lag_events_p99=_quantile(lag_events, 0.99),
            messages=self._messages,
            events=self._events,
            skipped=self._skipped,
            gaps_refetched=self._refetched,
            gaps_filled=self._filled,
            sessions=self._sessions,
            probes=probes,
            last_error=self._last_error,
        )

    async def wait_subscribed(self) -> None:
        """Wait until the follower has subscribed to the stream (at least once)."""
        await self._subscribed.wait()

    async def wait_position(self, position: int) -> None:
        """Wait until the local log holds ``position`` (bound it with ``anyio.fail_after``)."""
        while self.app.position < position:
            await self._progress.wait()

    # -- the log this replica follows ------------------------------------------------------------------

    def _load_log_id(self) -> str | None:
        try:
            state = orjson.loads(self._state_path.read_bytes())
        except FileNotFoundError:
            return None
        log_id = state.get("log_id") if isinstance(state, dict) else None
        return log_id if isinstance(log_id, str) else None

    def _check_log(self, found: str | None, where: str) -> None:
        if found is None:
            return
        if self._log_id is None:
            temp = self._state_path.with_suffix(self._state_path.suffix + ".tmp")
            temp.write_bytes(orjson.dumps({"log_id": found, "stream": self.stream}))
            temp.replace(self._state_path)  # atomic: a kill -9 leaves the old file or the new one
            self._log_id = found
            _log.info("jetstream_log_adopted", log_id=found, stream=self.stream, state=str(self._state_path))
        elif found != self._log_id:
            raise WrongLog(where, self._log_id, found)

    # -- following -------------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> NoReturn:
        """Follow the stream forever (until cancelled); :class:`WrongLog` stops it (and the process)."""
        async with anyio.create_task_group() as tg:
            if self._probe is not None:
                tg.start_soon(self._probe._probe_loop)  # the socket follower's batched head probes, reused
            task_status.started()
            await self._sessions_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _refused(self, exc: WrongLog) -> NoReturn:
        raise exc  # a replica must not serve another log's events: it stops (and the process with it)

    def _again(self, exc: _Again, delay: float) -> float:
        self._refetched += 1
        _log.info("jetstream_follower_gap", stream=self.stream, detail=str(exc))
        return self._backoff[0] / 2  # not a failure: read again at once (bounded by the backoff floor)

    async def _session(self, nc: NATS) -> None:
        js = nc.jetstream(timeout=self._timeout)
        info = await js.stream_info(self.stream)
        self._check_log(_log_id_of(info.config.description), f"JetStream stream {self.stream!r}")
        start = await self._start_seq(js, info.state.first_seq, info.state.last_seq)
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, pending_msgs_limit=self._pending_msgs, pending_bytes_limit=256 << 20)
        await nc.jsm(timeout=self._timeout).add_consumer(  # a plain push consumer: in order, no acks, gone with us
            self.stream,
            config=api.ConsumerConfig(
                deliver_subject=inbox,
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start,
                ack_policy=api.AckPolicy.NONE,
                filter_subject=self.subject,
                inactive_threshold=30.0,
                mem_storage=True,
                num_replicas=1,
            ),
        )
        self._expect = start  # the stream sequence the next message must have in this session
        self._connected = True
        self._subscribed.set()
        _log.info("jetstream_follower_subscribed", url=self.url, stream=self.stream, seq=start, after=self.app.position)
        while True:
            try:
                messages = [await sub.next_msg(timeout=self._idle)]
            except nats.errors.TimeoutError:
                if not nc.is_connected:
                    raise ConnectionLost(f"lost NATS at {self.url}") from None
                # idle: is the server still there? (a partition leaves the socket open; a PING must come back)
                with anyio.fail_after(self._timeout):
                    await nc.flush(timeout=max(1, round(self._timeout)))  # whole seconds in nats-py
                continue
            while sub.pending_msgs and len(messages) < self._max_messages:  # what already arrived: one transaction
                messages.append(await sub.next_msg(timeout=self._timeout))
            await self._handle(messages)

    async def _start_seq(self, js: JetStreamContext, first_seq: int, last_seq: int) -> int:
        """The first stream sequence whose ``Soloist-Last`` is past the local position (binary search)."""
        position = self.app.position
        if last_seq == 0 or first_seq > last_seq:
            return max(last_seq + 1, 1)

        cache: dict[int, int] = {}

        async def last_of(seq: int) -> int:
            if seq not in cache:
                try:
                    message = await js.get_msg(self.stream, seq)
                except nats.js.errors.NotFoundError:
                    cache[seq] = -1  # dropped meanwhile: treat as old
                else:
                    cache[seq] = int((message.headers or {}).get("Soloist-Last", "0"))
            return cache[seq]

        lo, hi = first_seq, last_seq + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if await last_of(mid) > position:
                hi = mid
            else:
                lo = mid + 1
        return lo

    async def _handle(self, messages: list[Msg]) -> None:
        """Apply messages that arrived together as one local transaction (a gap to fill splits it)."""
        pending: list[RecordedEvent] = []
        position = self.app.position
        samples: list[tuple[float, int]] = []  # (Soloist-Committed-At, else the last recorded_at; Soloist-Head)
        for message in messages:
            headers = message.headers or {}
            self._check_log(headers.get("Soloist-Log-Id"), f"JetStream stream {self.stream!r} (a message)")
            first, last = int(headers["Soloist-First"]), int(headers["Soloist-Last"])
            head = int(headers.get("Soloist-Head", last))
            seq = message.metadata.sequence.stream
            if seq > self._expect:
                # messages were lost on the way (a slow-consumer drop, a consumer recreated): the stream has them
                await self._apply(pending, samples)
                raise _Gap(f"message {seq} arrived where {self._expect} was due; local position {position}")
            self._expect = seq + 1
            self._head = max(self._head, head)
            if last <= position:
                self._skipped += last - first + 1
                continue
            if first > position + 1:
                await self._apply(pending, samples)
                pending, samples = [], []
                await self._close_gap(first)
                position = self.app.position
            # the data is at the publisher's version of its type (``schema``): the log's one row decoder upcasts
            # an older one to this process's version (the local log then stores it as that) and refuses a newer
            # one (UnknownSchemaVersion, naming its position); a published row carries no command id or key
            rows: list[StoredRow] = [
                (p, s, v, t, schema, raw, "", None, at)
                for p, s, v, t, schema, raw, at in _decode_rows(message.data)
                if p > position
            ]
            events = decode_rows(rows, self.app.events)
            self._skipped += (last - first + 1) - len(events)
            if events:
                pending.extend(events)
                position = events[-1].position
                committed_at = headers.get("Soloist-Committed-At")
                samples.append((float(committed_at) if committed_at else events[-1].recorded_at, head))
            self._messages += 1
            self._seq = seq
        await self._apply(pending, samples)

    async def _apply(self, events: list[RecordedEvent], samples: list[tuple[float, int]]) -> None:
        if not events:
            return
        await self.app.replicate(events)
        self._events += len(events)
        now, wall, position = time.monotonic(), time.time(), self.app.position
        for recorded_at, head in samples:
            self._lag.append((now, max(0.0, (wall - recorded_at) * 1000.0), max(0, head - position)))
        self._progress.set()
        self._progress = anyio.Event()

    async def _close_gap(self, first: int) -> None:
        """The stream's next message starts at ``first``, past our position + 1: the stream lacks the rest,
        so positions up to ``first - 1`` come from the history (the one path, whichever its source)."""
        history = self._history
        if history is None:
            raise UpstreamUnavailable(
                f"the stream {self.stream!r} no longer holds positions {self.app.position + 1}..{first - 1} "
                "(it keeps a bounded history) and this replica has neither --upstream HOST:PORT nor "
                "--upstream-db postgresql://... to fetch them from: restart it with one of them"
            )
        until, start = first - 1, self.app.position
        _log.info("jetstream_gap_filling", source=history.where, after=start, until=until)
        async with contextlib.aclosing(history.events(start)) as chunks:
            async for chunk in chunks:
                position = self.app.position
                await self.app.replicate([e for e in chunk if position < e.position <= until])
                if self.app.position >= until:
                    break
        self._filled += until - start
        _log.info("jetstream_gap_filled", source=history.where, events=until - start, position=self.app.position)
