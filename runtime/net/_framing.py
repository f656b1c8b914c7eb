"""Line framing and answer encoding: one UTF-8 JSON object per ``\\n``-terminated line.

:class:`LineSplitter` turns received chunks into complete lines, enforcing a maximum line length
without ever holding more than that many bytes of an unfinished line. The ``encode_*`` functions
build answer lines (newline included) with msgspec's JSON encoder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, final

import msgspec

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._messages import RecordedEvent

__all__ = [
    "DEFAULT_MAX_LINE",
    "LineSplitter",
    "LineTooLong",
    "Ok",
    "ReceiptResult",
    "encode_error",
    "encode_events",
    "encode_oks",
    "encode_ok",
]

DEFAULT_MAX_LINE: Final = 1 << 20
"""1 MiB: the longest request line a server accepts by default (without its ``\\n``)."""

_encoder: Final = msgspec.json.Encoder()
_encode: Final = _encoder.encode
_encode_lines: Final = _encoder.encode_lines


class LineTooLong(Exception):
    """A line exceeded the limit. Internal to the framing; the server answers ``too_large``."""


@final
class LineSplitter:
    """Splits a byte stream into lines of at most ``max_line`` bytes (excluding the ``\\n``)."""

    __slots__ = ("_max", "_partial")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError(f"max_line must be at least 1 byte, got {max_line}")
        self._max = max_line
        self._partial = bytearray()

    def finish(self) -> bytes:
        """What is left of an unfinished line at the end of the stream (and forget it)."""
        partial = bytes(self._partial)
        self._partial.clear()
        return partial

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held so far."""
        return len(self._partial)

    def feed(self, data: bytes) -> tuple[list[bytes], bool]:
        """The complete lines ``data`` finishes, and whether a line over the limit came after them.

        Once a line is too long the splitter keeps nothing more: the caller answers ``too_large`` and
        closes the connection.
        """
        block, too_long = self.feed_block(data)
        return ([] if block is None else block.split(b"\n")), too_long

    def feed_block(self, data: bytes) -> tuple[bytes | None, bool]:
        """Like :meth:`feed`, but the complete lines as one block joined by ``\n`` (None if there is none).

        The server parses a whole block in one call; splitting it into lines is only needed when one
        of them is malformed.
        """
        partial = self._partial
        end = data.rfind(b"\n")
        if end < 0:
            partial += data
            if len(partial) > self._max:
                partial.clear()
                return None, True
            return None, False
        if partial:
            partial += data[:end]
            block = bytes(partial)
            partial.clear()
        else:
            block = data[:end]
        partial += data[end + 1 :]
        limit = self._max
        if len(partial) > limit or (len(block) > limit and max(map(len, block.split(b"\n"))) > limit):
            partial.clear()
            lines = block.split(b"\n")
            for i, line in enumerate(lines):
                if len(line) > limit:
                    return (b"\n".join(lines[:i]) if i else None), True
            return block, True
        return block, False


class Ok(msgspec.Struct, gc=False, omit_defaults=True):
    """An ok answer (``position`` omitted when None)."""

    id: int | str | None
    ok: bool
    result: object
    position: int | None = None


class ReceiptResult(msgspec.Struct, gc=False):
    """A command's receipt as answered on the wire (encodes like the dict it replaces, fields in this order)."""

    position: int
    command_id: str
    duplicate: bool


class _ErrorBody(msgspec.Struct, gc=False):
    code: str
    message: str


class _Error(msgspec.Struct, gc=False):
    id: int | str | None
    ok: bool
    error: _ErrorBody


class _Event(msgspec.Struct, gc=False):
    event: dict[str, object]


def encode_ok(request_id: int | str | None, result: object, position: int | None = None) -> bytes:
    """An ok answer line. Raises ``TypeError`` if ``result`` is not JSON-serialisable."""
    return _encode(Ok(request_id, True, result, position)) + b"\n"


def encode_error(request_id: int | str | None, code: str, message: str) -> bytes:
    """An error answer line; never fails (the id was validated to be null, an int or a string)."""
    return _encode(_Error(request_id, False, _ErrorBody(code, message))) + b"\n"


def encode_oks(answers: Sequence[Ok]) -> bytes:
    """Several ok answer lines in one call; ``TypeError`` if one of the results is not serialisable."""
    return _encode_lines(answers)


def encode_events(events: Sequence[RecordedEvent]) -> bytes:
    """Event lines of a subscription, ``{"event": {...}}`` each, in one call."""
    return _encode_lines([_Event(e.to_wire()) for e in events])
