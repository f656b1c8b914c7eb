"""The contract against the SQLite adapter (today's EventLog + LogReader behind the port)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from soloist import App, LogCorrupted, WriterLocked
from soloist._messages import encode
from soloist._sqlitestore import SQLiteStore
from tests.store.contract import EVENTS, EventStoreContract, rows
from tests.toy import BANK, Deposit, Open

if TYPE_CHECKING:
    from pathlib import Path


class TestSQLiteStore(EventStoreContract):
    @pytest.fixture(autouse=True)
    def _storage(self, tmp_path: Path) -> None:
        self.path = tmp_path / "log.db"

    def make_store(self) -> SQLiteStore:
        return SQLiteStore(self.path, EVENTS)

    async def test_second_writer_is_locked_out(self) -> None:
        """A second store on the same file cannot open while the first is open (flock)."""
        async with self.opened() as store:
            await store.append(rows(1, 1))
            with pytest.raises(WriterLocked):
                await self.make_store().open()

    async def test_versions_are_the_writers_and_checked_at_recovery(self) -> None:
        """No index on (stream, version) (the one writer assigns versions under the file's lock): a batch that
        repeats a version is stored as given, and the next start refuses the log, naming the event."""
        async with App(BANK, self.path) as app:
            await app.execute(Open(account="a"))
            await app.execute(Deposit(account="a", amount=5))
        async with self.opened() as store:
            (second,) = [e for e in await store.read(0, 10) if e.position == 2]
            again = (3, second.stream, 2, "Moved", 1, encode(second.data), "cmd-x", None, second.recorded_at)
            await store.append([again])  # version 2 of account-a again, as a second writer would
            assert [e.version for e in await store.read_stream("account-a")] == [1, 2, 2]
        with pytest.raises(LogCorrupted, match="position 3 is version 2 of 'account-a', expected 3"):
            async with App(BANK, self.path):
                pass
