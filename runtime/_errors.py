"""The one error tree of soloist.

Every error a caller can see is a :class:`CQRSError`; each carries a stable wire ``code`` (see
``docs/protocol.md``) and a message that names the values involved and how to fix it::

    CQRSError
    ├── BadRequest            bad_request   a field is missing, unknown or of the wrong type
    │   └── UnknownType       unknown_type  no command/query/event of that type name is registered
    ├── DomainError           rejected      a business rule refused the command; the log is unchanged
    ├── NotFound              not_found     a query asked for something that does not exist
    ├── ConcurrencyError      conflict      a stream version or an idempotency key clash
    │   └── IdempotencyConflict             key reused with a different command
    ├── Overloaded            overloaded    the writer's queue is full; nothing was done, retry later
    ├── ConsistencyTimeout    timeout       a replica did not reach the asked position in time
    ├── NotWriter             unknown_op    commands sent to a read-only follower
    ├── ActorStopped          internal      the writer (or app) is closed or has died
    ├── InternalError         internal      domain code raised an exception it did not declare (a bug)
    └── PersistenceError      internal      the event log failed; nothing of the batch was acknowledged
        ├── StorageFull                     SQLITE_FULL: the disk (or max_page_count) is full
        ├── ReadOnlyStorage                 SQLITE_READONLY / permission denied
        ├── LogCorrupted                    the log breaks an invariant (gap, bad checksum)
        ├── WriterLocked                    another process owns this log's writer lock
        ├── NotALog                         the file is not SQLite, or an SQLite file of something else
        └── LogMismatch                     a replica's upstream serves another log than the one it follows

``MailboxFull`` is an alias of :class:`Overloaded` (the name the style guide uses).
"""

from __future__ import annotations

import sqlite3
from typing import ClassVar

__all__ = [
    "ActorStopped",
    "BadRequest",
    "CQRSError",
    "ConcurrencyError",
    "ConsistencyTimeout",
    "DomainError",
    "IdempotencyConflict",
    "InternalError",
    "LogCorrupted",
    "LogMismatch",
    "MailboxFull",
    "NotALog",
    "NotFound",
    "NotWriter",
    "Overloaded",
    "PersistenceError",
    "ReadOnlyStorage",
    "StorageFull",
    "UnknownType",
    "WriterLocked",
    "translate_sqlite_error",
]


class CQRSError(Exception):
    """Root of every error soloist raises on purpose."""

    code: ClassVar[str] = "internal"


class BadRequest(CQRSError):
    """A message is malformed: a field is missing, unknown or of the wrong type."""

    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(message if field is None else f"field {field!r}: {message}")


class UnknownType(BadRequest):
    """No message class is registered under the given type name."""

    code = "unknown_type"

    def __init__(self, kind: str, type_name: object, known: list[str]) -> None:
        self.kind = kind
        self.type_name = type_name
        shown = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
        CQRSError.__init__(self, f"unknown {kind} type {type_name!r}; known {kind} types: {shown}")
        self.field = "type"


class DomainError(CQRSError):
    """A business rule refused the command. Nothing was appended; the reason is readable."""

    code = "rejected"


class NotFound(CQRSError):
    """A query asked for something that does not exist."""

    code = "not_found"


class ConcurrencyError(CQRSError):
    """A stream version or idempotency key clashed with what the log already holds."""

    code = "conflict"


class IdempotencyConflict(ConcurrencyError):
    """An idempotency key was reused with a different command."""

    def __init__(self, key: str, position: int) -> None:
        self.key = key
        self.position = position
        super().__init__(
            f"idempotency key {key!r} was already used at position {position} by a different command; "
            "use a new key for a new command, or resend the original command unchanged"
        )


class Overloaded(CQRSError):
    """The writer's bounded queue is full. The command was not enqueued: nothing was done."""

    code = "overloaded"

    def __init__(self, capacity: int, waited: float | None = None) -> None:
        self.capacity = capacity
        how = "no room right now" if waited is None else f"no room within {waited:g} s"
        super().__init__(
            f"command queue is full ({capacity} commands waiting, {how}); nothing was done, retry later "
            "or raise queue_capacity"
        )


MailboxFull = Overloaded


class ConsistencyTimeout(CQRSError):
    """A replica did not reach the position a query asked for within its timeout."""

    code = "timeout"

    def __init__(self, wanted: int, reached: int, timeout: float) -> None:
        self.wanted = wanted
        self.reached = reached
        super().__init__(
            f"no replica reached position {wanted} within {timeout:g} s (best is at {reached}); "
            "retry, raise the timeout, or ask for eventual consistency"
        )


class NotWriter(CQRSError):
    """Commands were sent to a read-only follower."""

    code = "unknown_op"

    def __init__(self, writer: str) -> None:
        self.writer = writer
        super().__init__(f"this is a read-only replica; send commands to the writer at {writer}")


class ActorStopped(CQRSError):
    """The writer is closed (shutting down) or has died; the command was not taken."""

    code = "internal"


class InternalError(CQRSError):
    """Domain code raised an exception it did not declare: a bug. Only that command failed."""

    code = "internal"


class PersistenceError(CQRSError):
    """The event log failed. Nothing of the affected batch was acknowledged; memory was rolled back."""

    code = "internal"


class StorageFull(PersistenceError):
    """SQLite reported SQLITE_FULL: the disk or the database's max_page_count is exhausted."""


class ReadOnlyStorage(PersistenceError):
    """SQLite could not write: the file, directory or disk is read-only."""


class LogCorrupted(PersistenceError):
    """The log breaks one of its invariants (a gap in positions, a version out of order)."""


class WriterLocked(PersistenceError):
    """Another process holds the single-writer lock of this log."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"another process is already the writer of {path} (lock file {path}.lock is held); "
            "stop it, or start this one as a replica that follows it"
        )


class NotALog(PersistenceError):
    """The file is not a soloist event log: not SQLite at all, or an SQLite database of something else."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(
            f"{path} is not a soloist event log: {reason}; point --db at an existing soloist log or at a "
            "new file name (it will be created), never at another program's database"
        )


class LogMismatch(PersistenceError):
    """A replica's upstream serves another log than the one the replica's local log copies."""

    def __init__(self, path: str, local: str, upstream: str, address: str) -> None:
        self.local = local
        self.upstream = upstream
        super().__init__(
            f"the replica log {path} copies the log {local!r}, but the writer at {address} serves the log "
            f"{upstream!r} (another writer, or its log was replaced); nothing was appended. Point --upstream at "
            f"the writer of {local!r}, or start this replica on a new --db file to follow {address}"
        )


def translate_sqlite_error(exc: sqlite3.Error, *, what: str) -> PersistenceError:
    """Map a driver error to our tree, keeping SQLite's own words in the message."""
    code = getattr(exc, "sqlite_errorcode", None)
    name = getattr(exc, "sqlite_errorname", type(exc).__name__)
    detail = f"{what} failed: {exc} ({name})"
    if code == sqlite3.SQLITE_FULL:
        return StorageFull(detail + "; free disk space (or raise max_page_count) and retry")
    if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_CANTOPEN) or (
        code is not None and code & 0xFF == sqlite3.SQLITE_READONLY
    ):
        return ReadOnlyStorage(detail + "; make the database file and its directory writable")
    return PersistenceError(detail)
