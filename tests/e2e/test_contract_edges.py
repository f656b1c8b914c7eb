"""Issue 10's small contract breaks, against real ``soloist serve`` processes: the duplicate's receipt
carries the original command id (also after a restart), and a second writer on the same file is refused
with its own code while the first keeps serving. (The last line before EOF, half-closed subscribers and
subscriptions from beyond the head are in ``tests/net/test_contract.py``.)"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import anyio
import pytest

from soloist.net import Client
from tests.e2e.processes import soloist

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.uvloop_only


def _command_id_in_log(db: Path, key: str) -> str:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT DISTINCT command_id FROM events WHERE idempotency_key = ?", (key,)).fetchall()
    conn.close()
    assert len(rows) == 1, rows
    return str(rows[0][0])


class TestDuplicateReceipt:
    async def test_duplicate_carries_the_original_command_id(self, tmp_path: Path) -> None:
        """A resent keyed command answers the first receipt's command_id and position, before and after a restart."""
        db = tmp_path / "w.db"
        async with soloist(tmp_path / "first.log", "serve", "--db", str(db)) as writer:
            async with Client.connect("127.0.0.1", writer.port) as client:
                await client.command("Open", {"account": "a"})
                first = await client.command("Deposit", {"account": "a", "amount": 3}, idempotency_key="k")
                again = await client.command("Deposit", {"account": "a", "amount": 3}, idempotency_key="k")
            assert await writer.terminate() == 0
        assert first["duplicate"] is False
        assert again == {**first, "duplicate": True}
        assert first["command_id"] == _command_id_in_log(db, "k")
        async with (
            soloist(tmp_path / "second.log", "serve", "--db", str(db)) as writer,
            Client.connect("127.0.0.1", writer.port) as client,
        ):
            after_restart = await client.command("Deposit", {"account": "a", "amount": 3}, idempotency_key="k")
            assert after_restart == {**first, "duplicate": True}


class TestSecondWriter:
    async def test_second_writer_is_refused_with_writer_locked(self, tmp_path: Path) -> None:
        """A second ``serve`` on the same file exits 1 with code ``writer_locked``; the first keeps serving."""
        db = str(tmp_path / "w.db")
        async with (
            soloist(tmp_path / "first.log", "serve", "--db", db) as first,
            Client.connect("127.0.0.1", first.port) as client,
        ):
            await client.command("Open", {"account": "a"})
            async with soloist(tmp_path / "second.log", "serve", "--db", db, listening=False) as second:
                with anyio.fail_after(20):
                    code = await second.process.wait()
                assert code == 1
                failed = [line for line in second.lines() if line.get("event") == "failed"]
                assert len(failed) == 1, second.log.read_text()
                assert failed[0]["code"] == "writer_locked"
                assert "already the writer" in str(failed[0]["error"])
                assert "Traceback" not in second.log.read_text()
            receipt = await client.command("Deposit", {"account": "a", "amount": 1})
            assert receipt["position"] == 2
            assert (await client.stats())["position"] == 2
