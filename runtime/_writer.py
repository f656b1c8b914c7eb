"""The single-writer actor: bounded mailbox -> decide serially -> group commit -> acknowledge -> publish.

One task owns the write model (``stream id -> state``, rebuilt from the log at start) and the only
write connection. Each turn it drains everything waiting in its mailbox (up to ``max_batch``), decides
every command in order against the state left by the previous one, appends all the batch's events in
one transaction, and only then resolves the submitters' futures with a :class:`Receipt` and hands the
batch to the broadcast.

If the commit fails, every command of the batch gets the :class:`PersistenceError`, nothing is
acknowledged, and an undo journal puts the in-memory state back where the last commit left it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple, final

import anyio
import msgspec
import structlog

from ._errors import (
    Broken,
    Closed,
    CQRSError,
    IdempotencyConflict,
    InternalError,
    LogCorrupted,
    Overloaded,
    PersistenceError,
    UnknownType,
)
from ._gc import gc_paused
from ._guard import SingleWriterGuard
from ._log import EventLog, EventRow, KeyRow, LogReader, StoredKey
from ._messages import Batch, Receipt, RecordedEvent, TypeRegistry, encode, fingerprint

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from anyio.abc import TaskStatus
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from ._domain import Domain

__all__ = ["Writer", "WriterStatistics"]

_log = structlog.get_logger("soloist.writer")
_decode_checkpoint: Final = msgspec.json.Decoder(list[tuple[str, int, str, msgspec.Raw]]).decode
_ABSENT: Final = object()


@dataclass(frozen=True, slots=True, kw_only=True)
class WriterStatistics:
    position: int
    queue_depth: int
    queue_peak: int
    queue_capacity: int
    batches: int
    batch_size_last: int
    batch_size_max: int
    batch_size_mean: float
    commit_ms_last: float
    accepted: int
    rejected: int
    duplicates: int
    failed: int


class _Submission(NamedTuple):  # one per command on the hot path: a NamedTuple builds 5x faster
    command: object
    type_name: str
    key: str | None
    future: asyncio.Future[Receipt]
    submitted: float  # perf_counter() at submit: the metrics' submit-to-ack latency (soloist._metrics)


class _Counters:
    __slots__ = (
        "accepted",
        "batch_last",
        "batch_max",
        "batches",
        "commands",
        "commit_ms",
        "duplicates",
        "failed",
        "peak",
        "rejected",
    )

    def __init__(self) -> None:
        self.batches = self.commands = self.batch_last = self.batch_max = self.peak = 0
        self.accepted = self.rejected = self.duplicates = self.failed = 0
        self.commit_ms = 0.0


@final
class Writer:
    """The one task that decides commands and appends to the log. Start it with ``await tg.start(w.run)``."""

    def __init__(
        self,
        domain: Domain[Any, Any, Any, Any],
        log: EventLog,
        *,
        commands: TypeRegistry,
        events: TypeRegistry,
        publish: Callable[[Batch], None],
        capacity: int = 8192,
        max_batch: int = 1024,
        states: TypeRegistry | None = None,
    ) -> None:
        if capacity < 1 or max_batch < 1:
            raise ValueError(f"capacity ({capacity}) and max_batch ({max_batch}) must be at least 1")
        self._domain = domain
        self._decide = domain.decide
        self._evolve = domain.evolve
        self._stream_of = domain.stream_of
        self._log = log
        self._commands = commands
        self._events = events
        self._state_types = states  # the domain's write-model state classes, for checkpoints
        self._publish = publish
        self._capacity = capacity
        self._max_batch = max_batch
        self._states: dict[str, object] = {}
        self._versions: dict[str, int] = {}
        self._keys: dict[str, StoredKey] = {}
        self._position = 0
        self._guard = SingleWriterGuard("the writer's decide/commit path")
        self._send: MemoryObjectSendStream[_Submission] | None = None
        self._receive: MemoryObjectReceiveStream[_Submission] | None = None
        self._stats = _Counters()
        self._ids = itertools.count(1)
        self._id_prefix = f"{os.getpid():x}-{time.time_ns():x}-"
        # metrics hook (soloist._metrics), once per batch: (commit seconds or None, submit times, ack time)
        self.observer: Callable[[float | None, list[float], float], None] | None = None

    # -- state ----------------------------------------------------------------------------------------

    @property
    def position(self) -> int:
        """The last committed global position."""
        return self._position

    @property
    def states(self) -> Mapping[str, object]:
        """The write model (read-only view; for tests and diagnostics)."""
        return self._states

    def statistics(self) -> WriterStatistics:
        s = self._stats
        depth = 0 if self._send is None else self._send.statistics().current_buffer_used
        return WriterStatistics(
            position=self._position,
            queue_depth=depth,
            queue_peak=s.peak,
            queue_capacity=self._capacity,
            batches=s.batches,
            batch_size_last=s.batch_last,
            batch_size_max=s.batch_max,
            batch_size_mean=s.commands / s.batches if s.batches else 0.0,
            commit_ms_last=s.commit_ms,
            accepted=s.accepted,
            rejected=s.rejected,
            duplicates=s.duplicates,
            failed=s.failed,
        )

    async def recover(self, reader: LogReader, snapshot: tuple[int, bytes] | None = None) -> None:
        """Rebuild the write model, stream versions and idempotency keys: a checkpoint (if any) + the log.

        ``snapshot`` is ``(position, body)`` from :meth:`checkpoint`; if its body cannot be loaded (a class
        changed, bytes damaged), the whole log is replayed instead. (:class:`App` does the same in one
        pass over the log shared with its replicas: :meth:`restore`, :meth:`replay`, :meth:`load_keys`.)
        """
        started = time.perf_counter()
        after = self.restore(snapshot)
        async for chunk in reader.scan(after=after):
            self.replay(chunk)
        await self.load_keys()
        self.log_recovered(from_checkpoint=after, events=self._position - after, started=started)

    def restore(self, snapshot: tuple[int, bytes] | None) -> int:
        """Load a write-model checkpoint ``(position, body)`` if it loads; the position to replay after."""
        if snapshot is None:
            return 0
        try:
            states, versions = self._load_checkpoint(snapshot[1])
        except (msgspec.MsgspecError, UnknownType, ValueError) as exc:
            _log.warning("writer_checkpoint_rejected", position=snapshot[0], reason=f"{type(exc).__name__}: {exc}")
            return 0
        self._states, self._versions = states, versions
        self._position = snapshot[0]
        return self._position

    def _load_checkpoint(self, body: bytes) -> tuple[dict[str, object], dict[str, int]]:
        if self._state_types is None:
            raise ValueError("the domain declares no state types (Domain.states); the log is replayed instead")
        decoder = self._state_types.decoder
        states: dict[str, object] = {}
        versions: dict[str, int] = {}
        with gc_paused():
            for stream, version, type_name, state in _decode_checkpoint(body):
                states[stream] = decoder(type_name)(state)
                versions[stream] = version
        return states, versions

    def replay(self, chunk: Sequence[RecordedEvent]) -> None:
        """Evolve committed events (in order, after :attr:`position`) into the write model; checks versions."""
        states, versions, evolve, stream_of = self._states, self._versions, self._evolve, self._stream_of
        with gc_paused():
            for event in chunk:
                stream = event.stream
                if stream_of(event.data) != stream or versions.get(stream, 0) + 1 != event.version:
                    raise LogCorrupted(
                        f"{self._log.path}: event at position {event.position} is version {event.version} "
                        f"of {stream!r}, expected {versions.get(stream, 0) + 1}"
                    )
                states[stream] = evolve(states.get(stream), event.data)
                versions[stream] = event.version
        if chunk:
            self._position = chunk[-1].position

    async def load_keys(self) -> None:
        """Load every idempotency key (written with its events, so always in step with the log)."""
        self._keys = await self._log.keys()

    def log_recovered(self, *, from_checkpoint: int, events: int, started: float) -> None:
        _log.info(
            "writer_recovered",
            position=self._position,
            from_checkpoint=from_checkpoint,
            events=events,
            streams=len(self._states),
            idempotency_keys=len(self._keys),
            ms=round((time.perf_counter() - started) * 1000, 1),
        )

    def checkpoint(self) -> tuple[int, Callable[[], bytes]] | None:
        """The write model as of the last commit: ``(position, serialise)``; None if it cannot be saved.

        Taken between batches, so it matches the log at ``position``. States are immutable values, so a
        shallow copy of the two dicts is a consistent checkpoint; ``serialise`` (JSON: one
        ``[stream, version, state type, state]`` row per stream, decoded by the domain's state types) may
        then run in a worker thread while the writer goes on.
        """
        if self._state_types is None:
            return None
        states, versions, name_of = dict(self._states), dict(self._versions), self._state_types.name_of

        def serialise() -> bytes:
            return encode([(stream, versions[stream], name_of(state), state) for stream, state in states.items()])

        return self._position, serialise

    # -- submission -----------------------------------------------------------------------------------

    def submit_nowait(self, command: object, *, idempotency_key: str | None = None) -> asyncio.Future[Receipt]:
        """Enqueue a command without waiting; the future resolves after its batch is durable.

        Raises :class:`Overloaded` if the queue is full (nothing was enqueued), :class:`Closed` if
        the writer is closed, :class:`UnknownType` if the command's class is not registered.
        """
        submission = self._make(command, idempotency_key)
        send = self._open_send()
        try:
            send.send_nowait(submission)
        except anyio.WouldBlock:
            raise Overloaded(self._capacity) from None
        except anyio.ClosedResourceError:
            raise Closed("the writer is closed; the command was not taken") from None
        except anyio.BrokenResourceError:
            raise Broken("the writer has died; the command was not taken") from None
        return submission.future

    async def submit(
        self,
        command: object,
        *,
        idempotency_key: str | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> Receipt:
        """Enqueue a command (waiting for room unless ``wait`` is False or ``timeout`` passes) and await its receipt.

        Once enqueued, cancelling the caller does not un-send the command: the log is the truth.
        """
        submission = self._make(command, idempotency_key)
        send = self._open_send()
        try:
            send.send_nowait(submission)  # fast path: no checkpoint when there is room
        except anyio.WouldBlock:
            if not wait:
                raise Overloaded(self._capacity) from None
            try:
                with anyio.fail_after(timeout):
                    await send.send(submission)
            except TimeoutError:
                raise Overloaded(self._capacity, timeout) from None
            except anyio.ClosedResourceError:
                raise Closed("the writer is closed; the command was not taken") from None
            except anyio.BrokenResourceError:
                raise Broken("the writer has died; the command was not taken") from None
        except anyio.ClosedResourceError:
            raise Closed("the writer is closed; the command was not taken") from None
        except anyio.BrokenResourceError:
            raise Broken("the writer has died; the command was not taken") from None
        return await submission.future

    def _make(self, command: object, key: str | None) -> _Submission:
        type_name = self._commands.name_of(command)
        loop = asyncio.get_running_loop()
        return _Submission(command, type_name, key, loop.create_future(), time.perf_counter())

    def _open_send(self) -> MemoryObjectSendStream[_Submission]:
        if self._send is None:
            raise Closed("the writer is not running; start it with `await tg.start(writer.run)`")
        return self._send

    def close(self) -> None:
        """Stop taking commands. What is already queued is still decided and committed."""
        if self._send is not None:
            self._send.close()

    # -- the actor ------------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve the mailbox until :meth:`close`, then drain what is queued and return."""
        send, receive = anyio.create_memory_object_stream[_Submission](self._capacity)
        self._send, self._receive = send, receive
        max_batch = self._max_batch
        stats = self._stats
        try:
            async with receive:
                task_status.started()
                while True:
                    try:
                        first = receive.receive_nowait()
                    except anyio.WouldBlock:
                        try:
                            first = await receive.receive()
                        except anyio.EndOfStream:
                            return
                    except anyio.EndOfStream:
                        return
                    batch = [first]
                    depth = 1 + receive.statistics().current_buffer_used
                    if depth > stats.peak:
                        stats.peak = depth
                    try:
                        while len(batch) < max_batch:
                            batch.append(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        pass
                    with self._guard:
                        await self._process(batch)
        finally:
            self._send = None
            send.close()
            self._fail_queued(receive)

    def _fail_queued(self, receive: MemoryObjectReceiveStream[_Submission]) -> None:
        """If the actor dies (cancelled, crashed), nobody queued may wait forever."""
        while True:
            try:
                sub = receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return
            if not sub.future.done():
                sub.future.set_exception(Broken("the writer stopped before deciding this command"))

    async def _process(self, batch: list[_Submission]) -> None:
        states, versions, keys = self._states, self._versions, self._keys
        decide, evolve, stream_of = self._decide, self._evolve, self._stream_of
        name_of, schema_of = self._events.name_of, self._events.schema_of
        translate = self._domain.translate
        now = time.time()
        position = start = self._position
        rows: list[EventRow] = []
        objects: list[object] = []  # the domain events, aligned with rows
        key_rows: list[KeyRow] = []
        batch_keys: dict[str, StoredKey] = {}
        undo: list[tuple[str, object, int]] = []  # (stream, old state or _ABSENT, old version)
        outcomes: list[tuple[_Submission, Receipt | CQRSError]] = []
        stats = self._stats
        prefix = self._id_prefix
        ids = self._ids
        for sub in batch:
            command_id = f"{prefix}{next(ids)}"
            key = sub.key
            fp = ""
            try:
                if key is not None:
                    fp = fingerprint(sub.type_name, sub.command)
                    seen = batch_keys.get(key) or keys.get(key)
                    if seen is not None:
                        if seen.fingerprint == fp:
                            outcomes.append((sub, Receipt(seen.position, command_id, 0, True)))
                        else:
                            outcomes.append((sub, IdempotencyConflict(key, seen.position)))
                        continue
                events = decide(states, sub.command)
            except Exception as exc:  # a rule (declared by the domain) or a bug: this command only
                outcomes.append((sub, self._rejection(exc, sub, translate)))
                continue
            mark, row_mark = len(undo), len(rows)
            try:
                for event in events:
                    stream = stream_of(event)
                    old_version = versions.get(stream, 0)
                    old = states.get(stream, _ABSENT)
                    undo.append((stream, old, old_version))
                    states[stream] = evolve(None if old is _ABSENT else old, event)
                    versions[stream] = old_version + 1
                    position += 1
                    rows.append(
                        (
                            position,
                            stream,
                            old_version + 1,
                            name_of(event),
                            schema_of(event),
                            encode(event),  # encoded here: a bad event fails only its command
                            command_id,
                            key,
                            now,
                        )
                    )
                    objects.append(event)
            except Exception as exc:
                # A bug in evolve/encoding: undo this command only; the rest of the batch stands.
                self._undo(undo, mark)
                del rows[row_mark:], objects[row_mark:]
                position = start + len(rows)
                outcomes.append((sub, self._internal(exc, sub)))
                continue
            if key is not None:
                stored = StoredKey(fingerprint=fp, position=position)
                batch_keys[key] = stored
                key_rows.append((key, fp, position))
            outcomes.append((sub, Receipt(position, command_id, len(rows) - row_mark)))

        commit_started = time.perf_counter()
        wrote = bool(rows or key_rows)
        if wrote:
            try:
                await self._log.append(rows, key_rows)
            except PersistenceError as exc:
                self._undo(undo, 0)
                stats.failed += len(batch)
                _log.error("batch_commit_failed", commands=len(batch), events=len(rows), error=str(exc))
                for sub, _ in outcomes:
                    if not sub.future.done():
                        sub.future.set_exception(exc)
                return
        committed_at = time.monotonic()
        commit_ms = (time.perf_counter() - commit_started) * 1000
        self._position = position
        keys.update(batch_keys)
        stats.batches += 1
        stats.commands += len(batch)
        stats.batch_last = len(batch)
        if len(batch) > stats.batch_max:
            stats.batch_max = len(batch)
        if wrote:
            stats.commit_ms = commit_ms
        for sub, outcome in outcomes:
            if isinstance(outcome, Receipt):
                if outcome.duplicate:
                    stats.duplicates += 1
                else:
                    stats.accepted += 1
                if not sub.future.done():
                    sub.future.set_result(outcome)
            else:
                stats.rejected += 1
                if not sub.future.done():
                    sub.future.set_exception(outcome)
        if self.observer is not None:  # metrics: one call per batch, nothing per command when off
            self.observer(commit_ms / 1000 if wrote else None, [sub.submitted for sub in batch], time.perf_counter())
        _log.debug(
            "batch_committed",
            commands=len(batch),
            events=len(rows),
            position=position,
            commit_ms=round(commit_ms, 3),
        )
        if rows:
            self._publish(Batch(events=_recorded(rows, objects), committed_at=committed_at))

    def _undo(self, undo: list[tuple[str, object, int]], mark: int) -> None:
        states, versions = self._states, self._versions
        for stream, old, old_version in reversed(undo[mark:]):
            if old is _ABSENT:
                states.pop(stream, None)
            else:
                states[stream] = old
            if old_version:
                versions[stream] = old_version
            else:
                versions.pop(stream, None)
        del undo[mark:]

    def _rejection(
        self, exc: Exception, sub: _Submission, translate: Callable[[Exception], CQRSError | None]
    ) -> CQRSError:
        if isinstance(exc, CQRSError):
            return exc
        error = translate(exc)
        if error is not None:
            return error
        return self._internal(exc, sub)

    def _internal(self, exc: Exception, sub: _Submission) -> CQRSError:
        _log.error("command_crashed", command_type=sub.type_name, exc_info=exc)
        return InternalError(f"{sub.type_name} could not be decided: {type(exc).__name__}: {exc}")


def _recorded(rows: list[EventRow], objects: list[object]) -> tuple[RecordedEvent, ...]:
    """The batch's events as the broadcast hands them out: the same immutable domain objects, no re-decode."""
    return tuple(
        RecordedEvent(p, s, v, t, obj, at, c, k, sc)  # positional: the field order of RecordedEvent
        for (p, s, v, t, sc, _, c, k, at), obj in zip(rows, objects, strict=True)
    )
