"""Real processes on a real PostgreSQL log: ``kill -9`` of the active writer under load with a standby
running, and a paused (``SIGSTOP``) writer that wakes up after its standby took over.

The writer and the standby are ``python -m soloist.cli serve --db postgresql://... [--standby]``
processes with a 1 s lease; clients talk to them over TCP. What is checked is read from PostgreSQL.
"""

from __future__ import annotations

import random
import signal
import sqlite3
from typing import TYPE_CHECKING

import anyio
import asyncpg
import pytest

from soloist import ConnectionLost, CQRSError, NotWriter
from soloist.net import Client
from tests.e2e.processes import SoloistProcess, soloist

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.uvloop_only  # the test side only drives processes: one event loop is enough

TTL = "1"
WORKERS = 8


async def took_over(standby: SoloistProcess, within: float = 20.0) -> dict[str, object]:
    """Poll the standby's log (bounded) for its ``standby_took_over`` line."""
    with anyio.fail_after(within):
        while True:
            for line in standby.lines():
                if line.get("event") == "standby_took_over":
                    return line
            if standby.process.returncode is not None:
                raise AssertionError(f"the standby exited with {standby.process.returncode}: {standby.log.read_text()}")
            await anyio.sleep(0.05)  # a real process changing role: polled, bounded


async def until_answered(port: int, command: str, data: dict[str, object], key: str) -> dict[str, object]:
    """Send a keyed command until the server answers it (``not_writer`` while it is still a standby)."""
    with anyio.fail_after(30):
        while True:
            try:
                async with Client.connect(port=port) as client:
                    return await client.command(command, data, idempotency_key=key)
            except (NotWriter, ConnectionLost, OSError):
                await anyio.sleep(0.05)  # the standby has not taken over yet: bounded by fail_after


async def log_rows(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch("SELECT position, command_id, idempotency_key FROM soloist.events ORDER BY 1"))
    finally:
        await conn.close()


class TestKill9WithAStandby:
    async def test_every_acknowledged_command_is_in_the_log_exactly_once(
        self, postgres_dsn: str, tmp_path: Path
    ) -> None:
        rng = random.Random()
        kill_after = rng.randint(20, 120)
        amounts = {f"w{w}-{i}": rng.randint(1, 100) for w in range(WORKERS) for i in range(400)}
        acked: dict[str, dict[str, object]] = {}
        unanswered: set[str] = set()
        enough = anyio.Event()

        async with soloist(tmp_path / "writer.log", "serve", "--db", postgres_dsn, "--lease-ttl", TTL) as writer:
            async with Client.connect(port=writer.port) as client:
                await client.command("Open", {"account": "a"}, idempotency_key="open")
            async with soloist(
                tmp_path / "standby.log", "serve", "--db", postgres_dsn, "--standby", "--lease-ttl", TTL
            ) as standby:

                async def work(w: int) -> None:
                    async with Client.connect(port=writer.port) as client:
                        for i in range(400):
                            key = f"w{w}-{i}"
                            try:
                                acked[key] = await client.command(
                                    "Deposit", {"account": "a", "amount": amounts[key]}, idempotency_key=key
                                )
                            except (ConnectionLost, CQRSError):
                                unanswered.add(key)  # sent, no answer: committed or not, nobody knows
                                return
                            if len(acked) >= kill_after:
                                enough.set()

                async with anyio.create_task_group() as tg:
                    for w in range(WORKERS):
                        tg.start_soon(work, w)
                    with anyio.fail_after(60):
                        await enough.wait()
                    writer.process.send_signal(signal.SIGKILL)
                line = await took_over(standby)
                # every request without an answer is resent with its key to the new writer, and so are
                # a few acknowledged ones: those must come back as duplicates of their first receipt
                for key in sorted(unanswered):
                    await until_answered(standby.port, "Deposit", {"account": "a", "amount": amounts[key]}, key)
                for key in rng.sample(sorted(acked), 10):
                    again = await until_answered(standby.port, "Deposit", {"account": "a", "amount": amounts[key]}, key)
                    assert again["duplicate"] is True
                    assert again["command_id"] == acked[key]["command_id"]
                    assert again["position"] == acked[key]["position"]
                async with Client.connect(port=standby.port) as client:
                    balance, _ = await client.query("Balance", {"account": "a"}, consistency="strong")

        rows = await log_rows(postgres_dsn)
        assert [row["position"] for row in rows] == list(range(1, len(rows) + 1))  # gap-free
        keys = [row["idempotency_key"] for row in rows]
        assert len(keys) == len(set(keys))  # exactly once
        by_key = {row["idempotency_key"]: row for row in rows}
        for key, receipt in acked.items():
            assert by_key[key]["position"] == receipt["position"]
            assert by_key[key]["command_id"] == receipt["command_id"]
        deposited = set(acked) | unanswered
        assert set(keys) == deposited | {"open"}  # no event without a command
        assert balance == sum(amounts[key] for key in deposited)
        assert len(acked) >= kill_after
        assert isinstance(line["ms"], float | int)


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
                    await took_over(standby)
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
                async with Client.connect(port=replica.port) as client:
                    balance, position = await client.query(
                        "Balance", {"account": "a"}, consistency="session", min_position=int(str(receipt["position"]))
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
