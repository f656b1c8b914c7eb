"""The broadcast never waits for a subscriber; overflow falls back to the log and rejoins without gap."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from soloist import RecordedEvent
from soloist._broadcast import Broadcast
from soloist._messages import Batch
from tests.toy import Deposit, Open

if TYPE_CHECKING:
    from pathlib import Path

    from tests.runtime.conftest import AppFactory


def event(position: int) -> RecordedEvent:
    return RecordedEvent(position=position, stream="s", version=position, type="T", data=position, recorded_at=0.0)


class ListLog:
    """An in-memory event source: the committed events, readable from any position."""

    def __init__(self) -> None:
        self.events: list[RecordedEvent] = []
        self.reads = 0

    async def read(self, after: int, limit: int = 2000) -> list[RecordedEvent]:
        self.reads += 1
        await anyio.lowlevel.checkpoint()
        return self.events[after : after + limit]

    def commit(self, broadcast: Broadcast, size: int) -> None:
        start = len(self.events)
        batch = tuple(event(start + i + 1) for i in range(size))
        self.events.extend(batch)
        broadcast.publish(Batch(events=batch))


async def drain(subscription_positions: list[int], subscription: object, until: int) -> None:
    async for batch in subscription:  # type: ignore[attr-defined]
        subscription_positions.extend(e.position for e in batch.events)
        if batch.events[-1].position >= until:
            return


class TestBroadcast:
    async def test_live_delivery_in_order(self) -> None:
        """A keeping-up subscriber receives every batch in order, without reading the log after the start."""
        log = ListLog()
        broadcast = Broadcast(log, buffer=100)
        subscription = broadcast.subscribe(0)
        for size in (1, 3, 2):
            log.commit(broadcast, size)
        got: list[int] = []
        with anyio.fail_after(1):
            await drain(got, subscription, 6)
        assert got == [1, 2, 3, 4, 5, 6]
        assert subscription.statistics().overflows == 0

    async def test_overflow_switches_to_log_and_rejoins(self) -> None:
        """Publishing past the buffer drops it; the subscriber reads the log, then continues live, no gap."""
        log = ListLog()
        broadcast = Broadcast(log, buffer=10, chunk=7)
        subscription = broadcast.subscribe(0)
        for _ in range(20):
            log.commit(broadcast, 3)  # 60 events into a 10-event buffer: overflows, publisher never waits
        assert subscription.statistics().buffered_events <= 10
        assert subscription.statistics().overflows >= 1
        got: list[int] = []
        with anyio.fail_after(1):
            await drain(got, subscription, 60)
            log.commit(broadcast, 2)
            await drain(got, subscription, 62)
        assert got == list(range(1, 63))

    async def test_new_subscriber_from_the_middle(self) -> None:
        """A subscriber can start at any position: catch-up from the log, then live."""
        log = ListLog()
        broadcast = Broadcast(log, buffer=100)
        for _ in range(5):
            log.commit(broadcast, 4)
        subscription = broadcast.subscribe(7)
        got: list[int] = []
        with anyio.fail_after(1):
            await drain(got, subscription, 20)
        assert got == list(range(8, 21))

    async def test_closed_subscription_is_dropped(self) -> None:
        """Closing unsubscribes: the broadcast stops offering it batches."""
        broadcast = Broadcast(ListLog())
        with broadcast.subscribe(0):
            pass
        assert broadcast.subscriptions == ()

    @settings(max_examples=60, deadline=None)
    @given(
        plan=st.lists(st.tuples(st.integers(1, 6), st.booleans()), min_size=1, max_size=40),
        buffer=st.integers(1, 12),
        start=st.integers(0, 5),
    )
    def test_any_mix_of_live_overflow_catchup_is_exact(
        self, plan: list[tuple[int, bool]], buffer: int, start: int
    ) -> None:
        """Whatever interleaving of publishing and reading, the subscriber sees each position once, in order."""

        async def scenario() -> None:
            log = ListLog()
            broadcast = Broadcast(log, buffer=buffer, chunk=3)
            log.commit(broadcast, 5)
            subscription = broadcast.subscribe(start)
            got: list[int] = []
            for size, read in plan:
                log.commit(broadcast, size)
                if read:
                    batch = await subscription.receive()
                    got.extend(e.position for e in batch.events)
            total = len(log.events)
            while not got or got[-1] < total:
                got.extend(e.position for e in (await subscription.receive()).events)
            assert got == list(range(start + 1, total + 1))

        asyncio.run(scenario())


class TestStalledSubscriber:
    async def test_stalled_subscriber_never_blocks_the_writer(self, open_app: AppFactory) -> None:
        """Thousands of commands are acknowledged while a subscriber never reads; it then converges."""
        async with open_app(subscriber_buffer=100) as app:
            await app.execute(Open(account="a"))
            stalled = app.subscribe(0)
            receipts = []
            for _ in range(40):
                futures = [app.submit_nowait(Deposit(account="a", amount=1)) for _ in range(100)]
                receipts += await asyncio.gather(*futures)
            assert len(receipts) == 4000
            assert receipts[-1].position == 4001
            stats = stalled.statistics()
            assert stats.delivered == 0
            assert stats.buffered_events <= 100
            assert stats.overflows >= 1
            positions: list[int] = []
            with anyio.fail_after(10):
                async for batch in stalled:
                    positions.extend(e.position for e in batch.events)
                    if positions[-1] == app.position:
                        break
            assert positions == list(range(1, 4002))
            stalled.close()

    async def test_replicas_converge_after_overflow(self, open_app: AppFactory, db: Path) -> None:
        """Replicas with a tiny buffer overflow under load and still apply every event exactly once."""
        async with open_app(subscriber_buffer=5, replicas=3) as app:
            await app.execute(Open(account="a"))
            for _ in range(20):
                await asyncio.gather(*(app.submit_nowait(Deposit(account="a", amount=1)) for _ in range(50)))
            await app.router.wait_for(app.position, timeout=10)
            for replica in app.router.replicas:
                await replica.wait_for(app.position, timeout=10)
                assert replica.models.applied == list(range(1, 1002))  # type: ignore[attr-defined]
            assert any(r.statistics().overflows for r in app.router.replicas)


@pytest.mark.parametrize("after", [0, 3])
async def test_subscribe_through_app(open_app: AppFactory, after: int) -> None:
    """app.subscribe delivers committed events after the given position, decoded."""
    async with open_app() as app:
        for i in range(6):
            await app.execute(Open(account=f"a{i}"))
        async with app.subscribe(after) as subscription:
            batch = await subscription.receive()
        assert batch.events[0].position == after + 1
        assert type(batch.events[0].data).__name__ == "Opened"


class GatedLog(ListLog):
    """A log whose read takes its snapshot at once but returns only when the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: anyio.Event | None = None
        self.reading = anyio.Event()

    async def read(self, after: int, limit: int = 2000) -> list[RecordedEvent]:
        snapshot = self.events[after : after + limit]
        if self.gate is not None:
            self.reading.set()
            await self.gate.wait()
            self.gate = None
        return snapshot


async def test_overflow_during_an_empty_catch_up_read_is_not_lost() -> None:
    """A batch dropped by an overflow while a catch-up read was in flight is read again, not skipped."""
    log = GatedLog()
    broadcast = Broadcast(log, buffer=2)
    subscription = broadcast.subscribe(0)
    log.gate = anyio.Event()
    got: list[int] = []

    async def consume() -> None:
        await drain(got, subscription, 3)

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await log.reading.wait()  # the read has seen an empty log and is suspended
            log.commit(broadcast, 3)  # 3 events into a 2-event buffer: dropped, only in the log
            assert subscription.statistics().overflows == 1
            log.gate.set()
    assert got == [1, 2, 3]
