"""Real processes on a real PostgreSQL log: a paused (``SIGSTOP``) writer that wakes up after its standby
took over, and a replica process of a PostgreSQL writer. (``kill -9`` of the writer under load with a standby
running is the crash suite's PostgreSQL mode: ``tests/e2e/test_crash_suite.py``, ``make chaos``.)

The writer and the standby are ``python -m soloist.cli serve --db postgresql://... [--standby]``
processes with a 1 s lease; clients talk to them over TCP. What is checked is read from PostgreSQL.
"""

from __future__ import annotations

import signal
import sqlite3
from typing import TYPE_CHECKING

import anyio
import asyncpg
import pytest

from soloist import ConnectionLost, CQRSError
from soloist.net import Client
from tests.e2e.processes import soloist

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.uvloop_only  # the test side only drives processes: one event loop is enough

TTL = "1"


async def log_rows(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch("SELECT position, command_id, idempotency_key FROM soloist.events ORDER BY 1"))
    finally:
        await conn.close()


class TestZombieWriter:
    async def test_a_paused_writer_wakes_up_fenced_and_appends_nothing(self, postgres_dsn: str, tmp_path: Path) -> None:
        async with soloist(tmp_path / "writer.log", "serve", "--db", postgres_dsn, "--lease-ttl", TTL) as writer:
            async with Client.connect(port=writer.port) as client:
                await client.command("Open", {"account": "a"}, idempotency_key="open")
            async with (
                soloist(
                    tmp_path / "standby.log", "serve", "--db", postgres_dsn, "--standby", "--lease-ttl", TTL
                ) as standby,
                Client.connect(port=writer.port) as zombie_client,
            ):
                writer.process.send_signal(signal.SIGSTOP)
                try:
                    await standby.wait_for("standby_took_over")
                    async with Client.connect(port=standby.port) as client:
                        new = [
                            await client.command("Deposit", {"account": "a", "amount": 1}, idempotency_key=f"new-{i}")
                            for i in range(5)
                        ]
                    answers: list[dict[str, object] | BaseException] = []

                    async def to_the_zombie(i: int) -> None:
                        try:
                            answers.append(
                                await zombie_client.command(
                                    "Deposit", {"account": "a", "amount": 1000}, idempotency_key=f"zombie-{i}"
                                )
                            )
                        except (ConnectionLost, CQRSError) as exc:
                            answers.append(exc)

                    async with anyio.create_task_group() as tg:
                        for i in range(5):
                            tg.start_soon(to_the_zombie, i)  # written to its socket while it is paused
                        await anyio.wait_all_tasks_blocked()
                        writer.process.send_signal(signal.SIGCONT)
                finally:
                    writer.process.send_signal(signal.SIGCONT)
                with anyio.fail_after(20):
                    code = await writer.process.wait()  # it learns it is fenced and steps down
                async with Client.connect(port=standby.port) as client:
                    after = await client.command("Deposit", {"account": "a", "amount": 1}, idempotency_key="after")
                    balance, _ = await client.query("Balance", {"account": "a"}, consistency="strong")

        assert code != 0
        assert [line["event"] for line in writer.lines() if line.get("event") == "lease_lost"] or any(
            "fenced" in str(line).lower() for line in writer.lines()
        )
        rows = await log_rows(postgres_dsn)
        keys = [row["idempotency_key"] for row in rows]
        acked_by_zombie = [a for a in answers if isinstance(a, dict)]
        for receipt in acked_by_zombie:  # nothing it acknowledges is missing (it should acknowledge nothing)
            assert receipt["position"] in [row["position"] for row in rows]
        assert not acked_by_zombie
        assert not [key for key in keys if key.startswith("zombie-")]  # it appended nothing
        assert keys == ["open", *(f"new-{i}" for i in range(5)), "after"]
        assert [receipt["position"] for receipt in new] == [2, 3, 4, 5, 6]
        assert after["position"] == 7
        assert balance == 6
        for answer in answers:
            assert isinstance(answer, (ConnectionLost, CQRSError))
            if isinstance(answer, CQRSError):
                assert answer.code in {"fenced", "closed", "actor_stopped", "unavailable"}, answer


class TestReplicaProcessOfAPostgresWriter:
    async def test_a_replica_process_follows_a_writer_on_postgres(self, postgres_dsn: str, tmp_path: Path) -> None:
        """``soloist replica`` copies a PostgreSQL writer's log into its own SQLite file, with the same log id."""
        async with soloist(tmp_path / "writer.log", "serve", "--db", postgres_dsn) as writer:
            async with Client.connect(port=writer.port) as client:
                await client.command("Open", {"account": "a"})
                for amount in (5, 7):
                    receipt = await client.command("Deposit", {"account": "a", "amount": amount})
            replica_db = tmp_path / "replica.db"
            async with soloist(
                tmp_path / "replica.log", "replica", "--upstream", writer.address, "--db", str(replica_db)
            ) as replica:
                head = receipt["position"]
                assert isinstance(head, int)
                async with Client.connect(port=replica.port) as client:
                    balance, position = await client.query(
                        "Balance", {"account": "a"}, consistency="session", min_position=head
                    )
                assert await replica.terminate() == 0
        assert (balance, position) == (12, 3)
        conn = await asyncpg.connect(postgres_dsn)
        try:
            log_id = await conn.fetchval("SELECT value FROM soloist.meta WHERE name = 'log_id'")
        finally:
            await conn.close()
        with sqlite3.connect(replica_db) as db:  # it recorded the writer's log id: it follows that log only
            (upstream,) = db.execute("SELECT value FROM meta WHERE name = 'upstream_log_id'").fetchone()
        assert upstream == log_id
