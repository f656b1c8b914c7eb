"""The SQLite event log: the truth. One table of events, one of idempotency keys, WAL mode.

- ``events.position`` is the global position, assigned by the single writer: 1, 2, 3, ... gap-free.
- ``UNIQUE(stream, version)``: per-stream versions, checked by SQLite as a last line of defence.
- ``idempotency`` rows are written in the same transaction as the events the command produced.
- :class:`EventLog` is the write side (one connection, owned by the writer, plus an OS lock file so
  that a second writer *process* fails fast); :class:`LogReader` is a read-only connection for
  catch-up reads, so readers never queue behind a commit.

One batch = one statement = one transaction: ``INSERT INTO append_batch (events, keys) VALUES (?, ?)``
with the batch's events and idempotency keys as two JSON arrays; an ``INSTEAD OF`` trigger on that view
inserts both with ``json_each``, and autocommit makes the statement its own durable transaction. Reads
of a chunk are one statement too, returning the chunk as one JSON array (``json_group_array``).

Why one statement: every ``sqlite3_step`` releases the GIL and must win it back from the event loop's
thread. ``executemany`` steps once per row, ``fetchall`` once per row; when the loop is busy (queries
over the socket) each re-acquisition waits up to ``sys.getswitchinterval()`` (5 ms), and a 1,000-row
batch took 1.2 s instead of 3 ms (measured here). One step per batch makes that one wait, not 1,000;
it is also one aiosqlite thread hop (~50 us) per batch instead of three.
"""

from __future__ import annotations

import asyncio
import fcntl
import operator
import os
import sqlite3
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, Literal, TypeVar, final

import aiosqlite
import anyio
import orjson

from ._errors import LogCorrupted, NotALog, PersistenceError, ReadOnlyStorage, WriterLocked, translate_sqlite_error
from ._gc import gc_paused
from ._messages import RecordedEvent, TypeRegistry

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

__all__ = ["EventLog", "EventRow", "KeyRow", "LogReader", "LogScanner", "StoredKey"]

T = TypeVar("T")

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

# position, stream, version, type, schema, data (the event: a dataclass or JSON-native), command_id,
# idempotency_key, recorded_at -- serialised to JSON by orjson, all rows of a batch at once
EventRow = tuple[int, str, int, str, int, object, str, str | None, float]
# key, fingerprint, position
KeyRow = tuple[str, str, int]

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
    recorded_at     REAL    NOT NULL,
    UNIQUE (stream, version)
);
CREATE TABLE IF NOT EXISTS idempotency (
    key         TEXT PRIMARY KEY,
    fingerprint TEXT    NOT NULL,
    position    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE VIEW IF NOT EXISTS append_batch (events, keys) AS SELECT NULL, NULL;
CREATE TRIGGER IF NOT EXISTS append_batch_insert INSTEAD OF INSERT ON append_batch BEGIN
    INSERT INTO events (position, stream, version, type, schema, data, command_id, idempotency_key, recorded_at)
        SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6,
               value ->> 7, value ->> 8
        FROM json_each(NEW.events);
    INSERT INTO idempotency (key, fingerprint, position)
        SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(NEW.keys);
END;
INSERT OR IGNORE INTO meta (name, value) VALUES ('format', 'soloist-log/1');  -- _FORMAT
INSERT OR IGNORE INTO meta (name, value) VALUES ('log_id', lower(hex(randomblob(16))));
"""

_FORMAT: Final = "soloist-log/1"
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
_MIN_SQLITE: Final = (3, 38, 0)  # the ->> operator used by the append trigger
_APPEND: Final = "INSERT INTO append_batch (events, keys) VALUES (?, ?)"
_SELECT_ROWS: Final = (
    "SELECT position, stream, version, type, schema, data, command_id, idempotency_key, recorded_at "
    "FROM events WHERE position > ? ORDER BY position LIMIT ?"
)
# A chunk as ONE row holding a JSON array of rows (one step, see the module docstring). The event body
# is embedded as JSON (json(data)); recorded_at goes through %!.17g so the double round-trips exactly.
_CHUNK_COLUMNS: Final = (
    "json_group_array(json_array(position, stream, version, type, schema, json(data), command_id, "
    "idempotency_key, json(printf('%!.17g', recorded_at))))"
)
_SELECT_FROM: Final = (
    f"SELECT {_CHUNK_COLUMNS} FROM (SELECT * FROM events WHERE position > ? ORDER BY position LIMIT ?)"
)
_SELECT_STREAM: Final = f"SELECT {_CHUNK_COLUMNS} FROM (SELECT * FROM events WHERE stream = ? ORDER BY version)"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredKey:
    fingerprint: str
    position: int


def decode_chunk(text: str | bytes | None, events: TypeRegistry) -> list[RecordedEvent]:
    """One chunk (a JSON array of rows, see ``_SELECT_FROM``) -> recorded events, in position order."""
    if not text:
        return []
    decode = events.decode_trusted
    make = RecordedEvent  # positional: the fields are in the row's order, minus the schema column
    with gc_paused():
        rows = orjson.loads(text)
        # json_group_array keeps the subquery's order in practice, but SQLite does not promise it:
        # sorting an already sorted list is one C pass.
        rows.sort(key=_first)
        return [
            make(position, stream, version, type_name, decode(type_name, data), recorded_at, command_id, key, schema)
            for position, stream, version, type_name, schema, data, command_id, key, recorded_at in rows
        ]


_first = operator.itemgetter(0)


def decode_rows(rows: Sequence[tuple[Any, ...]], events: TypeRegistry) -> list[RecordedEvent]:
    """Plain rows (``_SELECT_ROWS``) -> recorded events."""
    decode = events.decode_trusted
    loads = orjson.loads
    make = RecordedEvent
    with gc_paused():
        return [
            make(
                position,
                stream,
                version,
                type_name,
                decode(type_name, loads(data)),
                recorded_at,
                command_id,
                key,
                schema,
            )
            for position, stream, version, type_name, schema, data, command_id, key, recorded_at in rows
        ]


def check_contiguous(path: Path, after: int, events: Sequence[RecordedEvent]) -> None:
    """A chunk read after ``after`` must hold positions after+1, after+2, ... with no gap."""
    first, last = events[0].position, events[-1].position
    if first != after + 1 or last != first + len(events) - 1:
        raise LogCorrupted(
            f"{path}: positions after {after} are not contiguous (expected {after + 1}, "
            f"found {first}..{last} in {len(events)} rows); the log was edited by hand"
        )


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


async def _check_is_log(conn: aiosqlite.Connection, path: Path) -> None:
    """An SQLite file with tables must be a soloist log (``meta.format``); an empty one becomes one."""
    tables = sorted(
        str(row[0]) for row in await conn.execute_fetchall("SELECT name FROM sqlite_schema WHERE type = 'table'")
    )
    if not tables:
        return
    found = None
    if "meta" in tables:
        rows = list(await conn.execute_fetchall("SELECT value FROM meta WHERE name = 'format'"))
        found = str(rows[0][0]) if rows else None
    if found != _FORMAT:
        shown = ", ".join(tables[:10]) + (", ..." if len(tables) > 10 else "")
        why = f"its meta table says format {found!r}" if found is not None else f"it holds other tables ({shown})"
        raise NotALog(str(path), f"an SQLite database, but {why}, not {_FORMAT!r}")


async def _connect(path: Path, *, read_only: bool, synchronous: Synchronous) -> aiosqlite.Connection:
    conn: aiosqlite.Connection | None = None
    try:
        if read_only:
            conn = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            await conn.execute("PRAGMA query_only = ON")
        else:
            # autocommit: each append is one INSERT statement, which is its own transaction
            conn = await aiosqlite.connect(path, check_same_thread=False, isolation_level=None)
            await _check_is_log(conn, path)
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute(f"PRAGMA synchronous = {synchronous}")
            # Measured here: checkpointing every 10k pages instead of 1k gave 1.6x in steady state.
            await conn.execute("PRAGMA wal_autocheckpoint = 10000")
        await conn.execute("PRAGMA busy_timeout = 5000")
        await conn.execute("PRAGMA cache_size = -65536")  # 64 MiB
        return conn
    except BaseException as exc:
        # aiosqlite runs each connection on a non-daemon thread: one left open keeps the process alive
        # after its error was reported (the hang of `serve --db junk.db`), so close it before raising.
        if conn is not None:
            with anyio.move_on_after(10, shield=True):
                await conn.close()
        if isinstance(exc, sqlite3.Error):
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_NOTADB:
                raise NotALog(str(path), f"SQLite says {exc}") from exc
            raise translate_sqlite_error(exc, what=f"opening the event log {path}") from exc
        raise


@final
class EventLog:
    """The write side of the log. Only the writer calls ``append``; a lock file keeps other processes out."""

    def __init__(self, path: str | os.PathLike[str], *, synchronous: Synchronous = "FULL") -> None:
        self.path = Path(path)
        self._synchronous: Synchronous = synchronous
        self._conn: aiosqlite.Connection | None = None
        self._lock_file: IO[bytes] | None = None
        self.log_id = ""  # random id made when the file was created: checkpoints name the log they belong to
        # a replica's log copies another log: the id of that log, recorded on first contact (None: not yet)
        self.upstream_log_id: str | None = None

    async def open(self) -> None:
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise PersistenceError(
                f"this Python's SQLite is {sqlite3.sqlite_version}; the event log needs "
                f"{'.'.join(map(str, _MIN_SQLITE))} or newer (JSON ->> operators); use a Python built against a "
                "newer SQLite"
            )
        check_log_file(self.path)
        self._acquire_lock()
        try:
            self._conn = await _connect(self.path, read_only=False, synchronous=self._synchronous)
            try:
                await self._conn.executescript(_SCHEMA)
                await self._conn.commit()
                self.log_id = await self._meta("log_id") or ""
                self.upstream_log_id = await self._meta("upstream_log_id")
            except sqlite3.Error as exc:
                raise translate_sqlite_error(exc, what=f"creating the schema of {self.path}") from exc
        except BaseException:
            await self.aclose()
            raise

    async def _meta(self, name: str) -> str | None:
        rows = list(await self._c.execute_fetchall("SELECT value FROM meta WHERE name = ?", (name,)))
        return str(rows[0][0]) if rows else None

    async def set_upstream_log_id(self, log_id: str) -> None:
        """Record (durably) that this log is a copy of the log ``log_id``: a replica's first contact."""
        try:
            await self._c.execute_fetchall(
                "INSERT OR REPLACE INTO meta (name, value) VALUES ('upstream_log_id', ?)", (log_id,)
            )
        except sqlite3.Error as exc:
            raise translate_sqlite_error(exc, what=f"recording the upstream log id in {self.path}") from exc
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
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                with anyio.move_on_after(10, shield=True):  # closing must survive a cancelled caller
                    await conn.close()
        finally:
            if self._lock_file is not None:
                self._lock_file.close()  # closing the descriptor releases the flock
                self._lock_file = None

    async def __aenter__(self) -> EventLog:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def _c(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise PersistenceError(f"the event log {self.path} is not open; use `async with EventLog(...)`")
        return self._conn

    async def append(self, rows: Sequence[EventRow], keys: Sequence[KeyRow] = ()) -> None:
        """Append a batch of events (and the idempotency keys they answer) in one durable transaction."""
        conn = self._c
        try:
            payload = (orjson.dumps(rows), orjson.dumps(keys))
        except TypeError as exc:
            raise PersistenceError(f"an event of the batch cannot be encoded as JSON: {exc}") from exc
        try:
            await conn.execute_fetchall(_APPEND, payload)  # one statement: one step, one hop, one commit
        except sqlite3.Error as exc:
            raise translate_sqlite_error(exc, what=f"appending {len(rows)} events to {self.path}") from exc

    async def set_pragma(self, name: str, value: int | str) -> None:
        """Set a pragma on the write connection (e.g. ``max_page_count`` to cap the file's size)."""
        if not name.isidentifier() or not (isinstance(value, int) or str(value).isidentifier()):
            raise ValueError(f"bad pragma {name!r} = {value!r}")
        try:
            await self._c.execute(f"PRAGMA {name} = {value}")
        except sqlite3.Error as exc:
            raise translate_sqlite_error(exc, what=f"PRAGMA {name} on {self.path}") from exc

    async def page_count(self) -> int:
        async with self._c.execute("PRAGMA page_count") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row is not None else 0

    async def head(self) -> int:
        """The last committed global position (0 for an empty log)."""
        async with self._c.execute("SELECT COALESCE(MAX(position), 0) FROM events") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row is not None else 0

    async def keys(self) -> dict[str, StoredKey]:
        """Every idempotency key with its fingerprint and position (loaded once, at recovery)."""
        rows = await self._c.execute_fetchall("SELECT key, fingerprint, position FROM idempotency")
        return {k: StoredKey(fingerprint=f, position=p) for k, f, p in rows}


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
