"""Fan-out of committed batches. The writer never waits: a subscriber that overflows reads the log instead.

Each :class:`Subscription` has its own bounded buffer (counted in events). ``publish`` is synchronous
and O(subscribers): it appends the batch to every buffer that has room. A buffer that would overflow
is dropped on the spot (memory stays bounded) and its subscriber is switched to *catch-up*: it reads
the log from its own position until the log has nothing newer, while live batches buffer again behind
it; positions at or below what it already delivered are skipped. Because a batch is published only
after it is durable, everything in the buffer is also in the log, so the switch back to live has no
gap and no duplicate. A new subscriber starts the same way, from any position.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, final

from ._errors import Broken, Closed
from ._messages import Batch, RecordedEvent

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Broadcast", "EventSource", "Subscription", "SubscriptionStatistics"]


class EventSource(Protocol):
    """Where a lagging subscriber reads missed events from (the log)."""

    async def read(self, after: int, limit: int = ...) -> list[RecordedEvent]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriptionStatistics:
    position: int
    buffered_events: int
    peak_buffered_events: int
    capacity: int
    overflows: int
    catching_up: bool
    delivered: int


@final
class Subscription:
    """An ordered, gap-free stream of batches after ``position``: catch-up from the log, then live."""

    def __init__(self, broadcast: Broadcast, after: int, capacity: int, source: EventSource, chunk: int) -> None:
        self._broadcast = broadcast
        self._source = source
        self._capacity = capacity
        self._chunk = chunk
        self.position = after  # last position delivered
        self._buffer: deque[Batch] = deque()
        self._buffered = 0
        self._peak = 0
        self._catching_up = True  # always verify against the log first; cheap when nothing is missing
        self._overflows = 0
        self._delivered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    # called by Broadcast.publish, synchronously, on the writer's turn
    def _offer(self, batch: Batch) -> None:
        if self._closed:
            return
        size = len(batch.events)
        if self._buffered + size > self._capacity:
            self._buffer.clear()
            self._buffered = 0
            self._overflows += 1
            self._catching_up = True
        else:
            self._buffer.append(batch)
            self._buffered += size
            if self._buffered > self._peak:
                self._peak = self._buffered
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def overflows(self) -> int:
        """How many times this subscriber's buffer overflowed and it fell back to the log."""
        return self._overflows

    def statistics(self) -> SubscriptionStatistics:
        return SubscriptionStatistics(
            position=self.position,
            buffered_events=self._buffered,
            peak_buffered_events=self._peak,
            capacity=self._capacity,
            overflows=self._overflows,
            catching_up=self._catching_up,
            delivered=self._delivered,
        )

    def receive_nowait(self) -> Batch | None:
        """The next live batch if one is buffered and no catch-up is due; else None (no waiting, no I/O)."""
        while not self._catching_up and self._buffer:
            batch = self._buffer.popleft()
            self._buffered -= len(batch.events)
            events = batch.events
            if events[-1].position <= self.position:
                continue
            if events[0].position <= self.position:
                events = tuple(e for e in events if e.position > self.position)
                batch = Batch(events=events, committed_at=batch.committed_at)
            elif events[0].position != self.position + 1:  # a hole: only possible after an overflow race
                self._catching_up = True
                self._buffer.appendleft(batch)
                self._buffered += len(batch.events)
                return None
            self.position = events[-1].position
            self._delivered += len(events)
            return batch
        return None

    async def receive(self) -> Batch:
        """The next batch after :attr:`position`, waiting for one if needed."""
        while True:
            if self._closed:
                raise Closed("this subscription is closed")
            if self._catching_up:
                overflows = self._overflows
                events = await self._source.read(self.position, self._chunk)
                if events:
                    if events[0].position != self.position + 1:
                        raise Broken(
                            f"the log has no position {self.position + 1} (it starts at {events[0].position}); "
                            "was the database replaced?"
                        )
                    self.position = events[-1].position
                    self._delivered += len(events)
                    return Batch(events=tuple(events), committed_at=None)
                if self._overflows == overflows:
                    # The log had nothing newer and no batch was dropped while we read: whatever was
                    # committed after the read is in the buffer. (If the buffer overflowed during the read,
                    # the dropped batch may postdate it: read again.)
                    self._catching_up = False
            batch = self.receive_nowait()
            if batch is not None:
                return batch
            if self._catching_up:
                continue
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Batch:
        if self._closed:
            raise StopAsyncIteration
        return await self.receive()

    def close(self) -> None:
        """Stop receiving; frees the buffer. Idempotent."""
        if not self._closed:
            self._closed = True
            self._buffer.clear()
            self._buffered = 0
            self._broadcast._remove(self)
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


@final
class Broadcast:
    """Publishes committed batches, in log order, to every subscription. Never blocks the publisher."""

    def __init__(self, source: EventSource, *, buffer: int = 65536, chunk: int = 2000) -> None:
        if buffer < 1:
            raise ValueError(f"buffer must be at least 1 event, got {buffer}")
        self._source = source
        self._buffer = buffer
        self._chunk = chunk
        self._subscriptions: list[Subscription] = []
        self.head = 0  # last published position

    def publish(self, batch: Batch) -> None:
        """Hand a durable batch to every subscriber (synchronous, never waits)."""
        self.head = batch.events[-1].position
        for subscription in self._subscriptions:
            subscription._offer(batch)

    def subscribe(self, after: int = 0, *, buffer: int | None = None) -> Subscription:
        """A subscription delivering every event with a position above ``after``, in order."""
        subscription = Subscription(self, after, buffer or self._buffer, self._source, self._chunk)
        self._subscriptions.append(subscription)
        return subscription

    @property
    def subscriptions(self) -> Sequence[Subscription]:
        return tuple(self._subscriptions)

    def _remove(self, subscription: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._subscriptions.remove(subscription)
