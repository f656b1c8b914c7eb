"""The PostgreSQL adapter of the event store port (asyncpg), fenced by a lease.

Layout: one schema of its own (``soloist`` unless told otherwise) holding ``meta`` (format, log id),
``events``, ``keys`` (idempotency) and ``lease`` (one row). Created on ``open`` if the schema is absent
or empty; a schema that holds tables but is not a soloist log is refused.

Gap-free by construction. Positions are assigned by the writer, not by a sequence: readers of
sequence-based stores skip events when transactions commit out of order (a bug class several event
stores shipped). A batch is ONE statement, hence one transaction: ``INSERT ... SELECT FROM unnest(...)``
for the events and the idempotency keys, ``UNIQUE (stream, version)``, and a check that the batch starts
right after the committed head. Bodies are ``bytea`` holding the JSON as the writer encoded it: no
server-side JSON parsing on the hot path.

Fencing. The ``lease`` row holds a monotonic ``epoch``, a ``holder`` and ``expires_at`` (server clock;
no client clock is trusted). ``acquire_lease`` takes the row only if it is free or expired, and bumps the
epoch. Every append is a single statement whose first CTE renews the lease *if and only if* it is still
this store's epoch and unexpired; the inserts run only if that UPDATE hit the row. Row locking makes a
concurrent takeover and an append serialise: whichever commits second re-reads the row and sees the other's
write. So a writer that lost its lease (paused past its TTL, partitioned, taken over) can never append
again under that epoch: it gets :class:`Fenced`. Advisory locks are not used for this: they vanish with a
backend while the old holder may still believe it leads.

Connections: one for the writer (appends and the lease), a small pool for reads, so catch-up reads never
queue behind a commit. Driver errors are translated to the one error tree, never leaked.
"""

from __future__ import annotations

import asyncio
import math
import urllib.parse
from typing import TYPE_CHECKING, Final, NoReturn, cast, final

import anyio
import asyncpg
import structlog

from ._errors import (
    ConcurrencyError,
    Fenced,
    LogCorrupted,
    NotALog,
    PersistenceError,
    ReadOnlyStorage,
    StorageFull,
)
from ._log import StoredRow, decode_rows, replay_reads
from ._store import EventRow, Forget, KeyRow, StoredKey

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from ._messages import RecordedEvent, TypeRegistry

__all__ = ["PostgresStore", "describe_dsn", "translate_postgres_error"]

FORMAT: Final = "soloist-log/1"
_TABLES: Final = frozenset({"meta", "events", "keys", "lease"})

_log = structlog.get_logger("soloist.postgres")

_DDL: Final = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE {s}.meta (
    name  text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE {s}.events (
    position        bigint           PRIMARY KEY,
    stream          text             NOT NULL,
    version         bigint           NOT NULL,
    type            text             NOT NULL,
    schema          integer          NOT NULL,
    data            bytea            NOT NULL,
    command_id      text             NOT NULL,
    idempotency_key text,
    recorded_at     double precision NOT NULL,
    UNIQUE (stream, version)
);
{keys}
CREATE TABLE {s}.lease (
    id         boolean     PRIMARY KEY DEFAULT true CHECK (id),
    epoch      bigint      NOT NULL,
    holder     text        NOT NULL,
    expires_at timestamptz NOT NULL
);
INSERT INTO {s}.meta (name, value) VALUES ('format', '{format}'), ('log_id', replace(gen_random_uuid()::text, '-', ''));
INSERT INTO {s}.lease (epoch, holder, expires_at) VALUES (0, '', '-infinity');
"""
# Idempotency keys in commit order (`id`), with no index on the key: the writer owns their uniqueness in
# memory, and deletes the oldest once `key_ttl` has passed (as the SQLite log; see runtime/_log.py).
_KEYS_TABLE: Final = """
CREATE TABLE {s}.{name} (
    id          bigint           GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key         text             NOT NULL,
    fingerprint text             NOT NULL,
    position    bigint           NOT NULL,
    command_id  text             NOT NULL,
    recorded_at double precision NOT NULL
);"""
# A log whose keys were keyed by the key (before keys expired): rebuilt in position order; the keys already
# there get the time of this upgrade (they had none), so that each is kept one more whole key_ttl, never less.
_MIGRATE_KEY_LOG: Final = """
INSERT INTO {s}.keys_log (key, fingerprint, position, command_id, recorded_at)
    SELECT key, fingerprint, position, command_id, extract(epoch FROM now()) FROM {s}.keys ORDER BY position, key;
DROP TABLE {s}.keys;
ALTER TABLE {s}.keys_log RENAME TO keys;
"""

# One statement per batch. `lease` renews this writer's lease iff it is still current; `ok` adds the
# gap check (the batch starts right after the committed head); the inserts and the deletion of the $18
# oldest keys recorded before $19 run only if `ok` has a row (the deletion sees the statement's snapshot:
# never the new keys).
# The outer SELECT tells the two failures apart: no lease row -> Fenced, lease but no `ok` -> a gap.
_APPEND: Final = """
WITH lease AS (
    UPDATE {s}.lease SET expires_at = now() + $10::float8 * interval '1 second'
    WHERE epoch = $11 AND expires_at > now()
    RETURNING epoch
), ok AS (
    SELECT 1 FROM lease
    WHERE $12::bigint IS NULL OR $12::bigint = (SELECT coalesce(max(position), 0) FROM {s}.events)
), ev AS (
    INSERT INTO {s}.events (position, stream, version, type, schema, data, command_id, idempotency_key, recorded_at)
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::integer[], $6::bytea[],
                         $7::text[], $8::text[], $9::float8[])
    WHERE EXISTS (SELECT 1 FROM ok)
), gone AS (
    DELETE FROM {s}.keys
    WHERE id IN (SELECT id FROM {s}.keys WHERE recorded_at < $19::float8 ORDER BY id LIMIT $18::bigint)
    AND EXISTS (SELECT 1 FROM ok)
), k AS (
    INSERT INTO {s}.keys (key, fingerprint, position, command_id, recorded_at)
    SELECT k, f, p, c, t
    FROM unnest($13::text[], $14::text[], $15::bigint[], $16::text[], $17::float8[])
         WITH ORDINALITY AS u(k, f, p, c, t, n)
    WHERE EXISTS (SELECT 1 FROM ok)
    ORDER BY n
)
SELECT (SELECT count(*) FROM lease), (SELECT count(*) FROM ok)
"""
_ACQUIRE: Final = """
UPDATE {s}.lease SET epoch = epoch + 1, holder = $1, expires_at = now() + $2::float8 * interval '1 second'
WHERE expires_at <= now()
RETURNING epoch
"""
_RENEW: Final = """
UPDATE {s}.lease SET expires_at = now() + $1::float8 * interval '1 second'
WHERE epoch = $2 AND expires_at > now()
RETURNING epoch
"""
_RELEASE: Final = "UPDATE {s}.lease SET expires_at = '-infinity' WHERE epoch = $1"
_LEASE_STATE: Final = "SELECT epoch, holder, expires_at, expires_at > now() FROM {s}.lease"
_COLUMNS: Final = "position, stream, version, type, schema, data, command_id, idempotency_key, recorded_at"
_READ: Final = f"SELECT {_COLUMNS} FROM {{s}}.events WHERE position > $1 ORDER BY position LIMIT $2"
_READ_STREAM: Final = f"SELECT {_COLUMNS} FROM {{s}}.events WHERE stream = $1 ORDER BY version"
_HEAD: Final = "SELECT coalesce(max(position), 0) FROM {s}.events"
_KEYS: Final = "SELECT key, fingerprint, position, command_id, recorded_at FROM {s}.keys ORDER BY id"


def _rows(records: list[asyncpg.Record]) -> Sequence[StoredRow]:
    """asyncpg's records unpack like the stored rows' tuples (same columns, same order: ``_COLUMNS``)."""
    return cast("Sequence[StoredRow]", records)


def describe_dsn(dsn: str) -> str:
    """``host:port/database`` of a DSN, for messages (never the password)."""
    parts = urllib.parse.urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        return "the server of the given DSN"
    try:
        port = parts.port or 5432
    except ValueError:
        port = 5432
    return f"{parts.hostname or 'localhost'}:{port}{parts.path or '/'}"


def translate_postgres_error(exc: BaseException, *, what: str, where: str) -> PersistenceError | ConcurrencyError:
    """Map an asyncpg (or socket) error to the one tree, keeping the server's words in the message."""
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate
        detail = f"{what} on {where} failed: {exc} (SQLSTATE {state})"
        if state == "23505":  # unique_violation
            return ConcurrencyError(
                f"{detail}; {getattr(exc, 'detail', '') or ''} another writer appended or the writer's state is "
                "stale: restart it so that it recovers from the log"
            )
        if state == "53100":
            return StorageFull(detail + "; free disk space on the PostgreSQL server and retry")
        if state in ("25006", "42501"):
            return ReadOnlyStorage(
                detail + "; connect to the primary (not a standby) as a role that may write the log's schema"
            )
        if state == "3D000":
            return PersistenceError(detail + "; create the database (createdb NAME) or fix the DSN")
        if state.startswith("28"):
            return PersistenceError(detail + "; fix the user/password in the DSN or pg_hba.conf")
        if state.startswith("08") or state.startswith("57P"):
            return PersistenceError(
                detail + "; the connection was lost: an append in flight may or may not have committed, "
                "the log is the truth (restart the writer so that it recovers from it)"
            )
        return PersistenceError(detail)
    if isinstance(exc, OSError | TimeoutError):
        return PersistenceError(
            f"{what}: cannot reach PostgreSQL at {where}: {exc!r}; start the server (e.g. "
            "`pg_ctlcluster 15 main start`) or fix the host/port in the DSN"
        )
    return PersistenceError(
        f"{what} on {where} failed: {exc!r}; the connection is unusable: an append in flight may or may not have "
        "committed, the log is the truth (restart the writer so that it recovers from it)"
    )


_DRIVER_ERRORS: Final = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


@final
class PostgresStore:
    """The event store port and the :class:`~._store.Lease` over one PostgreSQL schema."""

    def __init__(
        self,
        dsn: str,
        events: TypeRegistry,
        *,
        schema: str = "soloist",
        read_connections: int = 2,
        connect_timeout: float = 10.0,
        create: bool = True,
    ) -> None:
        """``create=False``: a reader of someone else's log (a replica's ``--upstream-db``), which must never
        create a log where there is none: an empty schema is :class:`NotALog` instead."""
        if not schema.isidentifier() or schema.lower() != schema:
            raise ValueError(f"schema {schema!r}: use a lower-case identifier such as 'soloist'")
        self._dsn = dsn
        self._events = events
        self._schema = schema
        self._read_connections = read_connections
        self._connect_timeout = connect_timeout
        self._create = create
        self.where = f"{describe_dsn(dsn)} schema {schema}"
        self._conn: asyncpg.Connection | None = None
        # one operation at a time on the writer's connection (asyncpg refuses overlapping ones): an append
        # and the lease's renewal may be due at the same moment
        self._conn_lock = asyncio.Lock()
        self._pool: asyncpg.Pool | None = None
        self._epoch: int | None = None
        self._holder = ""
        self._ttl = 0.0
        self.log_id = ""
        s = f'"{schema}"'  # quoted: a schema named like a keyword still works
        self._sql_append = _APPEND.format(s=s)
        self._sql_acquire = _ACQUIRE.format(s=s)
        self._sql_renew = _RENEW.format(s=s)
        self._sql_release = _RELEASE.format(s=s)
        self._sql_lease_state = _LEASE_STATE.format(s=s)
        self._sql_read = _READ.format(s=s)
        self._sql_read_stream = _READ_STREAM.format(s=s)
        self._sql_head = _HEAD.format(s=s)
        self._sql_keys = _KEYS.format(s=s)

    def _translate(self, exc: BaseException, what: str) -> PersistenceError | ConcurrencyError:
        return translate_postgres_error(exc, what=what, where=self.where)

    # -- life cycle ---------------------------------------------------------------------------------------

    async def _connect(self) -> asyncpg.Connection:
        try:
            return await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
        except _DRIVER_ERRORS as exc:
            raise self._translate(exc, "connecting") from exc

    async def open(self) -> None:
        try:
            self._conn = await self._connect()
            await self._create_schema(self._conn)
            try:
                self._pool = await asyncpg.create_pool(
                    self._dsn, min_size=1, max_size=self._read_connections, timeout=self._connect_timeout
                )
            except _DRIVER_ERRORS as exc:
                raise self._translate(exc, "opening the read pool") from exc
        except BaseException:
            await self.aclose()
            raise

    async def _create_schema(self, conn: asyncpg.Connection) -> None:
        name = self._schema
        s = f'"{name}"'
        try:
            async with conn.transaction():
                # Two stores opening a new log at once: the second waits here, then sees the tables.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"soloist-schema:{name}")
                tables = {
                    r[0]
                    for r in await conn.fetch(
                        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", name
                    )
                }
                if not tables and not self._create:
                    raise NotALog(
                        self.where,
                        f"schema {name!r} holds no tables (a reader of the log creates none)",
                        fix="point --upstream-db at the database its writer's --db names",
                    )
                if not tables:
                    await conn.execute(_DDL.format(s=s, format=FORMAT, keys=_KEYS_TABLE.format(s=s, name="keys")))
                elif not tables >= _TABLES:
                    raise LogCorrupted(
                        f"{self.where} holds tables {sorted(tables)} but not a soloist log (which has "
                        f"{sorted(_TABLES)}); pass another schema= or database, or drop that schema"
                    )
                elif self._create and not await conn.fetchval(
                    "SELECT count(*) FROM information_schema.columns "
                    "WHERE table_schema = $1 AND table_name = 'keys' AND column_name = 'id'",
                    name,
                ):
                    await conn.execute(_KEYS_TABLE.format(s=s, name="keys_log") + _MIGRATE_KEY_LOG.format(s=s))
                meta = {str(r[0]): str(r[1]) for r in await conn.fetch(f"SELECT name, value FROM {s}.meta")}
        except _DRIVER_ERRORS as exc:
            raise self._translate(exc, "creating the log's schema") from exc
        if meta.get("format") != FORMAT or not meta.get("log_id"):
            raise LogCorrupted(
                f"{self.where} is not a {FORMAT} log (meta says format={meta.get('format')!r}, "
                f"log_id={meta.get('log_id')!r}); pass another schema= or database"
            )
        self.log_id = meta["log_id"]

    async def aclose(self) -> None:
        """Release the lease (a successor need not wait for its TTL), then close the connections."""
        if self._epoch is not None:
            with anyio.move_on_after(5, shield=True):
                try:
                    await self.release_lease()
                except PersistenceError as exc:  # closing anyway: the lease expires by itself
                    _log.warning("lease_release_failed", where=self.where, error=str(exc))
        self._epoch = None
        conn, self._conn = self._conn, None
        pool, self._pool = self._pool, None
        with anyio.move_on_after(10, shield=True):  # closing must survive a cancelled caller
            if conn is not None:
                try:
                    await conn.close()
                except _DRIVER_ERRORS:
                    conn.terminate()
            if pool is not None:
                try:
                    await pool.close()
                except _DRIVER_ERRORS:
                    pool.terminate()

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _writer(self) -> asyncpg.Connection:
        """The writer's connection, reconnected if the last one died (the lease keeps that safe)."""
        conn = self._conn
        if conn is None:
            if self._pool is None:
                raise PersistenceError(f"the event store {self.where} is not open; use `async with PostgresStore(...)`")
            conn = self._conn = await self._connect()
        elif conn.is_closed():
            self._conn = None
            conn = self._conn = await self._connect()
        return conn

    def _readers(self) -> asyncpg.Pool:
        if self._pool is None:
            raise PersistenceError(f"the event store {self.where} is not open; use `async with PostgresStore(...)`")
        return self._pool

    # -- the lease ----------------------------------------------------------------------------------------

    @property
    def epoch(self) -> int | None:
        return self._epoch

    async def acquire_lease(self, holder: str, ttl: float) -> int | None:
        if not (ttl > 0 and math.isfinite(ttl)):
            raise ValueError(f"lease ttl must be a positive number of seconds, got {ttl!r}")
        try:
            async with self._conn_lock:
                epoch = await (await self._writer()).fetchval(self._sql_acquire, holder, ttl)
        except _DRIVER_ERRORS as exc:
            raise self._translate(exc, f"acquiring the lease for {holder!r}") from exc
        if epoch is None:
            return None
        self._epoch, self._holder, self._ttl = int(epoch), holder, ttl
        _log.info("lease_acquired", where=self.where, holder=holder, epoch=self._epoch, ttl=ttl)
        return self._epoch

    async def wait_for_lease(self, holder: str, ttl: float, *, poll: float = 1.0) -> int:
        logged = False
        while (epoch := await self.acquire_lease(holder, ttl)) is None:
            if not logged:
                current, current_holder, expires_at, _ = await self._lease_state()
                _log.info(
                    "lease_wait",
                    where=self.where,
                    holder=holder,
                    current_holder=current_holder,
                    current_epoch=current,
                    expires_at=str(expires_at),
                )
                logged = True
            await anyio.sleep(poll)  # time is the behaviour: the other holder's lease must expire
        return epoch

    async def renew_lease(self) -> None:
        epoch = self._require_epoch("renew the lease")
        try:
            async with self._conn_lock:
                renewed = await (await self._writer()).fetchval(self._sql_renew, self._ttl, epoch)
        except _DRIVER_ERRORS as exc:
            raise self._translate(exc, "renewing the lease") from exc
        if renewed is None:
            raise await self._fenced("renew the lease")

    async def keep_lease(self, *, every: float | None = None) -> NoReturn:
        """Renew the lease every ``every`` seconds (a third of the TTL by default) while the writer is idle.

        Run it in the writer's task group; it raises :class:`Fenced` as soon as the lease is lost.
        """
        self._require_epoch("keep the lease")
        while True:
            await anyio.sleep(every if every is not None else self._ttl / 3)
            await self.renew_lease()

    async def release_lease(self) -> None:
        epoch, self._epoch = self._epoch, None
        if epoch is None or self._conn is None or self._conn.is_closed():
            return
        try:
            async with self._conn_lock:
                await self._conn.execute(self._sql_release, epoch)
        except _DRIVER_ERRORS as exc:
            raise self._translate(exc, "releasing the lease") from exc
        _log.info("lease_released", where=self.where, holder=self._holder, epoch=epoch)

    async def lease_holder(self) -> str:
        _, holder, _, live = await self._lease_state()
        return holder if live else ""

    def _require_epoch(self, what: str) -> int:
        if self._epoch is None:
            raise Fenced(
                f"cannot {what} on {self.where}: this store holds no lease; call wait_for_lease(holder, ttl) "
                "before writing"
            )
        return self._epoch

    async def _lease_state(self) -> tuple[int, str, object, bool]:
        try:
            row = await self._readers().fetchrow(self._sql_lease_state)
        except _DRIVER_ERRORS as exc:
            raise self._translate(exc, "reading the lease") from exc
        if row is None:
            raise LogCorrupted(f"{self.where}: the lease row is missing; the log's schema was edited by hand")
        return int(row[0]), str(row[1]), row[2], bool(row[3])

    async def _fenced(self, what: str) -> Fenced:
        mine = self._epoch
        epoch, holder, expires_at, live = await self._lease_state()
        state = (
            f"held by {holder!r} until {expires_at}" if live else f"expired at {expires_at} (last holder {holder!r})"
        )
        _log.error("lease_lost", where=self.where, holder=self._holder, epoch=mine, current_epoch=epoch, current=holder)
        return Fenced(
            f"this writer ({self._holder!r}, epoch {mine}) lost its lease on {self.where} and could not {what}: the "
            f"lease is at epoch {epoch}, {state}; nothing was appended. Stop this writer, or restart it so that it "
            "waits for the lease and recovers from the log",
            epoch=epoch,
            holder=holder,
        )

    # -- the port -----------------------------------------------------------------------------------------

    async def append(self, rows: Sequence[EventRow], keys: Sequence[KeyRow] = (), forget: Forget | None = None) -> None:
        self._readers()  # raises if the store is not open
        epoch = self._require_epoch(f"append {len(rows)} events")
        first: int | None = None
        if rows:
            first = rows[0][0]
            if rows[-1][0] != first + len(rows) - 1 or any(row[0] != first + i for i, row in enumerate(rows)):
                raise PersistenceError(
                    f"refusing a batch whose positions are not consecutive ({[r[0] for r in rows[:10]]}...); "
                    "the writer must assign positions head+1, head+2, ... (a bug in the caller)"
                )
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in range(9)]
        key_columns = list(zip(*keys, strict=True)) if keys else [() for _ in range(5)]
        try:
            async with self._conn_lock:
                counts = await (await self._writer()).fetchrow(
                    self._sql_append,
                    *columns,
                    self._ttl,
                    epoch,
                    None if first is None else first - 1,
                    *key_columns,
                    0 if forget is None else forget.limit,
                    0.0 if forget is None else forget.before,
                )
        except _DRIVER_ERRORS as exc:
            raise self._translate(exc, f"appending {len(rows)} events") from exc
        hit, ok = (0, 0) if counts is None else (counts[0], counts[1])
        if not hit:
            raise await self._fenced(f"append {len(rows)} events")
        if not ok:
            head = await self.head()
            raise ConcurrencyError(
                f"{self.where}: the batch starts at position {first} but the log's head is {head}; the writer's "
                "state is stale or another writer appended: restart it so that it recovers from the log"
            )

    async def read(self, after: int, limit: int = 2000) -> list[RecordedEvent]:
        try:
            records = await self._readers().fetch(self._sql_read, after, limit)
        except _DRIVER_ERRORS as exc:
            raise self._translate(exc, f"reading after position {after}") from exc
        return decode_rows(_rows(records), self._events)

    def replay(self, after: int, upto: int) -> AsyncIterator[list[RecordedEvent]]:
        return replay_reads(self.read, self.where, after, upto, 4000)

    async def read_stream(self, stream: str) -> list[RecordedEvent]:
        try:
            records = await self._readers().fetch(self._sql_read_stream, stream)
        except _DRIVER_ERRORS as exc:
            raise self._translate(exc, f"reading stream {stream!r}") from exc
        return decode_rows(_rows(records), self._events)

    async def head(self) -> int:
        try:
            return int(await self._readers().fetchval(self._sql_head))
        except _DRIVER_ERRORS as exc:
            raise self._translate(exc, "reading the head") from exc

    async def keys(self) -> dict[str, StoredKey]:
        try:
            records = await self._readers().fetch(self._sql_keys)
        except _DRIVER_ERRORS as exc:
            raise self._translate(exc, "reading the idempotency keys") from exc
        return {
            key: StoredKey(fingerprint, position, command_id, at)
            for key, fingerprint, position, command_id, at in records
        }
