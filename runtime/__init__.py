"""soloist: an asyncio single-writer actor runtime for CQRS.

Commands go through one writer actor (bounded queue, serial decisions, group commit to a SQLite
event log); committed events are broadcast to in-memory read replicas that answer queries at the
consistency each query asks for. See docs/ARCHITECTURE.md.

This is what a user needs: the :class:`App`, the :class:`Domain` seam, the messages an app hands back,
the one error tree and the process-wide switches. The machinery (writer, log, broadcast, replicas,
router, snapshots, type registry) stays importable from its private module (``soloist._writer`` ...)
for tests and benchmarks, but is not part of the public API. The socket layer is :mod:`soloist.net`.
"""

from __future__ import annotations

from ._app import App as App
from ._app import AppStatistics as AppStatistics
from ._broadcast import Subscription as Subscription
from ._domain import Domain as Domain
from ._domain import ReadModels as ReadModels
from ._errors import ActorStopped as ActorStopped
from ._errors import BadRequest as BadRequest
from ._errors import Broken as Broken
from ._errors import Closed as Closed
from ._errors import CommandTimeout as CommandTimeout
from ._errors import ConcurrencyError as ConcurrencyError
from ._errors import ConnectionLost as ConnectionLost
from ._errors import ConsistencyTimeout as ConsistencyTimeout
from ._errors import CQRSError as CQRSError
from ._errors import DomainError as DomainError
from ._errors import Fenced as Fenced
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
from ._errors import RemoteError as RemoteError
from ._errors import StorageFull as StorageFull
from ._errors import TooLarge as TooLarge
from ._errors import Unauthorized as Unauthorized
from ._errors import UnknownOp as UnknownOp
from ._errors import UnknownSchemaVersion as UnknownSchemaVersion
from ._errors import UnknownType as UnknownType
from ._errors import UpstreamUnavailable as UpstreamUnavailable
from ._errors import WriterLocked as WriterLocked
from ._errors import WrongLog as WrongLog
from ._gc import ProcessTuning as ProcessTuning
from ._gc import tune_process as tune_process
from ._logging import configure_logging as configure_logging
from ._messages import Answer as Answer
from ._messages import Receipt as Receipt
from ._messages import RecordedEvent as RecordedEvent
from ._process import Call as Call
from ._process import Instances as Instances
from ._process import Issue as Issue
from ._process import Parked as Parked
from ._process import ProcessManager as ProcessManager
from ._process import ProcessStatistics as ProcessStatistics
from ._process import Step as Step
from ._queries import Consistency as Consistency

__all__ = [
    "ActorStopped",
    "Answer",
    "App",
    "AppStatistics",
    "BadRequest",
    "Broken",
    "CQRSError",
    "Call",
    "Closed",
    "CommandTimeout",
    "ConcurrencyError",
    "ConnectionLost",
    "Consistency",
    "ConsistencyTimeout",
    "Domain",
    "DomainError",
    "Fenced",
    "IdempotencyConflict",
    "Instances",
    "InternalError",
    "Issue",
    "LogCorrupted",
    "LogMismatch",
    "MailboxFull",
    "NotALog",
    "NotFound",
    "NotWriter",
    "Overloaded",
    "Parked",
    "PersistenceError",
    "ProcessManager",
    "ProcessStatistics",
    "ProcessTuning",
    "ReadModels",
    "ReadOnlyStorage",
    "Receipt",
    "RecordedEvent",
    "RemoteError",
    "Step",
    "StorageFull",
    "Subscription",
    "TooLarge",
    "Unauthorized",
    "UnknownOp",
    "UnknownSchemaVersion",
    "UnknownType",
    "UpstreamUnavailable",
    "WriterLocked",
    "WrongLog",
    "configure_logging",
    "tune_process",
]
