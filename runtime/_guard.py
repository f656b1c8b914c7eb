"""Enforce the single-writer rule at run time (after trio's ConflictDetector)."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from anyio import BusyResourceError

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["SingleWriterGuard"]


@final
class SingleWriterGuard:
    """A sync context manager that raises :class:`anyio.BusyResourceError` if a second task enters.

    It costs one attribute check per batch; it turns a design rule ("one writer") into a loud error.
    """

    __slots__ = ("_held", "_what")

    def __init__(self, what: str) -> None:
        self._what = what
        self._held = False

    def __enter__(self) -> None:
        if self._held:
            raise BusyResourceError(self._what)
        self._held = True

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._held = False
