"""soloist: an asyncio single-writer actor runtime for CQRS.

Commands go through one writer actor (bounded queue, serial decisions, group commit to a SQLite
event log); committed events are broadcast to in-memory read replicas that answer queries at the
consistency each query asks for. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from ._app import App as App
from ._app import AppStatistics as AppStatistics
from ._broadcast import Broadcast as Broadcast
from ._broadcast import EventSource as EventSource
from ._broadcast import Subscription as Subscription
from ._broadcast import SubscriptionStatistics as SubscriptionStatistics
from ._domain import Domain as Domain
from ._domain import ReadModels as ReadModels
from ._errors import ActorStopped as ActorStopped
from ._errors import BadRequest as BadRequest
from ._errors import ConcurrencyError as ConcurrencyError
from ._errors import ConsistencyTimeout as ConsistencyTimeout
from ._errors import CQRSError as CQRSError
from ._errors import DomainError as DomainError
from ._errors import IdempotencyConflict as IdempotencyConflict
from ._errors import InternalError as InternalError
from ._errors import LogCorrupted as LogCorrupted
from ._errors import LogMismatch as LogMismatch
from ._errors import MailboxFull as MailboxFull
from ._errors import NotALog as NotALog
from ._errors import NotFound as NotFound
from ._errors import NotWriter as NotWriter
from ._errors import Overloaded as Overloaded
from ._errors import PersistenceError as PersistenceError
from ._errors import ReadOnlyStorage as ReadOnlyStorage
from ._errors import StorageFull as StorageFull
from ._errors import UnknownType as UnknownType
from ._errors import WriterLocked as WriterLocked
from ._log import EventLog as EventLog
from ._log import LogReader as LogReader
from ._logging import configure_logging as configure_logging
from ._messages import Answer as Answer
from ._messages import Batch as Batch
from ._messages import Receipt as Receipt
from ._messages import RecordedEvent as RecordedEvent
from ._messages import TypeRegistry as TypeRegistry
from ._queries import Consistency as Consistency
from ._queries import QueryRouter as QueryRouter
from ._replica import Replica as Replica
from ._replica import ReplicaStatistics as ReplicaStatistics
from ._snapshot import SnapshotStore as SnapshotStore
from ._writer import Writer as Writer
from ._writer import WriterStatistics as WriterStatistics

__all__ = [
    "ActorStopped",
    "Answer",
    "App",
    "AppStatistics",
    "BadRequest",
    "Batch",
    "Broadcast",
    "CQRSError",
    "ConcurrencyError",
    "Consistency",
    "ConsistencyTimeout",
    "Domain",
    "DomainError",
    "EventLog",
    "EventSource",
    "IdempotencyConflict",
    "InternalError",
    "LogCorrupted",
    "LogMismatch",
    "LogReader",
    "MailboxFull",
    "NotALog",
    "NotFound",
    "NotWriter",
    "Overloaded",
    "PersistenceError",
    "QueryRouter",
    "ReadModels",
    "ReadOnlyStorage",
    "Receipt",
    "RecordedEvent",
    "Replica",
    "ReplicaStatistics",
    "SnapshotStore",
    "StorageFull",
    "Subscription",
    "SubscriptionStatistics",
    "TypeRegistry",
    "UnknownType",
    "Writer",
    "WriterLocked",
    "WriterStatistics",
    "configure_logging",
]
