"""The event store port: what the writer, the replicas and recovery need from a log, and nothing more.

Three adapters implement it (one contract suite, ``tests/store/contract.py``, runs against each):

- SQLite (``_sqlitestore.SQLiteStore``, today's :mod:`._log`): one file, WAL; one writer per file is
  enforced by ``flock``.
- PostgreSQL (``_postgres.PostgresStore``): one writer per log is enforced by a *lease* with a
  monotonic epoch that every append checks in its own transaction, so it also implements :class:`Lease`.
- In memory (``_memstore.MemoryStore``): for fast tests and fault injection.

The rules every adapter keeps:

- ``append`` is one transaction: every event and every idempotency key of the batch, or nothing.
- Positions are assigned by the (single) writer, 1, 2, 3, ... and are never reused; a row whose
  position or ``(stream, version)`` is already taken makes the whole batch fail with
  :class:`~._errors.ConcurrencyError`.
- ``read(after, limit)`` returns the events with a position above ``after`` in position order, at most
  ``limit`` of them; ``read_stream`` returns one stream by version.
- ``log_id`` is a random id made when the log was created: it survives reopening, and checkpoints and
  followers name the log they belong to with it.
- Driver errors never leak: they are translated to :class:`~._errors.PersistenceError` and its subclasses.

Event bodies cross the port as JSON bytes on the way in: the writer encodes each event once and the
adapters store the bytes as they are. On the way out every adapter hands its rows to the one row decoder
(``_log.decode_rows``) with the :class:`~._messages.TypeRegistry` of events it was built with, which builds
the domain events (upcasting older schema versions); an empty registry (``TypeRegistry("event")``) keeps
plain JSON values, for tools and logs whose types this process lacks.

:func:`open_store` picks the adapter from what the user gave: a ``postgresql://`` / ``postgres://`` URL,
or a path (SQLite).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NamedTuple, NoReturn, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from ._log import Synchronous
    from ._messages import RecordedEvent, TypeRegistry

__all__ = [
    "EventRow",
    "EventStore",
    "Forget",
    "KeyRow",
    "Lease",
    "StoredKey",
    "describe_target",
    "is_postgres_url",
    "open_store",
]

# position, stream, version, type, schema, data (the event as JSON bytes, already encoded), command_id,
# idempotency_key, recorded_at (time.time())
EventRow = tuple[int, str, int, str, int, bytes, str, str | None, float]
# key, fingerprint, position, command_id of the command that used it, recorded_at (time.time() of its batch)
KeyRow = tuple[str, str, int, str, float]


class StoredKey(NamedTuple):
    """An idempotency key as the log holds it."""

    fingerprint: str
    position: int
    command_id: str
    recorded_at: float  # time.time() of the batch that stored it: the key is forgotten ``key_ttl`` after it


class Forget(NamedTuple):
    """Expired idempotency keys an append deletes: at most ``limit`` of the oldest (commit order), and only
    keys recorded before ``before``. The time bound makes a deletion safe to repeat: whatever an earlier,
    ambiguous append deleted, no key is ever deleted before its time."""

    limit: int
    before: float


class EventStore(Protocol):
    """The log, as the writer, the replicas and recovery see it."""

    log_id: str  # random id made when the log was created; empty until ``open`` returns
    where: str  # the log as a user names it in messages: a path, or a server and schema (no password)

    async def open(self) -> None:
        """Connect, create the log if it is absent, and read ``log_id``; refuse what is not a soloist log."""
        ...

    async def aclose(self) -> None:
        """Release connections and locks; safe to call twice and from a cancelled task."""
        ...

    async def append(self, rows: Sequence[EventRow], keys: Sequence[KeyRow] = (), forget: Forget | None = None) -> None:
        """Append the events of a batch and the idempotency keys they answer in one durable transaction, which
        first deletes the expired keys ``forget`` names (keys are kept in commit order; their uniqueness is the
        writer's: a store neither indexes nor checks them)."""
        ...

    async def read(self, after: int, limit: int = 2000) -> list[RecordedEvent]:
        """Up to ``limit`` events with a position above ``after``, in position order."""
        ...

    def replay(self, after: int, upto: int) -> AsyncIterator[list[RecordedEvent]]:
        """Every event above ``after`` up to position ``upto``, in chunks, gap-checked (:class:`LogCorrupted`):
        the start's one pass, before anything is served, as fast as the adapter reads."""
        ...

    async def read_stream(self, stream: str) -> list[RecordedEvent]:
        """Every event of one stream, by version."""
        ...

    async def head(self) -> int:
        """The last committed position (0 for an empty log)."""
        ...

    async def keys(self) -> dict[str, StoredKey]:
        """Every idempotency key of the log, in commit order (loaded once, at recovery)."""
        ...


@runtime_checkable
class Lease(Protocol):
    """Single-writer fencing for a log that several processes can reach (PostgreSQL).

    A SQLite log needs none (its writer holds ``flock`` on the file) and the in-memory one has a single
    owner. Once this store holds the lease, every ``append`` checks in its own transaction that the lease
    is still this store's and renews it; a writer that lost it (expired while it was paused, taken over
    by another writer) gets :class:`~._errors.Fenced` and appends nothing, ever, under that epoch.
    """

    @property
    def epoch(self) -> int | None:
        """The epoch this store holds (None before the lease is acquired)."""
        ...

    async def acquire_lease(self, holder: str, ttl: float) -> int | None:
        """Take the lease if it is free or expired: returns the new epoch, or None if another holds it."""
        ...

    async def wait_for_lease(self, holder: str, ttl: float, *, poll: float = 1.0) -> int:
        """Take the lease, waiting (and logging that it waits) while another writer holds it."""
        ...

    async def renew_lease(self) -> None:
        """Push the expiry of the held lease ``ttl`` seconds ahead; raises Fenced if it was lost."""
        ...

    async def keep_lease(self, *, every: float | None = None) -> NoReturn:
        """Renew the lease periodically while the writer is idle (run it in the writer's task group)."""
        ...

    async def release_lease(self) -> None:
        """Give the lease up (it expires now), so that a successor need not wait for the TTL."""
        ...

    async def lease_holder(self) -> str:
        """Who holds the lease now ("" if nobody: it expired or was released)."""
        ...


def is_postgres_url(target: str | os.PathLike[str]) -> bool:
    """Whether ``--db``/``App(domain, ...)`` names a PostgreSQL server rather than a SQLite file."""
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def describe_target(target: str | os.PathLike[str]) -> str:
    """The log as messages name it: a path, or a PostgreSQL URL without its password."""
    if is_postgres_url(target):
        from ._postgres import describe_dsn

        return describe_dsn(os.fspath(target))
    return os.fspath(target)


def open_store(
    target: str | os.PathLike[str],
    events: TypeRegistry,
    *,
    synchronous: Synchronous = "FULL",
) -> EventStore:
    """The adapter for ``target`` (not opened yet): PostgreSQL for a ``postgresql://`` URL, else SQLite.

    The adapters are imported here, so that a SQLite user never imports the PostgreSQL driver.
    """
    if is_postgres_url(target):
        from ._postgres import PostgresStore

        return PostgresStore(os.fspath(target), events)
    from ._sqlitestore import SQLiteStore

    return SQLiteStore(target, events, synchronous=synchronous)
