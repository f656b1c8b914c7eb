"""The SQLite adapter of the event store port: one file, WAL, the default log.

It puts the three SQLite pieces of :mod:`._log` behind the port, each doing what it measured best at:

- :class:`~._log.EventLog` appends (one transaction per group of batches; ``flock`` keeps one writer per
  file) and answers ``head`` and ``keys``;
- :class:`~._log.LogReader` serves catch-up reads (``read``, ``read_stream``) on its own thread, one
  statement per chunk, with read-ahead and a small cache shared by the replicas catching up together;
- :class:`~._log.LogScanner` serves ``replay``, the start's one pass, row by row on the loop's thread
  (nothing else is served yet, and no GIL hand-over per chunk).

SQLite's ``PRIMARY KEY`` failures (a taken position) become :class:`ConcurrencyError`, as in the other adapters;
stream versions are not checked here but by the writer and at recovery (see runtime/_log.py).
SQLite-only operations (pragmas, the upstream log id of a replica process) are on :attr:`log`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, final

import anyio

from ._errors import ConcurrencyError, PersistenceError
from ._log import EventLog, LogReader, LogScanner, Synchronous, check_contiguous

if TYPE_CHECKING:
    import os
    from collections.abc import AsyncIterator, Sequence

    from ._messages import RecordedEvent, TypeRegistry
    from ._store import EventRow, Forget, KeyRow, StoredKey

__all__ = ["SQLiteStore"]


@final
class SQLiteStore:
    """The port over one SQLite file. The writer's flock on ``<path>.lock`` is taken by ``open``."""

    def __init__(
        self, path: str | os.PathLike[str], events: TypeRegistry, *, synchronous: Synchronous = "FULL"
    ) -> None:
        self.path = Path(path)
        self.where = str(self.path)
        self._events = events
        self.log = EventLog(self.path, synchronous=synchronous)
        self._reader = LogReader(self.path, events)
        self.log_id = ""
        self._head = 0  # the last position appended: a batch must start right after it (no gap, no overlap)

    async def open(self) -> None:
        await self.log.open()
        try:
            self._head = await self.log.head()
            await self._reader.open()
        except BaseException:
            await self.log.aclose()
            raise
        self.log_id = self.log.log_id

    async def aclose(self) -> None:
        try:
            await self._reader.aclose()
        finally:
            await self.log.aclose()

    async def __aenter__(self) -> SQLiteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def append(self, rows: Sequence[EventRow], keys: Sequence[KeyRow] = (), forget: Forget | None = None) -> None:
        if rows and (rows[0][0] != self._head + 1 or rows[-1][0] - rows[0][0] != len(rows) - 1):
            # the flock keeps other writers out, so the head is known: two comparisons, no query
            raise ConcurrencyError(
                f"{self.path}: the batch holds positions {rows[0][0]}..{rows[-1][0]} ({len(rows)} events), but the "
                f"log's head is {self._head}: a batch must continue it without a gap; the writer's state is stale: "
                "restart it so that it recovers from the log"
            )
        try:
            await self.log.append(rows, keys, forget)
        except PersistenceError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                span = f"positions {rows[0][0]}..{rows[-1][0]}" if rows else "no events"
                raise ConcurrencyError(
                    f"{self.path}: the batch of {len(rows)} events ({span}) clashes with the log "
                    f"({exc.__cause__}); another writer appended or the writer's state is stale: "
                    "restart it so that it recovers from the log"
                ) from exc
            raise
        if rows:
            self._head = rows[-1][0]

    async def read(self, after: int, limit: int = 2000) -> list[RecordedEvent]:
        return await self._reader.read(after, limit)

    async def replay(self, after: int, upto: int) -> AsyncIterator[list[RecordedEvent]]:
        with LogScanner(self.path, self._events) as scanner:
            while after < upto:
                events = scanner.read(after, min(2000, upto - after))
                if not events:
                    return
                check_contiguous(self.where, after, events)
                after = events[-1].position
                yield events
                await anyio.lowlevel.checkpoint()

    async def read_stream(self, stream: str) -> list[RecordedEvent]:
        return await self._reader.read_stream(stream)

    async def head(self) -> int:
        return await self.log.head()

    async def keys(self) -> dict[str, StoredKey]:
        return await self.log.keys()
