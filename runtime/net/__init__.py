"""The socket layer: line-delimited JSON over TCP or a Unix socket (see docs/protocol.md).

- :class:`Server` serves an ``App``; :class:`Client` talks to one (many requests in flight).
- :class:`Follower` keeps a read-only follower ``App`` in step with a writer (a replica process).
"""

from __future__ import annotations

from ._client import Client as Client
from ._client import EventStream as EventStream
from ._errors import CODES as CODES
from ._errors import CommandTimeout as CommandTimeout
from ._errors import ConnectionLost as ConnectionLost
from ._errors import RemoteError as RemoteError
from ._errors import TooLarge as TooLarge
from ._errors import Unauthorized as Unauthorized
from ._errors import UnknownOp as UnknownOp
from ._errors import UpstreamUnavailable as UpstreamUnavailable
from ._errors import error_from_wire as error_from_wire
from ._follower import Follower as Follower
from ._follower import FollowerStatistics as FollowerStatistics
from ._follower import parse_address as parse_address
from ._framing import DEFAULT_MAX_LINE as DEFAULT_MAX_LINE
from ._framing import LineSplitter as LineSplitter
from ._server import Server as Server
from ._server import ServerStatistics as ServerStatistics
from ._server import Upstream as Upstream

__all__ = [
    "CODES",
    "Client",
    "CommandTimeout",
    "ConnectionLost",
    "DEFAULT_MAX_LINE",
    "EventStream",
    "Follower",
    "FollowerStatistics",
    "LineSplitter",
    "RemoteError",
    "Server",
    "ServerStatistics",
    "TooLarge",
    "Unauthorized",
    "UnknownOp",
    "Upstream",
    "UpstreamUnavailable",
    "error_from_wire",
    "parse_address",
]
