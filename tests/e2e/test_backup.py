"""`soloist backup` while a real server takes commands: a consistent copy that serves the same state up to its head."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

from soloist.net import Client
from tests.e2e.processes import run_cli, soloist

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.uvloop_only


def _rows(db: Path, up_to: int) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT position, stream, version, type, data FROM events WHERE position <= ? ORDER BY position", (up_to,)
        ).fetchall()
    conn.close()
    return rows


class TestBackup:
    async def test_backup_under_load_is_consistent_and_serves(self, tmp_path: Path) -> None:
        """A backup taken mid-load holds events 1..P exactly as the original; serving it answers as of P."""
        db, copy = tmp_path / "w.db", tmp_path / "copy.db"
        accounts = [f"a{i}" for i in range(4)]
        async with soloist(tmp_path / "writer.log", "serve", "--db", str(db)) as writer:
            async with Client.connect("127.0.0.1", writer.port) as setup:
                for account in accounts:
                    await setup.command("Open", {"account": account})
            stop = anyio.Event()
            sent = 0

            async def load(account: str) -> None:
                nonlocal sent
                async with Client.connect("127.0.0.1", writer.port) as client:
                    while not stop.is_set():
                        await client.command("Deposit", {"account": account, "amount": 1})
                        sent += 1

            async with anyio.create_task_group() as tg:
                for account in accounts:
                    tg.start_soon(load, account)
                with anyio.fail_after(60):
                    while sent < 200:  # the backup starts with commands flowing
                        await anyio.lowlevel.checkpoint()
                    code, out = await run_cli("backup", "--db", str(db), str(copy))
                    after = sent
                    while sent < after + 100:  # and the writer kept committing while it ran
                        await anyio.lowlevel.checkpoint()
                stop.set()
            assert code == 0, out
            result = orjson.loads(out)
            position = result["position"]
            assert position >= 4 + 200
            async with Client.connect("127.0.0.1", writer.port) as client:
                head = (await client.stats())["position"]
            assert isinstance(head, int)
            assert head > position
            assert await writer.terminate() == 0
        assert _rows(copy, head) == _rows(db, position)  # the same events, none after P
        expected = sum(1 for row in _rows(db, position) if row[3] == "Moved")
        async with (
            soloist(tmp_path / "copy.log", "serve", "--db", str(copy)) as served,
            Client.connect("127.0.0.1", served.port) as client,
        ):
            answer = await client.query("Total", consistency="strong")
            assert (answer.result, answer.position) == (expected, position)
            receipt = await client.command("Deposit", {"account": "a0", "amount": 1})
            assert receipt["position"] == position + 1  # the copy is a log that goes on
            assert await served.terminate() == 0

    async def test_backup_refuses_to_overwrite_and_junk(self, tmp_path: Path) -> None:
        """An existing target is not overwritten; a source that is not a log is refused; both exit 1."""
        junk, target = tmp_path / "junk.db", tmp_path / "out.db"
        junk.write_bytes(b"not a database at all" * 10)
        code, _ = await run_cli("backup", "--db", str(junk), str(target))
        assert code == 1
        assert not target.exists()
        target.write_bytes(b"keep")
        async with soloist(tmp_path / "writer.log", "serve", "--db", str(tmp_path / "w.db")) as writer:
            code, _ = await run_cli("backup", "--db", str(tmp_path / "w.db"), str(target))
            assert await writer.terminate() == 0
        assert code == 1
        assert target.read_bytes() == b"keep"
