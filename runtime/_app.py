"""Wiring in one task group: ``async with App(domain, "shop.db") as app``.

The log is an :class:`~._store.EventStore`: a SQLite file (the default) or, for a ``postgresql://``
URL, a PostgreSQL schema (:func:`~._store.open_store` picks). The App knows only the port.

Order of start: open the log (SQLite: taking the file's writer lock; PostgreSQL: waiting for the
writer's lease) -> restore the write model and the replicas from their newest checkpoints -> one pass
over the log folds the rest into the write model, the replicas and the process managers -> start the
writer actor and the replicas -> wait until each replica has caught up with the head. Order of stop:
stop taking commands -> the writer drains and commits what it holds -> final checkpoint -> cancel
replicas -> give the lease up (PostgreSQL) -> close the log.

A *follower* App (``follower_of="host:port"``) has no writer: :meth:`App.replicate` appends events
that another writer already committed (same positions, verbatim) to a local SQLite log, and the
broadcast, replicas and queries work exactly as on the writer. Commands get :class:`NotWriter`.

A *standby* App (``standby=True``, PostgreSQL) starts like a writer but without the lease: it follows
the shared log (polling it), keeps its write model and replicas current, answers queries, and answers
commands with :class:`NotWriter` naming the lease's holder. When that lease expires (its writer died,
hung or lost its network) it takes the lease with the next epoch, reads what the old writer committed
last, loads the idempotency keys and serves commands. A writer that lost its lease can never append
again (every append checks the epoch in its own transaction): its commands fail with :class:`Fenced`
and it stops (the process exits; restarted, it comes back as a writer waiting for the lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

import anyio
import msgspec
import structlog

from ._broadcast import Broadcast, Subscription, SubscriptionStatistics
from ._digest import Digest, digest_of
from ._errors import (
    BadRequest,
    Broken,
    Closed,
    ConcurrencyError,
    CQRSError,
    Fenced,
    LogCorrupted,
    NotFound,
    NotWriter,
    PersistenceError,
)
from ._gc import gc_paused
from ._guard import SingleWriterGuard
from ._log import EventLog, Synchronous, check_contiguous
from ._messages import Answer, Batch, Receipt, RecordedEvent, TypeRegistry, encode
from ._process import ProcessRunner, ProcessStatistics, processes_of
from ._queries import Consistency, QueryRouter
from ._replica import Replica, ReplicaStatistics
from ._snapshot import SnapshotStore
from ._sqlitestore import SQLiteStore
from ._store import EventStore, Lease, describe_target, is_postgres_url, open_store
from ._writer import DEFAULT_KEY_TTL, Reply, Writer, WriterStatistics, check_key_ttl

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import TracebackType

    from anyio.abc import TaskGroup

    from ._domain import Domain, ReadModels
    from ._store import EventRow

__all__ = ["App", "AppStatistics"]

_log = structlog.get_logger("soloist.app")


@dataclass(frozen=True, slots=True, kw_only=True)
class AppStatistics:
    position: int
    role: str
    writer: WriterStatistics | None
    replicas: tuple[ReplicaStatistics, ...]
    subscriptions: tuple[SubscriptionStatistics, ...]
    processes: tuple[ProcessStatistics, ...] = ()


def _after(events: Sequence[RecordedEvent], position: int) -> tuple[RecordedEvent, ...]:
    return tuple(e for e in events if e.position > position)


async def _exit_beside(stack: AsyncExitStack, exc: BaseException | None) -> bool:
    """Exit the App's stack (task group, reader, log) without handing it the caller's exception.

    Only a cancellation is passed in, so that the cancel scopes can recognise (and swallow) their own;
    True if it was swallowed. A failure of the App's own tasks is raised unwrapped when it is alone.
    """
    cancelled = exc if isinstance(exc, anyio.get_cancelled_exc_class()) else None
    try:
        if cancelled is None:
            return bool(await stack.__aexit__(None, None, None))
        return bool(await stack.__aexit__(type(cancelled), cancelled, cancelled.__traceback__))
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        only = group.exceptions[0]
    raise only  # outside the handler: it keeps its own __cause__, and the group does not become its context


@final
class App:
    """The runtime for one domain and one log. Use as ``async with App(...) as app``.

    ``log``: a SQLite file's path, or a ``postgresql://USER@HOST:PORT/DBNAME`` URL. On PostgreSQL,
    ``standby`` starts a standby (see the module docstring), ``lease_ttl`` is the writer's lease in
    seconds (a dead writer is replaced after at most that long), ``holder`` names this process in the
    lease (default: host and pid). ``commit_gather``: after a commit that acknowledged 16 or more
    commands, the writer waits up to this many seconds for about as many to be decided before the next
    commit (their callers usually send again at once): fewer, larger commits under concurrent load; a
    lone caller never waits; 0 turns it off. ``key_ttl``: an idempotency key is remembered for at least this
    many seconds after its command committed (default a day; None: forever), then deleted from the log.
    """

    def __init__(
        self,
        domain: Domain[Any, Any, Any, Any],
        log: str | os.PathLike[str],
        *,
        replicas: int = 1,
        queue_capacity: int = 8192,
        max_batch: int = 1024,
        commit_gather: float = 0.001,
        key_ttl: float | None = DEFAULT_KEY_TTL,
        subscriber_buffer: int = 65536,
        synchronous: Synchronous = "FULL",
        snapshot_dir: str | os.PathLike[str] | None = None,
        snapshot_every: int = 0,
        query_timeout: float = 5.0,
        follower_of: str | None = None,
        rebuild_backoff: tuple[float, float] = (0.05, 60.0),
        standby: bool = False,
        lease_ttl: float = 5.0,
        holder: str | None = None,
        poll_interval: float = 0.05,
    ) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {replicas}")
        self.domain = domain
        self._target = log
        self.shared = is_postgres_url(log)  # a log other processes reach (PostgreSQL): fenced by a lease
        if standby and not self.shared:
            raise ValueError("standby=True needs a shared log (a postgresql:// URL); a SQLite file has one writer")
        if follower_of is not None and self.shared:
            raise ValueError("follower_of needs a local SQLite log; on PostgreSQL start a standby (standby=True)")
        check_key_ttl(key_ttl)  # here as well as in the Writer: a bad value fails at construction, not at start
        if lease_ttl <= 0 or poll_interval <= 0:
            raise ValueError(f"lease_ttl ({lease_ttl}) and poll_interval ({poll_interval}) must be positive")
        self._path = None if self.shared else Path(log)
        self.where = describe_target(log)  # refined by the store at start (PostgreSQL: with its schema)
        self._standby = standby
        self._lease_ttl = lease_ttl
        self._holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self._poll_interval = poll_interval
        self.role = "follower" if follower_of is not None else "standby" if standby else "writer"
        self._active_writer = "unknown"  # a standby's view of who holds the lease (for NotWriter)
        self.commands = TypeRegistry("command", domain.commands)
        self.events = TypeRegistry("event", domain.events, upcasters=domain.upcasters)
        self.queries = TypeRegistry("query", domain.queries)
        self.states = TypeRegistry("state", domain.states) if domain.states else None
        self._replica_count = replicas
        self._queue_capacity = queue_capacity
        self._max_batch = max_batch
        self._commit_gather = commit_gather
        self._key_ttl = key_ttl
        self._subscriber_buffer = subscriber_buffer
        self._synchronous: Synchronous = synchronous
        self._snapshots = SnapshotStore(snapshot_dir, domain=domain.name) if snapshot_dir is not None else None
        # the write model's checkpoints live beside the read models', under their own name
        self._writer_snapshots = (
            SnapshotStore(snapshot_dir, domain=f"{domain.name}.writer") if snapshot_dir is not None else None
        )
        self._last_writer_checkpoint = 0
        # the process managers' checkpoints (those that declare their state_type), by name, under their own names
        self._process_snapshots: dict[str, SnapshotStore] = {}
        self._last_process_checkpoint: dict[str, int] = {}
        self._snapshot_every = snapshot_every
        self._query_timeout = query_timeout
        self.follower_of = follower_of
        self._stack: AsyncExitStack | None = None
        self._writer: Writer | None = None
        self._writer_done = anyio.Event()
        self._writing = anyio.Event()  # set once this App is the writer (at start, or when a standby takes over)
        self._broadcast: Broadcast | None = None
        self._router: QueryRouter | None = None
        self._tg: TaskGroup | None = None
        self._position = 0  # follower only: last replicated position
        self._replicate_guard = SingleWriterGuard("App.replicate")
        self._store: EventStore | None = None
        self._last_checkpoint = 0
        self._checkpoint_lock = anyio.Lock()
        self.checkpoint_failures = 0  # checkpoints that raised: logged as checkpoint_failed, never fatal
        self._replica_scopes: dict[str, anyio.CancelScope] = {}
        self._rebuild_delays: dict[str, float] = {}
        self._rebuild_backoff = rebuild_backoff  # (first delay, longest delay) before a failed replica is rebuilt
        self._background_rebuild: tuple[anyio.CancelScope, asyncio.Future[list[Digest]]] | None = None
        self._processes: dict[str, ProcessRunner[Any]] = {}
        processes_of(domain.processes)  # names checked now, not at start
        # the read-model code every new replica gets (a start, a failed replica's rebuild, a rebuild), and
        # the version its checkpoints carry: the domain's, until rebuild(read_models=...) installs another
        self._read_models: Callable[[], ReadModels[Any]] = domain.read_models
        self._read_models_version = domain.read_models_version

    # -- lifecycle ------------------------------------------------------------------------------------

    # An App is a resource that owns a task group, as anyio's docs describe for such objects: the group is
    # entered in __aenter__ and exited in __aexit__, and the caller's body runs *beside* it, never through
    # it. So the body's exception reaches the caller as itself (not wrapped in an ExceptionGroup), and a
    # failure of the App's own tasks still surfaces (as that one exception if there is one).
    #
    # An embedded App leaves the process alone: no gc.freeze(), no switch interval. The CLI owns its
    # process and calls soloist.tune_process() (runtime/_gc.py says why). Start pauses the cyclic GC only
    # around its synchronous bulk sections (gc_paused), never across an await.

    async def __aenter__(self) -> App:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            await self._start(stack)
        except BaseException as exc:
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
            await _exit_beside(stack, exc)
            raise
        self._stack = stack
        return self

    async def _start(self, stack: AsyncExitStack) -> None:
        started = time.perf_counter()
        store = open_store(self._target, self.events, synchronous=self._synchronous)
        await store.open()
        stack.push_async_callback(store.aclose)
        self._store = store
        self.where = store.where
        for snapshots in (self._snapshots, self._writer_snapshots):
            if snapshots is not None:
                snapshots.log_id = store.log_id
        lease = store if isinstance(store, Lease) else None
        if lease is not None and not self._standby:
            # a plain writer waits for the lease (logging who holds it): restarted after kill -9, it comes
            # back by itself once the old lease expires
            await lease.wait_for_lease(self._holder, self._lease_ttl, poll=min(1.0, self._lease_ttl / 5))
        if lease is not None:  # runs after the task group has stopped (a standby that never took it: no-op)
            stack.push_async_callback(self._release_lease, lease)
        broadcast = Broadcast(store, buffer=self._subscriber_buffer)
        self._broadcast = broadcast
        head = await store.head()  # final for a writer: it holds the file lock or the lease
        writer_from = 0
        if self.follower_of is None:
            writer = Writer(
                self.domain,
                store,
                commands=self.commands,
                events=self.events,
                publish=broadcast.publish,
                capacity=self._queue_capacity,
                max_batch=self._max_batch,
                gather=self._commit_gather,
                key_ttl=self._key_ttl,
                states=self.states,
            )
            writer_from = writer.restore(await self._writer_checkpoint(head))
            self._writer = writer
        replicas = [self._new_replica(f"replica-{i}", broadcast) for i in range(self._replica_count)]
        position = await self._restore(replicas, head)
        if position:
            self._last_checkpoint = position
        replay_started = time.perf_counter()
        if not self._standby:
            self._make_processes()  # a standby makes them when it takes over
            await self._restore_processes(head)
        await self._replay_at_start(head, replicas)
        if self._writer is not None and not self._standby:
            await self._writer.load_keys()
            self._writer.log_recovered(from_checkpoint=writer_from, events=head - writer_from, started=replay_started)
        elif self._writer is None:
            self._position = head
        broadcast.head = head
        self._router = QueryRouter(replicas, self._head, timeout=self._query_timeout)
        tg = anyio.create_task_group()
        await stack.enter_async_context(tg)
        self._tg = tg
        if self._standby and lease is not None:
            self._active_writer = await lease.lease_holder() or self._active_writer
            tg.start_soon(self._stand_by, lease)
        elif self._writer is not None:
            await self._start_writer(tg, self._writer, lease)
            self._writing.set()
        for replica in replicas:
            await tg.start(self._run_replica, replica)
        if self._snapshots is not None and self._snapshot_every > 0:
            tg.start_soon(self._checkpoint_loop)
        await self._start_processes(tg)
        for replica in replicas:
            await replica.wait_for(head, timeout=3600)
        _log.info(
            "app_started",
            domain=self.domain.name,
            db=self.where,
            role=self.role,
            position=head,
            replicas=len(replicas),
            ms=round((time.perf_counter() - started) * 1000, 1),
        )

    async def _start_writer(self, tg: TaskGroup, writer: Writer, lease: Lease | None) -> None:
        await tg.start(self._run_writer, writer)
        if lease is not None:
            tg.start_soon(self._keep_lease, lease)

    async def _keep_lease(self, lease: Lease) -> None:
        """Renew the lease a few times per TTL (appends renew it too); if it is lost, the writer steps down.

        A renewal that fails for another reason (the connection dropped) is retried at the next tick: if
        the database stays unreachable past the TTL, the next renewal finds the lease expired (Fenced).
        """
        while True:
            await anyio.sleep(self._lease_ttl / 4)  # a real period: the lease is time
            try:
                await lease.renew_lease()
            except Fenced as exc:
                _log.error("lease_lost", where=self.where, error=str(exc), holder=exc.holder, epoch=exc.epoch)
                if self._writer is not None:
                    # stop taking commands and let the actor finish: what it holds meets the fence in the log
                    # (each such command fails as Fenced, not "may or may not be in the log"), and a commit in
                    # flight returns its real outcome (it may have landed before the lease was taken)
                    self._writer.close()
                    with anyio.move_on_after(self._lease_ttl):
                        await self._writer_done.wait()
                raise
            except PersistenceError as exc:
                _log.warning("lease_renew_failed", where=self.where, error=str(exc))

    async def _release_lease(self, lease: Lease) -> None:
        """Give the lease up at a clean stop, so that a successor need not wait for it to expire."""
        if lease.epoch is None:
            return
        with anyio.move_on_after(5, shield=True), contextlib.suppress(CQRSError):
            await lease.release_lease()

    async def _stand_by(self, lease: Lease) -> None:
        """Follow the shared log until its lease is free, then take it and become the writer."""
        store, writer, broadcast, tg = self._require_store(), self._writer, self._broadcast, self._tg
        if writer is None or broadcast is None or tg is None:
            raise Closed("the app is not running; use `async with App(...) as app`")
        poll = self._poll_interval
        attempt_every = min(1.0, self._lease_ttl / 5)
        next_attempt = 0.0
        _log.info("standby_following", where=self.where, position=writer.position, holder=self._holder)
        while True:
            now = time.monotonic()
            if now >= next_attempt:
                next_attempt = now + attempt_every
                if await lease.acquire_lease(self._holder, self._lease_ttl) is not None:
                    break
                self._active_writer = await lease.lease_holder() or "unknown (its lease expired)"
            await self._follow(store, writer, broadcast)
            await anyio.sleep(poll)  # polling the shared log: a real interval, not ordering
        taken = time.perf_counter()
        await self._follow(store, writer, broadcast)  # what the old writer committed last (it is fenced now)
        await writer.load_keys()
        self._standby = False
        self.role = "writer"
        self._make_processes()
        await self._start_writer(tg, writer, lease)
        self._writing.set()
        await self._start_processes(tg)
        _log.info(
            "standby_took_over",
            where=self.where,
            epoch=lease.epoch,
            position=writer.position,
            ms=round((time.perf_counter() - taken) * 1000, 1),
        )

    async def _follow(self, store: EventStore, writer: Writer, broadcast: Broadcast) -> None:
        """Read what the shared log holds past the write model, fold it, and hand it to the replicas."""
        while events := await store.read(writer.position):
            check_contiguous(self.where, writer.position, events)
            writer.replay(events)
            broadcast.publish(Batch(events=tuple(events), committed_at=time.monotonic()))
            if len(events) < 2000:
                return

    async def _writer_checkpoint(self, head: int) -> tuple[int, bytes] | None:
        store = self._writer_snapshots
        if store is None:
            return None
        found = await anyio.to_thread.run_sync(lambda: store.load(max_position=head))
        if found is None:
            return None
        self._last_writer_checkpoint = found.position
        return found.position, found.body

    async def _replay_at_start(self, head: int, replicas: Sequence[Replica]) -> None:
        """One pass over the log up to ``head``: each chunk decoded once, then evolved into the write model
        and applied to every replica, each from its own checkpoint position (the store reads as fast as it
        can: SQLite on this thread, nothing is served yet); the loop gets a turn between chunks."""
        writer = self._writer
        processes = tuple(self._processes.values())  # folded here too: one pass, not one per reader
        starts = [r.position for r in replicas] + ([writer.position] if writer is not None else [])
        starts += [p.position for p in processes]  # from their checkpoints (state_type), else from 0
        after = min(starts)
        if after >= head:
            return
        async for events in self._require_store().replay(after, head):
            with gc_paused():  # synchronous: a chunk is evolved and applied, no await
                first, last = events[0].position, events[-1].position
                if writer is not None and last > writer.position:
                    writer.replay(events if first > writer.position else _after(events, writer.position))
                for process in processes:
                    process.replay(events)
                batch = Batch(events=tuple(events))
                for replica in replicas:
                    if not replica.failed and last > replica.position:
                        part = batch if first > replica.position else Batch(events=_after(events, replica.position))
                        replica.apply_batch(part, sample_lag=False)

    async def _restore(self, replicas: Sequence[Replica], head: int) -> int:
        """Load the newest valid checkpoint into fresh replicas; the position it reflects (0 if none)."""
        store = self._snapshots
        if store is None:
            return 0
        version = self._read_models_version  # the replicas' code: a checkpoint of another is not restored
        snapshot = await anyio.to_thread.run_sync(lambda: store.load(max_position=head, schema=version))
        if snapshot is None:
            return 0
        with gc_paused():
            for replica in replicas:
                replica.restore(snapshot.position, msgspec.json.decode(snapshot.body))  # each replica owns its copy
        _log.info("replicas_restored", snapshot=str(snapshot.path), position=snapshot.position, count=len(replicas))
        return snapshot.position

    async def _run_replica(self, replica: Replica, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Run one replica; if its read models fail, it is marked failed and rebuilt (backing off).

        The other replicas keep serving meanwhile. A read model that fails on the same event every time
        (a bug in a projection) is retried with a growing delay (up to a minute), and shows in ``stats``.
        """
        with anyio.CancelScope() as scope:
            self._replica_scopes[replica.name] = scope
            await replica.run(task_status=task_status)
        if not replica.failed or scope.cancel_called:
            return
        first, longest = self._rebuild_backoff
        delay = self._rebuild_delays.get(replica.name, first)
        self._rebuild_delays[replica.name] = min(delay * 2, longest)
        _log.warning("replica_rebuild_scheduled", replica=replica.name, position=replica.position, in_s=delay)
        await anyio.sleep(delay)  # a real back-off, not ordering
        index = next((i for i, r in enumerate(self.router.replicas) if r is replica), None)
        if index is not None:
            await self.rebuild_replica(index)

    async def rebuild_replica(self, index: int) -> Replica:
        """Replace replica ``index`` by a fresh one: newest checkpoint (if any) + the log's tail, then live.

        The old replica stops at once (queries waiting on it move to another); the new one takes routed
        queries only once it has caught up with the head it saw at start. It runs the App's read-model code
        (the domain's, or what :meth:`rebuild` installed). Used for a failed replica. Returns the new replica.
        """
        router = self.router
        if self._tg is None or self._broadcast is None:
            raise Closed("the app is not running; use `async with App(...) as app`")
        old = router.replicas[index]
        scope = self._replica_scopes.pop(old.name, None)
        if scope is not None:
            scope.cancel()
        fresh = self._new_replica(old.name, self._broadcast)
        await self._restore([fresh], self.position)
        router.replace(index, fresh)
        await self._tg.start(self._run_replica, fresh)
        _log.info("replica_rebuilding", replica=fresh.name, from_position=fresh.position, head=self.position)
        return fresh

    def _new_replica(
        self, name: str, broadcast: Broadcast, code: tuple[Callable[[], ReadModels[Any]], int] | None = None
    ) -> Replica:
        """A replica running ``code`` (a factory and its version), by default the App's read-model code."""
        read_models, version = code or (self._read_models, self._read_models_version)
        return Replica(name, self.domain, broadcast, read_models=read_models, models_version=version)

    async def _run_writer(self, writer: Writer, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            await writer.run(task_status=task_status)
        finally:
            self._writer_done.set()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        stack, self._stack = self._stack, None
        if stack is None:
            return False
        try:
            with anyio.CancelScope(shield=True):
                if self._writer is not None and not self._standby:  # a standby's writer never ran
                    self._writer.close()  # stop taking commands; the actor drains what it holds
                    with anyio.move_on_after(30):
                        await self._writer_done.wait()
                if self._snapshots is not None and exc_type is None and self._router is not None:
                    with anyio.move_on_after(30):
                        # the last checkpoint should hold every committed event: let a replica catch up first
                        with contextlib.suppress(CQRSError):
                            await self._router.wait_for(self.position, timeout=30)
                        await self._checkpoint_logged()
                if self._tg is not None:
                    self._tg.cancel_scope.cancel()
        finally:
            suppressed = await _exit_beside(stack, exc)  # the log and reader close shielded
        _log.info("app_stopped", domain=self.domain.name, position=self.position)
        return suppressed

    # -- commands -------------------------------------------------------------------------------------

    def _require_writer(self) -> Writer:
        if self._writer is None or self._standby:
            if self.follower_of is not None:
                raise NotWriter(self.follower_of)
            if self._standby and self._writer is not None:
                raise NotWriter(self._active_writer, standby=True)
            raise Closed("the app is not running; use `async with App(...) as app`")
        return self._writer

    def _require_store(self) -> EventStore:
        if self._store is None:
            raise Closed("the app is not running; use `async with App(...) as app`")
        return self._store

    async def execute(
        self,
        command: object,
        *,
        idempotency_key: str | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> Receipt:
        """Decide and durably append a command; the receipt carries the position it reached.

        ``wait=False`` or a ``timeout`` bound only the wait for room in the queue (then :class:`Overloaded`,
        and nothing was done); once queued, the command is decided and committed.
        """
        return await self._require_writer().submit(command, idempotency_key=idempotency_key, wait=wait, timeout=timeout)

    def submit_nowait(self, command: object, *, idempotency_key: str | None = None) -> asyncio.Future[Receipt]:
        """Queue a command without waiting; a future of its receipt."""
        return self._require_writer().submit_nowait(command, idempotency_key=idempotency_key)

    def submit_reply(self, command: object, reply: Reply, *, idempotency_key: str | None = None) -> None:
        """Queue a command without waiting; ``reply`` (a future or a caller's own object) gets its outcome.

        For callback-driven servers: the writer answers ``reply`` in its own task, no loop turn per command.
        """
        self._require_writer().submit_reply(command, reply, idempotency_key=idempotency_key)

    # -- follower -------------------------------------------------------------------------------------

    async def replicate(self, events: Sequence[RecordedEvent]) -> None:
        """Append events another writer committed (positions must continue this log) and publish them."""
        if self.follower_of is None or self._store is None or self._broadcast is None:
            raise Closed("replicate() is for a running follower App (follower_of=...)")
        if not events:
            return
        expected = self._position + 1
        positions_ok = all(e.position == expected + i for i, e in enumerate(events))
        if not positions_ok:
            raise LogCorrupted(
                f"replicated events must continue at position {expected}; got "
                f"{events[0].position}..{events[-1].position} ({len(events)} events)"
            )
        rows: list[EventRow] = [
            (
                e.position,
                e.stream,
                e.version,
                e.type,
                e.schema,
                encode(e.data),
                e.command_id,
                e.idempotency_key,
                e.recorded_at,
            )
            for e in events
        ]
        with self._replicate_guard:
            await self._store.append(rows)
        self._position = events[-1].position
        self._broadcast.publish(Batch(events=tuple(events), committed_at=time.monotonic()))

    # -- queries --------------------------------------------------------------------------------------

    @property
    def router(self) -> QueryRouter:
        if self._router is None:
            raise Closed("the app is not running; use `async with App(...) as app`")
        return self._router

    def query_nowait(self, query: object) -> Answer:
        """Eventual consistency, answered now in the caller's task (no hop)."""
        router = self._router  # not the property: one frame less on every query
        if router is None:
            raise Closed("the app is not running; use `async with App(...) as app`")
        return router.query_nowait(query)

    async def query(
        self,
        query: object,
        *,
        consistency: Consistency = "eventual",
        min_position: int | None = None,
        timeout: float | None = None,
    ) -> Answer:
        """Answer a query at the asked consistency (see :mod:`runtime._queries`)."""
        return await self.router.query(query, consistency=consistency, min_position=min_position, timeout=timeout)

    # -- events ---------------------------------------------------------------------------------------

    def subscribe(self, after: int = 0, *, buffer: int | None = None) -> Subscription:
        """Every event after position ``after``, in order: catch-up from the log, then live."""
        if self._broadcast is None:
            raise Closed("the app is not running; use `async with App(...) as app`")
        return self._broadcast.subscribe(after, buffer=buffer)

    def _head(self) -> int:
        return self.position

    async def wait_writer(self) -> None:
        """Return once this App is the writer: at once for a writer, on takeover for a standby (a follower
        of a SQLite upstream never becomes one: bound the wait with ``anyio.fail_after``)."""
        await self._writing.wait()

    @property
    def position(self) -> int:
        """The last committed (writer) or replicated (follower) position."""
        if self._writer is not None:
            return self._writer.position
        return self._position

    @property
    def store(self) -> EventStore:
        """The event log behind the port (SQLite or PostgreSQL)."""
        return self._require_store()

    @property
    def log(self) -> EventLog:
        """A SQLite log's own handle, for SQLite-only operations (``set_pragma``, the upstream log id)."""
        store = self._require_store()
        if not isinstance(store, SQLiteStore):
            raise NotImplementedError(f"{self.where} is not a SQLite file: App.log is SQLite's; use App.store")
        return store.log

    @property
    def path(self) -> Path:
        """The SQLite file of the log (a PostgreSQL log has none: see :attr:`where`)."""
        if self._path is None:
            raise NotImplementedError(f"{self.where} is a PostgreSQL log, not a file")
        return self._path

    @property
    def log_id(self) -> str:
        """The id of the log this app serves: its own, or for a replica the upstream log it copies."""
        store = self._require_store()
        if isinstance(store, SQLiteStore):
            return store.log.upstream_log_id or store.log_id
        return store.log_id

    @property
    def writer(self) -> Writer:
        return self._require_writer()

    # -- checkpoints ----------------------------------------------------------------------------------

    async def checkpoint(self) -> Path | None:
        """Checkpoint the read models (most advanced replica) and the write model; None if not configured.

        Returns the read models' file. Serialising happens in a worker thread where it can: the write
        model's copy is taken between batches, the read models' bytes are made in the loop (they change
        with every applied event).
        """
        if self._snapshots is None or self._router is None:
            return None
        async with self._checkpoint_lock:  # one at a time: the periodic one and the one at exit may overlap
            await self._checkpoint_writer()
            await self._checkpoint_processes()
            replica = self._router.most_advanced()
            if replica is None:
                return None
            position = replica.position
            if position == 0 or position == self._last_checkpoint:
                return None
            body = encode(replica.models.snapshot())  # in the loop: the models must not move meanwhile
            store, version = self._snapshots, replica.models_version  # mid-rebuild, replicas may run two codes
            path = await anyio.to_thread.run_sync(lambda: store.write_bytes(position, body, schema=version))
            self._last_checkpoint = position
            _log.info("checkpoint_written", path=str(path), position=position, bytes=len(body))
            return path

    async def _checkpoint_writer(self) -> None:
        store, writer = self._writer_snapshots, self._writer
        if store is None or writer is None or writer.position in (0, self._last_writer_checkpoint):
            return
        taken = writer.checkpoint()
        if taken is None:
            return
        position, serialise = taken
        path = await anyio.to_thread.run_sync(lambda: store.write_bytes(position, serialise()))
        self._last_writer_checkpoint = position
        _log.info("writer_checkpoint_written", path=str(path), position=position)

    async def _checkpoint_logged(self) -> bool:
        """Checkpoint; a failure (a read model that cannot serialise, a full disk) is logged and counted.

        A checkpoint is an optimisation of the next start: losing one costs replay time, never data, so
        it must not take the process down (the log stays the truth and the next start replays it).
        """
        try:
            await self.checkpoint()
        except Exception as exc:
            self.checkpoint_failures += 1
            _log.error(
                "checkpoint_failed",
                position=self.position,
                failures=self.checkpoint_failures,
                error=f"{type(exc).__name__}: {exc}",
            )
            return False
        return True

    async def _checkpoint_loop(self) -> None:
        every = self._snapshot_every
        target = self._last_checkpoint + every
        while True:
            await self.router.wait_for(target, timeout=float("inf"))
            before = self._last_checkpoint
            if await self._checkpoint_logged() and self._last_checkpoint != before:
                # written: events that arrived while it was written count toward the next one
                target = self._last_checkpoint + every
            else:
                # failed (or nothing to write): try again once `every` more events arrive, no hot retry
                target = self.router.best_position() + every

    # -- process managers -----------------------------------------------------------------------------

    def _make_processes(self) -> None:
        """The domain's process managers (a writer only), made before the start's one pass folds them."""
        if self._writer is None or self._broadcast is None:
            return
        broadcast = self._broadcast
        for manager in processes_of(self.domain.processes):
            self._processes[manager.name] = ProcessRunner(
                manager, subscribe=broadcast.subscribe, execute=self._execute_keyed, head=self._head
            )
            if self._snapshots is not None and manager.state_type is not None:  # beside the read models'
                self._process_snapshots[manager.name] = SnapshotStore(
                    self._snapshots.directory,
                    domain=f"{self.domain.name}.process.{manager.name}",
                    log_id=self.log_id,
                    schema=manager.state_version,
                )

    async def _restore_processes(self, head: int) -> None:
        """Each process manager with a checkpoint starts from it (the one pass folds only what came after)."""
        for name, store in self._process_snapshots.items():
            found = await anyio.to_thread.run_sync(functools.partial(store.load, max_position=head))
            if found is not None and self._processes[name].restore(found.position, found.body):
                self._last_process_checkpoint[name] = found.position
                _log.info("process_restored", process=name, position=found.position)

    async def _checkpoint_processes(self) -> None:
        """Each process state at its position; one that fails (a state its state_type cannot encode, a full disk)
        is logged and skipped: the others and the read models are still checkpointed."""
        for name, store in self._process_snapshots.items():
            try:
                taken = self._processes[name].checkpoint()  # state and position together, in the loop
                if taken is None or taken[0] == self._last_process_checkpoint.get(name):
                    continue
                position, body = taken
                path = await anyio.to_thread.run_sync(store.write_bytes, position, body)
            except Exception as exc:
                _log.error("process_checkpoint_failed", process=name, error=f"{type(exc).__name__}: {exc}")
                continue
            self._last_process_checkpoint[name] = position
            _log.info("process_checkpoint_written", process=name, path=str(path), position=position)

    async def _start_processes(self, tg: TaskGroup) -> None:
        """Start the process managers: folded up to the head at start, each follows the log from there."""
        for runner in self._processes.values():
            await tg.start(runner.run)

    async def _execute_keyed(self, command: object, key: str) -> Receipt:
        return await self.execute(command, idempotency_key=key)

    def process(self, name: str) -> ProcessRunner[Any]:
        """The running process manager ``name`` (its state, position, parked items; retry/skip)."""
        runner = self._processes.get(name)
        if runner is None:
            raise NotFound(f"no process manager named {name!r} runs here; running: {sorted(self._processes) or 'none'}")
        return runner

    @property
    def processes(self) -> tuple[ProcessRunner[Any], ...]:
        return tuple(self._processes.values())

    # -- observability --------------------------------------------------------------------------------

    def statistics(self) -> AppStatistics:
        replicas = self._router.replicas if self._router is not None else ()
        subscriptions = self._broadcast.subscriptions if self._broadcast is not None else ()
        return AppStatistics(
            position=self.position,
            role=self.role,
            writer=self._writer.statistics() if self._writer is not None else None,
            replicas=tuple(r.statistics() for r in replicas),
            subscriptions=tuple(s.statistics() for s in subscriptions),
            processes=tuple(p.statistics() for p in self._processes.values()),
        )

    # -- evolution: replay digest, rebuild beside the live read models ---------------------------------

    async def digest(
        self, *, consistency: Consistency = "eventual", min_position: int | None = None, timeout: float | None = None
    ) -> Digest:
        """The digest of one replica's read models (see :mod:`runtime._digest`), routed like a query.

        The replica is picked by the one router at the asked consistency; the digest is computed in one
        synchronous step, at the position it returns.
        """
        router = self.router
        target = router.target(consistency, min_position)
        while (replica := router.replica_for(target)) is None:
            await router.wait_for(target, timeout)
        return Digest(digest_of(replica.models), replica.position)

    async def rebuild(
        self,
        index: int | None = None,
        *,
        read_models: Callable[[], ReadModels[Any]] | None = None,
        read_models_version: int | None = None,
        chunk: int = 500,
    ) -> list[Digest]:
        """Build fresh read models from the whole log beside the live ones; swap each in once caught up.

        ``index``: the replica slot to rebuild (None: every slot, one after another, so the others keep
        serving); it runs the App's read-model code. ``read_models``: a factory for new read-model code (a
        read model added to a running service is built this way), for every slot (no ``index``: replicas never
        run different code for long). From the first swap on it is the App's code: a failed replica is rebuilt
        with it, and the read-model checkpoints carry ``read_models_version`` (default: the App's version + 1),
        so a restart restores them only into code that declares that version (``Domain.read_models_version``).
        Cancelled after the first swap, the slots not yet swapped keep the old code until the next
        ``rebuild()``. ``chunk``: events applied per step of the catch-up
        (smaller: shorter stalls of the loop the writer and the live replicas share). The live replica keeps
        answering every query while its replacement catches up from the log (the writer is never waited on),
        through its own reader in ``chunk``-sized steps, then follows the broadcast live; the swap is one
        synchronous step once the fresh copy has applied at least what the live one had. Cancelling this
        call stops the rebuild and leaves the live replica serving. Returns each fresh copy's digest at
        the moment it was swapped in.
        """
        router = self.router
        indexes = range(len(router.replicas)) if index is None else [index]
        if index is not None and not 0 <= index < len(router.replicas):
            raise ValueError(f"replica index {index} is out of range: this app has {len(router.replicas)} replicas")
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1 event, got {chunk}")
        code = None
        if read_models is not None:
            if index is not None:
                raise ValueError(
                    f"new read-model code replaces every replica's, not replica {index}'s alone (replicas must "
                    "answer alike): call rebuild(read_models=...) without an index"
                )
            code = (read_models, self._read_models_version + 1 if read_models_version is None else read_models_version)
        elif read_models_version is not None:
            raise ValueError("read_models_version is the version of new read-model code: pass read_models= with it")
        return [await self._rebuild_slot(i, code, chunk) for i in indexes]

    async def _rebuild_slot(
        self, index: int, code: tuple[Callable[[], ReadModels[Any]], int] | None, chunk: int
    ) -> Digest:
        router, tg, broadcast = self.router, self._tg, self._broadcast
        if tg is None or broadcast is None:
            raise Closed("the app is not running; use `async with App(...) as app`")
        old = router.replicas[index]
        fresh = self._new_replica(old.name, broadcast, code)
        started = time.perf_counter()
        _log.info("rebuild_started", replica=fresh.name, head=self.position)
        try:
            await self._catch_up(fresh, chunk)
        except BaseException:
            _log.info("rebuild_abandoned", replica=fresh.name, position=fresh.position)
            raise
        scope = await tg.start(self._run_fresh, fresh)
        swapped = False
        try:
            # caught up with the head it saw at start, then with the live copy (both follow the same broadcast)
            while not fresh.ready or (not old.stopped and fresh.position < old.position):
                try:
                    await fresh.wait_for(max(old.position, broadcast.head if not fresh.ready else 0), timeout=3600)
                except Broken:
                    raise Broken(
                        f"the rebuild of {fresh.name} failed at position {fresh.position}: its read models raised "
                        "(see replica_apply_failed in the log); the live copy keeps serving"
                    ) from None
            current = router.replicas[index]
            if current is not old:
                raise Closed(f"{old.name} was replaced while it was rebuilt; the rebuild is abandoned")
            live_scope = self._replica_scopes.pop(old.name, None)
            router.replace(index, fresh)  # synchronous with the check above: no event applied in between
            self._replica_scopes[fresh.name] = scope
            swapped = True
            if code is not None and (self._read_models, self._read_models_version) != code:
                # the App's code from now on: failed replicas are rebuilt with it, checkpoints carry its version
                self._read_models, self._read_models_version = code
                _log.info("read_models_installed", replica=fresh.name, read_models_version=code[1])
            if live_scope is not None:
                live_scope.cancel()
            digest = Digest(digest_of(fresh.models), fresh.position)
        finally:
            if not swapped:
                scope.cancel()
                _log.info("rebuild_abandoned", replica=fresh.name, position=fresh.position)
        _log.info(
            "rebuild_swapped",
            replica=fresh.name,
            position=digest.position,
            digest=digest.digest,
            s=round(time.perf_counter() - started, 3),
        )
        return digest

    async def _catch_up(self, fresh: Replica, chunk: int) -> None:
        """Apply the log to a fresh replica in small chunks read from the store, until a short chunk (the head).

        Small chunks are what keeps the writer and the live replicas going: each chunk is applied in one
        synchronous step, and the loop serves the others between two (SQLite's reader fetches the next
        chunk on its thread meanwhile). The replica then follows the broadcast from where this ends.
        """
        store, after = self._require_store(), fresh.position
        while events := await store.read(after, chunk):
            check_contiguous(self.where, after, events)
            after = events[-1].position
            if not fresh.apply_batch(Batch(events=tuple(events)), sample_lag=False):
                raise Broken(
                    f"the rebuild of {fresh.name} failed at position {fresh.position}: its read models raised "
                    "(see replica_apply_failed in the log); the live copy keeps serving"
                )
            if len(events) < chunk:
                return
            await anyio.lowlevel.checkpoint()  # a cached chunk comes back without a hop: yield anyway

    async def _run_fresh(self, fresh: Replica, *, task_status: anyio.abc.TaskStatus[anyio.CancelScope]) -> None:
        """Run a replica built beside the live one; once swapped in, it fails and is rebuilt like any replica."""
        with anyio.CancelScope() as scope:
            task_status.started(scope)  # the rebuild waits on its positions, and cancels it if abandoned
            await fresh.run()
        index = next((i for i, r in enumerate(self.router.replicas) if r is fresh), None)
        if not fresh.failed or scope.cancel_called or index is None:
            return
        delay = self._rebuild_backoff[0]
        _log.warning("replica_rebuild_scheduled", replica=fresh.name, position=fresh.position, in_s=delay)
        await anyio.sleep(delay)  # a real back-off, not ordering
        await self.rebuild_replica(index)

    def start_rebuild(
        self,
        index: int | None = None,
        *,
        read_models: Callable[[], ReadModels[Any]] | None = None,
        read_models_version: int | None = None,
    ) -> asyncio.Future[list[Digest]]:
        """:meth:`rebuild` in the background (one at a time); a future of its digests. For the ``rebuild`` op.

        :class:`ConcurrencyError` if a rebuild started this way is still running; :meth:`cancel_rebuild`
        stops it (its future is then cancelled).
        """
        if self._tg is None:
            raise Closed("the app is not running; use `async with App(...) as app`")
        if self._background_rebuild is not None:
            raise ConcurrencyError(
                "a rebuild is already running; wait for its answer, or cancel it (op rebuild with cancel: true)"
            )
        if index is not None and not 0 <= index < len(self.router.replicas):
            raise BadRequest(
                f"replica index {index} is out of range: this app has {len(self.router.replicas)} replicas",
                field="replica",
            )
        future: asyncio.Future[list[Digest]] = asyncio.get_running_loop().create_future()
        scope = anyio.CancelScope()
        self._background_rebuild = (scope, future)

        async def run() -> None:
            try:
                with scope:
                    result = await self.rebuild(index, read_models=read_models, read_models_version=read_models_version)
                    if not future.done():
                        future.set_result(result)
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            finally:
                self._background_rebuild = None
                if not future.done():
                    future.cancel()

        self._tg.start_soon(run)
        return future

    def cancel_rebuild(self) -> bool:
        """Cancel the rebuild :meth:`start_rebuild` runs; False if none is running. The live copies keep serving."""
        running = self._background_rebuild
        if running is None:
            return False
        running[0].cancel()
        return True
