"""Replicas, query routing and consistency levels, lag, and read-model checkpoints."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soloist import Answer, App, BadRequest, Broken, ConsistencyTimeout, NotFound
from soloist._snapshot import SnapshotStore
from tests.toy import BANK, Balance, Deposit, Open, Poison, Total, Transfer, first_replica_fragile

if TYPE_CHECKING:
    from pathlib import Path

    from soloist._replica import Replica
    from tests.runtime.conftest import AppFactory


class TestConsistency:
    async def test_read_your_writes(self, open_app: AppFactory) -> None:
        """A session query at a receipt's position always sees that command's effect."""
        async with open_app(replicas=4) as app:
            await app.execute(Open(account="a"))
            for expected in range(1, 201):
                receipt = await app.execute(Deposit(account="a", amount=1))
                answer = await app.query(Balance(account="a"), consistency="session", min_position=receipt.position)
                assert answer.result == expected
                assert answer.position >= receipt.position

    async def test_strong_sees_every_committed_write(self, open_app: AppFactory) -> None:
        """A strong query reflects at least the writer's position at the time it was asked."""
        async with open_app() as app:
            await app.execute(Open(account="a"))
            await asyncio.gather(*(app.submit_nowait(Deposit(account="a", amount=2)) for _ in range(300)))
            answer = await app.query(Total(), consistency="strong")
            assert answer.result == 600
            assert answer.position == app.position

    async def test_eventual_answers_now_with_its_position(self, open_app: AppFactory) -> None:
        """An eventual query answers at once from any replica and says which position it reflects."""
        async with open_app(replicas=2) as app:
            await app.execute(Open(account="a"))
            await app.execute(Deposit(account="a", amount=5))
            answers = [app.query_nowait(Total()) for _ in range(2)]  # one per replica, no waiting
            for answer in answers:
                assert 0 <= answer.position <= app.position
                assert answer.result == (5 if answer.position == 2 else 0)
            for replica in app.router.replicas:
                await replica.wait_for(app.position, timeout=5)
            assert app.query_nowait(Balance(account="a")) == Answer(result=5, position=2)

    async def test_session_wait_times_out(self, open_app: AppFactory) -> None:
        """A position no replica reaches in time gives a typed ConsistencyTimeout with both positions."""
        async with open_app() as app:
            await app.execute(Open(account="a"))
            with pytest.raises(ConsistencyTimeout, match=r"position 99 within 0\.01 s"):
                await app.query(Total(), consistency="session", min_position=99, timeout=0.01)

    @pytest.mark.parametrize(
        ("consistency", "min_position", "field"),
        [("session", None, "min_position"), ("session", -1, "min_position"), ("sometimes", None, "consistency")],
    )
    async def test_bad_consistency_is_bad_request(
        self, open_app: AppFactory, consistency: str, min_position: int | None, field: str
    ) -> None:
        """A wrong consistency level or missing min_position is a BadRequest naming the field."""
        async with open_app() as app:
            with pytest.raises(BadRequest) as info:
                await app.query(Total(), consistency=consistency, min_position=min_position)  # type: ignore[arg-type]
            assert info.value.field == field

    async def test_domain_not_found_is_translated(self, open_app: AppFactory) -> None:
        """A read model's own 'missing' error reaches the caller as soloist.NotFound."""
        async with open_app() as app:
            with pytest.raises(NotFound, match="no account 'zz'"):
                await app.query(Balance(account="zz"))

    async def test_queries_round_robin(self, open_app: AppFactory) -> None:
        """Eventual queries spread over the ready replicas."""
        async with open_app(replicas=3) as app:
            for _ in range(9):
                app.query_nowait(Total())
            assert [r.statistics().queries for r in app.router.replicas] == [3, 3, 3]


class TestReplicaHealth:
    async def test_lag_is_reported(self, open_app: AppFactory) -> None:
        """Each replica reports its position and lag; caught-up replicas report zero lag."""
        async with open_app(replicas=2) as app:
            await app.execute(Open(account="a"))
            await asyncio.gather(*(app.submit_nowait(Deposit(account="a", amount=1)) for _ in range(100)))
            await app.query(Total(), consistency="strong")
            for replica in app.router.replicas:
                await replica.wait_for(app.position, timeout=5)
            stats = app.statistics()
            assert stats.position == 101
            assert [r.position for r in stats.replicas] == [101, 101]
            assert all(r.lag_events == 0 and r.lag_ms == 0.0 and r.ready for r in stats.replicas)
            assert all(len(r.lag_samples) > 0 for r in app.router.replicas)

    async def test_failed_replica_is_skipped(self, open_app: AppFactory) -> None:
        """A replica whose apply raises is marked failed and queries go to the others."""
        async with open_app(replicas=2, domain=first_replica_fragile()) as app:
            broken = app.router.replicas[0]
            await app.execute(Open(account="a"))
            receipt = await app.execute(Poison(account="a"))  # replica-0's read models raise on it
            await stopped_broken(broken, receipt.position)
            answer = await app.query(Balance(account="a"), consistency="strong")
            assert answer.result == 0
            for _ in range(4):
                assert app.query_nowait(Balance(account="a")).result == 0
            assert broken.failed
            assert not broken.ready
            assert app.statistics().replicas[0].failed


async def stopped_broken(replica: Replica, position: int) -> None:
    """Wait until ``replica`` has failed on ``position``: its waiters get Broken (it died, nobody closed it)."""
    if not replica.failed:
        with pytest.raises(Broken, match=f"{replica.name} stopped"):
            await replica.wait_for(position, timeout=10)
    assert replica.failed


class TestEveryReplicaFailed:
    async def test_waiting_queries_get_broken(self, open_app: AppFactory) -> None:
        """With its only replica dead, a query that must wait for a position gets Broken (it died), at once."""
        async with open_app(replicas=1, domain=first_replica_fragile()) as app:
            await app.execute(Open(account="a"))
            receipt = await app.execute(Poison(account="a"))
            await stopped_broken(app.router.replicas[0], receipt.position)
            with pytest.raises(Broken, match="every replica has failed") as caught:
                await app.query(Total(), consistency="strong", timeout=60)
            assert caught.type is Broken


class TestCheckpoints:
    async def test_restart_from_checkpoint_plus_tail(self, db: Path, tmp_path: Path) -> None:
        """Replicas load the newest checkpoint and replay only the tail, ending equal to a full replay."""
        snaps = tmp_path / "snaps"
        async with App(BANK, db, replicas=1, snapshot_dir=snaps) as app:
            await app.execute(Open(account="a"))
            await app.execute(Open(account="b"))
            await asyncio.gather(*(app.submit_nowait(Deposit(account="a", amount=3)) for _ in range(50)))
            await app.query(Total(), consistency="strong")
            path = await app.checkpoint()
            assert path is not None
            assert path.exists()
            await app.execute(Transfer(source="a", target="b", amount=10))
        async with App(BANK, db, replicas=2, snapshot_dir=snaps) as app:
            models = app.router.replicas[0].models
            assert models.balances == {"a": 140, "b": 10}  # type: ignore[attr-defined]
        async with App(BANK, db, replicas=1) as full:
            assert full.router.replicas[0].models.balances == {"a": 140, "b": 10}  # type: ignore[attr-defined]

    async def test_checkpoint_then_tail_only(self, db: Path, tmp_path: Path) -> None:
        """After a restore the replica applies only events after the checkpoint's position."""
        snaps = tmp_path / "snaps"
        async with App(BANK, db, replicas=1, snapshot_dir=snaps) as app:
            await app.execute(Open(account="a"))
            await app.query(Total(), consistency="strong")
            await app.checkpoint()
            await app.execute(Deposit(account="a", amount=1))
            await app.query(Total(), consistency="strong")
            # leaving writes a final checkpoint at position 2; remove it to test tail replay from 1
        store = SnapshotStore(snaps, domain="bank")
        newest = sorted(snaps.glob("bank-*.snapshot"))[-1]
        newest.unlink()
        assert store.load(max_position=2) is not None
        async with App(BANK, db, replicas=1, snapshot_dir=snaps) as app:
            assert app.router.replicas[0].models.applied == [1, 2]  # type: ignore[attr-defined]
            assert app.router.replicas[0].statistics().applied == 1

    @pytest.mark.parametrize("damage", ["flip", "truncate", "header", "empty"])
    async def test_corrupt_checkpoint_falls_back_to_log(self, db: Path, tmp_path: Path, damage: str) -> None:
        """A corrupted, truncated or garbled checkpoint is rejected and the replica rebuilds from the log."""
        snaps = tmp_path / "snaps"
        async with App(BANK, db, replicas=1, snapshot_dir=snaps) as app:
            await app.execute(Open(account="a"))
            await app.execute(Deposit(account="a", amount=5))
        (path,) = snaps.glob("bank-*.snapshot")
        raw = bytearray(path.read_bytes())
        if damage == "flip":
            raw[-3] ^= 0x01
        elif damage == "truncate":
            raw = raw[:-5]
        elif damage == "header":
            raw = bytearray(b"{not json\n") + raw
        else:
            raw = bytearray()
        path.write_bytes(bytes(raw))
        assert SnapshotStore(snaps, domain="bank").load(max_position=10) is None
        async with App(BANK, db, replicas=1, snapshot_dir=snaps) as app:
            replica = app.router.replicas[0]
            assert replica.models.balances == {"a": 5}  # type: ignore[attr-defined]
            assert replica.statistics().applied == 2

    async def test_checkpoint_beyond_log_is_stale(self, tmp_path: Path) -> None:
        """A checkpoint from a newer log than the one on disk is ignored (e.g. the database was replaced)."""
        snaps = tmp_path / "snaps"
        async with App(BANK, tmp_path / "old.db", replicas=1, snapshot_dir=snaps) as app:
            for i in range(5):
                await app.execute(Open(account=f"a{i}"))
        async with App(BANK, tmp_path / "new.db", replicas=1, snapshot_dir=snaps) as app:
            await app.execute(Open(account="z"))
            await app.query(Total(), consistency="strong")
            assert app.router.replicas[0].models.balances == {"z": 0}  # type: ignore[attr-defined]

    async def test_checkpoint_of_another_log_is_ignored(self, tmp_path: Path) -> None:
        """A checkpoint written for a different log file is rejected even when its position fits."""
        snaps = tmp_path / "snaps"
        async with App(BANK, tmp_path / "one.db", replicas=1, snapshot_dir=snaps) as app:
            await app.execute(Open(account="x"))
        async with App(BANK, tmp_path / "two.db", replicas=1, snapshot_dir=snaps) as app:
            await app.execute(Open(account="y"))
            await app.execute(Open(account="z"))
            await app.query(Total(), consistency="strong")
            assert app.router.replicas[0].models.balances == {"y": 0, "z": 0}  # type: ignore[attr-defined]


class TestRebuild:
    async def test_rebuild_under_load_converges(self, open_app: AppFactory) -> None:
        """A replica rebuilt while commands flow catches up from the log, joins, and equals the others."""
        async with open_app(replicas=3) as app:
            await app.execute(Open(account="a"))
            await asyncio.gather(*(app.submit_nowait(Deposit(account="a", amount=1)) for _ in range(500)))
            fresh = await app.rebuild_replica(1)
            assert app.router.replicas[1] is fresh
            more = [app.submit_nowait(Deposit(account="a", amount=1)) for _ in range(500)]
            await asyncio.gather(*more)
            for replica in app.router.replicas:
                await replica.wait_for(app.position, timeout=10)
            assert fresh.ready
            assert fresh.models.snapshot() == app.router.replicas[0].models.snapshot()
            assert fresh.query_nowait(Balance(account="a")).result == 1000

    async def test_failed_replica_can_be_rebuilt(self, open_app: AppFactory) -> None:
        """After a replica fails, rebuilding it gives a healthy replica that answers again."""
        async with open_app(replicas=2, domain=first_replica_fragile()) as app:
            broken = app.router.replicas[0]
            await app.execute(Open(account="a"))
            receipt = await app.execute(Poison(account="a"))  # replica-0's read models raise on it
            await stopped_broken(broken, receipt.position)
            await app.query(Total(), consistency="session", min_position=receipt.position)
            await app.router.replicas[1].wait_for(receipt.position, timeout=5)
            assert broken.failed
            fresh = await app.rebuild_replica(0)
            await fresh.wait_for(receipt.position, timeout=5)
            assert fresh.ready
            assert not fresh.failed
            assert fresh.query_nowait(Balance(account="a")).result == 0


class TestReplicaProperty:
    @settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        batches=st.lists(st.integers(1, 40), min_size=1, max_size=12),
        buffer=st.integers(1, 30),
        pause=st.lists(st.booleans(), min_size=12, max_size=12),
    )
    def test_any_delivery_mix_equals_full_replay(
        self, tmp_path_factory: pytest.TempPathFactory, batches: list[int], buffer: int, pause: list[bool]
    ) -> None:
        """Replicas fed by live delivery, overflows and catch-up end equal to a replica built by full replay."""

        async def scenario(db: Path) -> None:
            async with App(BANK, db, replicas=3, subscriber_buffer=buffer) as app:
                await app.execute(Open(account="a"))
                await app.execute(Open(account="b"))
                for i, size in enumerate(batches):
                    futures = [
                        app.submit_nowait(Deposit(account="ab"[j % 2], amount=j + 1))
                        if j % 3
                        else app.submit_nowait(Transfer(source="a", target="b", amount=1))
                        for j in range(size)
                    ]
                    await asyncio.gather(*futures, return_exceptions=True)
                    if pause[i]:  # let replicas run now and then; otherwise they fall behind and overflow
                        await app.router.wait_for(app.position, timeout=10)
                for replica in app.router.replicas:
                    await replica.wait_for(app.position, timeout=10)
                live = [r.models.snapshot() for r in app.router.replicas]
            async with App(BANK, db, replicas=1) as replay:
                expected = replay.router.replicas[0].models.snapshot()
            assert all(state == expected for state in live)

        uvloop.run(scenario(tmp_path_factory.mktemp("prop") / "log.db"))
