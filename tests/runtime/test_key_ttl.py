"""Idempotency keys are remembered for ``key_ttl`` at least, then deleted from the log and from memory.

A real :class:`Writer` on a real SQLite file (the pipeline tests' ``serving``), with a clock the test moves:
nothing sleeps. What the log holds is read with plain ``sqlite3``.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import anyio
import pytest

import soloist._writer as writer_module
from soloist import App, DomainError, PersistenceError, ReadOnlyStorage
from soloist._memstore import MemoryLog, MemoryStore
from soloist._messages import TypeRegistry
from soloist._writer import Writer
from tests.runtime.test_writer_pipeline import Probe, serving
from tests.toy import BANK, Account, Deposit, Open

if TYPE_CHECKING:
    from pathlib import Path

TTL = 60.0
EVENTS = TypeRegistry("event", BANK.events)
COMMANDS = TypeRegistry("command", BANK.commands)


class Clock:
    """``time.time`` as the test sets it."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def stored(db: Path) -> dict[str, float]:
    """Key -> recorded_at of every idempotency key in the log file."""
    with sqlite3.connect(db) as conn:
        return {str(k): float(t) for k, t in conn.execute("SELECT key, recorded_at FROM idempotency")}


class TestKeyTTL:
    async def test_remembered_within_the_ttl_forgotten_after_it(self, db: Path) -> None:
        """Within the TTL a resend is a duplicate; once a later commit deleted the key, the same key and
        command are decided again (a new position, a second deposit)."""
        clock = Clock()
        async with serving(db, Probe(), key_ttl=TTL, clock=clock) as (writer, _, _, _):
            with anyio.fail_after(10):
                await writer.submit(Open(account="a"))
                first = await writer.submit(Deposit(account="a", amount=5), idempotency_key="dep")
                assert stored(db) == {"dep": clock.now}
                clock.now += TTL - 1
                again = await writer.submit(Deposit(account="a", amount=5), idempotency_key="dep")
                assert again.duplicate
                assert again.position == first.position
                await writer.submit(Deposit(account="a", amount=1), idempotency_key="other")  # "dep" not due yet
                assert set(stored(db)) == {"dep", "other"}
                clock.now += 2  # "dep" is TTL + 1 old, "other" 2 s
                await writer.submit(Deposit(account="a", amount=1))  # this commit deletes "dep"
                assert set(stored(db)) == {"other"}
                stats = writer.statistics()
                assert (stats.keys, stats.keys_forgotten) == (1, 1)
                anew = await writer.submit(Deposit(account="a", amount=5), idempotency_key="dep")
            assert not anew.duplicate
            assert anew.position > first.position
            assert writer.states["account-a"] == Account(balance=12)
            assert set(stored(db)) == {"dep", "other"}

    async def test_keys_keep_their_time_across_a_restart(self, db: Path) -> None:
        """A restarted writer loads each key with the time it was stored: the TTL runs from then."""
        clock = Clock()
        async with serving(db, Probe(), key_ttl=TTL, clock=clock) as (writer, _, _, _):
            with anyio.fail_after(10):
                await writer.submit(Open(account="a"), idempotency_key="open")
        stored_at = clock.now
        clock.now += TTL / 2
        async with serving(db, Probe(), key_ttl=TTL, clock=clock) as (writer, _, _, _):
            with anyio.fail_after(10):
                assert (await writer.submit(Open(account="a"), idempotency_key="open")).duplicate
                assert stored(db) == {"open": stored_at}
        clock.now += TTL
        async with serving(db, Probe(), key_ttl=TTL, clock=clock) as (writer, _, _, _):
            assert writer.statistics().keys == 1  # loaded; the next commit deletes it
            with anyio.fail_after(10), pytest.raises(DomainError):  # a bare writer: no state replayed
                await writer.submit(Deposit(account="a", amount=1))  # refused, but its commit deletes the key
            assert stored(db) == {}
            assert writer.statistics().keys == 0

    async def test_a_failed_commit_forgets_nothing(self, db: Path) -> None:
        """The deletion rides on a commit: if that commit fails, the key stays in the log and in memory (a
        resend is still a duplicate), and the next commit deletes it."""
        clock = Clock()
        async with serving(db, Probe(), key_ttl=TTL, clock=clock) as (writer, log, _, _):
            with anyio.fail_after(10):
                first = await writer.submit(Open(account="a"), idempotency_key="open")
                clock.now += TTL + 1
                log.failing.add(2)
                with pytest.raises(ReadOnlyStorage):
                    await writer.submit(Deposit(account="a", amount=1))
                assert set(stored(db)) == {"open"}
                assert writer.statistics().keys == 1
                resent = await writer.submit(Open(account="a"), idempotency_key="open")  # decided before the delete
            assert resent.duplicate
            assert resent.position == first.position
            assert stored(db) == {}
            assert writer.statistics().keys_forgotten == 1

    async def test_a_backlog_is_deleted_a_bounded_number_at_a_time(
        self, db: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Many expired keys (a long stop, a shorter TTL) go over several commits, oldest first."""
        monkeypatch.setattr(writer_module, "_FORGET_MAX", 2)
        clock = Clock()
        async with serving(db, Probe(), key_ttl=TTL, clock=clock) as (writer, _, _, _):
            with anyio.fail_after(10):
                await writer.submit(Open(account="a"))
                for i in range(5):
                    await writer.submit(Deposit(account="a", amount=1), idempotency_key=f"k{i}")
                    clock.now += 1
                clock.now += TTL
                left = []
                for _ in range(3):
                    await writer.submit(Deposit(account="a", amount=1))
                    left.append(sorted(stored(db)))
        assert left == [["k2", "k3", "k4"], ["k4"], []]

    async def test_a_deletion_of_unknown_outcome_never_costs_a_live_key(self) -> None:
        """The commit that deletes two expired keys fails after the store committed it (a lost connection):
        the writer still remembers them and asks again; the store, whose oldest keys are now live, deletes
        none of them. Without the time bound it would have deleted the next two, hours early."""
        clock = Clock()
        log = MemoryLog()
        async with MemoryStore(EVENTS, log) as store:
            writer = Writer(
                BANK, store, commands=COMMANDS, events=EVENTS, publish=lambda _: None, key_ttl=TTL, clock=clock
            )
            async with anyio.create_task_group() as tg:
                await tg.start(writer.run)
                with anyio.fail_after(10):
                    await writer.submit(Open(account="a"))
                    start = clock.now
                    for i in range(4):
                        await writer.submit(Deposit(account="a", amount=1), idempotency_key=f"k{i}")
                        clock.now += 1
                    clock.now = start + TTL + 1.5  # k0 and k1 have expired, k2 and k3 not
                    store.fail_next_append(PersistenceError("injected: connection lost"), after_commit=True)
                    with pytest.raises(PersistenceError, match="injected"):
                        await writer.submit(Deposit(account="a", amount=0))  # refused: only the deletion
                    assert list(log.keys) == ["k2", "k3"]  # the store did delete k0 and k1
                    assert writer.statistics().keys == 4  # the writer does not know it
                    with pytest.raises(DomainError):
                        await writer.submit(Deposit(account="a", amount=0))  # asks again for k0 and k1
                    assert list(log.keys) == ["k2", "k3"]
                    assert writer.statistics().keys == 2
                writer.close()

    async def test_no_ttl_keeps_keys_forever(self, db: Path) -> None:
        clock = Clock()
        async with serving(db, Probe(), key_ttl=None, clock=clock) as (writer, _, _, _):
            with anyio.fail_after(10):
                await writer.submit(Open(account="a"), idempotency_key="open")
                clock.now += 10 * 365 * 86_400.0
                await writer.submit(Deposit(account="a", amount=1))
                assert (await writer.submit(Open(account="a"), idempotency_key="open")).duplicate
        assert set(stored(db)) == {"open"}

    @pytest.mark.parametrize("ttl", [0.0, -1.0, float("nan")])
    def test_a_ttl_must_be_positive(self, db: Path, ttl: float) -> None:
        with pytest.raises(ValueError, match="key_ttl"):
            App(BANK, db, key_ttl=ttl)
