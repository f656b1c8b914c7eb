"""The event store contract, written once and run against every adapter (subclassed in test_<adapter>.py)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import pytest

from soloist import ConcurrencyError, PersistenceError
from soloist._messages import TypeRegistry, encode
from soloist._store import EventRow, Forget, KeyRow, StoredKey
from tests.toy import BANK, Moved, Opened

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from soloist._store import EventStore

EVENTS = TypeRegistry("event", BANK.events)  # the adapters are built with the toy bank's events


def rows(first: int, count: int, *, stream: str = "account-a", version: int | None = None) -> list[EventRow]:
    """``count`` events at positions first, first+1, ...; versions start at ``version`` (default: the position)."""
    v = first if version is None else version
    out: list[EventRow] = []
    for i in range(count):
        event: object = Opened(account=stream) if v + i == 1 else Moved(account=stream, delta=v + i)
        name = type(event).__name__
        out.append((first + i, stream, v + i, name, 1, encode(event), f"cmd-{first + i}", None, 1e9 + i / 3))
    return out


class EventStoreContract(ABC):
    """Every adapter of the port keeps these promises."""

    @abstractmethod
    def make_store(self) -> EventStore:
        """A new, unopened adapter over this test's storage: the same storage on every call (a restart)."""

    async def become_writer(self, store: EventStore) -> None:
        """Whatever the adapter needs before it may append (PostgreSQL: the lease). Nothing by default."""
        return

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[EventStore]:
        store = self.make_store()
        await store.open()
        try:
            await self.become_writer(store)
            yield store
        finally:
            await store.aclose()

    async def positions(self, store: EventStore) -> list[int]:
        return [e.position for e in await store.read(0, 1_000_000)]

    async def test_new_log_is_empty_and_has_an_id(self) -> None:
        """A new log has head 0, no events, no keys, and a random log id."""
        async with self.opened() as store:
            assert await store.head() == 0
            assert await store.read(0) == []
            assert await store.read_stream("account-a") == []
            assert await store.keys() == {}
            assert len(store.log_id) >= 16

    async def test_batch_reads_back_exactly(self) -> None:
        """Every field of every row comes back, in position order, the body decoded by the given decoder."""
        batch = rows(1, 5)
        batch[2] = (*batch[2][:7], "key-3", batch[2][8])
        async with self.opened() as store:
            await store.append(batch)
            events = await store.read(0)
        assert [e.position for e in events] == [1, 2, 3, 4, 5]
        for event, row in zip(events, batch, strict=True):
            position, stream, version, type_name, schema, data, command_id, key, recorded_at = row
            assert (event.position, event.stream, event.version, event.type, event.schema) == (
                position,
                stream,
                version,
                type_name,
                schema,
            )
            assert (event.command_id, event.idempotency_key, event.recorded_at) == (command_id, key, recorded_at)
            assert encode(event.data) == data
        assert events[0].data == Opened(account="account-a")
        assert events[3].data == Moved(account="account-a", delta=4)

    async def test_positions_are_gap_free_across_batches(self) -> None:
        """Batches of 1, 3 and 10 events read back as positions 1..14 with no gap."""
        async with self.opened() as store:
            first = 1
            for size in (1, 3, 10):
                await store.append(rows(first, size))
                first += size
            assert await self.positions(store) == list(range(1, 15))
            assert await store.head() == 14

    async def test_chunked_reads(self) -> None:
        """read(after, limit) returns at most limit events above after; reading past the head returns none."""
        async with self.opened() as store:
            await store.append(rows(1, 25))
            chunks: list[list[int]] = []
            after = 0
            while chunk := await store.read(after, 10):
                chunks.append([e.position for e in chunk])
                after = chunk[-1].position
            assert chunks == [list(range(1, 11)), list(range(11, 21)), list(range(21, 26))]
            assert [e.position for e in await store.read(7, 3)] == [8, 9, 10]
            assert await store.read(25) == []
            assert await store.read(1000) == []

    async def test_replay_yields_every_event_after_up_to_in_order(self) -> None:
        """replay(after, upto): the start's pass, in order, chunked, nothing beyond upto."""
        async with self.opened() as store:
            await store.append(rows(1, 2500))
            seen = [e.position async for chunk in store.replay(3, 2400) for e in chunk]
            assert seen == list(range(4, 2401))
            assert [e.position async for chunk in store.replay(2500, 2500) for e in chunk] == []
            whole = [e async for chunk in store.replay(0, 2500) for e in chunk]
            assert whole == await store.read(0, 1_000_000)  # the same events, decoded the same way

    async def test_read_stream(self) -> None:
        """read_stream returns one stream's events by version, whatever the interleaving with others."""
        async with self.opened() as store:
            await store.append(rows(1, 2, stream="account-a", version=1))
            await store.append(rows(3, 3, stream="account-b", version=1))
            await store.append(rows(6, 2, stream="account-a", version=3))
            a = await store.read_stream("account-a")
            assert [(e.version, e.position) for e in a] == [(1, 1), (2, 2), (3, 6), (4, 7)]
            assert [e.position for e in await store.read_stream("account-b")] == [3, 4, 5]
            assert await store.read_stream("account-z") == []

    async def test_keys_are_stored_with_their_batch_and_survive_reopen(self) -> None:
        """Idempotency keys come back with fingerprint, position, command id and time, also after a restart."""
        keys: list[KeyRow] = [("k1", "fp1", 2, "cmd-2", 1000.5), ("k2", "fp2", 3, "cmd-3", 1000.5)]
        async with self.opened() as store:
            await store.append(rows(1, 3), keys)
            await store.append([], [("k3", "fp3", 3, "cmd-none", 1001.25)])  # a command that emitted nothing
            assert await store.head() == 3
            before = await store.keys()
        async with self.opened() as store:
            after = await store.keys()
        expected = {
            "k1": StoredKey("fp1", 2, "cmd-2", 1000.5),
            "k2": StoredKey("fp2", 3, "cmd-3", 1000.5),
            "k3": StoredKey("fp3", 3, "cmd-none", 1001.25),
        }
        assert before == after == expected

    async def test_head_log_id_and_events_are_stable_across_reopen(self) -> None:
        """Reopening the same storage gives the same log id, head and events; appending goes on from there."""
        async with self.opened() as store:
            await store.append(rows(1, 4))
            log_id = store.log_id
        async with self.opened() as store:
            assert store.log_id == log_id
            assert await store.head() == 4
            await store.append(rows(5, 2))
        async with self.opened() as store:
            assert store.log_id == log_id
            assert await self.positions(store) == [1, 2, 3, 4, 5, 6]

    async def test_taken_position_is_refused(self) -> None:
        """A batch that reuses a committed position (a stale or second writer) is refused whole."""
        async with self.opened() as store:
            await store.append(rows(1, 3))
            with pytest.raises(ConcurrencyError):
                await store.append(rows(3, 2, stream="account-b", version=1))
            assert await self.positions(store) == [1, 2, 3]

    async def test_gap_is_refused(self) -> None:
        """A batch that does not start right after the head would leave a gap: refused whole."""
        async with self.opened() as store:
            await store.append(rows(1, 3))
            with pytest.raises(ConcurrencyError):
                await store.append(rows(5, 2))
            assert await self.positions(store) == [1, 2, 3]

    async def test_keys_are_kept_in_commit_order_and_the_oldest_forgotten(self) -> None:
        """Keys come back in commit order. ``Forget(n, before)`` deletes the n oldest recorded before ``before``,
        in the batch's own transaction and before its inserts (never one of its own); a refused batch deletes
        nothing; a batch may only delete; more than there are is no error; a deleted key can be stored again."""
        async with self.opened() as store:
            await store.append(rows(1, 2), [("b", "fp", 1, "c1", 1.0), ("a", "fp", 2, "c2", 2.0)])
            await store.append([], [("c", "fp", 2, "c3", 3.0)])
            assert list(await store.keys()) == ["b", "a", "c"]
            with pytest.raises(ConcurrencyError):
                await store.append(rows(5, 1), [], Forget(1, 10.0))  # a gap: refused whole
            assert list(await store.keys()) == ["b", "a", "c"]
            await store.append(rows(3, 1), [("d", "fp", 3, "c4", 4.0), ("e", "fp", 3, "c5", 5.0)], Forget(2, 10.0))
            assert list(await store.keys()) == ["c", "d", "e"]
            await store.append([], [], Forget(1, 10.0))  # deletions only
            await store.append([], [("b", "fp-new", 3, "c6", 6.0)])
            assert await store.head() == 3
        async with self.opened() as store:
            assert list((await store.keys()).items()) == [
                ("d", StoredKey("fp", 3, "c4", 4.0)),
                ("e", StoredKey("fp", 3, "c5", 5.0)),
                ("b", StoredKey("fp-new", 3, "c6", 6.0)),
            ]
            await store.append([], [], Forget(10, 100.0))
            assert await store.keys() == {}

    async def test_no_key_is_forgotten_before_its_time(self) -> None:
        """Only keys recorded before ``before`` go, whatever the limit: repeating a deletion whose first outcome
        was unknown deletes other expired keys or none, never a live one. Among the expired, the oldest
        first, in commit order (a later key may carry an earlier time: the clock moved back)."""
        async with self.opened() as store:
            await store.append([], [("x", "fp", 0, "c1", 5.0), ("y", "fp", 0, "c2", 1.0), ("z", "fp", 0, "c3", 2.0)])
            await store.append([], [], Forget(1, 3.0))  # "x" is live: the oldest expired is "y"
            assert list(await store.keys()) == ["x", "z"]
            await store.append([], [], Forget(3, 3.0))
            assert list(await store.keys()) == ["x"]
            await store.append([], [], Forget(3, 3.0))  # repeated: nothing expired is left
            assert list(await store.keys()) == ["x"]

    async def test_concurrent_reads_while_appending(self) -> None:
        """A reader following the log while batches commit sees every position once, in order, never a gap."""
        batches, size = 40, 7
        seen: list[int] = []
        async with self.opened() as store:

            async def follow() -> None:
                after = 0
                while after < batches * size:
                    for event in await store.read(after, 5):
                        seen.append(event.position)
                        after = event.position

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(follow)
                    for b in range(batches):
                        await store.append(rows(1 + b * size, size))
        assert seen == list(range(1, batches * size + 1))

    async def test_closed_store_refuses_with_a_persistence_error(self) -> None:
        """Using a closed store raises PersistenceError (never a driver's exception)."""
        async with self.opened() as store:
            await store.append(rows(1, 1))
        with pytest.raises(PersistenceError):
            await store.append(rows(2, 1))
        with pytest.raises(PersistenceError):
            await store.read(0)


class RefusesVersionClashes(EventStoreContract):
    """Adapters that check (stream, version) themselves (PostgreSQL's ``UNIQUE``, the in-memory one). The SQLite
    log leaves versions to its one writer and to recovery (test_sqlite.py says what it does instead)."""

    async def test_stream_version_clash_rejects_the_whole_batch(self) -> None:
        """A batch with one (stream, version) already in the log is refused whole: no event, no key is kept."""
        async with self.opened() as store:
            await store.append(rows(1, 2))
            clash = [*rows(3, 1, stream="account-b", version=1), *rows(4, 1, stream="account-a", version=2)]
            with pytest.raises(ConcurrencyError):
                await store.append(clash, [("k", "fp", 4, "cmd-4", 1.0)])
            assert await store.head() == 2
            assert await self.positions(store) == [1, 2]
            assert await store.read_stream("account-b") == []
            assert await store.keys() == {}
            await store.append(rows(3, 1, stream="account-b", version=1))  # the log is still writable
            assert await store.head() == 3

    async def test_clash_inside_one_batch_rejects_it(self) -> None:
        """Two rows of one batch with the same (stream, version) are refused, nothing kept."""
        async with self.opened() as store:
            batch = [*rows(1, 1), *rows(2, 1, version=1)]
            with pytest.raises(ConcurrencyError):
                await store.append(batch)
            assert await store.head() == 0
