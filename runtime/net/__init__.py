"""The socket layer: line-delimited JSON over TCP or a Unix socket (see docs/protocol.md).

- :class:`Server` serves an ``App``; :class:`Client` talks to one (many requests in flight).
- :class:`Follower` keeps a read-only follower ``App`` in step with a writer (a replica process).

The errors a connection can raise are part of the one tree in :mod:`soloist` (``soloist.Unauthorized``,
``soloist.ConnectionLost``, ...); a client re-raises exactly the class the server raised.
"""

from __future__ import annotations

from ._client import Client as Client
from ._client import EventStream as EventStream
from ._follower import Follower as Follower
from ._follower import FollowerStatistics as FollowerStatistics
from ._follower import parse_address as parse_address
from ._framing import DEFAULT_MAX_LINE as DEFAULT_MAX_LINE
from ._server import Server as Server
from ._server import ServerStatistics as ServerStatistics
from ._server import Upstream as Upstream

__all__ = [
    "Client",
    "DEFAULT_MAX_LINE",
    "EventStream",
    "Follower",
    "FollowerStatistics",
    "Server",
    "ServerStatistics",
    "Upstream",
    "parse_address",
]
