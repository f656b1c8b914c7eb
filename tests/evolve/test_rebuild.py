"""Read models rebuilt beside the live ones: commands and queries keep flowing, the swap equals a fresh replay."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import anyio
import pytest
from structlog.testing import capture_logs

from soloist import App, Broken, ConcurrencyError, Receipt, RecordedEvent
from soloist._digest import digest_of, replay_digest
from soloist_shop.commands import OrderLineRequest, PlaceOrder, Restock
from soloist_shop.queries import GetProduct
from soloist_shop.seed import seed_commands
from soloist_shop.wiring import DOMAIN, ShopReplicaModels

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


async def _fill(app: App, restocks: int) -> int:
    """The seed catalogue, then ``restocks`` one-event commands (several chunks of the log to catch up on)."""
    for command in seed_commands():
        await app.execute(command)
    futures = [app.submit_nowait(Restock(sku="BK-001", quantity=1)) for _ in range(restocks)]
    await asyncio.gather(*futures)
    return app.position


class _Watched:
    """Shop read models that call ``on_first`` (synchronously, inside apply) on their first event."""

    def __init__(self, on_first: Callable[[], object]) -> None:
        self.inner = ShopReplicaModels()
        self.on_first: Callable[[], object] | None = on_first

    def apply(self, event: RecordedEvent) -> None:
        if self.on_first is not None:
            hook, self.on_first = self.on_first, None
            hook()
        self.inner.apply(event)

    def query(self, query: object) -> object:
        return self.inner.query(query)

    def snapshot(self) -> object:
        return self.inner.snapshot()

    def restore(self, state: object) -> None:
        self.inner.restore(state)


def _all_digests(app: App) -> set[tuple[str, int]]:
    return {(digest_of(r.models), r.position) for r in app.router.replicas}


class TestRebuild:
    async def test_rebuild_under_load_swaps_in_a_copy_equal_to_a_fresh_replay(self, tmp_path: Path) -> None:
        """Mid-rebuild a command commits and queries answer; the swapped copy digests like a replay of the log."""
        db = tmp_path / "shop.db"
        async with App(DOMAIN, db, replicas=2) as app:
            head_before = await _fill(app, 6000)
            old = app.router.replicas[0]
            during: list[asyncio.Future[Receipt]] = []
            answered: list[int] = []
            stop = anyio.Event()

            def mid_rebuild() -> None:
                # the fresh copy has applied nothing yet: the live replicas still answer, the writer still takes
                during.append(app.submit_nowait(Restock(sku="KIT-003", quantity=1)))
                answered.append(app.query_nowait(GetProduct(sku="BK-001")).position)

            async def load() -> None:
                n = 0
                while not stop.is_set():
                    n += 1
                    receipt = await app.execute(
                        PlaceOrder(
                            order_id=f"o-{n}",
                            customer_id="c-ada",
                            lines=(OrderLineRequest(sku="BK-002", quantity=1),),
                        )
                    )
                    await app.query(GetProduct(sku="BK-002"), consistency="session", min_position=receipt.position)
                    if n % 10 == 0:  # keeps stock for as long as the rebuild of every slot takes
                        await app.execute(Restock(sku="BK-002", quantity=10))

            async with anyio.create_task_group() as tg:
                tg.start_soon(load)
                digests = await app.rebuild(read_models=lambda: _Watched(mid_rebuild))  # new code: every slot
                stop.set()
            receipt = await during[0]
            assert receipt.position > head_before  # committed while the rebuild was catching up
            assert answered[0] >= head_before  # answered by the live copy meanwhile
            fresh = app.router.replicas[0]
            assert fresh is not old
            assert old.stopped
            assert all(isinstance(r.models, _Watched) for r in app.router.replicas)
            assert len(digests) == 2
            assert digests[0].position >= head_before  # at least what the live copy had when the rebuild began
            head = app.position
            for replica in app.router.replicas:
                await replica.wait_for(head, timeout=30)
            assert _all_digests(app) == {(replay_digest(DOMAIN, db).digest, head)}
            assert replay_digest(DOMAIN, db, upto=digests[0].position) == digests[0]

    async def test_rebuild_of_every_slot(self, tmp_path: Path) -> None:
        """rebuild() without an index replaces each replica in turn; all agree with the log afterwards."""
        db = tmp_path / "shop.db"
        async with App(DOMAIN, db, replicas=3) as app:
            await _fill(app, 100)
            old = list(app.router.replicas)
            digests = await app.rebuild()
            assert len(digests) == 3
            assert all(new is not was for new, was in zip(app.router.replicas, old, strict=True))
            assert {d.digest for d in digests} == {replay_digest(DOMAIN, db).digest}
            assert (await app.digest(consistency="strong")).digest == digests[0].digest

    async def test_a_cancelled_rebuild_leaves_the_live_copy_serving(self, tmp_path: Path) -> None:
        """Cancelled while it catches up, the fresh copy is dropped and the live replica keeps answering."""
        db = tmp_path / "shop.db"
        async with App(DOMAIN, db, replicas=1) as app:
            head = await _fill(app, 3000)
            live = app.router.replicas[0]
            with capture_logs() as logs, anyio.CancelScope() as scope:
                await app.rebuild(read_models=lambda: _Watched(scope.cancel))
            assert scope.cancelled_caught
            assert app.router.replicas[0] is live
            assert not live.stopped
            assert "rebuild_abandoned" in [entry["event"] for entry in logs]
            receipt = await app.execute(Restock(sku="KIT-003", quantity=2))
            answer = await app.query(GetProduct(sku="KIT-003"), consistency="session", min_position=receipt.position)
            assert answer.position == receipt.position == head + 1

    async def test_the_background_rebuild_can_be_cancelled(self, tmp_path: Path) -> None:
        """start_rebuild runs one rebuild at a time; cancel_rebuild stops it and cancels its future."""
        db = tmp_path / "shop.db"
        async with App(DOMAIN, db, replicas=2) as app:
            await _fill(app, 3000)
            live = list(app.router.replicas)
            assert not app.cancel_rebuild()  # nothing running
            cancelled = anyio.Event()
            future = app.start_rebuild(read_models=lambda: _Watched(lambda: app.cancel_rebuild()))
            future.add_done_callback(lambda _: cancelled.set())
            with pytest.raises(ConcurrencyError, match="already running"):
                app.start_rebuild()
            with anyio.fail_after(30):
                await cancelled.wait()
            assert future.cancelled()
            assert list(app.router.replicas) == live
            done = anyio.Event()
            again = app.start_rebuild(1)  # the slot is free again
            again.add_done_callback(lambda _: done.set())
            with anyio.fail_after(30):
                await done.wait()
            assert again.result()[0].digest == replay_digest(DOMAIN, db, upto=again.result()[0].position).digest

    async def test_bad_slots_are_refused(self, tmp_path: Path) -> None:
        """An index outside the replicas is an error naming how many there are."""
        async with App(DOMAIN, tmp_path / "shop.db", replicas=2) as app:
            with pytest.raises(ValueError, match="has 2 replicas"):
                await app.rebuild(2)
            with pytest.raises(Exception, match="has 2 replicas"):
                app.start_rebuild(5)
            with pytest.raises(ValueError, match="chunk must be at least 1"):
                await app.rebuild(0, chunk=0)
            with pytest.raises(ValueError, match="replaces every replica's, not replica 0's"):
                await app.rebuild(0, read_models=ShopReplicaModels)
            with pytest.raises(ValueError, match="pass read_models= with it"):
                await app.rebuild(read_models_version=2)


def _raise() -> None:
    raise RuntimeError("cannot apply this event")


def _broken() -> _Watched:
    """Read models whose projection raises on the first event (a bug in new read-model code)."""
    return _Watched(_raise)


class TestRebuildFailure:
    async def test_a_failing_rebuild_keeps_the_live_copy(self, tmp_path: Path) -> None:
        """New read-model code that raises never replaces the live replica; the rebuild reports it."""
        async with App(DOMAIN, tmp_path / "shop.db", replicas=1) as app:
            await _fill(app, 10)
            live = app.router.replicas[0]
            with pytest.raises(Broken, match="rebuild of replica-0 failed"):
                await app.rebuild(read_models=_broken)
            assert app.router.replicas[0] is live
            assert (await app.digest(consistency="strong")).position == app.position
            again = await app.rebuild_replica(0)  # the broken code was never installed: the domain's is rebuilt
            assert type(again.models) is ShopReplicaModels
