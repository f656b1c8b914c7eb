"""The single-writer actor, pipelined: batch N+1 is decided and encoded while batch N is made durable.

One writer owns the write model (``stream id -> state``, rebuilt from the log at start) and the only
write connection. :meth:`Writer.run` runs two tasks in one task group::

    mailbox (bounded) --> actor: drain up to max_batch commands; decide each, in order, against the
       |                  *speculative* state (the last commit + every batch decided since); evolve;
       |                  encode the rows; keep one undo journal per batch
       v
    decided batches (bounded: at most max_undurable commands decided and not yet durable)
       |
       v
    committer: take ALL decided batches that wait (while one commit runs the next group grows: group
       |       commit under load) --> EventStore.append: one statement, one transaction, fsync
       v
    durable: the position advances, the group's idempotency keys join the durable map, the futures
       |     are resolved in position order (each command only once its own batch is durable)
       v
    publish(batch): queries never see an undurable event

- Backpressure: with ``max_undurable`` commands undurable the actor stops draining the mailbox, which
  fills; submitters then wait or get :class:`Overloaded`.
- Idempotency: the keys of undurable batches are visible to later decisions, so a retry in the next
  batch is a duplicate of the pending command. It is answered (with that command's id and position)
  when its own batch, which comes later, is durable; if the first one's batch fails, so does its own.
- A failed commit fails its commands with the :class:`PersistenceError`, and every batch decided on top
  of it with an error of the same class saying so; their undo journals are replayed newest first, so
  memory returns to the last durable state, and their pending keys vanish. The writer goes on serving,
  deciding the next commands against the durable state; unless the failure says this writer may never
  append again (:class:`Fenced`: its lease on a shared log is gone; :class:`ConcurrencyError`: another
  writer appended): then the writer stops with that error after failing what it held (it steps down).
- If the writer dies (cancelled, crashed), every command queued, decided or in the commit gets
  :class:`Broken`: nobody waits forever.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol, final

import anyio
import msgspec
import structlog

from ._errors import (
    Broken,
    Closed,
    ConcurrencyError,
    CQRSError,
    Fenced,
    IdempotencyConflict,
    InternalError,
    LogCorrupted,
    Overloaded,
    PersistenceError,
    UnknownType,
)
from ._gc import gc_paused
from ._guard import SingleWriterGuard
from ._messages import Batch, Receipt, RecordedEvent, TypeRegistry, encode, fingerprint
from ._store import EventRow, Forget, KeyRow, StoredKey

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from anyio.abc import TaskStatus
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from ._domain import Domain
    from ._store import EventStore

__all__ = ["Reply", "Writer", "WriterStatistics"]

_GATHER_FROM = 16  # a commit that acknowledged fewer commands is not followed by a gathering wait
DEFAULT_KEY_TTL: Final = 86_400.0  # a day: how long an idempotency key is remembered at least (Writer)
_FORGET_MAX = 4096  # expired keys deleted per commit at most: a backlog goes over several commits


def check_key_ttl(key_ttl: float | None) -> None:
    """Refuse a ``key_ttl`` that is not a positive number of seconds (None: keys are kept forever)."""
    if key_ttl is not None and not key_ttl > 0:
        raise ValueError(f"key_ttl ({key_ttl}) is in seconds and must be positive, or None to keep keys forever")


_log = structlog.get_logger("soloist.writer")
# The write model's checkpoint: {"by_type": [[state type name, [[stream, version, state], ...]], ...]}, so that
# one typed decode call reads every state of a type. The format before (still read) was a JSON array of
# [stream, version, state type name, state], decoded one state at a time: 233k shop states loaded in 1.10-1.29 s
# that way, 0.86-0.96 s grouped, in the same runs (a dict of states per type, decoded by msgspec: 1.48 s).
_decode_checkpoint: Final = msgspec.json.Decoder(dict[str, list[tuple[str, msgspec.Raw]]]).decode
_decode_checkpoint_rows: Final = msgspec.json.Decoder(list[tuple[str, int, str, msgspec.Raw]]).decode
_ABSENT: Final = object()
_new_tuple: Final = tuple.__new__

Undo = list[tuple[str, object, int]]  # (stream, old state or _ABSENT, old version), in the order applied


@dataclass(frozen=True, slots=True, kw_only=True)
class WriterStatistics:
    position: int  # durable
    queue_depth: int
    queue_peak: int
    queue_capacity: int
    batches: int  # transactions (a commit takes every decided batch that waits)
    batch_size_last: int  # commands per transaction
    batch_size_max: int
    batch_size_mean: float
    commit_ms_last: float
    accepted: int
    rejected: int
    duplicates: int
    failed: int
    undurable: int = 0  # commands decided, not yet durable
    undurable_peak: int = 0
    keys: int = 0  # idempotency keys remembered (durable)
    keys_forgotten: int = 0  # keys deleted ``key_ttl`` after they were stored


class Reply(Protocol):
    """Where a command's outcome goes: an ``asyncio.Future`` (``submit``), or a caller's own object.

    The writer calls ``set_result``/``set_exception`` once, from its own task, when the outcome is known
    (after the commit, in position order), unless ``done()``. A callback-driven caller (the socket server)
    passes an object that answers at once: no future, no loop turn per command.
    """

    def done(self) -> bool: ...

    def set_result(self, result: Receipt, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class _Submission(NamedTuple):  # one per command on the hot path: a NamedTuple builds 5x faster
    command: object
    type_name: str
    key: str | None
    future: Reply
    submitted: float  # perf_counter() at submit: the metrics' submit-to-ack latency (soloist._metrics)


@dataclass(eq=False, slots=True)
class _Decided:
    """One decided batch, waiting to be (or being) made durable."""

    commands: int
    position: int = 0  # the speculative head after this batch
    rows: list[EventRow] = field(default_factory=list)
    objects: list[object] = field(default_factory=list)  # the domain events, aligned with rows
    key_rows: list[KeyRow] = field(default_factory=list)
    keys: list[tuple[str, StoredKey]] = field(default_factory=list)
    undo: Undo = field(default_factory=list)
    outcomes: list[tuple[_Submission, Receipt | CQRSError]] = field(default_factory=list)


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
        "keys_forgotten",
        "peak",
        "rejected",
        "undurable_peak",
    )

    def __init__(self) -> None:
        self.batches = self.commands = self.batch_last = self.batch_max = self.peak = 0
        self.accepted = self.rejected = self.duplicates = self.failed = self.undurable_peak = 0
        self.keys_forgotten = 0
        self.commit_ms = 0.0


@final
class Writer:
    """The one writer: decides commands and appends to the log. Start it with ``await tg.start(w.run)``.

    ``max_undurable`` bounds the commands decided but not yet durable (default ``2 * max_batch``: one
    group in the commit, one growing behind it).

    ``key_ttl``: an idempotency key is remembered for at least this many seconds after its command was
    committed (default a day; None: forever). The log keeps keys in commit order; a later commit deletes
    the oldest that expired (at most ``_FORGET_MAX``) in its own transaction, and only then does the writer
    forget them, so a key is never used again while its old row exists. The writer alone keeps keys
    unique (the log has no index on them: see runtime/_log.py). ``clock`` gives the time stored with events
    and keys (``time.time``; tests pass their own).
    """

    def __init__(
        self,
        domain: Domain[Any, Any, Any, Any],
        log: EventStore,
        *,
        commands: TypeRegistry,
        events: TypeRegistry,
        publish: Callable[[Batch], None],
        capacity: int = 8192,
        max_batch: int = 1024,
        states: TypeRegistry | None = None,
        max_undurable: int | None = None,
        gather: float = 0.001,
        key_ttl: float | None = DEFAULT_KEY_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_key_ttl(key_ttl)
        if max_undurable is None:
            max_undurable = 2 * max_batch
        if capacity < 1 or max_batch < 1 or max_undurable < 1:
            raise ValueError(
                f"capacity ({capacity}), max_batch ({max_batch}) and max_undurable ({max_undurable}) must be at least 1"
            )
        if not 0 <= gather <= 1:
            raise ValueError(f"gather ({gather}) is in seconds, from 0 (never wait) to 1")
        self._gather_for = gather
        self._key_ttl = key_ttl
        self._clock = clock
        self._domain = domain
        self._decide = domain.decide
        self._evolve = domain.evolve
        self._stream_of = domain.stream_of
        self._affects = domain.affects
        self._log = log
        self._commands = commands
        self._events = events
        self._state_types = states  # the domain's write-model state classes, for checkpoints
        self._publish = publish
        self._capacity = capacity
        self._max_batch = max_batch
        self._max_undurable = max_undurable
        self._states: dict[str, object] = {}  # speculative: includes the batches decided, not yet durable
        self._versions: dict[str, int] = {}
        self._keys: dict[str, StoredKey] = {}  # durable
        self._pending_keys: dict[str, StoredKey] = {}  # of decided batches not yet durable
        self._key_times: deque[tuple[float, str]] = deque()  # (recorded_at, key) of _keys, oldest first
        self._position = 0  # durable
        self._head = 0  # speculative: the position the next decided event takes is _head + 1
        self._pending: deque[_Decided] = deque()  # decided, waiting for the committer
        self._inflight: list[_Decided] = []  # in the commit running now
        self._undurable = 0  # commands in _pending and _inflight
        self._draining = False
        self._fatal: PersistenceError | ConcurrencyError | None = None  # why the writer stepped down
        # asyncio events (the futures are asyncio's too): made once, cleared and set, no allocation per wait
        self._wake = asyncio.Event()  # the committer: something was decided, or the actor is done
        self._room = asyncio.Event()  # the actor: a commit finished, undurable commands went down
        self._guard = SingleWriterGuard("the writer's decide/commit path")
        self._send: MemoryObjectSendStream[_Submission] | None = None
        self._stats = _Counters()
        self._ids = itertools.count(1)
        self._id_prefix = f"{os.getpid():x}-{time.time_ns():x}-"
        # metrics hook (soloist._metrics), once per batch: (commit seconds or None, submit times, ack time)
        self.observer: Callable[[float | None, list[float], float], None] | None = None

    # -- state ----------------------------------------------------------------------------------------

    @property
    def position(self) -> int:
        """The last durable global position."""
        return self._position

    @property
    def states(self) -> Mapping[str, object]:
        """The write model, speculative: it includes batches decided but not yet durable (read-only view;
        for tests and diagnostics)."""
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
            undurable=self._undurable,
            undurable_peak=s.undurable_peak,
            keys=len(self._keys),
            keys_forgotten=s.keys_forgotten,
        )

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
        self._position = self._head = snapshot[0]
        return self._position

    def _load_checkpoint(self, body: bytes) -> tuple[dict[str, object], dict[str, int]]:
        if self._state_types is None:
            raise ValueError("the domain declares no state types (Domain.states); the log is replayed instead")
        states: dict[str, object] = {}
        versions: dict[str, int] = {}
        with gc_paused():
            if body[:1] == b"[":  # the format before states were grouped by type: one decode per state
                decoder = self._state_types.decoder
                for stream, version, type_name, state in _decode_checkpoint_rows(body):
                    states[stream] = decoder(type_name)(state)
                    versions[stream] = version
                return states, versions
            class_of = self._state_types.class_of
            for type_name, rows in _decode_checkpoint(body)["by_type"]:
                cls = class_of(type_name)
                decode = msgspec.json.Decoder(list[tuple[str, int, cls]]).decode  # type: ignore[valid-type]
                for stream, version, state in decode(rows):
                    states[stream] = state
                    versions[stream] = version
        return states, versions

    def replay(self, chunk: Sequence[RecordedEvent]) -> None:
        """Evolve committed events (in order, after :attr:`position`) into the write model; checks versions.

        For the start, before :meth:`run`: nothing may be decided and undurable.
        """
        states, versions, evolve, stream_of = self._states, self._versions, self._evolve, self._stream_of
        affects = self._affects
        with gc_paused():
            for event in chunk:
                stream = event.stream
                data = event.data
                if stream_of(data) != stream or versions.get(stream, 0) + 1 != event.version:
                    raise LogCorrupted(
                        f"{self._log.where}: event at position {event.position} is version {event.version} "
                        f"of {stream!r}, expected {versions.get(stream, 0) + 1}"
                    )
                states[stream] = evolve(states.get(stream), data)
                versions[stream] = event.version
                if affects is not None:
                    for other in affects(data):
                        states[other] = evolve(states.get(other), data)
        if chunk:
            self._position = self._head = chunk[-1].position

    async def load_keys(self) -> None:
        """Load every idempotency key (written with its events, so always in step with the log); those past
        ``key_ttl`` are deleted by the next commits."""
        keys = await self._log.keys()
        self._keys = keys
        if self._key_ttl is not None:  # in the log's order: the log deletes its oldest rows
            self._key_times = deque([(stored.recorded_at, key) for key, stored in keys.items()])

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

        Matches the log at ``position``: the batches decided but not yet durable are taken out of the copy
        with their undo journals (newest first). States are immutable values, so shallow copies of the two
        dicts are a consistent checkpoint; ``serialise`` (JSON: the states grouped by state type, one
        ``[stream, version, state]`` row each, so that loading decodes each type in one call) may then run
        in a worker thread while the writer goes on.
        """
        if self._state_types is None:
            return None
        states, versions, name_of = dict(self._states), dict(self._versions), self._state_types.name_of
        for decided in reversed([*self._inflight, *self._pending]):
            _undo(states, versions, list(decided.undo), 0)

        def serialise() -> bytes:
            by_type: dict[str, list[tuple[str, int, object]]] = {}
            for stream, state in states.items():
                rows = by_type.get(name := name_of(state))
                if rows is None:
                    rows = by_type[name] = []
                rows.append((stream, versions[stream], state))
            return encode({"by_type": list(by_type.items())})

        return self._position, serialise

    # -- submission -----------------------------------------------------------------------------------

    def submit_nowait(self, command: object, *, idempotency_key: str | None = None) -> asyncio.Future[Receipt]:
        """Enqueue a command without waiting; the future resolves after its batch is durable.

        Raises :class:`Overloaded` if the queue is full (nothing was enqueued), :class:`Closed` if
        the writer is closed, :class:`UnknownType` if the command's class is not registered.
        """
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        self.submit_reply(command, future, idempotency_key=idempotency_key)
        return future

    def submit_reply(self, command: object, reply: Reply, *, idempotency_key: str | None = None) -> None:
        """Enqueue a command without waiting; ``reply`` gets its outcome after its batch is durable.

        Raises like :meth:`submit_nowait` (and then ``reply`` is never called).
        """
        # tuple.__new__ skips the NamedTuple's Python-level __new__ (0.26 -> 0.17 us), once per command
        submission = _new_tuple(
            _Submission, (command, self._commands.name_of(command), idempotency_key, reply, time.perf_counter())
        )
        send = self._open_send()
        try:
            send.send_nowait(submission)
        except anyio.WouldBlock:
            raise Overloaded(self._capacity) from None
        except anyio.ClosedResourceError:
            raise Closed("the writer is closed; the command was not taken") from None
        except anyio.BrokenResourceError:
            raise Broken("the writer has died; the command was not taken") from None

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
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        submission = _new_tuple(
            _Submission, (command, self._commands.name_of(command), idempotency_key, future, time.perf_counter())
        )
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
        return await future

    def _open_send(self) -> MemoryObjectSendStream[_Submission]:
        if self._send is None:
            raise Closed("the writer is not running; start it with `await tg.start(writer.run)`")
        return self._send

    def close(self) -> None:
        """Stop taking commands. What is already queued is still decided and committed."""
        if self._send is not None:
            self._send.close()

    # -- the actor and the committer ------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve the mailbox until :meth:`close`, then decide and commit what is queued, and return."""
        with self._guard:  # one run at a time: a second one raises BusyResourceError
            send, receive = anyio.create_memory_object_stream[_Submission](self._capacity)
            self._send = send
            self._draining = False
            self._fatal = None
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._commit_loop, tg.cancel_scope)
                    task_status.started()
                    await self._decide_loop(receive)
            finally:
                self._send = None
                send.close()
                self._fail_queued(receive)
                receive.close()
                self._abandon_undurable()
            if self._fatal is not None:  # stepped down: raised as itself, not in a group
                raise self._fatal

    async def _decide_loop(self, receive: MemoryObjectReceiveStream[_Submission]) -> None:
        """The actor: decide a batch as soon as commands wait, while the undurable amount has room."""
        max_batch, max_undurable = self._max_batch, self._max_undurable
        stats, pending, room, wake = self._stats, self._pending, self._room, self._wake
        try:
            while True:
                while self._undurable >= max_undurable:  # backpressure: the mailbox fills meanwhile
                    room.clear()
                    await room.wait()
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
                limit = min(max_batch, max_undurable - self._undurable)  # a failed commit may have freed room
                try:
                    while len(batch) < limit:
                        batch.append(receive.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    pass
                pending.append(self._decide_batch(batch))
                self._undurable += len(batch)
                if self._undurable > stats.undurable_peak:
                    stats.undurable_peak = self._undurable
                wake.set()
        finally:
            self._draining = True  # the committer returns once everything decided is committed
            wake.set()

    async def _commit_loop(self, scope: anyio.CancelScope) -> None:
        """The committer: make decided batches durable strictly in order, all that wait in one transaction.

        A commit that says this writer may never append again stops the writer (``scope``): see _commit.
        """
        pending, wake, room = self._pending, self._wake, self._room
        while True:
            if not pending:
                if self._draining:
                    return
                wake.clear()
                await wake.wait()
                continue
            group = self._inflight = list(pending)
            pending.clear()
            try:
                await self._commit(group)
            except (PersistenceError, ConcurrencyError) as exc:
                self._fatal = exc
                self.close()  # nothing more is taken; what is queued fails with this error
                scope.cancel()
                return
            self._inflight = []
            room.set()
            released = self._stats.batch_last
            if released >= _GATHER_FROM and pending and self._gather_for and not self._draining:
                await self._gather(released)

    async def _gather(self, released: int) -> None:
        """Before the next commit, wait (at most ``gather`` seconds) until about as many commands as the
        last commit acknowledged have been decided on top of what waits.

        Under concurrent load the callers just acknowledged send again at once; without the wait the
        pipelined writer settles into two alternating half-size groups, each paying a whole commit (~550 us
        of CPU on the 2-core machine: see ARCHITECTURE, "Gathering"). A lone caller never waits (the last
        commit must have acknowledged at least _GATHER_FROM commands), nor does an idle writer (nothing
        pending: the committer sleeps until something is decided).
        """
        wake = self._wake
        want = self._undurable + (released * 4) // 5  # nothing is in flight here: undurable = what waits
        with anyio.move_on_after(self._gather_for):
            while not self._draining and self._undurable < want:
                wake.clear()
                await wake.wait()

    def _fail_queued(self, receive: MemoryObjectReceiveStream[_Submission]) -> None:
        """If the actor dies (cancelled, crashed, stepped down), nobody queued may wait forever."""
        fatal = self._fatal
        while True:
            try:
                sub = receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return
            if not sub.future.done():
                if fatal is not None:
                    sub.future.set_exception(_on_top_of(fatal))
                else:
                    sub.future.set_exception(Broken("the writer stopped before deciding this command"))

    def _abandon_undurable(self) -> None:
        """The writer stops with batches decided but not known to be durable: fail their commands, undo them."""
        batches = [*self._inflight, *self._pending]
        self._inflight = []
        self._pending.clear()
        if batches:
            error = Broken(
                "the writer stopped before this command's batch was known to be durable; it may or may not "
                "be in the log: retry it with the same idempotency key"
            )
            self._roll_back(batches, error, error)

    def _decide_batch(self, batch: list[_Submission]) -> _Decided:
        """Decide, evolve and encode one batch against the speculative state (synchronous: no await)."""
        states, versions = self._states, self._versions
        durable_keys, pending_keys = self._keys, self._pending_keys
        decide, evolve, stream_of, affects = self._decide, self._evolve, self._stream_of, self._affects
        tag_of = self._events.tag_of
        translate = self._domain.translate
        now = self._clock()
        position = start = self._head
        decided = _Decided(len(batch))
        rows, objects, undo, outcomes = decided.rows, decided.objects, decided.undo, decided.outcomes
        prefix = self._id_prefix
        ids = self._ids
        for sub in batch:
            command_id = f"{prefix}{next(ids)}"
            key = sub.key
            fp = ""
            try:
                if key is not None:
                    fp = fingerprint(sub.type_name, sub.command)
                    seen = pending_keys.get(key) or durable_keys.get(key)
                    if seen is not None:
                        if seen.fingerprint == fp:
                            # the original command's id ('' only for a key from a log older than the column)
                            outcomes.append((sub, Receipt(seen.position, seen.command_id or command_id, 0, True)))
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
                    if affects is not None:  # other streams whose state this event also changes
                        for other in affects(event):
                            previous = states.get(other, _ABSENT)
                            undo.append((other, previous, versions.get(other, 0)))
                            states[other] = evolve(None if previous is _ABSENT else previous, event)
                    position += 1
                    type_name, schema = tag_of(event)
                    rows.append(
                        (
                            position,
                            stream,
                            old_version + 1,
                            type_name,
                            schema,
                            encode(event),  # encoded here: a bad event fails only its command
                            command_id,
                            key,
                            now,
                        )
                    )
                    objects.append(event)
            except Exception as exc:
                # A bug in evolve/encoding: undo this command only; the rest of the batch stands.
                _undo(states, versions, undo, mark)
                del rows[row_mark:], objects[row_mark:]
                position = start + len(rows)
                outcomes.append((sub, self._internal(exc, sub)))
                continue
            if key is not None:
                stored = _new_tuple(StoredKey, (fp, position, command_id, now))
                pending_keys[key] = stored  # later decisions see it; it vanishes if this batch fails
                decided.keys.append((key, stored))
                decided.key_rows.append((key, fp, position, command_id, now))
            outcomes.append((sub, _new_tuple(Receipt, (position, command_id, len(rows) - row_mark, False))))
        decided.position = self._head = position
        return decided

    async def _commit(self, group: list[_Decided]) -> None:
        """Append the group in one transaction; then acknowledge and publish it, or roll everything back."""
        if len(group) == 1:
            rows, objects, key_rows = group[0].rows, group[0].objects, group[0].key_rows
        else:
            rows = [row for d in group for row in d.rows]
            objects = [obj for d in group for obj in d.objects]
            key_rows = [key_row for d in group for key_row in d.key_rows]
        commands = sum(d.commands for d in group)
        stats = self._stats
        key_times = self._key_times
        forget = self._expired() if key_times else None
        if rows or key_rows or forget is not None:
            commit_started = time.perf_counter()
            try:
                await self._log.append(rows, key_rows, forget)
            except (PersistenceError, ConcurrencyError) as exc:
                on_top = list(self._pending)  # decided while this commit ran, on a state that is now gone
                self._pending.clear()
                fatal = isinstance(exc, (Fenced, ConcurrencyError))  # never again: this writer steps down
                _log.error(
                    "batch_commit_failed",
                    commands=commands,
                    events=len(rows),
                    decided_on_top=sum(d.commands for d in on_top),
                    error=str(exc),
                    stepping_down=fatal,
                )
                self._roll_back(group, exc, _on_top_of(exc), on_top)
                if fatal:
                    raise
                return
            stats.commit_ms = (time.perf_counter() - commit_started) * 1000
        committed_at = time.monotonic()
        # durable: from here to the publish nothing awaits, so no decision sees a half-acknowledged group
        self._position = group[-1].position
        self._undurable -= commands
        keys, pending_keys = self._keys, self._pending_keys
        expiring = self._key_ttl is not None
        if forget is not None:  # deleted from the log: only now may a later command use these keys again
            for _ in range(forget.limit):
                keys.pop(key_times.popleft()[1], None)
            stats.keys_forgotten += forget.limit
        for d in group:
            for key, stored in d.keys:
                keys[key] = stored
                if expiring:
                    key_times.append((stored.recorded_at, key))
                del pending_keys[key]
        stats.batches += 1
        stats.commands += commands
        stats.batch_last = commands
        if commands > stats.batch_max:
            stats.batch_max = commands
        for d in group:  # position order
            for sub, outcome in d.outcomes:
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
        if self.observer is not None:  # metrics: one call per commit, nothing per command when off
            wrote = bool(rows or key_rows or forget is not None)
            submitted = [sub.submitted for d in group for sub, _ in d.outcomes]
            self.observer(stats.commit_ms / 1000 if wrote else None, submitted, time.perf_counter())
        _log.debug(
            "batch_committed",
            commands=commands,
            batches=len(group),
            events=len(rows),
            position=self._position,
            commit_ms=round(stats.commit_ms, 3),
        )
        if rows:
            self._publish(Batch(events=_recorded(rows, objects), committed_at=committed_at))

    def _expired(self) -> Forget | None:
        """The oldest keys (commit order, as the log keeps them) past ``key_ttl``, up to the first that is not
        and at most _FORGET_MAX (a backlog is deleted over several commits); None if there are none.

        The log deletes as many of its oldest keys recorded before the same cutoff: the same ones, unless an
        append whose outcome was unknown (a lost connection) deleted some already; then it deletes other
        expired ones or none, never a key before its time, and the writer's memory catches up as it goes.
        """
        ttl = self._key_ttl
        if ttl is None:
            return None
        cutoff = self._clock() - ttl
        expired = 0
        for recorded_at, _ in self._key_times:
            if recorded_at >= cutoff or expired == _FORGET_MAX:
                break
            expired += 1
        return _new_tuple(Forget, (expired, cutoff)) if expired else None

    def _roll_back(
        self, failed: list[_Decided], error: CQRSError, on_top_error: CQRSError, on_top: Sequence[_Decided] = ()
    ) -> None:
        """Fail ``failed`` with ``error`` and ``on_top`` (decided after them) with ``on_top_error``; undo
        both, newest first, back to the last durable state. Together they are every undurable batch."""
        states, versions = self._states, self._versions
        for decided in reversed([*failed, *on_top]):  # each journal was written on top of the batch before
            _undo(states, versions, decided.undo, 0)
        self._head = self._position
        self._pending_keys.clear()
        self._undurable = 0
        self._room.set()
        for batches, exc in ((failed, error), (on_top, on_top_error)):
            for decided in batches:
                self._stats.failed += decided.commands
                for sub, _ in decided.outcomes:
                    if not sub.future.done():
                        sub.future.set_exception(exc)

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
    """The batch's events as the broadcast hands them out: the same immutable domain objects, no re-decode.

    Built with ``tuple.__new__`` (the field order of RecordedEvent), skipping the NamedTuple's Python-level
    ``__new__``: 0.27 -> 0.16 us per event, on every commit.
    """
    return tuple(
        [
            _new_tuple(RecordedEvent, (p, s, v, t, obj, at, c, k, sc))
            for (p, s, v, t, sc, _, c, k, at), obj in zip(rows, objects, strict=True)
        ]
    )


def _undo(states: dict[str, object], versions: dict[str, int], undo: Undo, mark: int) -> None:
    """Replay an undo journal backwards down to ``mark``, and cut it there."""
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


def _on_top_of(exc: PersistenceError | ConcurrencyError) -> PersistenceError | ConcurrencyError:
    """The error for commands decided on top of a batch whose commit failed: the same class, saying so."""
    message = f"not committed: decided on top of a batch whose commit failed ({exc})"
    if isinstance(exc, Fenced):
        return Fenced(message, epoch=exc.epoch, holder=exc.holder)
    if isinstance(exc, ConcurrencyError):
        return ConcurrencyError(message)
    if type(exc).__init__ is PersistenceError.__init__:  # StorageFull, ReadOnlyStorage, ...: a message only
        return type(exc)(message)
    return PersistenceError(message)
