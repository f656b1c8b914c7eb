"""The one error tree of soloist, and its wire codes.

Every error a caller can see is a :class:`CQRSError`; each class has its own stable wire ``code`` (see
``docs/protocol.md``) and a message that names the values involved and how to fix it. One code per
class, so a client re-raises exactly the class the server raised (:func:`error_from_wire`)::

    CQRSError                   error                 root; not raised on its own
    ├── BadRequest              bad_request           a field is missing, unknown or of the wrong type
    │   ├── UnknownType         unknown_type          no command/query/event of that type name is registered
    │   └── UnknownOp           unknown_op            the server has no such op
    ├── Unauthorized            unauthorized          send ``auth`` with the right token first
    ├── TooLarge                too_large             a request line is longer than the limit
    ├── DomainError             rejected              a business rule refused the command; the log is unchanged
    ├── NotFound                not_found             a query asked for something that does not exist
    ├── ConcurrencyError        conflict              a stream version clash
    │   └── IdempotencyConflict idempotency_conflict  key reused with a different command
    ├── Overloaded              overloaded            the writer's queue is full; nothing was done, retry later
    ├── ConsistencyTimeout      timeout               a replica did not reach the asked position in time
    ├── CommandTimeout          command_timeout       a command's receipt did not come within its timeout
    ├── UpstreamUnavailable     upstream_unavailable  a replica could not learn the writer's position (strong)
    ├── NotWriter               not_writer            a command sent to a read-only follower or a standby
    ├── ActorStopped            stopped               the writer, a replica or the app is not running
    │   ├── Closed              closed                ... because it was closed (shutting down): you closed it
    │   └── Broken              broken                ... because it died (crashed, failed): it broke
    ├── InternalError           internal              domain code raised an exception it did not declare (a bug)
    ├── PersistenceError        persistence           the event log failed; nothing of the batch was acknowledged
    │   ├── StorageFull         storage_full          SQLITE_FULL: the disk (or max_page_count) is full
    │   ├── ReadOnlyStorage     read_only_storage     SQLITE_READONLY / permission denied
    │   ├── LogCorrupted        log_corrupted         the log breaks an invariant (gap, bad checksum)
    │   │   └── UnknownSchemaVersion unknown_schema   an event of a schema version this process cannot read
    │   ├── WriterLocked        writer_locked         another process owns this log's writer lock
    │   ├── Fenced              fenced                this writer lost its lease on a shared (PostgreSQL) log
    │   ├── NotALog             not_a_log             the file is not SQLite, or an SQLite file of something else
    │   ├── LogMismatch         log_mismatch          a replica's upstream serves another log than the one it copies
    │   └── WrongLog            wrong_log             a feed (a JetStream stream) carries another log than this one
    ├── RemoteError             remote                client side: an error code this client does not know
    └── ConnectionLost          connection_lost       client side: the connection closed with requests unanswered

``MailboxFull`` is an alias of :class:`Overloaded` (the name the style guide uses).

A class that sets ``code`` in its body is registered in :data:`WIRE_CODES` (a second class with the same
code is a ``TypeError`` at import). A subclass that does not set one (e.g. a domain's own
``class OutOfStock(DomainError)``) travels as its parent's code.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Final, Self

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "WIRE_CODES",
    "ActorStopped",
    "BadRequest",
    "Broken",
    "CQRSError",
    "Closed",
    "CommandTimeout",
    "ConcurrencyError",
    "ConnectionLost",
    "ConsistencyTimeout",
    "DomainError",
    "Fenced",
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
    "RemoteError",
    "StorageFull",
    "TooLarge",
    "Unauthorized",
    "UnknownOp",
    "UnknownSchemaVersion",
    "UnknownType",
    "UpstreamUnavailable",
    "WriterLocked",
    "WrongLog",
    "error_from_wire",
    "translate_sqlite_error",
]

_codes: dict[str, type[CQRSError]] = {}
WIRE_CODES: Final[Mapping[str, type[CQRSError]]] = _codes
"""Wire code -> the one class that owns it, built from the tree (every class that sets ``code``)."""


class CQRSError(Exception):
    """Root of every error soloist raises on purpose."""

    # A plain attribute, not a ClassVar: RemoteError keeps the unknown code it received on the instance.
    code: str = "error"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        code = cls.__dict__.get("code")
        if code is None:
            return
        owner = _codes.setdefault(code, cls)
        if owner is not cls:
            raise TypeError(f"wire code {code!r} of {cls.__qualname__} is already owned by {owner.__qualname__}")

    @classmethod
    def from_wire(cls, message: str) -> Self:
        """An instance carrying a server's message, without the in-process values ``__init__`` wants.

        Attributes only an in-process error knows (e.g. ``ConsistencyTimeout.wanted``) are not set.
        """
        error = cls.__new__(cls)
        Exception.__init__(error, message)
        return error


_codes["error"] = CQRSError


class BadRequest(CQRSError):
    """A message is malformed: a field is missing, unknown or of the wrong type."""

    code = "bad_request"
    field: str | None

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(message if field is None else f"field {field!r}: {message}")

    _wire_field: str | None = None  # what ``field`` is on an instance built from the wire

    @classmethod
    def from_wire(cls, message: str) -> Self:
        error = super().from_wire(message)
        error.field = cls._wire_field
        return error


class UnknownType(BadRequest):
    """No message class is registered under the given type name."""

    code = "unknown_type"
    _wire_field = "type"

    def __init__(self, kind: str, type_name: object, known: list[str]) -> None:
        self.kind = kind
        self.type_name = type_name
        shown = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
        CQRSError.__init__(self, f"unknown {kind} type {type_name!r}; known {kind} types: {shown}")
        self.field = "type"


class UnknownOp(BadRequest):
    """The server has no such op."""

    code = "unknown_op"
    _wire_field = "op"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.field = "op"


class Unauthorized(CQRSError):
    """The server was started with a token and this connection has not sent ``auth`` with it."""

    code = "unauthorized"


class TooLarge(CQRSError):
    """A request line is longer than the limit; the server answers once and closes the connection."""

    code = "too_large"


class DomainError(CQRSError):
    """A business rule refused the command. Nothing was appended; the reason is readable."""

    code = "rejected"


class NotFound(CQRSError):
    """A query asked for something that does not exist."""

    code = "not_found"


class ConcurrencyError(CQRSError):
    """A stream version clashed with what the log already holds."""

    code = "conflict"


class IdempotencyConflict(ConcurrencyError):
    """An idempotency key was reused with a different command."""

    code = "idempotency_conflict"

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


class CommandTimeout(CQRSError):
    """No receipt within the command's ``timeout_ms``. The command may still commit: the log is the truth."""

    code = "command_timeout"


class UpstreamUnavailable(CQRSError):
    """A replica could not learn the writer's position in time, so it cannot answer a strong query."""

    code = "upstream_unavailable"


class NotWriter(CQRSError):
    """Commands were sent to a read-only follower, or to a standby of a shared (PostgreSQL) log."""

    code = "not_writer"

    def __init__(self, writer: str, *, standby: bool = False) -> None:
        self.writer = writer
        if standby:
            super().__init__(
                f"this is a standby: the writer is {writer} (it holds the log's lease); send commands there, or "
                "retry here after a takeover (this server becomes the writer when that lease expires)"
            )
        else:
            super().__init__(f"this is a read-only replica; send commands to the writer at {writer}")


class ActorStopped(CQRSError):
    """The writer, a replica or the app is not running; the request was not taken.

    Catch this to handle both of its kinds: :class:`Closed` and :class:`Broken`.
    """

    code = "stopped"


class Closed(ActorStopped):
    """It was closed on purpose (the app is shutting down, or was never started): retry elsewhere or later."""

    code = "closed"


class Broken(ActorStopped):
    """It died: the actor crashed, a replica's read models failed, or the log went missing under it."""

    code = "broken"


class InternalError(CQRSError):
    """Domain code raised an exception it did not declare: a bug. Only that command failed."""

    code = "internal"


class PersistenceError(CQRSError):
    """The event log failed. Nothing of the affected batch was acknowledged; memory was rolled back."""

    code = "persistence"


class StorageFull(PersistenceError):
    """SQLite reported SQLITE_FULL: the disk or the database's max_page_count is exhausted."""

    code = "storage_full"


class ReadOnlyStorage(PersistenceError):
    """SQLite could not write: the file, directory or disk is read-only."""

    code = "read_only_storage"


class LogCorrupted(PersistenceError):
    """The log breaks one of its invariants (a gap in positions, a version out of order)."""

    code = "log_corrupted"


class UnknownSchemaVersion(LogCorrupted):
    """An event whose schema version this process cannot read: newer than its code, or older than its upcasters."""

    code = "unknown_schema"

    def __init__(self, type_name: str, schema: int, current: int, *, oldest: int | None = None, at: str = "") -> None:
        self.type_name = type_name
        self.schema = schema
        self.current = current
        where = f" {at}" if at else ""
        if schema > current:
            message = (
                f"event {type_name!r}{where} is schema version {schema}, but this process knows it only up to "
                f"version {current}: a newer writer wrote it; upgrade this process (its domain code) "
                "before it reads this log"
            )
        else:
            message = (
                f"event {type_name!r}{where} is schema version {schema}, but this process has upcasters for it only "
                f"from version {oldest if oldest is not None else current} to {current}: register an upcaster "
                f"({type_name!r}, {schema}) -> version {schema + 1} in the domain's upcasters"
            )
        super().__init__(message)


class WriterLocked(PersistenceError):
    """Another process holds the single-writer lock of this log."""

    code = "writer_locked"

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"another process is already the writer of {path} (lock file {path}.lock is held); "
            "stop it, or start this one as a replica that follows it"
        )


class NotALog(PersistenceError):
    """The file is not a soloist event log: not SQLite at all, or an SQLite database of something else."""

    code = "not_a_log"

    def __init__(
        self,
        path: str,
        reason: str,
        *,
        fix: str = "point --db at an existing soloist log or at a new file name (it will be created), never at "
        "another program's database",
    ) -> None:
        self.path = path
        super().__init__(f"{path} is not a soloist event log: {reason}; {fix}")


class LogMismatch(PersistenceError):
    """A replica's upstream serves another log than the one the replica's local log copies."""

    code = "log_mismatch"

    def __init__(self, path: str, local: str, upstream: str, address: str) -> None:
        self.local = local
        self.upstream = upstream
        super().__init__(
            f"the replica log {path} copies the log {local!r}, but the writer at {address} serves the log "
            f"{upstream!r} (another writer, or its log was replaced); nothing was appended. Point --upstream at "
            f"the writer of {local!r}, or start this replica on a new --db file to follow {address}"
        )


class Fenced(PersistenceError):
    """This writer's lease on a shared log expired or was taken over: it can never append under it again."""

    code = "fenced"

    def __init__(self, message: str, *, epoch: int | None = None, holder: str | None = None) -> None:
        self.epoch = epoch  # the lease's current epoch, when known
        self.holder = holder  # who holds it now, when known
        super().__init__(message)


class WrongLog(PersistenceError):
    """A feed of committed events (a JetStream stream) carries another log than the one this process holds."""

    code = "wrong_log"

    def __init__(self, feed: str, expected: str, found: str) -> None:
        self.feed = feed
        self.expected = expected
        self.found = found
        super().__init__(
            f"{feed} carries log {found!r}, but this process holds log {expected!r}; point it at the stream "
            "its writer publishes to (--nats-stream), or start a replica on a fresh --db"
        )


class RemoteError(CQRSError):
    """The server answered with an error code this client does not know (a newer server).

    ``code`` is the server's code, as received; the message is the server's.
    """

    code = "remote"

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class ConnectionLost(CQRSError):
    """The connection closed (or could not be used) while requests were waiting for their answers.

    Client side only: never sent on the wire. A command that was in flight may or may not have been
    committed; resend it with the same idempotency key to find out.
    """

    code = "connection_lost"


def error_from_wire(code: object, message: object) -> CQRSError:
    """The exception for an error answer ``{"code": ..., "message": ...}``: exactly the class that owns ``code``.

    An unknown code (a newer server) gives a :class:`RemoteError` that keeps it.
    """
    text = message if isinstance(message, str) else repr(message)
    cls = _codes.get(code) if isinstance(code, str) else None
    if cls is None:
        return RemoteError(code if isinstance(code, str) else repr(code), text)
    return cls.from_wire(text)


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
