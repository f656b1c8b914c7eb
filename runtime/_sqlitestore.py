"""The SQLite adapter of the event store port: a thin wrapper over today's :class:`EventLog` + :class:`LogReader`.

Temporary shape, to be folded into ``_log.py`` (which another change is rewriting) when the port is wired
into the App and the writer. Until then it adapts, without changing ``_log.py``:

- Event bodies arrive as JSON bytes, as ``EventLog.append`` takes them.
- ``LogReader`` decodes with a ``TypeRegistry``; an empty one keeps the parsed JSON, which is encoded
  again here for the port's decoder (which takes bytes and the schema version). That costs one
  encoding per event read, until the fold, where the chunk's rows hand each body over as it is.
- SQLite's ``UNIQUE``/``PRIMARY KEY`` failures become :class:`ConcurrencyError`, as in the other adapters.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, final

from ._errors import ConcurrencyError, PersistenceError
from ._log import EventLog, LogReader, Synchronous
from ._messages import TypeRegistry, encode

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    from ._messages import RecordedEvent
    from ._store import EventDecoder, EventRow, KeyRow, StoredKey

__all__ = ["SQLiteStore"]


@final
class SQLiteStore:
    """The port over one SQLite file. The writer's flock on ``<path>.lock`` is taken by ``open``."""

    def __init__(
        self, path: str | os.PathLike[str], decoder: EventDecoder, *, synchronous: Synchronous = "FULL"
    ) -> None:
        self.path = Path(path)
        self._decoder = decoder
        self._log = EventLog(self.path, synchronous=synchronous)
        self._reader = LogReader(self.path, TypeRegistry("event"))  # no classes: keeps the parsed JSON
        self.log_id = ""

    async def open(self) -> None:
        await self._log.open()
        try:
            await self._reader.open()
        except BaseException:
            await self._log.aclose()
            raise
        self.log_id = self._log.log_id

    async def aclose(self) -> None:
        try:
            await self._reader.aclose()
        finally:
            await self._log.aclose()

    async def __aenter__(self) -> SQLiteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def append(self, rows: Sequence[EventRow], keys: Sequence[KeyRow] = ()) -> None:
        try:
            await self._log.append(rows, keys)
        except PersistenceError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                span = f"positions {rows[0][0]}..{rows[-1][0]}" if rows else "no events"
                raise ConcurrencyError(
                    f"{self.path}: the batch of {len(rows)} events ({span}) and {len(keys)} keys clashes "
                    f"with the log ({exc.__cause__}); another writer appended or the writer's state is stale: "
                    "restart it so that it recovers from the log"
                ) from exc
            raise

    def _decoded(self, events: list[RecordedEvent]) -> list[RecordedEvent]:
        decode = self._decoder
        dumps = encode
        return [e._replace(data=decode(e.type, e.schema, dumps(e.data))) for e in events]

    async def read(self, after: int, limit: int = 2000) -> list[RecordedEvent]:
        return self._decoded(await self._reader.read(after, limit))

    async def read_stream(self, stream: str) -> list[RecordedEvent]:
        return self._decoded(await self._reader.read_stream(stream))

    async def head(self) -> int:
        return await self._log.head()

    async def keys(self) -> dict[str, StoredKey]:
        return await self._log.keys()
