"""Errors of the socket layer, and the translation between wire codes and the one error tree.

The runtime's tree (``runtime/_errors.py``) covers what a request can do wrong; these add what only a
connection can: ::

    CQRSError
    ├── Unauthorized          unauthorized  the server wants ``auth`` with the right token first
    ├── TooLarge              too_large     a request line is longer than the server's limit
    ├── UnknownOp             unknown_op    no such op (or: a command sent to a read-only replica)
    ├── CommandTimeout        timeout       a command's receipt did not come within its timeout_ms
    ├── UpstreamUnavailable   timeout       a replica could not learn the writer's position (strong)
    ├── RemoteError           internal      the server failed on its side; its message says how
    └── ConnectionLost        (client side) the connection closed with requests still unanswered

The client raises the runtime's own classes where one exists for a code (``rejected`` ->
:class:`~soloist.DomainError`, ``timeout`` on a query -> :class:`~soloist.ConsistencyTimeout`, ...),
so code written against an in-process ``App`` catches the same exceptions over a socket. Those
instances carry the server's message; attributes that only an in-process error knows (e.g.
``ConsistencyTimeout.wanted``) are not set on them.
"""

from __future__ import annotations

from typing import Final, TypeVar

from .._errors import (
    BadRequest,
    ConcurrencyError,
    ConsistencyTimeout,
    CQRSError,
    DomainError,
    NotFound,
    Overloaded,
    UnknownType,
)

__all__ = [
    "CODES",
    "CommandTimeout",
    "ConnectionLost",
    "RemoteError",
    "TooLarge",
    "Unauthorized",
    "UnknownOp",
    "UpstreamUnavailable",
    "error_from_wire",
]

CODES: Final = frozenset(
    {
        "bad_request",
        "unknown_op",
        "unknown_type",
        "rejected",
        "conflict",
        "not_found",
        "overloaded",
        "timeout",
        "unauthorized",
        "too_large",
        "internal",
    }
)
"""Every error code that can appear on the wire (docs/protocol.md)."""


class Unauthorized(CQRSError):
    """The server was started with a token and this connection has not sent ``auth`` with it."""

    code = "unauthorized"


class TooLarge(CQRSError):
    """A request line is longer than the limit; the server answers once and closes the connection."""

    code = "too_large"


class UnknownOp(CQRSError):
    """The server has no such op. A read-only replica answers ``command`` with this, naming the writer."""

    code = "unknown_op"


class CommandTimeout(CQRSError):
    """No receipt within the command's ``timeout_ms``. The command may still commit: the log is the truth."""

    code = "timeout"


class UpstreamUnavailable(CQRSError):
    """A replica could not learn the writer's position in time, so it cannot answer a strong query."""

    code = "timeout"


class RemoteError(CQRSError):
    """The server failed on its side (code ``internal``): a bug, a stopped writer or a storage failure."""

    code = "internal"


class ConnectionLost(CQRSError):
    """The connection closed (or could not be used) while requests were waiting for their answers.

    Client side only: never sent on the wire. A command that was in flight may or may not have been
    committed; resend it with the same idempotency key to find out.
    """

    code = "connection_lost"


E = TypeVar("E", bound=CQRSError)


def _bare(cls: type[E], message: str) -> E:
    """An instance of a runtime error class whose ``__init__`` wants in-process values, with a wire message."""
    error = cls.__new__(cls)
    CQRSError.__init__(error, message)
    return error


_SIMPLE: Final[dict[str, type[CQRSError]]] = {
    "rejected": DomainError,
    "not_found": NotFound,
    "conflict": ConcurrencyError,
    "unauthorized": Unauthorized,
    "too_large": TooLarge,
    "unknown_op": UnknownOp,
    "internal": RemoteError,
}


def error_from_wire(code: object, message: object, *, op: str | None = None) -> CQRSError:
    """The exception for an error answer ``{"code": ..., "message": ...}`` to a request of kind ``op``."""
    text = message if isinstance(message, str) else repr(message)
    if code == "bad_request":
        return BadRequest(text)
    if code == "unknown_type":
        error = _bare(UnknownType, text)
        error.field = "type"
        return error
    if code == "overloaded":
        return _bare(Overloaded, text)
    if code == "timeout":
        return CommandTimeout(text) if op == "command" else _bare(ConsistencyTimeout, text)
    simple = _SIMPLE.get(code) if isinstance(code, str) else None
    if simple is not None:
        return simple(text)
    return RemoteError(f"unknown error code {code!r}: {text}")
