"""An in-memory event store: the port's contract without a disk, for fast tests and fault injection.

The data lives in a :class:`MemoryLog` that outlives any one :class:`MemoryStore`: open a new store on
the same ``MemoryLog`` to simulate a restart. Appends validate the whole batch before changing anything
(the transaction), and yield to the loop once before they commit, so that concurrent readers and
cancellation are exercised as with a real driver.

Fault injection: :meth:`MemoryStore.fail_next_append` makes the next append raise the given error, either
before anything is written (a refused commit) or after the batch is committed (a lost acknowledgement:
the caller cannot tell, the log is the truth).
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

import anyio

from ._errors import ConcurrencyError, PersistenceError
from ._log import decode_rows, replay_reads
from ._store import EventRow, Forget, KeyRow, StoredKey

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from ._messages import RecordedEvent, TypeRegistry

__all__ = ["MemoryLog", "MemoryStore"]


@dataclass(eq=False)
class MemoryLog:
    """The storage behind one or more successive :class:`MemoryStore` instances (a "file")."""

    log_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    rows: list[EventRow] = field(default_factory=list)  # rows[i] has position i + 1 (the writer assigns them)
    keys: dict[str, StoredKey] = field(default_factory=dict)
    versions: dict[tuple[str, int], int] = field(default_factory=dict)  # (stream, version) -> position
    streams: dict[str, list[int]] = field(default_factory=dict)  # stream -> indexes into rows, by version
    positions: dict[int, int] = field(default_factory=dict)  # position -> index into rows


@dataclass(frozen=True, slots=True)
class _Fault:
    error: BaseException
    after_commit: bool


def _version(row: EventRow) -> int:
    return row[2]


@final
class MemoryStore:
    """The port over a :class:`MemoryLog`. Not thread-safe: one event loop, like the rest of the runtime."""

    def __init__(self, events: TypeRegistry, log: MemoryLog | None = None) -> None:
        self._events = events
        self.where = "memory"
        self._log = log if log is not None else MemoryLog()
        self._open = False
        self._faults: list[_Fault] = []
        self.log_id = ""
        self.appends = 0  # committed appends, for tests

    @property
    def log(self) -> MemoryLog:
        return self._log

    async def open(self) -> None:
        self._open = True
        self.log_id = self._log.log_id

    async def aclose(self) -> None:
        self._open = False

    async def __aenter__(self) -> MemoryStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def fail_next_append(self, error: BaseException, *, after_commit: bool = False) -> None:
        """Make the next append raise ``error``: before it writes anything, or after it committed."""
        self._faults.append(_Fault(error, after_commit))

    def _check_open(self) -> MemoryLog:
        if not self._open:
            raise PersistenceError("the in-memory event store is not open; use `async with MemoryStore(...)`")
        return self._log

    async def append(self, rows: Sequence[EventRow], keys: Sequence[KeyRow] = (), forget: Forget | None = None) -> None:
        log = self._check_open()
        fault = self._faults.pop(0) if self._faults else None
        if fault is not None and not fault.after_commit:
            raise fault.error
        await anyio.lowlevel.checkpoint()  # a real driver yields here; cancellation before commit = nothing written
        log = self._check_open()
        self._validate(log, rows)
        # commit: nothing below can fail
        if forget is not None:  # the oldest recorded before the bound: a dict keeps insertion order
            expired = (key for key, stored in log.keys.items() if stored.recorded_at < forget.before)
            for key in list(itertools.islice(expired, forget.limit)):
                del log.keys[key]
        for row in rows:
            position, stream, version = row[0], row[1], row[2]
            log.positions[position] = len(log.rows)
            log.versions[(stream, version)] = position
            log.streams.setdefault(stream, []).append(len(log.rows))
            log.rows.append(row)
        for key, fingerprint, position, command_id, recorded_at in keys:
            log.keys[key] = StoredKey(fingerprint, position, command_id, recorded_at)
        self.appends += 1
        if fault is not None:
            raise fault.error

    @staticmethod
    def _validate(log: MemoryLog, rows: Sequence[EventRow]) -> None:
        """What PRIMARY KEY and UNIQUE(stream, version) check in a database: the whole batch or nothing."""
        positions: set[int] = set()
        versions: set[tuple[str, int]] = set()
        last = log.rows[-1][0] if log.rows else 0
        for row in rows:
            position, stream, version = row[0], row[1], row[2]
            if position in log.positions or position in positions:
                raise ConcurrencyError(
                    f"position {position} is already taken in the log (head {last}); another writer appended "
                    "or the writer's state is stale: restart it so that it recovers from the log"
                )
            if position != last + 1:
                raise ConcurrencyError(
                    f"position {position} does not follow {last} (the head, or the batch's previous row); the "
                    "writer assigns positions head+1, head+2, ...: its state is stale, restart it"
                )
            if (stream, version) in log.versions or (stream, version) in versions:
                raise ConcurrencyError(
                    f"stream {stream!r} already has version {version}; another writer appended or the writer's "
                    "state is stale: restart it so that it recovers from the log"
                )
            if not isinstance(row[5], bytes):
                raise PersistenceError(f"event at position {position}: data must be JSON bytes, got {type(row[5])}")
            positions.add(position)
            versions.add((stream, version))
            last = position

    async def read(self, after: int, limit: int = 2000) -> list[RecordedEvent]:
        log = self._check_open()
        await anyio.lowlevel.checkpoint()
        rows = log.rows
        # positions are dense and start at 1 in practice; bisect keeps this right even if the first is not 1
        lo, hi = 0, len(rows)
        while lo < hi:
            mid = (lo + hi) // 2
            if rows[mid][0] <= after:
                lo = mid + 1
            else:
                hi = mid
        return decode_rows(rows[lo : lo + max(limit, 0)], self._events)

    def replay(self, after: int, upto: int) -> AsyncIterator[list[RecordedEvent]]:
        return replay_reads(self.read, self.where, after, upto, 2000)

    async def read_stream(self, stream: str) -> list[RecordedEvent]:
        log = self._check_open()
        await anyio.lowlevel.checkpoint()
        rows = sorted((log.rows[i] for i in log.streams.get(stream, ())), key=_version)
        return decode_rows(rows, self._events)

    async def head(self) -> int:
        log = self._check_open()
        return log.rows[-1][0] if log.rows else 0

    async def keys(self) -> dict[str, StoredKey]:
        return dict(self._check_open().keys)
