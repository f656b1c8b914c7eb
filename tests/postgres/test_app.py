"""The App on a PostgreSQL log, in process: the same behaviour as on SQLite, the lease, the standby.

Each test gets its own database (``postgres_dsn``). Lease expiry is time on the server's clock, so the
tests that need a lease to run out use a short TTL and wait for it (bounded by fail_after).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import anyio.abc
import asyncpg
import pytest
from structlog.testing import capture_logs

from soloist import App, Fenced, NotWriter
from soloist._errors import ActorStopped
from soloist._messages import TypeRegistry
from soloist._postgres import PostgresStore
from tests.toy import BANK, Balance, Deposit, Open, Transfer

if TYPE_CHECKING:
    from pathlib import Path

TTL = 1.0  # a short lease: the tests that wait for one to expire wait about this long


class TestWriterOnPostgres:
    async def test_commands_queries_and_keys_survive_a_restart(self, postgres_dsn: str) -> None:
        async with App(BANK, postgres_dsn) as app:
            assert app.role == "writer"
            assert app.shared
            await app.execute(Open(account="a"))
            await app.execute(Open(account="b"))
            first = await app.execute(Deposit(account="a", amount=10), idempotency_key="dep-1")
            await app.execute(Transfer(source="a", target="b", amount=3))
            answer = await app.query(Balance(account="b"), consistency="strong")
            assert answer.result == 3
        async with App(BANK, postgres_dsn) as again:
            assert again.position == first.position + 2  # the transfer is two events
            retry = await again.execute(Deposit(account="a", amount=10), idempotency_key="dep-1")
            assert retry.duplicate
            assert (retry.position, retry.command_id) == (first.position, first.command_id)
            assert (await again.query(Balance(account="a"), consistency="strong")).result == 7

    async def test_checkpoints_name_the_log_and_restart_from_them(self, postgres_dsn: str, tmp_path: Path) -> None:
        snapshots = tmp_path / "snapshots"
        async with App(BANK, postgres_dsn, snapshot_dir=snapshots) as app:
            await app.execute(Open(account="a"))
            await app.execute(Deposit(account="a", amount=5))
            path = await app.checkpoint()
            log_id = app.log_id
        assert path is not None
        assert log_id
        assert log_id in path.read_bytes().decode(errors="replace")
        async with App(BANK, postgres_dsn, snapshot_dir=snapshots) as again:
            assert (await again.query(Balance(account="a"))).result == 5

    async def test_a_writer_waits_for_a_lease_another_holds(self, postgres_dsn: str) -> None:
        """The lease is held (by a store standing for a writer elsewhere): the App logs lease_wait and
        starts once it expires, with the next epoch."""
        async with PostgresStore(postgres_dsn, TypeRegistry("event", BANK.events)) as other:
            epoch = await other.acquire_lease("elsewhere", TTL)
            assert epoch is not None
            with capture_logs() as logs, anyio.fail_after(TTL + 15):
                async with App(BANK, postgres_dsn, lease_ttl=TTL) as app:
                    await app.execute(Open(account="a"))
            waits = [entry for entry in logs if entry["event"] == "lease_wait"]
            assert waits
            assert waits[0]["current_holder"] == "elsewhere"
            with pytest.raises(Fenced):
                await other.renew_lease()

    async def test_a_writer_that_lost_its_lease_appends_nothing_and_stops(self, postgres_dsn: str) -> None:
        """Another writer takes the lease (epoch + 1) behind this one's back: its next command fails with
        Fenced, nothing reaches the log, and the App stops (exiting raises Fenced)."""
        heads: list[int] = []

        async def run_until_fenced() -> None:
            async with App(BANK, postgres_dsn, lease_ttl=30) as app:
                await app.execute(Open(account="a"))
                heads.append(app.position)
                conn = await asyncpg.connect(postgres_dsn)
                try:
                    await conn.execute("UPDATE soloist.lease SET epoch = epoch + 1, holder = 'thief'")
                finally:
                    await conn.close()
                with pytest.raises(Fenced, match="thief"):
                    await app.execute(Deposit(account="a", amount=1))
                with pytest.raises((Fenced, ActorStopped)):
                    await app.execute(Deposit(account="a", amount=2))

        with pytest.raises(Fenced):
            await run_until_fenced()
        head = heads[0]
        conn = await asyncpg.connect(postgres_dsn)
        try:
            assert await conn.fetchval("SELECT max(position) FROM soloist.events") == head
        finally:
            await conn.close()


class TestStandby:
    async def test_standby_serves_queries_refuses_commands_then_takes_over(self, postgres_dsn: str) -> None:
        stop_writer = anyio.Event()

        async def run_writer(*, task_status: anyio.abc.TaskStatus[App]) -> None:
            async with App(BANK, postgres_dsn, lease_ttl=TTL, holder="writer-1") as app:
                task_status.started(app)
                await stop_writer.wait()  # a clean stop gives the lease up at once

        async with anyio.create_task_group() as tg:
            writer: App = await tg.start(run_writer)
            await writer.execute(Open(account="a"))
            keyed = await writer.execute(Deposit(account="a", amount=10), idempotency_key="k-1")
            async with App(BANK, postgres_dsn, standby=True, lease_ttl=TTL, holder="standby-1") as standby:
                assert standby.role == "standby"
                with pytest.raises(NotWriter, match="writer-1") as refused:
                    await standby.execute(Deposit(account="a", amount=1))
                assert refused.value.code == "not_writer"
                later = await writer.execute(Deposit(account="a", amount=5))
                seen = await standby.query(Balance(account="a"), consistency="session", min_position=later.position)
                assert seen.result == 15
                stop_writer.set()
                with anyio.fail_after(15):
                    await standby.wait_writer()
                assert standby.role == "writer"
                retry = await standby.execute(Deposit(account="a", amount=10), idempotency_key="k-1")
                assert retry.duplicate
                assert retry.command_id == keyed.command_id
                after = await standby.execute(Deposit(account="a", amount=1))
                assert after.position == later.position + 1
                assert (await standby.query(Balance(account="a"), consistency="strong")).result == 16

    async def test_standby_on_sqlite_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="postgresql://"):
            App(BANK, tmp_path / "log.db", standby=True)

    async def test_a_standby_stops_cleanly_without_ever_writing(self, postgres_dsn: str) -> None:
        async with App(BANK, postgres_dsn, lease_ttl=30) as writer:
            await writer.execute(Open(account="a"))
            with anyio.fail_after(10):
                async with App(BANK, postgres_dsn, standby=True) as standby:
                    assert standby.role == "standby"
            receipt = await writer.execute(Deposit(account="a", amount=1))  # still the writer, same lease
            assert receipt.position == 2
            assert standby.role == "standby"
        conn = await asyncpg.connect(postgres_dsn)
        try:
            assert await conn.fetchval("SELECT epoch FROM soloist.lease") == 1  # the standby never took it
        finally:
            await conn.close()
