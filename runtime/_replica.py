"""One read replica: its own copy of the read models, its applied position, and waiters on positions.

A replica is a task that applies every batch of its :class:`Subscription` exactly once, in order
(catch-up from the log, then live). Queries run *in the caller's task* against the replica's models:
an answer that needs no waiting pays no hop through a queue. Read-your-writes waits on a future that
the replica resolves when it has applied the asked position.

In one process replicas share one core: they buy isolation (a rebuild or a slow apply on one does not
stall queries on the others) and concurrency, not parallelism. More cores come from replica processes.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, final

import anyio
import structlog

from ._errors import Broken, Closed, ConsistencyTimeout, CQRSError, InternalError
from ._gc import gc_paused
from ._messages import Answer, Batch

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import TaskStatus

    from ._broadcast import Broadcast
    from ._domain import Domain, ReadModels

__all__ = ["Replica", "ReplicaStatistics"]

_log = structlog.get_logger("soloist.replica")
_new_tuple: Final = tuple.__new__


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaStatistics:
    name: str
    position: int
    ready: bool
    failed: bool
    lag_events: int
    lag_ms: float
    applied: int
    queries: int
    overflows: int
    waiters: int


@final
class Replica:
    """Applies the broadcast to its own read models and answers queries at its applied position."""

    def __init__(
        self,
        name: str,
        domain: Domain[Any, Any, Any, Any],
        broadcast: Broadcast,
        *,
        read_models: Callable[[], ReadModels[Any]] | None = None,
        models_version: int | None = None,
        lag_samples: int = 10000,
    ) -> None:
        self.name = name
        self._domain = domain
        self._broadcast = broadcast
        # read-model code other than the domain's: the App's after a rebuild installed new code
        self.models: ReadModels[Any] = (read_models or domain.read_models)()
        # the version of those models' snapshots: what a checkpoint of this replica is tagged with
        self.models_version = domain.read_models_version if models_version is None else models_version
        self.position = 0
        self.ready = False  # True once caught up with the head it saw at start
        self.failed = False
        self.stopped = False  # its task has ended (failed, cancelled or replaced): it applies nothing more
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._abandoned = 0  # cancelled waiters still in the heap
        self._seq = itertools.count()
        self._applied = 0
        self._queries = 0
        self._overflows = 0
        self._lag_ms = 0.0
        # (lag in ms, lag in events) per applied batch, bounded, for benchmarks and stats
        self.lag_samples: deque[tuple[float, int]] = deque(maxlen=lag_samples)

    def restore(self, position: int, state: object) -> None:
        """Load read models from a checkpoint before :meth:`run` (positions after it come from the log)."""
        self.models.restore(state)
        self.position = position

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follow the broadcast forever (until cancelled); ready once caught up with the head seen at start."""
        target = self._broadcast.head
        subscription = self._broadcast.subscribe(self.position)
        if self.position >= target:
            self.ready = True
        task_status.started()
        try:
            async with subscription:
                while True:
                    batch = subscription.receive_nowait()
                    if batch is None:
                        batch = await subscription.receive()
                        # Woken by a publish: let the writer hand its next batch to SQLite's thread first,
                        # so this apply can overlap the commit instead of delaying it.
                        await anyio.lowlevel.checkpoint()
                    if not self.apply_batch(batch):
                        return
                    self._overflows = subscription.overflows
                    if not self.ready and self.position >= target:
                        self.ready = True
                        _log.info("replica_ready", replica=self.name, position=self.position)
        finally:
            self.ready = False
            self.stopped = True
            for _, _, future in self._waiters:
                if not future.done():  # waiters move on to another replica (QueryRouter.wait_future)
                    future.set_exception(
                        (Broken if self.failed else Closed)(f"{self.name} stopped at position {self.position}")
                    )
            self._waiters.clear()
            self._abandoned = 0

    def apply_batch(self, batch: Batch, *, sample_lag: bool = True) -> bool:
        """Apply a batch of events that follow :attr:`position`; False (and marked failed) if the models raise."""
        apply = self.models.apply  # looked up per batch, not per event
        try:
            with gc_paused():
                for event in batch.events:
                    apply(event)
        except Exception as exc:
            self.failed = True
            self.ready = False
            _log.error("replica_apply_failed", replica=self.name, position=self.position, exc_info=exc)
            return False
        self._after(batch, sample_lag)
        return True

    def _after(self, batch: Batch, sample_lag: bool = True) -> None:
        events = batch.events
        self.position = events[-1].position
        self._applied += len(events)
        if not sample_lag:  # replayed at start: "lag" would be the age of the log
            return
        if batch.committed_at is not None:
            lag_ms = (time.monotonic() - batch.committed_at) * 1000.0
        else:
            lag_ms = max(0.0, (time.time() - events[0].recorded_at) * 1000.0)
        self._lag_ms = lag_ms
        self.lag_samples.append((lag_ms, self._broadcast.head - events[0].position + 1))
        waiters = self._waiters
        while waiters and waiters[0][0] <= self.position:
            future = heapq.heappop(waiters)[2]
            if not future.done():
                future.set_result(None)
            elif self._abandoned:
                self._abandoned -= 1

    # -- queries ---------------------------------------------------------------------------------------

    def query_nowait(self, query: object) -> Answer:
        """Answer from this replica's models now, at its current position.

        Domain exceptions are translated to the runtime's errors (:meth:`failure`).
        """
        self._queries += 1
        try:
            result = self.models.query(query)
        except Exception as exc:
            raise self.failure(query, exc) from exc
        return _new_tuple(Answer, (result, self.position))  # skips the NamedTuple's Python-level __new__

    def failure(self, query: object, exc: Exception) -> CQRSError:
        """The runtime error for an exception the read models raised answering ``query``.

        Ours pass through, a domain's declared ones are translated, anything else is a bug: logged,
        and :class:`InternalError`.
        """
        if isinstance(exc, CQRSError):
            return exc
        error = self._domain.translate(exc)
        if error is not None:
            return error
        _log.error("query_crashed", replica=self.name, query_type=type(query).__name__, exc_info=exc)
        return InternalError(f"{type(query).__name__} failed: {type(exc).__name__}: {exc}")

    def count_queries(self, n: int) -> None:
        """Count ``n`` queries answered straight from :attr:`models` (a caller's batch path)."""
        self._queries += n

    def wait_future(self, position: int) -> asyncio.Future[None]:
        """A future resolved once this replica has applied ``position`` (already done if it has).

        Cancel it to give up: a cancelled waiter is dropped from the replica (the heap is compacted once
        abandoned waiters make up half of it), so timed-out waits hold no memory.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.position >= position:
            future.set_result(None)
        elif self.stopped:
            future.set_exception(
                (Broken if self.failed else Closed)(f"{self.name} stopped at position {self.position}")
            )
        else:
            heapq.heappush(self._waiters, (position, next(self._seq), future))
            future.add_done_callback(self._waiter_done)
        return future

    def _waiter_done(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled():
            return
        self._abandoned += 1
        waiters = self._waiters
        if self._abandoned > 16 and 2 * self._abandoned > len(waiters):
            waiters[:] = [w for w in waiters if not w[2].done()]
            heapq.heapify(waiters)
            self._abandoned = 0

    async def wait_for(self, position: int, timeout: float) -> None:
        """Wait until this replica has applied ``position``; :class:`ConsistencyTimeout` after ``timeout``."""
        if self.position >= position:
            return
        future = self.wait_future(position)
        try:
            with anyio.fail_after(timeout):
                await future
        except TimeoutError:
            raise ConsistencyTimeout(position, self.position, timeout) from None
        finally:
            future.cancel()

    def statistics(self) -> ReplicaStatistics:
        lag_events = max(0, self._broadcast.head - self.position)
        return ReplicaStatistics(
            name=self.name,
            position=self.position,
            ready=self.ready,
            failed=self.failed,
            lag_events=lag_events,
            lag_ms=round(self._lag_ms, 3) if lag_events else 0.0,
            applied=self._applied,
            queries=self._queries,
            overflows=self._overflows,
            waiters=len(self._waiters),  # abandoned ones not yet compacted included: memory held
        )
