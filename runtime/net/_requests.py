"""Request parsing: one request line -> a typed, validated request, in one msgspec call.

Each op is a frozen Struct tagged by ``op``; their union is decoded by one compiled decoder, which
checks the op, every field's type and range, and refuses unknown fields (a typo such as
``"consistancy"`` must not silently weaken a query). A command's or query's ``data`` stays undecoded
(``msgspec.Raw``, zero-copy) until its ``type`` picks the domain class to decode it into.

A line that does not decode is answered with a :class:`BadRequest` (or :class:`UnknownOp`) that names
the field; the request's ``id`` is recovered for that answer on this slow path only.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from .._errors import BadRequest
from .._messages import bad_request_from
from ._errors import UnknownOp

__all__ = [
    "OPS",
    "AuthRequest",
    "CommandRequest",
    "DigestRequest",
    "PingRequest",
    "ProcessRequest",
    "QueryRequest",
    "RebuildRequest",
    "Request",
    "StatsRequest",
    "SubscribeRequest",
    "RequestError",
    "RequestId",
    "parse_lines",
    "parse_request",
]

RequestId = int | str | None
_EMPTY: Final = msgspec.Raw(b"{}")
_NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
_Milliseconds = Annotated[float, msgspec.Meta(ge=0)]


class _Request(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="op", gc=False):
    id: int | str | None = None


class PingRequest(_Request, frozen=True, kw_only=True, tag="ping"):
    pass


class StatsRequest(_Request, frozen=True, kw_only=True, tag="stats"):
    pass


class AuthRequest(_Request, frozen=True, kw_only=True, tag="auth"):
    token: str


class CommandRequest(_Request, frozen=True, kw_only=True, tag="command"):
    type: str
    data: msgspec.Raw = _EMPTY
    idempotency_key: str | None = None
    timeout_ms: _Milliseconds | None = None


class QueryRequest(_Request, frozen=True, kw_only=True, tag="query"):
    type: str
    data: msgspec.Raw = _EMPTY
    consistency: Literal["eventual", "session", "strong"] = "eventual"
    min_position: _NonNegativeInt | None = None
    timeout_ms: _Milliseconds | None = None


class SubscribeRequest(_Request, frozen=True, kw_only=True, tag="subscribe"):
    from_position: _NonNegativeInt = 0


class DigestRequest(_Request, frozen=True, kw_only=True, tag="digest"):
    """The replay digest of one replica's read models, routed like a query (``docs/evolution.md``)."""

    consistency: Literal["eventual", "session", "strong"] = "eventual"
    min_position: _NonNegativeInt | None = None
    timeout_ms: _Milliseconds | None = None


class RebuildRequest(_Request, frozen=True, kw_only=True, tag="rebuild"):
    """Rebuild read models from the log beside the live ones (``replica``: one slot; absent: all)."""

    replica: _NonNegativeInt | None = None
    cancel: bool = False  # cancel the running rebuild instead (the live copies keep serving)


class ProcessRequest(_Request, frozen=True, kw_only=True, tag="process"):
    """An operator's decision on an item a process manager parked (see ``stats`` -> ``processes[].parked``)."""

    name: str
    action: Literal["retry", "skip"]
    key: str


Request = (
    PingRequest
    | StatsRequest
    | AuthRequest
    | CommandRequest
    | QueryRequest
    | SubscribeRequest
    | DigestRequest
    | RebuildRequest
    | ProcessRequest
)
OPS: Final = ("auth", "command", "digest", "ping", "process", "query", "rebuild", "stats", "subscribe")

_decoder: Final = msgspec.json.Decoder(Request)
_decode: Final = _decoder.decode
_decode_lines: Final = _decoder.decode_lines
_decode_any: Final = msgspec.json.Decoder().decode


class RequestError(Exception):
    """A line that is not a valid request: the error to answer, and the id to answer it with."""

    def __init__(self, error: BadRequest | UnknownOp, request_id: int | str | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.request_id = request_id


def parse_request(line: bytes) -> Request:
    """The request on ``line``; :class:`RequestError` (naming the field, with the id) if it is not one."""
    try:
        return _decode(line)
    except msgspec.MsgspecError as exc:
        raise _explain(line, exc) from None


def parse_lines(lines: bytes) -> list[Request]:
    """The request on each line of ``lines`` (lines joined by ``\\n``; blank lines skipped), in one call.

    Exactly what :func:`parse_request` gives for each line, however the stream was cut into chunks;
    :class:`RequestError` if any line is not a request (parse the lines one by one to answer each).

    msgspec's ``decode_lines`` reads a stream of JSON values, not lines: alone it takes two objects on
    one line as two requests (slipping past the in-flight cap, which counts lines) and one object cut
    over two lines as one request (while the same bytes in two chunks are two bad lines). Its answer is
    used only when every line boundary is ``}\\n{`` and there are as many values as lines: then no value
    spans a line (``}{`` cannot occur inside JSON, nor a raw newline in a string) and each line holds
    exactly one. Anything else (CRLF, blank lines, spaces around a line) is parsed line by line.
    """
    newlines = lines.count(b"\n")
    if lines[:1] == b"{" and lines[-1:] == b"}" and lines.count(b"}\n{") == newlines:
        try:
            requests = _decode_lines(lines)
        except msgspec.MsgspecError as exc:
            raise RequestError(bad_request_from(exc), None) from None
        if len(requests) == newlines + 1:
            return requests
    return [parse_request(line) for line in lines.split(b"\n") if line and not line.isspace()]


def _explain(line: bytes, exc: msgspec.MsgspecError) -> RequestError:
    """The error for a line that did not decode, carrying the request's id when it has a valid one."""
    request_id: int | str | None = None
    op: object = None
    try:
        raw = _decode_any(line)
    except msgspec.DecodeError:
        raw = None
    if isinstance(raw, dict):
        given = raw.get("id")
        if type(given) is int or type(given) is str:
            request_id = given
        op = raw.get("op")
    error: BadRequest | UnknownOp
    if raw is not None and not isinstance(raw, dict):
        error = BadRequest(f"a request must be a JSON object, got {_describe(raw)}")
    elif isinstance(raw, dict) and "op" in raw and op not in OPS:
        error = UnknownOp(f"unknown op {op!r}; ops are {list(OPS)}")
    else:
        error = bad_request_from(exc)
        if error.field == "id":
            request_id = None
    return RequestError(error, request_id)


def _describe(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
