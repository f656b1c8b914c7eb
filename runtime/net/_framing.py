"""Line framing and answer encoding: one UTF-8 JSON object per ``\\n``-terminated line.

:class:`LineSplitter` turns received chunks into complete lines, enforcing a maximum line length
without ever holding more than that many bytes of an unfinished line. The ``encode_*`` functions
build answer lines (newline included) with orjson.
"""

from __future__ import annotations

from typing import Final, final

import orjson

__all__ = [
    "DEFAULT_MAX_LINE",
    "DUMPS_OPTIONS",
    "LineSplitter",
    "LineTooLong",
    "encode_error",
    "encode_ok",
]

DEFAULT_MAX_LINE: Final = 1 << 20
"""1 MiB: the longest request line a server accepts by default (without its ``\\n``)."""

DUMPS_OPTIONS: Final = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
_dumps: Final = orjson.dumps


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

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held so far."""
        return len(self._partial)

    def feed(self, data: bytes) -> tuple[list[bytes], bool]:
        """The complete lines ``data`` finishes, and whether a line over the limit came after them.

        Once a line is too long the splitter keeps nothing more: the caller answers ``too_large`` and
        closes the connection.
        """
        partial = self._partial
        if b"\n" not in data:
            partial += data
            if len(partial) > self._max:
                partial.clear()
                return [], True
            return [], False
        lines = data.split(b"\n")
        if partial:
            partial += lines[0]
            lines[0] = bytes(partial)
            partial.clear()
        partial += lines.pop()
        limit = self._max
        if len(partial) > limit or max(map(len, lines)) > limit:
            partial.clear()
            for i, line in enumerate(lines):
                if len(line) > limit:
                    return lines[:i], True
            return lines, True
        return lines, False


def encode_ok(request_id: object, result: object, position: int | None = None) -> bytes:
    """An ok answer line. Raises ``orjson.JSONEncodeError`` if ``result`` is not serialisable."""
    if position is None:
        return _dumps({"id": request_id, "ok": True, "result": result}, option=DUMPS_OPTIONS)
    return _dumps({"id": request_id, "ok": True, "result": result, "position": position}, option=DUMPS_OPTIONS)


def encode_error(request_id: object, code: str, message: str) -> bytes:
    """An error answer line; never fails (the id was validated to be null, an int or a string)."""
    return _dumps({"id": request_id, "ok": False, "error": {"code": code, "message": message}}, option=DUMPS_OPTIONS)
