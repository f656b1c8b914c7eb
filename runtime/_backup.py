"""Online backup of an event log: a consistent copy taken while the writer runs.

SQLite's online backup API (``sqlite3.Connection.backup``) copies the pages of one read transaction from a
read-only connection. In WAL mode a reader never blocks the writer and the writer never blocks a reader, so
the running server keeps committing; the copy holds exactly the events committed when the backup's read
transaction began (positions 1..head, no half batch: a batch is one transaction). The copy is written to a
temporary name, checked (a soloist log, positions gap-free up to its head), fsynced and renamed, so the
target is either absent or complete. It keeps the source's log id: it *is* that log, up to its head.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ._errors import LogCorrupted, NotALog, PersistenceError, translate_sqlite_error
from ._log import check_log_file

if TYPE_CHECKING:
    from os import PathLike

__all__ = ["BackupResult", "backup"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupResult:
    source: Path
    target: Path
    position: int  # the copy's head: every event up to here, none after
    log_id: str
    bytes: int
    seconds: float


def backup(source: str | PathLike[str], target: str | PathLike[str]) -> BackupResult:
    """Copy the log ``source`` to the new file ``target`` (blocking; safe while a writer runs)."""
    started = time.perf_counter()
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise PersistenceError(f"cannot back up {source}: no such file; give the --db of the log to copy")
    check_log_file(source)
    check_log_file(target)
    if target.exists():
        raise PersistenceError(f"will not overwrite {target}: it exists; remove it or choose another name")
    tmp = target.with_name(target.name + ".partial")
    tmp.unlink(missing_ok=True)
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise translate_sqlite_error(exc, what=f"opening {source} to back it up") from exc
    try:
        src.execute("PRAGMA busy_timeout = 5000")
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)  # pages=-1: every page in one step, i.e. one read transaction: one consistent state
            position, log_id = _verify(dst, source)
            dst.execute("PRAGMA journal_mode = DELETE")  # the copy is one self-contained file
        finally:
            dst.close()
    except sqlite3.Error as exc:
        tmp.unlink(missing_ok=True)
        raise translate_sqlite_error(exc, what=f"backing up {source} to {target}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        src.close()
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return BackupResult(
        source=source,
        target=target,
        position=position,
        log_id=log_id,
        bytes=target.stat().st_size,
        seconds=time.perf_counter() - started,
    )


def _verify(conn: sqlite3.Connection, source: Path) -> tuple[int, str]:
    """The copy is a soloist log whose positions are 1..head: its head and log id."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    if "meta" not in tables or "events" not in tables:
        raise NotALog(str(source), f"it has the tables {sorted(tables)}, not a soloist log's")
    meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
    if meta.get("format") != "soloist-log/1":
        raise NotALog(str(source), f"its meta table says format {meta.get('format')!r}")
    count, head = conn.execute("SELECT COUNT(*), COALESCE(MAX(position), 0) FROM events").fetchone()
    if count != head:
        raise LogCorrupted(f"the copy of {source} has {count} events but its head is {head}: a gap in positions")
    return int(head), str(meta.get("log_id", ""))
