"""A replica process follows one log only: another writer, or its writer's log replaced, stops it with LogMismatch."""

from __future__ import annotations

import socket
import sqlite3
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import pytest

from soloist.net import Client
from tests.e2e.processes import SoloistProcess, soloist

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = pytest.mark.uvloop_only


@asynccontextmanager
async def started(log: Path, *args: str, listening: bool = True) -> AsyncIterator[SoloistProcess]:
    """``soloist <args>`` with the toy bank (the caller gives --port); killed on exit if still running."""
    async with soloist(log, *args, port=None, listening=listening) as running:
        yield running


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _positions(db: Path) -> list[int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = [int(row[0]) for row in conn.execute("SELECT position FROM events ORDER BY position")]
    conn.close()
    return rows


async def _fill(port: int, accounts: int, prefix: str) -> int:
    async with Client.connect("127.0.0.1", port) as client:
        for i in range(accounts):
            receipt = await client.command("Open", {"account": f"{prefix}{i}"})
    return int(str(receipt["position"]))


async def _caught_up(port: int, position: int) -> None:
    async with Client.connect("127.0.0.1", port) as client:
        await client.query("Total", consistency="session", min_position=position, timeout_ms=20_000)


async def _exit_code(process: SoloistProcess, within: float = 30.0) -> int:
    with anyio.fail_after(within):
        return await process.process.wait()


class TestReplicaIdentity:
    async def test_replica_refuses_another_writer(self, tmp_path: Path) -> None:
        """Restarted with --upstream at a different writer, a replica exits 1 and its log is unchanged."""
        replica_db = tmp_path / "r.db"
        async with (
            started(tmp_path / "a.log", "serve", "--db", str(tmp_path / "a.db"), "--port", "0") as a,
            started(tmp_path / "b.log", "serve", "--db", str(tmp_path / "b.db"), "--port", "0") as b,
        ):
            head = await _fill(a.port, 3, "a")
            await _fill(b.port, 5, "b")  # b's log is longer: its events 4..5 would be appended after a's 1..3
            async with started(
                tmp_path / "r1.log", "replica", "--upstream", a.address, "--db", str(replica_db), "--port", "0"
            ) as replica:
                await _caught_up(replica.port, head)
                assert await replica.terminate() == 0
            assert _positions(replica_db) == [1, 2, 3]
            async with started(
                tmp_path / "r2.log",
                "replica",
                "--upstream",
                b.address,
                "--db",
                str(replica_db),
                "--port",
                "0",
                listening=False,
            ) as wrong:
                assert await _exit_code(wrong) == 1
                text = wrong.log.read_text()
            assert "follower_wrong_log" in text
            assert f"but the writer at {b.address} serves the log" in text
            assert _positions(replica_db) == [1, 2, 3]

    async def test_replica_notices_its_writer_log_was_replaced(self, tmp_path: Path) -> None:
        """The writer restarted on a new log file at the same address: the replica stops at its reconnect."""
        port = _free_port()
        writer_db, replica_db = tmp_path / "w.db", tmp_path / "r.db"
        async with started(tmp_path / "w1.log", "serve", "--db", str(writer_db), "--port", str(port)) as writer:
            head = await _fill(port, 2, "a")
            async with started(
                tmp_path / "r.log",
                "replica",
                "--upstream",
                writer.address,
                "--db",
                str(replica_db),
                "--port",
                "0",
            ) as replica:
                await _caught_up(replica.port, head)
                assert await writer.terminate() == 0
                for suffix in ("", "-wal", "-shm"):
                    (tmp_path / f"w.db{suffix}").unlink(missing_ok=True)
                async with started(
                    tmp_path / "w2.log", "serve", "--db", str(writer_db), "--port", str(port)
                ) as replaced:
                    await _fill(port, 4, "new")
                    assert await _exit_code(replica) == 1
                    assert await replaced.terminate() == 0
                text = replica.log.read_text()
        assert "follower_wrong_log" in text
        assert _positions(replica_db) == [1, 2]
