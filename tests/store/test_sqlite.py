"""The contract against the SQLite adapter (today's EventLog + LogReader behind the port)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from soloist import WriterLocked
from soloist._sqlitestore import SQLiteStore
from tests.store.contract import EVENTS, EventStoreContract, rows

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
