"""A database that turns read-only under load: commands fail with a clear error, nothing unacknowledged is done,
the server keeps answering, and it recovers when writing is allowed again.

Four socket clients send keyed deposits one after another; mid-stream the writer's SQLite connection is
made read-only (``PRAGMA query_only``: SQLite then refuses every write with ``SQLITE_READONLY``, as for a
file it cannot write), and later writable again. Linux refuses to remount a filesystem read-only while a
file on it is open for writing (``EBUSY``, tried on a tmpfs), and SQLite keeps writing to a database file
renamed under it, so the pragma is the way to make a running server's database refuse writes.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from typing import TYPE_CHECKING

import anyio

from soloist import CQRSError
from soloist.net import Client
from tests.net.harness import serving
from tests.toy import Account, Open

if TYPE_CHECKING:
    from pathlib import Path

WORKERS = 4
DEPOSIT = {"account": "a", "amount": 1}


def _log(db: Path) -> list[tuple[int, str | None]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT position, idempotency_key FROM events ORDER BY position").fetchall()
    conn.close()
    return [(int(p), k) for p, k in rows]


class TestReadOnlyUnderLoad:
    async def test_read_only_fails_clearly_and_recovers(self, tmp_path: Path) -> None:
        """Writes refused as read_only_storage are not done; acknowledged ones are; the same keys succeed after."""
        async with serving(tmp_path) as (app, server):
            await app.execute(Open(account="a"))
            acked: dict[str, int] = {}
            failed: dict[str, CQRSError] = {}
            counts: Counter[str] = Counter()
            stop = anyio.Event()
            milestones: dict[tuple[str, int], anyio.Event] = {}

            def reached(kind: str, n: int) -> anyio.Event:
                event = milestones.setdefault((kind, n), anyio.Event())
                if counts[kind] >= n:
                    event.set()
                return event

            def count(kind: str) -> None:
                counts[kind] += 1
                for (k, n), event in milestones.items():
                    if k == kind and counts[kind] >= n:
                        event.set()

            async def work(w: int) -> None:
                async with Client.connect("127.0.0.1", server.port) as client:
                    i = 0
                    while not stop.is_set():
                        key = f"w{w}-{i}"
                        i += 1
                        try:
                            receipt = await client.command("Deposit", DEPOSIT, idempotency_key=key)
                        except CQRSError as exc:
                            failed[key] = exc
                            count("failed")
                        else:
                            acked[key] = int(str(receipt["position"]))
                            count("acked")

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for w in range(WORKERS):
                        tg.start_soon(work, w)
                    await reached("acked", 50).wait()
                    await app.log.set_pragma("query_only", 1)  # the disk turns read-only under load
                    await reached("failed", 20).wait()
                    async with Client.connect("127.0.0.1", server.port) as probe:  # still serving reads
                        balance = await probe.query("Balance", {"account": "a"}, consistency="strong")
                        assert isinstance(balance.result, int)
                        assert balance.result >= len(acked)
                    await app.log.set_pragma("query_only", 0)  # writable again
                    await reached("acked", counts["acked"] + 50).wait()
                    stop.set()
            assert {exc.code for exc in failed.values()} == {"read_only_storage"}
            message = str(next(iter(failed.values())))
            assert "readonly" in message
            assert "make the database file and its directory writable" in message
            log = _log(tmp_path / "bank.db")
            keys = {key for _, key in log if key}
            assert [p for p, _ in log] == list(range(1, len(log) + 1))  # gap-free
            assert set(acked) <= keys
            assert not set(failed) & keys  # nothing refused was written
            assert {key: p for p, key in log if key in acked} == acked  # at the positions their receipts named
            async with Client.connect("127.0.0.1", server.port) as client:  # resent with their keys: done once
                for key in sorted(failed):
                    receipt = await client.command("Deposit", DEPOSIT, idempotency_key=key)
                    assert receipt["duplicate"] is False
            assert app.writer.states["account-a"] == Account(balance=len(acked) + len(failed))
