"""The single-writer actor: group commit, rejections, idempotency, overload, commit failure, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from soloist import (
    ActorStopped,
    App,
    Closed,
    DomainError,
    IdempotencyConflict,
    InternalError,
    Overloaded,
    ReadOnlyStorage,
    Receipt,
    StorageFull,
    UnknownType,
    WriterLocked,
)
from soloist._guard import SingleWriterGuard
from soloist._messages import encode
from soloist._snapshot import SnapshotStore
from tests.toy import BANK, Account, Crash, Deposit, Open, Opened, Transfer, Withdraw

if TYPE_CHECKING:
    from tests.runtime.conftest import AppFactory


def log_rows(db: Path) -> list[tuple[int, str, int, str, str | None]]:
    """(position, stream, version, type, idempotency_key) of every event, read with plain sqlite3."""
    with sqlite3.connect(db) as conn:
        return list(
            conn.execute("SELECT position, stream, version, type, idempotency_key FROM events ORDER BY position")
        )


class TestGroupCommit:
    async def test_positions_are_gap_free(self, open_app: AppFactory, db: Path) -> None:
        """Receipts carry consecutive global positions and the log holds exactly those."""
        async with open_app() as app:
            receipts = [await app.execute(Open(account=f"a{i}")) for i in range(5)]
            receipts += await asyncio.gather(*(app.execute(Deposit(account="a0", amount=1)) for _ in range(50)))
        assert sorted(r.position for r in receipts) == list(range(1, 56))
        assert [row[0] for row in log_rows(db)] == list(range(1, 56))

    async def test_one_batch_one_transaction(self, open_app: AppFactory) -> None:
        """Commands queued together are decided in order and committed as one batch."""
        async with open_app() as app:
            await app.execute(Open(account="a"))
            futures = [app.submit_nowait(Deposit(account="a", amount=1)) for _ in range(100)]
            receipts = await asyncio.gather(*futures)
            stats = app.writer.statistics()
        assert [r.position for r in receipts] == list(range(2, 102))
        assert stats.batches == 2
        assert stats.batch_size_max == 100
        assert stats.queue_peak == 100

    async def test_rejection_does_not_disturb_its_batch(self, open_app: AppFactory, db: Path) -> None:
        """A rejected command emits nothing; the commands around it in the same batch commit."""
        async with open_app() as app:
            await app.execute(Open(account="a"))
            await app.execute(Open(account="b"))
            first = app.submit_nowait(Deposit(account="a", amount=10))
            bad = app.submit_nowait(Withdraw(account="b", amount=5))
            last = app.submit_nowait(Transfer(source="a", target="b", amount=4))
            assert (await first).position == 3
            with pytest.raises(DomainError, match="insufficient funds in 'b'"):
                await bad
            assert (await last).position == 5
            assert app.writer.states["account-b"] == Account(balance=4)
        assert [row[1:4] for row in log_rows(db)][2:] == [
            ("account-a", 2, "Moved"),
            ("account-a", 3, "Moved"),
            ("account-b", 2, "Moved"),
        ]

    async def test_crash_in_decide_fails_only_that_command(self, open_app: AppFactory) -> None:
        """A bug in decide is an InternalError for that command; the writer keeps serving."""
        async with open_app() as app:
            await app.execute(Open(account="a"))
            crash = app.submit_nowait(Crash(account="a"))
            ok = app.submit_nowait(Deposit(account="a", amount=1))
            with pytest.raises(InternalError, match="ZeroDivisionError"):
                await crash
            assert (await ok).position == 2

    async def test_unknown_command_class(self, open_app: AppFactory) -> None:
        """A command class the domain did not register is refused before it is queued."""
        async with open_app() as app:
            with pytest.raises(UnknownType, match="unknown command type 'Account'"):
                await app.execute(Account(balance=1))


class TestIdempotency:
    async def test_retry_returns_original_receipt(self, open_app: AppFactory, db: Path) -> None:
        """The same key with the same command appends nothing and returns the first position."""
        async with open_app() as app:
            await app.execute(Open(account="a"))
            first = await app.execute(Deposit(account="a", amount=5), idempotency_key="k")
            again = await app.execute(Deposit(account="a", amount=5), idempotency_key="k")
        assert again.duplicate
        assert not first.duplicate
        assert again.position == first.position == 2
        assert again.command_id == first.command_id  # the original command's id, not a new one
        assert len(log_rows(db)) == 2

    async def test_same_key_other_command_conflicts(self, open_app: AppFactory) -> None:
        """The same key with a different command is an IdempotencyConflict naming the key and position."""
        async with open_app() as app:
            await app.execute(Open(account="a"))
            await app.execute(Deposit(account="a", amount=5), idempotency_key="k")
            with pytest.raises(IdempotencyConflict, match="'k' was already used at position 2"):
                await app.execute(Deposit(account="a", amount=6), idempotency_key="k")

    async def test_duplicate_inside_one_batch(self, open_app: AppFactory, db: Path) -> None:
        """Two submissions with one key in the same batch execute once."""
        async with open_app() as app:
            await app.execute(Open(account="a"))
            one = app.submit_nowait(Deposit(account="a", amount=5), idempotency_key="k")
            two = app.submit_nowait(Deposit(account="a", amount=5), idempotency_key="k")
            assert (await one).position == (await two).position == 2
        assert len(log_rows(db)) == 2
        assert log_rows(db)[1][4] == "k"

    async def test_keys_survive_restart(self, open_app: AppFactory, db: Path) -> None:
        """Keys are stored with their events, so a retry after a restart is still a duplicate."""
        async with open_app() as app:
            first = await app.execute(Open(account="a"), idempotency_key="open-a")
        async with open_app() as app:
            again = await app.execute(Open(account="a"), idempotency_key="open-a")
            assert again.duplicate
            assert again.position == 1
            assert again.command_id == first.command_id
        assert len(log_rows(db)) == 1


class TestBackpressure:
    async def test_full_queue_is_overloaded_and_bounded(self, open_app: AppFactory) -> None:
        """Offering far more than the capacity without yielding: `capacity` (+1) are taken, the rest Overloaded."""
        async with open_app(queue_capacity=64) as app:
            await app.execute(Open(account="a"))
            tracemalloc.start()
            try:
                accepted: list[asyncio.Future[Receipt]] = []
                refused = 0
                baseline = tracemalloc.get_traced_memory()[0]
                for _ in range(50_000):
                    try:
                        accepted.append(app.submit_nowait(Deposit(account="a", amount=1)))
                    except Overloaded:
                        refused += 1
                growth = tracemalloc.get_traced_memory()[1] - baseline
            finally:
                tracemalloc.stop()
            # An idle actor waits in receive(), and anyio hands it the first command directly (not through
            # the buffer): the queue holds 64, and at most one more is taken.
            assert len(accepted) in (64, 65)
            assert refused == 50_000 - len(accepted)
            assert growth < 2_000_000, f"offering 50k commands to a 64-slot queue grew memory by {growth} bytes"
            receipts = await asyncio.gather(*accepted)
            assert receipts[-1].position == 1 + len(accepted)

    async def test_wait_false_and_timeout(self, open_app: AppFactory) -> None:
        """With the queue full, wait=False and an expired timeout both give Overloaded and enqueue nothing."""
        async with open_app(queue_capacity=4) as app:
            await app.execute(Open(account="a"))
            held = [app.submit_nowait(Deposit(account="a", amount=1)) for _ in range(4)]
            with contextlib.suppress(Overloaded):  # the idle actor may have taken the first one directly
                held.append(app.submit_nowait(Deposit(account="a", amount=1)))
            with pytest.raises(Overloaded, match="queue is full \\(4 commands waiting"):
                await app.execute(Deposit(account="a", amount=1), wait=False)
            with pytest.raises(Overloaded, match="within 0 s"):
                await app.execute(Deposit(account="a", amount=1), timeout=0)
            await asyncio.gather(*held)
            assert app.position == 1 + len(held)

    async def test_waiting_submitter_gets_in(self, open_app: AppFactory) -> None:
        """A submitter that waits for room is taken once the writer drains the queue."""
        async with open_app(queue_capacity=2) as app:
            await app.execute(Open(account="a"))
            held = [app.submit_nowait(Deposit(account="a", amount=1)) for _ in range(2)]
            receipt = await app.execute(Deposit(account="a", amount=1), timeout=5)
            await asyncio.gather(*held)
            assert receipt.position == 4


class TestCommitFailure:
    async def test_disk_full_fails_whole_batch_and_rolls_back(self, open_app: AppFactory, db: Path) -> None:
        """SQLITE_FULL fails every command of the batch, restores memory, and the writer keeps serving."""
        async with open_app() as app:
            await app.execute(Open(account="a"))
            await app.execute(Deposit(account="a", amount=1))
            await app.log.set_pragma("max_page_count", await app.log.page_count())
            futures = [app.submit_nowait(Deposit(account="a", amount=1)) for _ in range(500)]
            results = await asyncio.gather(*futures, return_exceptions=True)
            assert all(isinstance(r, StorageFull) for r in results), {type(r) for r in results}
            assert "SQLITE_FULL" in str(results[0])
            assert app.writer.states["account-a"] == Account(balance=1)
            assert app.position == 2
            await app.log.set_pragma("max_page_count", 1_000_000_000)
            receipt = await app.execute(Deposit(account="a", amount=1))
            assert receipt.position == 3
            assert app.writer.states["account-a"] == Account(balance=2)
        assert [row[0] for row in log_rows(db)] == [1, 2, 3]

    async def test_read_only_storage(self, open_app: AppFactory, db: Path) -> None:
        """A write refused as read-only is a ReadOnlyStorage error; nothing is acknowledged or kept."""
        async with open_app() as app:
            await app.execute(Open(account="a"))
            await app.log.set_pragma("query_only", 1)
            with pytest.raises(ReadOnlyStorage, match="readonly"):
                await app.execute(Deposit(account="a", amount=7))
            await app.log.set_pragma("query_only", 0)
            assert (await app.execute(Deposit(account="a", amount=1))).position == 2
            assert app.writer.states["account-a"] == Account(balance=1)
        assert len(log_rows(db)) == 2


class TestLifecycle:
    async def test_second_writer_process_is_locked_out(self, open_app: AppFactory, db: Path) -> None:
        """A second writer on the same file fails fast with WriterLocked naming the file."""
        async with open_app():
            with pytest.raises(WriterLocked, match="already the writer"):
                async with App(BANK, db):
                    pass

    async def test_shutdown_commits_what_was_queued(self, open_app: AppFactory, db: Path) -> None:
        """Leaving the app drains the queue: every queued command is committed and acknowledged."""
        async with open_app() as app:
            await app.execute(Open(account="a"))
            futures = [app.submit_nowait(Deposit(account="a", amount=1)) for _ in range(300)]
        receipts = [f.result() for f in futures]
        assert receipts[-1].position == 301
        assert len(log_rows(db)) == 301

    async def test_closed_app_refuses(self, open_app: AppFactory) -> None:
        """After exit, commands get Closed (an ActorStopped: it was closed, it did not die) instead of hanging."""
        async with open_app() as app:
            pass
        with pytest.raises(ActorStopped) as caught:
            await app.execute(Open(account="a"))
        assert caught.type is Closed

    async def test_guard_rejects_a_second_writer_task(self) -> None:
        """The single-writer guard raises BusyResourceError on re-entry."""
        guard = SingleWriterGuard("the write path")
        with guard, pytest.raises(anyio.BusyResourceError, match="the write path"), guard:
            pass


commands = st.one_of(
    st.builds(Open, account=st.sampled_from("abc")),
    st.builds(Deposit, account=st.sampled_from("abcd"), amount=st.integers(-2, 5)),
    st.builds(Withdraw, account=st.sampled_from("abc"), amount=st.integers(0, 6)),
    st.builds(Transfer, source=st.sampled_from("abc"), target=st.sampled_from("abcd"), amount=st.integers(-1, 6)),
)


class TestRecoveryProperty:
    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(batches=st.lists(st.lists(commands, min_size=1, max_size=8), min_size=1, max_size=6))
    def test_rebuilt_state_equals_live_state(self, batches: list[list[object]]) -> None:
        """For any command sequence, rebuilding from the log gives the live state; rejections leave no trace."""

        async def scenario(db: Path) -> None:
            async with App(BANK, db, replicas=1) as app:
                accepted = 0
                for batch in batches:
                    before = app.position
                    futures = [app.submit_nowait(c) for c in batch]
                    results = await asyncio.gather(*futures, return_exceptions=True)
                    emitted = sum(r.events for r in results if isinstance(r, Receipt))
                    assert app.position == before + emitted
                    accepted += emitted
                live = dict(app.writer.states)
            rows = log_rows(db)
            assert [r[0] for r in rows] == list(range(1, accepted + 1))
            async with App(BANK, db, replicas=1) as again:
                assert dict(again.writer.states) == live
                assert again.position == accepted

        with tempfile.TemporaryDirectory() as tmp:
            uvloop.run(scenario(Path(tmp) / "log.db"))


class TestWriterCheckpoint:
    async def test_recovery_from_checkpoint_plus_tail(self, db: Path, tmp_path: Path) -> None:
        """The write model restarts from its checkpoint and replays only the tail, equal to a full replay."""
        snaps = tmp_path / "snaps"
        async with App(BANK, db, replicas=1, snapshot_dir=snaps) as app:
            await app.execute(Open(account="a"))
            await app.execute(Open(account="b"))
            await asyncio.gather(*(app.submit_nowait(Deposit(account="a", amount=2)) for _ in range(40)))
            await app.checkpoint()
            checkpointed = app.position
            await app.execute(Transfer(source="a", target="b", amount=5))
            live = dict(app.writer.states)
        *_, newest = sorted(snaps.glob("bank.writer-*.snapshot"))
        assert newest.name.endswith(f"{app.position:020d}.snapshot")  # the final checkpoint at exit
        newest.unlink()  # keep the earlier one: recovery must replay the tail after it
        assert any(snaps.glob(f"bank.writer-{checkpointed:020d}.snapshot"))
        with capture_logs() as logs:
            async with App(BANK, db, replicas=1, snapshot_dir=snaps) as again:
                assert dict(again.writer.states) == live
                assert again.position == checkpointed + 2
                receipt = await again.execute(Deposit(account="b", amount=1))
                assert receipt.position == checkpointed + 3
        (recovered,) = [e for e in logs if e["event"] == "writer_recovered"]
        assert recovered["from_checkpoint"] == checkpointed
        assert recovered["events"] == 2

    async def test_checkpoint_of_the_previous_format_loads(self, db: Path, tmp_path: Path) -> None:
        """A checkpoint written before states were grouped by type (one ``[stream, version, type, state]`` row
        per stream) still loads: nothing is replayed; the next checkpoint is written grouped."""
        snaps = tmp_path / "snaps"
        async with App(BANK, db, replicas=1, snapshot_dir=snaps) as app:
            await app.execute(Open(account="a"))
            await app.execute(Open(account="b"))
            await app.execute(Deposit(account="a", amount=3))
            live = dict(app.writer.states)
            log_id = app.log.log_id
        store = SnapshotStore(snaps, domain="bank.writer")
        store.log_id = log_id
        for old in snaps.glob("bank.writer-*.snapshot"):
            old.unlink()
        rows = [(stream, 1 if stream == "account-b" else 2, "Account", state) for stream, state in live.items()]
        store.write_bytes(3, encode(rows))
        with capture_logs() as logs:
            async with App(BANK, db, replicas=1, snapshot_dir=snaps) as again:
                assert dict(again.writer.states) == live
                assert dict(again.writer._versions) == {"account-a": 2, "account-b": 1}
                await again.execute(Deposit(account="b", amount=1))  # the exit's checkpoint: position 4
        (recovered,) = [e for e in logs if e["event"] == "writer_recovered"]
        assert (recovered["from_checkpoint"], recovered["events"]) == (3, 0)
        *_, newest = sorted(snaps.glob("bank.writer-*.snapshot"))
        assert newest.name.endswith(f"{4:020d}.snapshot")
        assert b'{"by_type":[["Account",[["account-a",2,' in newest.read_bytes()

    async def test_unloadable_checkpoint_falls_back_to_full_replay(self, db: Path, tmp_path: Path) -> None:
        """A writer checkpoint whose body does not unpickle is skipped; the whole log is replayed."""
        snaps = tmp_path / "snaps"
        async with App(BANK, db, replicas=1, snapshot_dir=snaps) as app:
            await app.execute(Open(account="a"))
            await app.execute(Deposit(account="a", amount=3))
        store = SnapshotStore(snaps, domain="bank.writer")
        async with App(BANK, db, replicas=1) as plain:
            store.log_id = plain.log.log_id
        for old in snaps.glob("bank.writer-*.snapshot"):
            old.unlink()
        store.write_bytes(2, b"not a pickle")  # valid header and checksum, body from elsewhere
        with capture_logs() as logs:
            async with App(BANK, db, replicas=1, snapshot_dir=snaps) as again:
                assert again.writer.states["account-a"] == Account(balance=3)
        assert any(e["event"] == "writer_checkpoint_rejected" for e in logs)
        (recovered,) = [e for e in logs if e["event"] == "writer_recovered"]
        assert recovered["events"] == 2


class TestDomainBugs:
    async def test_generator_decide_and_unencodable_command(self, db: Path) -> None:
        """A decide that returns a generator works; a command that cannot be encoded fails alone, as internal."""
        import msgspec

        from soloist import Domain

        class Tagged(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
            account: str
            tags: object  # an arbitrary object cannot be encoded, so its idempotency fingerprint fails

        def decide(states: object, command: object) -> object:
            if isinstance(command, Tagged):
                return iter([Opened(account=command.account)])
            return BANK.decide(states, command)  # type: ignore[arg-type]

        domain = Domain(
            name="bank",
            commands=(*BANK.commands, Tagged),
            events=BANK.events,
            queries=BANK.queries,
            decide=decide,  # type: ignore[arg-type]
            evolve=BANK.evolve,
            stream_of=BANK.stream_of,
            read_models=BANK.read_models,
            errors=BANK.errors,
        )
        async with App(domain, db, replicas=1) as app:
            receipt = await app.execute(Tagged(account="g", tags=["a"]))
            assert receipt.events == 1
            bad = app.submit_nowait(Tagged(account="h", tags=object()), idempotency_key="k")
            good = app.submit_nowait(Open(account="i"))
            with pytest.raises(InternalError, match="could not be decided"):
                await bad
            assert (await good).position == 2
