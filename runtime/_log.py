"""The SQLite event log: the truth. One table of events, one of idempotency keys, WAL mode.

- ``events.position`` is the global position, assigned by the single writer: 1, 2, 3, ... gap-free.
- Per-stream versions are the writer's: it assigns each from its state, and holds the file's lock while it
  does; every recovery checks them (:class:`LogCorrupted`). A log has no index on ``(stream, version)``: a
  ``UNIQUE`` one cost ~7% of the server's CPU per durable order over the socket (a B-tree insert per event
  and its pages in every commit; docs/ARCHITECTURE.md), and logs made before keep theirs (it is never
  violated). Reading one stream is a scan (``read_stream``: tools and tests, not the serving path).
- ``idempotency`` rows are written in the same transaction as the events the command produced, appended in
  commit order (a rowid table with no index on the key: the writer owns the keys' uniqueness in memory, and a
  B-tree on random keys dirtied a page per key: keyed commands ran at 0.61x of unkeyed ones, 0.85x without
  it); the writer deletes the oldest ones once ``key_ttl`` has passed.
- :class:`EventLog` is the write side (one connection, owned by the writer, plus an OS lock file so
  that a second writer *process* fails fast); :class:`LogReader` is a read-only connection for
  catch-up reads, so readers never queue behind a commit.

One batch = one transaction: ``BEGIN IMMEDIATE``, the rows inserted with ``executemany`` on the event
loop's thread, ``COMMIT`` (the fsync) on the log's own thread; see :class:`EventLog` for the measurements.
Reads of a chunk are one statement returning the chunk as one JSON array (``json_group_array``), decoded
by one msgspec call.

Why reads are one statement: every ``sqlite3_step`` releases the GIL and must win it back from the
event loop's thread. ``fetchall`` steps once per row; when the loop is busy (queries over the socket)
each re-acquisition on the reader's thread waits up to ``sys.getswitchinterval()``. One step per chunk
makes that one wait, not 2,000. (Inserts avoid the problem differently: they run on the loop's thread,
which holds the GIL already.)
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import operator
import os
import sqlite3
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final, Literal, TypeVar, cast, final

import anyio
import msgspec
import structlog

from ._errors import (
    LogCorrupted,
    NotALog,
    PersistenceError,
    ReadOnlyStorage,
    UnknownSchemaVersion,
    WriterLocked,
    translate_sqlite_error,
)
from ._gc import gc_paused
from ._messages import RecordedEvent, TypeRegistry
from ._store import EventRow, Forget, KeyRow, StoredKey

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

__all__ = ["EventLog", "EventRow", "KeyRow", "LogReader", "LogScanner", "StoredKey"]

T = TypeVar("T")

_log = structlog.get_logger("soloist.log")

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    position        INTEGER PRIMARY KEY,
    stream          TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    type            TEXT    NOT NULL,
    schema          INTEGER NOT NULL,
    data            BLOB    NOT NULL,
    command_id      TEXT    NOT NULL,
    idempotency_key TEXT,
    recorded_at     REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    key         TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    position    INTEGER NOT NULL,
    command_id  TEXT    NOT NULL,
    recorded_at REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('format', 'soloist-log/1');  -- _FORMAT
INSERT OR IGNORE INTO meta (name, value) VALUES ('log_id', lower(hex(randomblob(16))));
"""
# A log created before idempotency keys stored their command's id: add the column, and fill it from the
# events the key produced (a keyed command that emitted no event has no row to take it from: it stays '').
_MIGRATE_KEYS: Final = """
ALTER TABLE idempotency ADD COLUMN command_id TEXT NOT NULL DEFAULT '';
UPDATE idempotency SET command_id = COALESCE(
    (SELECT e.command_id FROM events AS e
     WHERE e.position = idempotency.position AND e.idempotency_key = idempotency.key),
    ''
);
"""
# A log whose keys are a WITHOUT ROWID table keyed by the key (before keys expired): rebuilt as the append-only
# table, in position order; the keys already there get the time of this upgrade (keys had none), so that each
# is kept one more whole ``key_ttl``, never less. The oldest logs also hold the view and trigger the writer once
# appended through: unused since, and dropped here (the trigger names the table being replaced).
_MIGRATE_KEY_LOG: Final = (
    "DROP TRIGGER IF EXISTS append_batch_insert",
    "DROP VIEW IF EXISTS append_batch",
    "CREATE TABLE idempotency_log (key TEXT NOT NULL, fingerprint TEXT NOT NULL, position INTEGER NOT NULL, "
    "command_id TEXT NOT NULL, recorded_at REAL NOT NULL)",
    "INSERT INTO idempotency_log (key, fingerprint, position, command_id, recorded_at) "
    "SELECT key, fingerprint, position, command_id, ? FROM idempotency ORDER BY position, key",
    "DROP TABLE idempotency",
    "ALTER TABLE idempotency_log RENAME TO idempotency",
)

_FORMAT: Final = "soloist-log/1"
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
_MIN_SQLITE: Final = (3, 38, 0)  # JSON functions built in (the chunk reads use json_group_array)
_INSERT_EVENT: Final = (
    "INSERT INTO events (position, stream, version, type, schema, data, command_id, idempotency_key, recorded_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_KEY: Final = (
    "INSERT INTO idempotency (key, fingerprint, position, command_id, recorded_at) VALUES (?, ?, ?, ?, ?)"
)
_FORGET_KEYS: Final = (
    "DELETE FROM idempotency WHERE rowid IN "
    "(SELECT rowid FROM idempotency WHERE recorded_at < ? ORDER BY rowid LIMIT ?)"
)
# A chunk as ONE row holding a JSON array of rows (one step, see the module docstring). The event body
# is embedded as JSON (json(data)); recorded_at goes through %!.17g so the double round-trips exactly.
_CHUNK_COLUMNS: Final = (
    "json_group_array(json_array(position, stream, version, type, schema, json(CAST(data AS TEXT)), command_id, "
    "idempotency_key, json(printf('%!.17g', recorded_at))))"
)
_SELECT_FROM: Final = (
    f"SELECT {_CHUNK_COLUMNS} FROM (SELECT * FROM events WHERE position > ? ORDER BY position LIMIT ?)"
)
# Row by row, for LogScanner: stepping on the loop's thread costs no GIL hand-over (see LogScanner).
_SELECT_ROWS: Final = (
    "SELECT position, stream, version, type, schema, data, command_id, idempotency_key, recorded_at "
    "FROM events WHERE position > ? ORDER BY position LIMIT ?"
)
_SELECT_STREAM: Final = f"SELECT {_CHUNK_COLUMNS} FROM (SELECT * FROM events WHERE stream = ? ORDER BY version)"


# A stored row as the chunk query returns it, the event's JSON left undecoded until its type is known.
_StoredRow = tuple[int, str, int, str, int, msgspec.Raw, str, str | None, float]
# A row as any reader hands it to decode_rows: position, stream, version, type, schema, data (the event's
# JSON: bytes, text or msgspec.Raw), command_id, idempotency_key, recorded_at.
StoredRow = tuple[int, str, int, str, int, "bytes | str | msgspec.Raw", str, str | None, float]
_decode_rows: Final = msgspec.json.Decoder(list[_StoredRow]).decode


def decode_chunk(text: str | bytes | None, events: TypeRegistry) -> list[RecordedEvent]:
    """One chunk (a JSON array of rows, see ``_SELECT_FROM``) -> recorded events, in position order."""
    if not text:
        return []
    with gc_paused():
        rows = _decode_rows(text)
        # json_group_array keeps the subquery's order in practice, but SQLite does not promise it:
        # sorting an already sorted list is one C pass.
        rows.sort(key=_first)
        return decode_rows(rows, events)


def decode_rows(rows: Sequence[StoredRow], events: TypeRegistry) -> list[RecordedEvent]:
    """Stored rows -> recorded events: the one row decoder, for every store's reader of the log (catch-up,
    replay at start; SQLite, PostgreSQL, memory). ``data`` is the event's JSON (bytes, text or ``msgspec.Raw``)."""
    decode = events.decode_stored
    make = RecordedEvent  # positional: the fields are in the row's order, minus the schema column
    with gc_paused():
        try:
            out = [
                make(
                    position,
                    stream,
                    version,
                    type_name,
                    decode(type_name, data, schema),
                    recorded_at,
                    command_id,
                    key,
                    schema,
                )
                for position, stream, version, type_name, schema, data, command_id, key, recorded_at in rows
            ]
        except UnknownSchemaVersion as exc:
            raise _placed(exc, rows, events) from None
        return events.as_current(out) if events.upcasting else out  # upcast: schema describes the data


def _placed(exc: UnknownSchemaVersion, rows: Sequence[StoredRow], events: TypeRegistry) -> UnknownSchemaVersion:
    """``exc`` naming the position of the row that raised it: that row decoded again (off the hot path)."""
    for position, _, _, type_name, schema, data, *_ in rows:
        if type_name == exc.type_name and schema == exc.schema:
            try:
                events.decode_stored(type_name, data, schema, at=f"at position {position}")
            except UnknownSchemaVersion as placed:
                return placed
    return exc


_first = operator.itemgetter(0)
_data_of: Final = operator.itemgetter(5)  # an EventRow's data (bytes)


def check_contiguous(where: str | Path, after: int, events: Sequence[RecordedEvent]) -> None:
    """A chunk read after ``after`` must hold positions after+1, after+2, ... with no gap."""
    first, last = events[0].position, events[-1].position
    if first != after + 1 or last != first + len(events) - 1:
        raise LogCorrupted(
            f"{where}: positions after {after} are not contiguous (expected {after + 1}, "
            f"found {first}..{last} in {len(events)} rows); the log was edited by hand"
        )


async def replay_reads(
    read: Callable[[int, int], Awaitable[list[RecordedEvent]]], where: str, after: int, upto: int, chunk: int
) -> AsyncIterator[list[RecordedEvent]]:
    """``EventStore.replay`` for an adapter whose ``read(after, limit)`` is already fast: every event above
    ``after`` up to ``upto``, ``chunk`` at a time, each chunk gap-checked (:class:`LogCorrupted`)."""
    while after < upto:
        events = await read(after, min(chunk, upto - after))
        if not events:
            return
        check_contiguous(where, after, events)
        after = events[-1].position
        yield events


@final
class LogScanner:
    """A synchronous, read-only pass over the log on the calling thread: for start-up replay only.

    Everywhere else SQLite runs on its own threads (see the module docstring). At start, before anything
    is served, the loop's thread has nothing else to do, and stepping row by row there costs no GIL
    hand-over at all: measured here, 245k events/s replayed (read + decode + apply) against ~145k/s
    through the reader's thread. The caller yields to the loop between chunks.
    """

    def __init__(self, path: str | os.PathLike[str], events: TypeRegistry) -> None:
        self.path = Path(path)
        self._events = events
        try:
            self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            self._conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            raise translate_sqlite_error(exc, what=f"opening {self.path} for replay") from exc

    def read(self, after: int, limit: int = 2000) -> list[RecordedEvent]:
        try:
            rows = self._conn.execute(_SELECT_ROWS, (after, limit)).fetchall()
        except sqlite3.Error as exc:
            raise translate_sqlite_error(exc, what=f"replaying {self.path} after position {after}") from exc
        return decode_rows(rows, self._events)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> LogScanner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def check_log_file(path: Path) -> None:
    """Refuse, before SQLite touches it, a path whose directory is missing or which is not SQLite.

    A file that is not SQLite would otherwise fail only at the first statement, and a non-empty file
    of another program would be adopted; the message says what was found and what to do.
    """
    directory = path.parent
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise PersistenceError(
            f"cannot open the event log {path}: its directory {directory} {what}; create the directory "
            "or choose a path in an existing one"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ReadOnlyStorage(
            f"cannot open the event log {path}: its directory {directory} is not writable (the log needs its "
            "-wal, -shm and .lock files beside it); make the directory writable or choose another path"
        )
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return  # a new log
    except IsADirectoryError:
        raise NotALog(str(path), "it is a directory") from None
    except OSError as exc:
        raise ReadOnlyStorage(f"cannot read the event log {path}: {exc}; check its permissions") from None
    if head and head != _SQLITE_MAGIC:
        raise NotALog(str(path), f"it is not an SQLite database (it starts with {head[:16]!r})")


def _check_is_log(conn: sqlite3.Connection, path: Path) -> None:
    """An SQLite file with tables must be a soloist log (``meta.format``); an empty one becomes one."""
    tables = sorted(str(row[0]) for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'"))
    if not tables:
        return
    found = None
    if "meta" in tables:
        row = conn.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
        found = None if row is None else str(row[0])
    if found != _FORMAT:
        shown = ", ".join(tables[:10]) + (", ..." if len(tables) > 10 else "")
        why = f"its meta table says format {found!r}" if found is not None else f"it holds other tables ({shown})"
        raise NotALog(str(path), f"an SQLite database, but {why}, not {_FORMAT!r}")


def _connect_writer(path: Path, synchronous: Synchronous) -> sqlite3.Connection:
    conn: sqlite3.Connection | None = None
    try:
        # autocommit mode: append() opens its own transaction (BEGIN IMMEDIATE ... COMMIT)
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        _check_is_log(conn, path)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        # No checkpoint inside COMMIT: EventLog checkpoints beside the writer (see EventLog._checkpoint_beside).
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA cache_size = -65536")  # 64 MiB
        return conn
    except BaseException as exc:
        if conn is not None:
            conn.close()
        if isinstance(exc, sqlite3.Error):
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_NOTADB:
                raise NotALog(str(path), f"SQLite says {exc}") from exc
            raise translate_sqlite_error(exc, what=f"opening the event log {path}") from exc
        raise


@final
class EventLog:
    """The write side of the log. Only the writer calls ``append``; a lock file keeps other processes out.

    How a batch is appended (measured here, in CPU instructions per event of a ~250-byte event, which
    stay put on a shared machine where seconds do not): the rows are inserted with ``executemany`` on
    the event loop's thread inside ``BEGIN IMMEDIATE`` (~25k instructions per event; no thread
    hand-over per row, since the loop's thread already holds the GIL), and only ``COMMIT`` -- the
    fsync, the part that waits on the disk -- runs on the log's own thread. The previous design, one
    ``INSERT ... SELECT FROM json_each(?)`` statement run entirely on a thread, cost ~73k instructions
    per event in SQLite's JSON functions. A plain ``INSERT ... SELECT json_extract(...) FROM json_each(?)`` on
    the log's thread (no trigger) was tried again under bench_socket's shape (b): the loop's thread spent
    ~7 us less per order, the log's thread ~14 us more, commits took longer and (b) ran 5-10% slower. If the
    write lock is busy (another connection holds it, which a single writer only sees from tools), the whole
    append moves to the log's thread and waits there.

    Checkpoints (copying the WAL back into the database file, then its fsync) never run inside a commit.
    SQLite's automatic checkpoint does that: the ``COMMIT`` that crosses its threshold copies the whole WAL.
    Measured under bench_socket's shape (b) with the threshold this log had (10,000 pages): a 65-100 ms
    commit every ~3 s, every command decided meanwhile waiting behind it (commit p99 12.8 ms, max 100 ms).
    Instead, once ``checkpoint_bytes`` of event data were appended, a ``PASSIVE`` checkpoint runs on a
    connection and thread of its own while commits go on, and fsyncs the database file itself (SQLite does
    only when it reached the WAL's end, which a writer in a transaction prevents). The frames appended
    meanwhile are copied by the writer's thread right after its next ``COMMIT`` (1-5 ms), so the next
    transaction starts the WAL again from its beginning: the WAL stays a few ``checkpoint_bytes`` long. Same
    load, 1 MiB: commit p99 9.2 ms, one commit over 15 ms in 12 s (a large fsync slows the commits' own; 8 MiB
    gave 40-50 ms commits during each). A checkpoint that fails (a full disk) is logged and tried again
    later; the commits, whose durability is the WAL's, are unaffected.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, synchronous: Synchronous = "FULL", checkpoint_bytes: int = 1 << 20
    ) -> None:
        self.path = Path(path)
        self._synchronous: Synchronous = synchronous
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._checkpoint_bytes = checkpoint_bytes
        self._appended = 0  # bytes of event data appended since the last checkpoint began
        self._checkpointer: ThreadPoolExecutor | None = None  # its thread owns _checkpoint_conn
        self._checkpoint_conn: sqlite3.Connection | None = None
        self._checkpoint_run: asyncio.Future[None] | None = None
        self._finish_checkpoint = False  # the writer's thread copies what the last checkpoint left, after a COMMIT
        self.checkpoints = 0  # completed beside the writer (statistics, tests)
        self._lock_file: IO[bytes] | None = None
        self.log_id = ""  # random id made when the file was created: checkpoints name the log they belong to
        # a replica's log copies another log: the id of that log, recorded on first contact (None: not yet)
        self.upstream_log_id: str | None = None

    async def open(self) -> None:
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise PersistenceError(
                f"this Python's SQLite is {sqlite3.sqlite_version}; the event log needs "
                f"{'.'.join(map(str, _MIN_SQLITE))} or newer (built-in JSON functions); use a Python built against a "
                "newer SQLite"
            )
        check_log_file(self.path)
        self._acquire_lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="soloist-log-writer")
        try:
            self._conn = await self._on_thread(lambda: _connect_writer(self.path, self._synchronous))
            self.log_id = await self._on_thread(self._create_schema)
        except BaseException:
            await self.aclose()
            raise

    def _create_schema(self) -> str:
        conn = self._c
        try:
            conn.executescript(_SCHEMA)
            columns = dict(conn.execute("SELECT name, pk FROM pragma_table_info('idempotency')").fetchall())
            if "command_id" not in columns:
                conn.executescript(f"BEGIN; {_MIGRATE_KEYS} COMMIT;")
            if columns.get("key"):  # the key is the primary key: the table before keys expired
                with conn:  # one transaction (the connection is in autocommit mode: BEGIN by hand)
                    conn.execute("BEGIN")
                    for statement in _MIGRATE_KEY_LOG:
                        conn.execute(statement, (time.time(),) if "?" in statement else ())
            row = conn.execute("SELECT value FROM meta WHERE name = 'log_id'").fetchone()
            upstream = conn.execute("SELECT value FROM meta WHERE name = 'upstream_log_id'").fetchone()
        except sqlite3.Error as exc:
            raise translate_sqlite_error(exc, what=f"creating the schema of {self.path}") from exc
        self.upstream_log_id = None if upstream is None else str(upstream[0])
        return str(row[0])

    async def set_upstream_log_id(self, log_id: str) -> None:
        """Record (durably) that this log is a copy of the log ``log_id``: a replica's first contact."""
        sql = "INSERT OR REPLACE INTO meta (name, value) VALUES ('upstream_log_id', ?)"
        await self._on_thread(lambda: self._execute(sql, f"recording the upstream log id in {self.path}", (log_id,)))
        self.upstream_log_id = log_id

    def _acquire_lock(self) -> None:
        lock_path = f"{self.path}.lock"
        try:
            handle = open(lock_path, "a+b")  # noqa: SIM115 - held open for the log's lifetime
        except OSError as exc:
            raise ReadOnlyStorage(
                f"cannot create the writer lock file {lock_path}: {exc.strerror}; make its directory writable"
            ) from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise WriterLocked(str(self.path)) from None
        self._lock_file = handle

    async def aclose(self) -> None:
        await self._close_checkpointer()
        conn, self._conn = self._conn, None
        executor = self._executor
        try:
            if conn is not None and executor is not None:
                with anyio.move_on_after(10, shield=True):  # closing must survive a cancelled caller
                    await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        finally:
            self._executor = None
            if executor is not None:
                executor.shutdown(wait=False)
            if self._lock_file is not None:
                self._lock_file.close()  # closing the descriptor releases the flock
                self._lock_file = None

    async def __aenter__(self) -> EventLog:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def _c(self) -> sqlite3.Connection:
        if self._conn is None:
            raise PersistenceError(f"the event log {self.path} is not open; use `async with EventLog(...)`")
        return self._conn

    def _on_thread(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        if self._executor is None:
            raise PersistenceError(f"the event log {self.path} is not open; use `async with EventLog(...)`")
        return asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def append(self, rows: Sequence[EventRow], keys: Sequence[KeyRow] = (), forget: Forget | None = None) -> None:
        """Append a batch of events (and the idempotency keys they answer) in one durable transaction, which
        first deletes the expired keys ``forget`` names."""
        conn = self._c
        what = f"appending {len(rows)} events to {self.path}"
        try:
            conn.execute("PRAGMA busy_timeout = 0")  # never wait for a lock on the loop's thread
            try:
                conn.execute("BEGIN IMMEDIATE")
            finally:
                conn.execute("PRAGMA busy_timeout = 5000")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY:
                raise translate_sqlite_error(exc, what=what) from exc
            await self._on_thread(lambda: self._insert_and_commit(rows, keys, forget, what))
            self._count(rows)
            return
        try:
            self._insert(rows, keys, forget)
        except sqlite3.Error as exc:
            conn.rollback()
            raise translate_sqlite_error(exc, what=what) from exc
        await self._on_thread(lambda: self._commit(what))
        self._count(rows)

    def _insert(self, rows: Sequence[EventRow], keys: Sequence[KeyRow], forget: Forget | None) -> None:
        conn = self._c
        if forget is not None:  # first, so the inserts below are never among the oldest
            conn.execute(_FORGET_KEYS, (forget.before, forget.limit))
        conn.executemany(_INSERT_EVENT, rows)
        if keys:
            conn.executemany(_INSERT_KEY, keys)

    def _commit(self, what: str) -> None:
        conn = self._c
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.rollback()
            raise translate_sqlite_error(exc, what=what) from exc
        if self._finish_checkpoint:  # durable already: what follows can delay the answer, never fail it
            self._finish_checkpoint = False
            try:
                started = time.perf_counter()
                ((busy, frames, copied),) = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # what was left
                ms = round((time.perf_counter() - started) * 1000, 3)
                _log.debug("log_checkpoint_finished", busy=busy, wal_frames=frames, copied=copied, ms=ms)
            except sqlite3.Error as exc:
                _log.warning("log_checkpoint_failed", path=str(self.path), error=str(exc), by="writer")

    # -- checkpoints beside the writer ------------------------------------------------------------------

    def _count(self, rows: Sequence[EventRow]) -> None:
        appended = self._appended + sum(map(len, map(_data_of, rows)))
        self._appended = appended
        if appended >= self._checkpoint_bytes and (self._checkpoint_run is None or self._checkpoint_run.done()):
            self._appended = 0
            self._checkpoint_beside()

    def _checkpoint_beside(self) -> None:
        """Start a PASSIVE checkpoint on the checkpointer's thread (not awaited: commits go on meanwhile)."""
        if self._checkpointer is None:
            self._checkpointer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="soloist-log-checkpoint")
        run = asyncio.get_running_loop().run_in_executor(self._checkpointer, self._checkpoint)
        run.add_done_callback(self._checkpointed)
        self._checkpoint_run = run

    def _checkpoint(self) -> None:
        conn = self._checkpoint_conn
        if conn is None:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")  # the fsync of the copied pages, as the writer's
            self._checkpoint_conn = conn
        started = time.perf_counter()
        ((busy, frames, copied),) = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        if self._synchronous != "OFF":
            # SQLite fsyncs the database file only when a checkpoint reached the WAL's end, which a writer in a
            # transaction prevents: without this, the copied pages would be flushed by the writer's next step.
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        ms = round((time.perf_counter() - started) * 1000, 3)
        _log.debug("log_checkpointed", path=str(self.path), busy=busy, wal_frames=frames, copied=copied, ms=ms)

    def _checkpointed(self, run: asyncio.Future[None]) -> None:
        if run.cancelled():
            return
        exc = run.exception()
        if exc is not None:
            _log.warning("log_checkpoint_failed", path=str(self.path), error=str(exc), by="checkpointer")
            return
        self.checkpoints += 1
        self._finish_checkpoint = True

    async def wait_checkpoint(self) -> None:
        """Wait for the checkpoint running beside the writer, if any (for tests and an orderly close)."""
        run = self._checkpoint_run
        if run is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(run)

    async def _close_checkpointer(self) -> None:
        executor, self._checkpointer = self._checkpointer, None
        if executor is None:
            return
        try:
            with anyio.move_on_after(10, shield=True):  # closing must survive a cancelled caller
                await self.wait_checkpoint()
                conn, self._checkpoint_conn = self._checkpoint_conn, None
                if conn is not None:
                    await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        finally:
            executor.shutdown(wait=False)

    def _insert_and_commit(
        self, rows: Sequence[EventRow], keys: Sequence[KeyRow], forget: Forget | None, what: str
    ) -> None:
        conn = self._c
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._insert(rows, keys, forget)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.rollback()
            raise translate_sqlite_error(exc, what=what) from exc
        self._commit(what)

    async def set_pragma(self, name: str, value: int | str) -> None:
        """Set a pragma on the write connection (e.g. ``max_page_count`` to cap the file's size)."""
        if not name.isidentifier() or not (isinstance(value, int) or str(value).isidentifier()):
            raise ValueError(f"bad pragma {name!r} = {value!r}")
        await self._on_thread(lambda: self._execute(f"PRAGMA {name} = {value}", f"PRAGMA {name} on {self.path}"))

    def _execute(self, sql: str, what: str, parameters: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        try:
            return self._c.execute(sql, parameters).fetchall()
        except sqlite3.Error as exc:
            raise translate_sqlite_error(exc, what=what) from exc

    async def page_count(self) -> int:
        rows = await self._on_thread(lambda: self._execute("PRAGMA page_count", "PRAGMA page_count"))
        return int(cast("int", rows[0][0])) if rows else 0

    async def head(self) -> int:
        """The last committed global position (0 for an empty log)."""
        rows = await self._on_thread(
            lambda: self._execute("SELECT COALESCE(MAX(position), 0) FROM events", f"reading the head of {self.path}")
        )
        return int(cast("int", rows[0][0]))

    async def keys(self) -> dict[str, StoredKey]:
        """Every idempotency key with its fingerprint, position, command id and time, in commit order (loaded
        once, at recovery)."""
        rows = await self._on_thread(
            lambda: self._execute(
                "SELECT key, fingerprint, position, command_id, recorded_at FROM idempotency ORDER BY rowid",
                f"reading keys of {self.path}",
            )
        )
        return {str(k): StoredKey(str(f), cast("int", p), str(c), cast("float", t)) for k, f, p, c, t in rows}


@final
class LogReader:
    """Read-only access for catch-up: its own connection on its own thread, with read-ahead.

    - WAL: readers never block the writer, and never queue behind a commit.
    - A chunk is one statement (see the module docstring), run on the reader's thread.
    - Read-ahead: after a full chunk, the next one is fetched at once on that thread while the caller
      decodes and applies this one (two cores: SQLite's work overlaps the loop's). aiosqlite, which the
      writer uses, has no way to start a call without awaiting it; this is the same pattern (one thread
      per connection, futures for results) with the read-ahead added.
    - Replicas that catch up together ask for the same chunks: a chunk being fetched is awaited by the
      others, and the last few decoded chunks are kept (recorded events are immutable, so sharing is safe).
    """

    def __init__(self, path: str | os.PathLike[str], events: TypeRegistry, *, cached_chunks: int = 8) -> None:
        self.path = Path(path)
        self._events = events
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._cache: OrderedDict[tuple[str, object, int], list[RecordedEvent]] = OrderedDict()
        self._cached_chunks = cached_chunks
        self._pending: dict[tuple[str, object, int], asyncio.Future[str | None]] = {}
        self.fetches = 0  # statements run against SQLite (the rest were shared or cached)

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="soloist-log-reader")
        try:
            await self._on_thread(self._connect)
        except BaseException:
            await self.aclose()
            raise

    def _connect(self) -> None:
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            conn.execute("PRAGMA query_only = ON")
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA cache_size = -65536")
        except sqlite3.Error as exc:
            raise translate_sqlite_error(exc, what=f"opening {self.path} for reading") from exc
        self._conn = conn

    async def aclose(self) -> None:
        executor, self._executor = self._executor, None
        self._cache.clear()
        if executor is None:
            return

        def close() -> None:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

        with anyio.move_on_after(10, shield=True):  # closing must survive a cancelled caller
            await asyncio.get_running_loop().run_in_executor(executor, close)
        executor.shutdown(wait=False)

    async def __aenter__(self) -> LogReader:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _on_thread(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        if self._executor is None:
            raise PersistenceError(f"the log reader of {self.path} is not open; use `async with LogReader(...)`")
        return asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _start(self, key: tuple[str, object, int]) -> asyncio.Future[str | None]:
        """Start (or join) the statement for ``key`` on the reader's thread."""
        future = self._pending.get(key)
        if future is None:
            sql, parameter, limit = key

            def fetch() -> str | None:
                conn = self._conn
                if conn is None:
                    raise PersistenceError(f"the log reader of {self.path} is closed")
                try:
                    row = conn.execute(sql, (parameter, limit) if limit else (parameter,)).fetchone()
                except sqlite3.Error as exc:
                    raise translate_sqlite_error(exc, what=f"reading {self.path} ({parameter!r})") from exc
                return None if row is None else row[0]

            self.fetches += 1
            future = self._on_thread(fetch)
            self._pending[key] = future
            future.add_done_callback(lambda _: self._pending.pop(key, None))
        return future

    async def read(self, after: int, limit: int = 2000) -> list[RecordedEvent]:
        """Up to ``limit`` events with a position above ``after``, in order."""
        key = (_SELECT_FROM, after, limit)
        cached = self._cache.get(key)
        # A full chunk never changes (positions are immutable); a short one may have grown: read it again.
        if cached is not None and len(cached) == limit:
            return cached
        future = self._start(key)
        # shield: a cancelled caller must not cancel a fetch that other readers (or the read-ahead) share
        text = await asyncio.shield(future)
        events = self._cache.get(key)
        if events is None or len(events) < limit:
            events = decode_chunk(text, self._events)
            self._cache[key] = events
            while len(self._cache) > self._cached_chunks:
                self._cache.popitem(last=False)
        if len(events) == limit:
            self._start((_SELECT_FROM, events[-1].position, limit))  # read ahead
        return events

    async def scan(self, *, after: int = 0, chunk: int = 2000) -> AsyncIterator[list[RecordedEvent]]:
        """Every event after ``after``, in order, in chunks; checks that positions have no gap."""
        while decoded := await self.read(after, chunk):
            check_contiguous(self.path, after, decoded)
            after = decoded[-1].position
            yield decoded

    async def read_stream(self, stream: str) -> list[RecordedEvent]:
        """Every event of one stream, by version."""
        return decode_chunk(await self._start((_SELECT_STREAM, stream, 0)), self._events)
