"""The contract against the in-memory adapter, and its fault injection."""

from __future__ import annotations

import pytest

from soloist import PersistenceError, StorageFull
from soloist._memstore import MemoryLog, MemoryStore
from tests.store.contract import EVENTS, RefusesVersionClashes, rows


class TestMemoryStore(RefusesVersionClashes):
    @pytest.fixture(autouse=True)
    def _storage(self) -> None:
        self.log = MemoryLog()

    def make_store(self) -> MemoryStore:
        return MemoryStore(EVENTS, self.log)

    async def test_fault_before_commit_writes_nothing(self) -> None:
        """fail_next_append raises the given error and leaves the log as it was; the next append works."""
        async with MemoryStore(EVENTS, self.log) as store:
            store.fail_next_append(StorageFull("injected: disk full"))
            with pytest.raises(StorageFull, match="injected"):
                await store.append(rows(1, 2), [("k", "fp", 2, "c", 1.0)])
            assert await store.head() == 0
            assert await store.keys() == {}
            await store.append(rows(1, 2))
            assert await store.head() == 2

    async def test_fault_after_commit_loses_only_the_acknowledgement(self) -> None:
        """after_commit=True: the batch is durable but the caller gets the error (the log is the truth)."""
        async with MemoryStore(EVENTS, self.log) as store:
            store.fail_next_append(PersistenceError("injected: connection lost"), after_commit=True)
            with pytest.raises(PersistenceError, match="injected"):
                await store.append(rows(1, 2), [("k", "fp", 2, "c", 1.0)])
            assert await store.head() == 2
            assert "k" in await store.keys()
