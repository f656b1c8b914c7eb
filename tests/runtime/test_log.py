"""The SQLite event log: batches, keys, reads, shared catch-up chunks, and corruption detection."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import anyio
import pytest

from soloist import App, LogCorrupted, PersistenceError
from soloist._log import EventLog, LogReader
from soloist._messages import TypeRegistry, encode
from tests.toy import BANK, Moved, Opened

if TYPE_CHECKING:
    from pathlib import Path

    from soloist._log import EventRow

EVENTS = TypeRegistry("event", BANK.events)


def rows(first: int, count: int) -> list[EventRow]:
    out: list[EventRow] = [(first, "account-a", first, "Opened", 1, encode(Opened(account="a")), "c", None, 0.0)]
    out += [
        (p, "account-a", p, "Moved", 1, encode(Moved(account="a", delta=1)), "c", None, 0.0)
        for p in range(first + 1, first + count)
    ]
    return out


class TestEventLog:
    async def test_append_and_read_back(self, db: Path) -> None:
        """A batch appended in one transaction reads back in order, decoded, by position and by stream."""
        async with EventLog(db) as log:
            await log.append(rows(1, 5), [("key", "fp", 5, "c", 1.0)])
            assert await log.head() == 5
            keys = await log.keys()
            assert keys["key"].position == 5
            assert keys["key"].command_id == "c"
        async with LogReader(db, EVENTS) as reader:
            events = await reader.read(2, 10)
            assert [e.position for e in events] == [3, 4, 5]
            assert events[0].data == Moved(account="a", delta=1)
            assert [e.version for e in await reader.read_stream("account-a")] == [1, 2, 3, 4, 5]

    async def test_taken_position_is_refused(self, db: Path) -> None:
        """The position is the primary key, even against a buggy writer; nothing of the batch is kept (stream
        versions are the writer's and are checked at recovery: test_wrong_version_is_detected_at_recovery)."""
        async with EventLog(db) as log:
            await log.append(rows(1, 2))
            clash: list[EventRow] = [(3, "account-b", 1, "Opened", 1, b"{}", "c", None, 0.0)]
            clash.append((2, "account-a", 3, "Moved", 1, b"{}", "c", None, 0.0))
            with pytest.raises(PersistenceError, match=r"UNIQUE constraint failed: events\.position"):
                await log.append(clash)
            assert await log.head() == 2

    async def test_gap_is_detected_at_recovery(self, db: Path) -> None:
        """A log edited to have a gap refuses to start, naming the positions."""
        async with EventLog(db) as log:
            await log.append(rows(1, 5))
        with sqlite3.connect(db) as conn:
            conn.execute("DELETE FROM events WHERE position = 3")
        with pytest.raises(LogCorrupted, match="not contiguous"):
            async with App(BANK, db):
                pass

    async def test_wrong_version_is_detected_at_recovery(self, db: Path) -> None:
        """A stream whose versions skip is reported as corrupted, with the position."""
        async with EventLog(db) as log:
            await log.append(rows(1, 3))
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE events SET version = 7 WHERE position = 3")
        with pytest.raises(LogCorrupted, match="position 3 is version 7"):
            async with App(BANK, db):
                pass


class TestLogReader:
    async def test_concurrent_readers_share_a_chunk(self, db: Path) -> None:
        """Four replicas reading the same chunks at once cause one SQLite fetch per chunk, not four."""
        async with EventLog(db) as log:
            await log.append(rows(1, 1000))
        async with LogReader(db, EVENTS) as reader:
            results: list[list[int]] = []

            async def catch_up() -> None:
                got: list[int] = []
                after = 0
                while chunk := await reader.read(after, 100):
                    got += [e.position for e in chunk]
                    after = chunk[-1].position
                results.append(got)

            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(catch_up)
            assert results == [list(range(1, 1001))] * 4
            assert reader.fetches <= 10 + 4 * 2  # 10 full chunks once each; the empty tail per reader

    async def test_short_chunk_is_read_again(self, db: Path) -> None:
        """A chunk that was short when cached is fetched again, so new events are seen."""
        async with EventLog(db) as log:
            await log.append(rows(1, 3))
            async with LogReader(db, EVENTS) as reader:
                assert len(await reader.read(0, 10)) == 3
                await log.append([(4, "account-a", 4, "Moved", 1, b'{"account": "a", "delta": 1}', "c", None, 0.0)])
                assert len(await reader.read(0, 10)) == 4


def big_rows(first: int, count: int, size: int) -> list[EventRow]:
    """``count`` events of about ``size`` bytes of data each, every one on a stream of its own."""
    return [
        (p, f"account-{p}", 1, "Opened", 1, encode(Opened(account="x" * size)), "c", None, 0.0)
        for p in range(first, first + count)
    ]


class TestCheckpointsBesideTheWriter:
    async def test_the_wal_stays_short_and_nothing_is_lost(self, db: Path) -> None:
        """Appends never checkpoint inside COMMIT; checkpoints beside the writer keep the WAL far shorter than
        what was written (without them it grows by every commit), and every event reads back after a reopen."""
        batches, per_batch, size = 200, 50, 1000  # about 10 MB of event data
        wal = db.with_name(db.name + "-wal")
        longest = 0
        async with EventLog(db, checkpoint_bytes=256 << 10) as log:
            for b in range(batches):
                await log.append(big_rows(1 + b * per_batch, per_batch, size))
                if b % 20 == 19:  # now and then, let the running checkpoint end (appends never wait for one)
                    await log.wait_checkpoint()
                longest = max(longest, wal.stat().st_size)
            assert log.checkpoints >= 10
        written = batches * per_batch * size
        assert longest < written / 4, (longest, written)
        async with EventLog(db) as log:
            assert await log.head() == batches * per_batch
        async with LogReader(db, EVENTS) as reader:
            last = await reader.read(batches * per_batch - 1, 10)
            assert [e.position for e in last] == [batches * per_batch]
            assert last[0].data == Opened(account="x" * size)

    async def test_the_writer_connection_never_checkpoints_on_commit(self, db: Path) -> None:
        """The writer's connection has SQLite's automatic checkpoint off: a COMMIT is never a checkpoint."""
        async with EventLog(db) as log:
            assert log._c.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
