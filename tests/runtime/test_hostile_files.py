"""Hostile files: a path that is not a soloist log is refused at once, with a typed error and a plain message."""

from __future__ import annotations

import sqlite3
import sys
from typing import TYPE_CHECKING

import anyio
import pytest

from soloist import App, NotALog, PersistenceError
from soloist._log import EventLog
from tests.e2e.processes import ROOT, _env, tmpfs
from tests.toy import BANK, Open

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

JUNK = bytes(range(256)) * 20  # 5,120 bytes that are not SQLite


def _foreign(path: Path) -> Path:
    """An SQLite database of another program: one table, some rows."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.close()
    return path


class TestEventLogOpen:
    async def test_junk_file_is_refused(self, tmp_path: Path) -> None:
        """A file that is not SQLite raises NotALog naming the file; the file is left as it was."""
        path = tmp_path / "junk.db"
        path.write_bytes(JUNK)
        with pytest.raises(NotALog, match=r"junk\.db is not a soloist event log: it is not an SQLite database"):
            await EventLog(path).open()
        assert path.read_bytes() == JUNK

    async def test_junk_behind_an_sqlite_header_is_refused(self, tmp_path: Path) -> None:
        """SQLite's magic followed by garbage: SQLite's own 'not a database' becomes NotALog."""
        path = tmp_path / "magic.db"
        path.write_bytes(b"SQLite format 3\x00" + JUNK)
        with pytest.raises(NotALog, match="SQLite says file is not a database"):
            await EventLog(path).open()

    async def test_foreign_sqlite_file_is_refused_not_adopted(self, tmp_path: Path) -> None:
        """Another program's database is refused and not modified (no soloist tables added)."""
        path = _foreign(tmp_path / "foreign.db")
        with pytest.raises(NotALog, match=r"an SQLite database, but it holds other tables \(users\)"):
            await EventLog(path).open()
        with sqlite3.connect(path) as conn:
            tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")]
        conn.close()
        assert tables == ["users"]

    async def test_meta_of_another_format_is_refused(self, tmp_path: Path) -> None:
        """A meta table whose format is not soloist-log/1 is refused, naming the format found."""
        path = tmp_path / "other.db"
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute("INSERT INTO meta VALUES ('format', 'other-log/7')")
        conn.close()
        with pytest.raises(NotALog, match="its meta table says format 'other-log/7'"):
            await EventLog(path).open()

    async def test_empty_file_becomes_a_log_and_a_log_reopens(self, tmp_path: Path) -> None:
        """An empty file is a new log; a soloist log opens again with the same log id."""
        path = tmp_path / "empty.db"
        path.write_bytes(b"")
        async with EventLog(path) as log:
            log_id = log.log_id
        async with EventLog(path) as log:
            assert log.log_id == log_id

    async def test_missing_directory_is_named(self, tmp_path: Path) -> None:
        """A path in a directory that does not exist says so, instead of a raw FileNotFoundError."""
        path = tmp_path / "nowhere" / "log.db"
        with pytest.raises(PersistenceError, match=r"its directory .*nowhere does not exist; create the directory"):
            await EventLog(path).open()

    async def test_a_directory_is_not_a_log(self, tmp_path: Path) -> None:
        """--db pointing at a directory is refused."""
        with pytest.raises(NotALog, match="it is a directory"):
            await EventLog(tmp_path).open()

    async def test_a_refused_file_releases_the_lock(self, tmp_path: Path) -> None:
        """After a refusal the writer lock is free: fixing the file and opening again works."""
        path = tmp_path / "junk.db"
        path.write_bytes(JUNK)
        with pytest.raises(NotALog):
            await EventLog(path).open()
        path.unlink()
        async with App(BANK, path, replicas=1) as app:
            assert (await app.execute(Open(account="a"))).position == 1


async def _serve_exits(db: str, within: float = 30.0) -> tuple[int, str]:
    """Run ``soloist serve --db db --port 0``; its exit code and stderr, failing if it does not exit in time."""
    with anyio.fail_after(within):
        result = await anyio.run_process(
            [sys.executable, "-m", "soloist.cli", "serve", "--db", db, "--port", "0", "--domain", "tests.toy:BANK"],
            check=False,
            env=_env(),
            cwd=ROOT,
        )
    return result.returncode, result.stderr.decode()


@pytest.mark.uvloop_only
class TestServeRefuses:
    async def test_junk_file_exits_non_zero_at_once(self, tmp_path: Path) -> None:
        """`serve --db junk.db` exits 1 with the reason, instead of hanging after 'file is not a database'."""
        path = tmp_path / "junk.db"
        path.write_bytes(b"SQLite format 3\x00" + JUNK)  # passes the header check: SQLite itself refuses it
        code, err = await _serve_exits(str(path))
        assert code == 1
        assert "is not a soloist event log: SQLite says file is not a database" in err
        assert "server_listening" not in err

    async def test_foreign_sqlite_file_exits_non_zero(self, tmp_path: Path) -> None:
        """`serve` on another program's SQLite file exits 1 and does not seed it."""
        path = _foreign(tmp_path / "foreign.db")
        code, err = await _serve_exits(str(path))
        assert code == 1
        assert "holds other tables (users)" in err
        assert "seeded" not in err

    async def test_missing_directory_exits_non_zero(self, tmp_path: Path) -> None:
        """`serve --db missing/dir/log.db` exits 1 with one line naming the directory, no traceback."""
        code, err = await _serve_exits(str(tmp_path / "missing" / "log.db"))
        assert code == 1
        assert "missing does not exist; create the directory" in err
        assert "Traceback" not in err


@pytest.fixture(name="read_only_dir")
def _read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs mounted in the test's directory (root needed; skipped otherwise, except under CI=true)."""
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mount:
        yield mount


@pytest.mark.uvloop_only
class TestReadOnlyDirectory:
    async def test_unwritable_directory_exits_non_zero(self, read_only_dir: Path) -> None:
        """`serve --db` in a read-only directory exits 1 saying the directory is not writable."""
        code, err = await _serve_exits(str(read_only_dir / "log.db"))
        assert code == 1
        assert "is not writable" in err
        assert "Traceback" not in err
