"""Pause the cyclic garbage collector around synchronous bulk work (decoding and applying event chunks).

Replaying a log allocates millions of small objects (events, states, read-model rows) that never form
reference cycles, so the cyclic collector's passes over them are pure overhead: measured here, decoding
300k shop events took 8.5 us/event with it running and 3.8 us with it paused, and a decode+apply replay
went from ~185k to ~239k events/s. Refcounting still frees everything as usual.

Only for synchronous sections (no ``await`` inside), so the pause never spans other tasks' work.
"""

from __future__ import annotations

import gc
from typing import final

__all__ = ["gc_paused"]


@final
class gc_paused:
    """``with gc_paused(): ...`` disables the cyclic GC for the block if it was enabled, then restores it."""

    __slots__ = ("_was_enabled",)

    def __enter__(self) -> None:
        self._was_enabled = gc.isenabled()
        if self._was_enabled:
            gc.disable()

    def __exit__(self, *exc_info: object) -> None:
        if self._was_enabled:
            gc.enable()
