"""A disk that fills up (a real 2 MiB tmpfs): commands fail with a clear error, nothing unacknowledged is done,
the server stays up, and it recovers once space returns."""

from __future__ import annotations

import os
import sqlite3
from typing import TYPE_CHECKING

import pytest

from soloist import CQRSError
from soloist.net import Client
from tests.e2e.processes import soloist, tmpfs

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.uvloop_only


@pytest.fixture(name="small_disk")
def _small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted in the test's directory (needs root); skipped if it cannot be mounted (not on CI)."""
    with tmpfs(tmp_path / "disk", "size=2m") as mount:
        yield mount


def _keys_in_log(db: Path) -> set[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        keys = {str(row[0]) for row in conn.execute("SELECT DISTINCT idempotency_key FROM events") if row[0]}
    conn.close()
    return keys


class TestFullDisk:
    async def test_full_disk_fails_commands_clearly_and_recovers(self, small_disk: Path, tmp_path: Path) -> None:
        """Commands on a full disk are refused (storage full); freeing space lets the resent ones succeed."""
        db = small_disk / "w.db"
        async with soloist(tmp_path / "writer.log", "serve", "--db", str(db)) as writer:
            async with Client.connect("127.0.0.1", writer.port) as client:
                await client.command("Open", {"account": "a"}, idempotency_key="open")
                acknowledged = {"open"}
                filler = small_disk / "filler"
                fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
                try:  # take every free byte of the disk
                    while True:
                        os.write(fd, b"\0" * 4096)
                except OSError:
                    pass
                finally:
                    os.close(fd)
                failed: list[str] = []
                messages: list[str] = []
                for i in range(2000):  # large events fill the little room left quickly
                    key = f"d{i}"
                    try:
                        await client.command("Open", {"account": f"{i:04d}" + "x" * 2000}, idempotency_key=key)
                    except CQRSError as exc:
                        failed.append(key)
                        messages.append(str(exc))
                        if len(failed) >= 3:
                            break
                    else:
                        acknowledged.add(key)
                assert failed, "the disk never filled up"
                assert "full" in messages[0]
                assert "free disk space" in messages[0]
                assert await client.ping() >= 1  # the server is still up and answering
                assert not set(failed) & _keys_in_log(db)  # nothing refused was written
                filler.unlink()
                for key in failed:
                    i = int(key[1:])
                    await client.command("Open", {"account": f"{i:04d}" + "x" * 2000}, idempotency_key=key)
                    acknowledged.add(key)
                receipt = await client.command("Deposit", {"account": "a", "amount": 1})
                assert isinstance(receipt["position"], int)
            assert await writer.terminate() == 0
        assert acknowledged <= _keys_in_log(db)
