"""The pipelined writer: batch N+1 is decided while batch N commits; acknowledgement, failure and keys.

Every test runs a real :class:`Writer` on a real SQLite file. The log is wrapped by :class:`GatedLog`,
which can hold a given append until the test releases it, and make it fail for real (SQLite refuses
the write under ``PRAGMA query_only``). A probe in ``decide`` tells the test when a command was decided,
so nothing waits on time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import msgspec
import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soloist import (
    ActorStopped,
    App,
    DomainError,
    IdempotencyConflict,
    ReadOnlyStorage,
    Receipt,
)
from soloist._log import _MIGRATE_KEYS, EventLog
from soloist._messages import Batch, RecordedEvent, TypeRegistry
from soloist._sqlitestore import SQLiteStore
from soloist._store import Forget
from soloist._writer import Writer
from tests.toy import BANK, Account, Deposit, Open, Transfer, Withdraw

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

    from soloist._store import EventRow, KeyRow, StoredKey


class GatedLog:
    """The real SQLite store behind the port; append number ``n`` can be held at a gate and made to fail for real."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.log = store.log
        self.where = store.where
        self.log_id = store.log_id
        self.calls = 0
        self.arrived: dict[int, anyio.Event] = {}
        self.gates: dict[int, anyio.Event] = {}
        self.failing: set[int] = set()
        self.sizes: list[int] = []  # events per append, in order

    def hold(self, n: int) -> anyio.Event:
        """Hold append ``n`` until the returned event is set."""
        self.gates[n] = anyio.Event()
        return self.gates[n]

    def reached(self, n: int) -> anyio.Event:
        """Set when append ``n`` has started (and is waiting at its gate, if it has one)."""
        return self.arrived.setdefault(n, anyio.Event())

    async def append(self, rows: Sequence[EventRow], keys: Sequence[KeyRow] = (), forget: Forget | None = None) -> None:
        self.calls += 1
        n = self.calls
        self.sizes.append(len(rows))
        self.reached(n).set()
        gate = self.gates.get(n)
        if gate is not None:
            await gate.wait()
        if n not in self.failing:
            await self.store.append(rows, keys, forget)
            return
        await self.log.set_pragma("query_only", 1)  # SQLite itself refuses this transaction
        try:
            await self.store.append(rows, keys, forget)
        finally:
            await self.log.set_pragma("query_only", 0)

    # the rest of the port, as the real store answers it
    async def open(self) -> None:
        await self.store.open()

    async def aclose(self) -> None:
        await self.store.aclose()

    async def read(self, after: int, limit: int = 2000) -> list[RecordedEvent]:
        return await self.store.read(after, limit)

    def replay(self, after: int, upto: int) -> AsyncIterator[list[RecordedEvent]]:
        return self.store.replay(after, upto)

    async def read_stream(self, stream: str) -> list[RecordedEvent]:
        return await self.store.read_stream(stream)

    async def head(self) -> int:
        return await self.store.head()

    async def keys(self) -> dict[str, StoredKey]:
        return await self.store.keys()


class Probe:
    """Wraps the bank's decide: an event per command object, set once that command was decided."""

    def __init__(self) -> None:
        self.decided: dict[int, anyio.Event] = {}
        self.domain = dataclasses.replace(BANK, decide=self.decide)

    def decide(self, states: Mapping[str, Account], command: Any) -> Sequence[Any]:
        try:
            return BANK.decide(states, command)
        finally:
            self.when(command).set()

    def when(self, command: object) -> anyio.Event:
        return self.decided.setdefault(id(command), anyio.Event())


@asynccontextmanager
async def serving(
    db: Path, probe: Probe, **options: Any
) -> AsyncIterator[tuple[Writer, GatedLog, list[Batch], anyio.CancelScope]]:
    """A writer on a gated real log, running in a task group; closed (drained) on exit."""
    published: list[Batch] = []
    async with SQLiteStore(db, TypeRegistry("event", BANK.events)) as real:
        log = GatedLog(real)
        writer = Writer(
            probe.domain,
            log,
            commands=TypeRegistry("command", BANK.commands),
            events=TypeRegistry("event", BANK.events),
            states=TypeRegistry("state", BANK.states),
            publish=published.append,
            **options,
        )
        await writer.load_keys()
        async with anyio.create_task_group() as tg:
            await tg.start(writer.run)
            try:
                yield writer, log, published, tg.cancel_scope
            finally:
                writer.close()


def log_rows(db: Path) -> list[tuple[int, str, str, str | None]]:
    """(position, type, command_id, idempotency_key) of every event, read with plain sqlite3."""
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT position, type, command_id, idempotency_key FROM events ORDER BY position"))


def durable_head(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        (head,) = conn.execute("SELECT COALESCE(MAX(position), 0) FROM events").fetchone()
    return int(head)


def positions(published: list[Batch]) -> list[int]:
    return [e.position for batch in published for e in batch.events]


async def settle(futures: Sequence[asyncio.Future[Receipt]]) -> list[Receipt | BaseException]:
    with anyio.fail_after(10):
        return await asyncio.gather(*futures, return_exceptions=True)


async def two_groups(writer: Writer, log: GatedLog, probe: Probe, size: int) -> tuple[list[Any], list[Any]]:
    """Group A (``size`` deposits) held in its commit (append 2) while group B (``size`` more) is decided."""
    with anyio.fail_after(10):
        await writer.submit(Open(account="a"))
    release = log.hold(2)
    group_a = [writer.submit_nowait(Deposit(account="a", amount=1)) for _ in range(size)]
    with anyio.fail_after(10):
        await log.reached(2).wait()
    commands_b = [Deposit(account="a", amount=2) for _ in range(size)]
    group_b = [writer.submit_nowait(command) for command in commands_b]
    with anyio.fail_after(10):
        await probe.when(commands_b[-1]).wait()
    release.set()
    return group_a, group_b


class TestGathering:
    @pytest.mark.parametrize(("gather", "sizes"), [(1.0, [1, 20, 40]), (0, [1, 20, 20, 20])])
    async def test_callers_just_acknowledged_join_the_next_commit(
        self, db: Path, gather: float, sizes: list[int]
    ) -> None:
        """A's 20 callers send again once acknowledged: their commands join B's commit, not one of their own
        (with gather=0, the groups alternate: B alone, then A's second round alone)."""
        probe = Probe()
        async with serving(db, probe, gather=gather) as (writer, log, _, _):
            group_a, group_b = await two_groups(writer, log, probe, 20)
            await settle(group_a)
            group_c = [writer.submit_nowait(Deposit(account="a", amount=3)) for _ in range(20)]
            await settle(group_b + group_c)
        assert log.sizes == sizes

    async def test_the_wait_is_bounded_when_nobody_comes_back(self, db: Path) -> None:
        probe = Probe()
        async with serving(db, probe, gather=0.05) as (writer, log, _, _):
            group_a, group_b = await two_groups(writer, log, probe, 20)
            assert len(await settle(group_a + group_b)) == 40  # B commits after at most the bound
        assert log.sizes == [1, 20, 20]

    async def test_a_lone_caller_never_waits(self, db: Path) -> None:
        """After a commit of fewer than 16 commands there is no gathering: B commits at once even with an
        hour-long bound (settle gives up after 10 s)."""
        probe = Probe()
        async with serving(db, probe, gather=1.0) as (writer, log, _, _):
            writer._gather_for = 3600.0  # past the constructor's bound: only the 16-command rule can save B
            group_a, group_b = await two_groups(writer, log, probe, 1)
            results = await settle(group_a + group_b)
            assert all(isinstance(r, Receipt) for r in results)
        assert log.sizes == [1, 1, 1]

    async def test_gather_is_validated(self, db: Path) -> None:
        with pytest.raises(ValueError, match="gather"):
            async with serving(db, Probe(), gather=-1):
                pass


class TestCommitFailure:
    async def test_failed_commit_fails_its_batch_and_the_one_decided_on_top(self, db: Path) -> None:
        """Commit N fails while N+1 is decided: both fail, memory is the durable state, the writer goes on."""
        probe = Probe()
        async with serving(db, probe) as (writer, log, published, _):
            with anyio.fail_after(10):
                opened = await writer.submit(Open(account="a"))
            release = log.hold(2)
            log.failing.add(2)
            batch_n = [
                writer.submit_nowait(Deposit(account="a", amount=5), idempotency_key="k-n"),
                writer.submit_nowait(Deposit(account="a", amount=1)),
            ]
            with anyio.fail_after(10):
                await log.reached(2).wait()
            last = Withdraw(account="a", amount=16)  # only possible on top of N's undurable deposits
            batch_n1 = [
                writer.submit_nowait(Deposit(account="a", amount=10), idempotency_key="k-n1"),
                writer.submit_nowait(Deposit(account="a", amount=5), idempotency_key="k-n"),  # N's pending key
                writer.submit_nowait(last),
            ]
            with anyio.fail_after(10):
                await probe.when(last).wait()
            assert writer.states["account-a"] == Account(balance=0)  # speculative: 5 + 1 + 10 - 16
            assert writer.statistics().undurable == 5
            assert not any(f.done() for f in batch_n + batch_n1)
            release.set()
            failed_n, failed_n1 = await settle(batch_n), await settle(batch_n1)

            assert all(isinstance(r, ReadOnlyStorage) for r in failed_n + failed_n1), failed_n + failed_n1
            assert "readonly" in str(failed_n[0])
            assert all("decided on top of a batch whose commit failed" in str(r) for r in failed_n1)
            assert writer.states["account-a"] == Account(balance=0)
            assert dict(writer.states) == {"account-a": Account(balance=0)}
            assert writer.position == opened.position == 1
            stats = writer.statistics()
            assert (stats.undurable, stats.failed) == (0, 5)
            assert positions(published) == [1]

            # decided against the durable state now: N's key vanished, the same command is new
            with anyio.fail_after(10):
                again = await writer.submit(Deposit(account="a", amount=5), idempotency_key="k-n")
                with pytest.raises(DomainError, match="insufficient funds"):
                    await writer.submit(Withdraw(account="a", amount=16))
            assert (again.position, again.duplicate) == (2, False)
        assert [(p, t, k) for p, t, _, k in log_rows(db)] == [(1, "Opened", None), (2, "Moved", "k-n")]
        assert positions(published) == [1, 2]

    async def test_writer_stops_with_a_commit_in_flight(self, db: Path) -> None:
        """Cancelled mid-commit: in-flight, decided and queued commands all get ActorStopped; memory is durable."""
        probe = Probe()
        async with serving(db, probe) as (writer, log, _, scope):
            with anyio.fail_after(10):
                await writer.submit(Open(account="a"))
            log.hold(2)
            in_flight = [writer.submit_nowait(Deposit(account="a", amount=1))]
            with anyio.fail_after(10):
                await log.reached(2).wait()
            marker = Deposit(account="a", amount=2)
            decided = [writer.submit_nowait(marker)]
            with anyio.fail_after(10):
                await probe.when(marker).wait()
            scope.cancel()
        results = await settle([*in_flight, *decided])
        assert all(isinstance(r, ActorStopped) for r in results), results
        assert "known to be durable" in str(results[0])
        assert dict(writer.states) == {"account-a": Account(balance=0)}
        assert writer.position == 1
        assert [p for p, *_ in log_rows(db)] == [1]


class TestAcknowledgement:
    async def test_acks_in_position_order_only_after_durable(self, db: Path) -> None:
        """With commit N held, N+1 is decided but nothing is acknowledged; then acks come in position order."""
        probe = Probe()
        acked: list[tuple[int, int]] = []  # (position acknowledged, durable head in the file at that moment)

        def record(future: asyncio.Future[Receipt]) -> None:
            acked.append((future.result().position, durable_head(db)))

        async with serving(db, probe) as (writer, log, published, _):
            with anyio.fail_after(10):
                await writer.submit(Open(account="a"))
            release = log.hold(2)
            first = [writer.submit_nowait(Deposit(account="a", amount=1)) for _ in range(3)]
            with anyio.fail_after(10):
                await log.reached(2).wait()
            last = Deposit(account="a", amount=2)
            second = [writer.submit_nowait(Deposit(account="a", amount=1)) for _ in range(2)]
            second.append(writer.submit_nowait(last))
            for future in first + second:
                future.add_done_callback(record)
            with anyio.fail_after(10):
                await probe.when(last).wait()
            assert writer.states["account-a"] == Account(balance=7)  # decided on top of the held batch
            assert writer.position == 1
            assert durable_head(db) == 1
            assert not any(f.done() for f in first + second)
            assert positions(published) == [1]
            release.set()
            receipts = await settle(first + second)
            stats = writer.statistics()
        assert [r.position for r in receipts if isinstance(r, Receipt)] == [2, 3, 4, 5, 6, 7]
        assert [p for p, _ in acked] == [2, 3, 4, 5, 6, 7]
        assert all(head >= p for p, head in acked), acked
        assert positions(published) == [1, 2, 3, 4, 5, 6, 7]
        assert stats.batches == 3  # the Open, the held batch, then everything decided behind it in one
        assert stats.batch_size_last == 3

    async def test_undurable_commands_are_bounded(self, db: Path) -> None:
        """With a commit held, the actor decides at most max_undurable commands; the rest wait in the mailbox."""
        probe = Probe()
        async with serving(db, probe, max_batch=2, max_undurable=3) as (writer, log, _, _):
            with anyio.fail_after(10):
                await writer.submit(Open(account="a"))
            release = log.hold(2)
            commands = [Deposit(account="a", amount=1) for _ in range(10)]
            futures = [writer.submit_nowait(c) for c in commands]
            with anyio.fail_after(10):
                await probe.when(commands[2]).wait()
                await anyio.wait_all_tasks_blocked()
            assert writer.statistics().undurable == 3
            assert not probe.when(commands[3]).is_set()
            assert writer.statistics().queue_depth >= 6
            release.set()
            receipts = await settle(futures)
            stats = writer.statistics()
        assert [r.position for r in receipts if isinstance(r, Receipt)] == list(range(2, 12))
        assert stats.undurable_peak == 3
        assert stats.batch_size_max <= 3

    async def test_checkpoint_leaves_out_undurable_batches(self, db: Path) -> None:
        """A checkpoint taken while a batch commits (and another is decided on top) is the durable state."""
        probe = Probe()
        async with serving(db, probe) as (writer, log, _, _):
            with anyio.fail_after(10):
                await writer.submit(Open(account="a"))
                await writer.submit(Deposit(account="a", amount=4))
            release = log.hold(3)
            held = [writer.submit_nowait(Open(account="b"))]
            with anyio.fail_after(10):
                await log.reached(3).wait()
            last = Deposit(account="b", amount=9)
            held.append(writer.submit_nowait(last))
            with anyio.fail_after(10):
                await probe.when(last).wait()
            taken = writer.checkpoint()
            assert taken is not None
            position, serialise = taken
            live = dict(writer.states)
            release.set()
            await settle(held)
        rows = [row for _, of_type in msgspec.json.decode(serialise())["by_type"] for row in of_type]
        states = {stream: msgspec.convert(state, Account) for stream, _, state in rows}
        versions = {stream: version for stream, version, _ in rows}
        assert position == 2
        assert states == {"account-a": Account(balance=4)}
        assert versions == {"account-a": 2}
        assert live == {"account-a": Account(balance=4), "account-b": Account(balance=9)}


class TestPendingKeys:
    async def test_pending_key_is_a_duplicate_acknowledged_after_the_original(self, db: Path) -> None:
        """A retry decided while the first is undurable is a duplicate: same position and command_id, acked after."""
        probe = Probe()
        order: list[str] = []
        async with serving(db, probe) as (writer, log, _, _):
            with anyio.fail_after(10):
                await writer.submit(Open(account="a"))
            release = log.hold(2)
            original = writer.submit_nowait(Deposit(account="a", amount=5), idempotency_key="k")
            original.add_done_callback(lambda _: order.append("original"))
            with anyio.fail_after(10):
                await log.reached(2).wait()
            retry = writer.submit_nowait(Deposit(account="a", amount=5), idempotency_key="k")
            retry.add_done_callback(lambda _: order.append("retry"))
            clash = writer.submit_nowait(Deposit(account="a", amount=6), idempotency_key="k")
            marker = Deposit(account="a", amount=1)
            after = writer.submit_nowait(marker)
            with anyio.fail_after(10):
                await probe.when(marker).wait()
            assert not retry.done()
            assert not clash.done()
            release.set()
            first, again, conflict, last = await settle([original, retry, clash, after])
            stats = writer.statistics()
        assert isinstance(first, Receipt)
        assert isinstance(again, Receipt)
        assert again.duplicate
        assert (again.position, again.command_id, again.events) == (first.position, first.command_id, 0)
        assert order == ["original", "retry"]
        assert isinstance(conflict, IdempotencyConflict)
        assert "'k' was already used at position 2" in str(conflict)
        assert isinstance(last, Receipt)
        assert last.position == 3
        assert stats.duplicates == 1
        rows = log_rows(db)
        assert [(p, k) for p, _, _, k in rows] == [(1, None), (2, "k"), (3, None)]
        assert rows[1][2] == first.command_id


class TestGuard:
    async def test_a_second_run_is_refused(self, db: Path) -> None:
        """The single-writer guard is held for the whole run: a second run raises BusyResourceError."""
        async with serving(db, Probe()) as (writer, _, _, _):
            with anyio.fail_after(10), pytest.raises(anyio.BusyResourceError, match="decide/commit path"):
                await writer.run()
            with anyio.fail_after(10):
                assert (await writer.submit(Open(account="a"))).position == 1


commands = st.one_of(
    st.builds(Open, account=st.sampled_from("abc")),
    st.builds(Deposit, account=st.sampled_from("abcd"), amount=st.integers(-2, 5)),
    st.builds(Withdraw, account=st.sampled_from("abc"), amount=st.integers(0, 6)),
    st.builds(Transfer, source=st.sampled_from("abc"), target=st.sampled_from("abcd"), amount=st.integers(-1, 6)),
)


class TestPipelineProperty:
    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        waves=st.lists(st.lists(commands, min_size=1, max_size=6), min_size=2, max_size=6),
        failing=st.sets(st.integers(1, 4), max_size=2),
        retries=st.booleans(),
    )
    def test_acknowledged_is_exactly_the_log_under_failing_commits(
        self, waves: list[list[object]], failing: set[int], retries: bool
    ) -> None:
        """Waves overlap with commits, some commits fail: acks match the log, memory equals a rebuild from it."""

        async def scenario(db: Path) -> None:
            submitted: list[tuple[str, asyncio.Future[Receipt]]] = []
            async with serving(db, Probe()) as (writer, log, published, _):
                log.failing.update(failing)
                for i, wave in enumerate(waves):
                    for j, command in enumerate(wave):
                        key = f"k{j}" if retries else f"k{i}-{j}"  # retries: the same keys again in every wave
                        submitted.append((key, writer.submit_nowait(command, idempotency_key=key)))
                    for _ in range(2):  # the actor decides this wave, the committer starts its commit
                        await anyio.lowlevel.checkpoint()
                results = await settle([future for _, future in submitted])
                live, position = dict(writer.states), writer.position
            rows = log_rows(db)
            assert [p for p, *_ in rows] == list(range(1, len(rows) + 1))
            assert position == len(rows)
            assert positions(published) == list(range(1, len(rows) + 1))
            last_of = {key: p for p, _, _, key in rows}
            ids_of = {key: command_id for _, _, command_id, key in rows}
            for (key, _), result in zip(submitted, results, strict=True):
                if isinstance(result, Receipt) and (result.events or result.duplicate):
                    assert last_of[key] == result.position  # acknowledged => durable, at that position
                    assert ids_of[key] == result.command_id  # a duplicate names the original command
                elif not isinstance(result, Receipt) and not retries:
                    assert key not in last_of  # rejected or failed: nothing of it is in the log
            async with App(BANK, db, replicas=1) as again:
                assert dict(again.writer.states) == live
                assert again.position == position

        with tempfile.TemporaryDirectory() as tmp:
            uvloop.run(scenario(Path(tmp) / "log.db"))


# The schema of a log written before idempotency keys stored their command_id.
_OLD_SCHEMA = """
CREATE TABLE events (
    position INTEGER PRIMARY KEY, stream TEXT NOT NULL, version INTEGER NOT NULL, type TEXT NOT NULL,
    schema INTEGER NOT NULL, data BLOB NOT NULL, command_id TEXT NOT NULL, idempotency_key TEXT,
    recorded_at REAL NOT NULL, UNIQUE (stream, version)
);
CREATE TABLE idempotency (key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, position INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE VIEW append_batch (events, keys) AS SELECT NULL, NULL;
CREATE TRIGGER append_batch_insert INSTEAD OF INSERT ON append_batch BEGIN
    INSERT INTO events (position, stream, version, type, schema, data, command_id, idempotency_key, recorded_at)
        SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6,
               value ->> 7, value ->> 8
        FROM json_each(NEW.events);
    INSERT INTO idempotency (key, fingerprint, position)
        SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(NEW.keys);
END;
INSERT INTO meta (name, value) VALUES ('format', 'soloist-log/1'), ('log_id', 'old');
INSERT INTO events VALUES (1, 'account-a', 1, 'Opened', 1, '{"account":"a"}', 'cmd-1', 'open-a', 0.0);
INSERT INTO idempotency VALUES ('open-a', 'fp-open', 1), ('noop', 'fp-noop', 1);
"""


class TestKeyMigration:
    async def test_old_log_gains_command_ids(self, db: Path) -> None:
        """A log without idempotency.command_id is migrated on open: filled from the key's event, '' if none."""
        with sqlite3.connect(db) as conn:
            conn.executescript(_OLD_SCHEMA)
        before = time.time()
        async with EventLog(db) as log:
            keys = await log.keys()
            assert (keys["open-a"].command_id, keys["noop"].command_id) == ("cmd-1", "")
            # keys had no time either: they get the upgrade's, so each lives one more whole key_ttl
            assert before <= keys["open-a"].recorded_at == keys["noop"].recorded_at <= time.time()
            await log.append([], [("new", "fp-new", 1, "cmd-2", 1.0)])
            assert (await log.keys())["new"].command_id == "cmd-2"
        async with EventLog(db) as log:  # opening again changes nothing
            assert (await log.keys())["open-a"].command_id == "cmd-1"

    async def test_keyed_table_becomes_the_append_only_one(self, db: Path) -> None:
        """The keys table before keys expired (WITHOUT ROWID, keyed by the key) is rebuilt on open: rows in
        position order with the upgrade's time, no index on the key; the oldest are the first forgotten."""
        with sqlite3.connect(db) as conn:
            conn.executescript(_OLD_SCHEMA)
            conn.executescript(_MIGRATE_KEYS)  # as the previous format had it: with command ids
            conn.execute("INSERT INTO idempotency VALUES ('first', 'fp', 0, '')")
        before = time.time()
        async with EventLog(db) as log:
            keys = await log.keys()
            assert list(keys) == ["first", "noop", "open-a"]  # by position, then key
            assert all(before <= k.recorded_at <= time.time() for k in keys.values())
            await log.append([], [("new", "fp", 1, "cmd-2", 1.0)], Forget(2, time.time()))
            assert list(await log.keys()) == ["open-a", "new"]
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM pragma_index_list('idempotency')").fetchone() == (0,)
            (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'idempotency'").fetchone()
            assert "WITHOUT ROWID" not in sql
            assert conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'append_batch%'").fetchall() == []
