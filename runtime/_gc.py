"""The garbage collector and the interpreter's switch interval: a pause for our own bulk work, and the
process-wide tuning that only a process's owner (the CLI, or a service that decides so) may apply.

``gc_paused``: replaying a log allocates millions of small objects (events, states, read-model rows)
that never form reference cycles, so the cyclic collector's passes over them are pure overhead: measured
here, decoding 300k shop events took 8.5 us/event with it running and 3.8 us with it paused, and a
decode+apply replay went from ~185k to ~239k events/s. Refcounting still frees everything as usual.
Only for synchronous sections (no ``await`` inside), so the pause never spans other tasks' work.

``tune_process``: an embedded library must not change the host process behind the service's back (a
frozen heap, a different switch interval). The ``soloist`` CLI owns its process and calls this after
its App has started; a service that embeds ``App`` may call it too, knowingly. See "Threads, the GIL and
the garbage collector" in docs/ARCHITECTURE.md for the measurements.
"""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass
from typing import Final, final

__all__ = ["DEFAULT_GC_THRESHOLD", "DEFAULT_SWITCH_INTERVAL", "ProcessTuning", "gc_paused", "tune_process"]

DEFAULT_SWITCH_INTERVAL: Final = 0.0001
"""0.1 ms. SQLite runs on the writer's and the reader's threads and releases the GIL inside each call;
to go on, such a thread must win the GIL back from the event loop's thread. When the loop is busy
(queries over the socket) that takes up to ``sys.getswitchinterval()`` per hand-over, 5 ms by default,
several times per call: measured here, a busy loop let through 240-1,640 of 3,400 paced commands in
2 s at 5 ms, and all 3,400 at 0.5 ms. Each commit takes two hand-overs (the log's thread wakes, then
returns from ``COMMIT``): with durable commands arriving over the socket (bench_socket's shape (b)),
a commit of ~128 rows whose fsync alone takes ~0.3 ms took ~2.5 ms from submit to resume at 0.5 ms,
the loop's thread idling meanwhile; at 0.1 ms the same load ran 6-28% faster (medians of interleaved
runs, three sessions) at the same CPU time per command. The switch is only requested when another
thread waits for the GIL, so a loop alone (pipelined queries) is not interrupted more often."""

DEFAULT_GC_THRESHOLD: Final = 20_000
"""The cyclic GC's first threshold for a serving process (CPython's default: 700). A durable ``PlaceOrder``
leaves a few GC-tracked objects alive (the order's state and its read-model rows), so at the default a
young-generation collection ran ~160 times a second under bench_socket's shape (b), each traversing the
commands in flight and promoting them: 28 ms of GC per second of load (~0.7 us per order, ~3.5% of the
server's CPU), measured with ``gc.callbacks``. At 20,000 the same load spent 6-8 ms a second in the GC,
in collections of ~2 ms each (young generation) - short next to a commit. Nothing else changes: every
object is still freed by reference counting, and cycles still by the collector, just in fewer passes."""


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


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessTuning:
    """What :func:`tune_process` changed; :meth:`undo` puts it back."""

    switch_interval_before: float
    switch_interval: float
    frozen: int  # objects moved to the GC's permanent generation by this call (0 if not asked)
    gc_threshold_before: tuple[int, int, int] = (700, 10, 10)
    gc_threshold: tuple[int, int, int] = (700, 10, 10)

    def undo(self) -> None:
        """Restore the switch interval and GC thresholds, and unfreeze what is frozen (``gc.unfreeze`` is
        process-wide)."""
        sys.setswitchinterval(self.switch_interval_before)
        gc.set_threshold(*self.gc_threshold_before)
        if self.frozen:
            gc.unfreeze()


def tune_process(
    *,
    switch_interval: float | None = DEFAULT_SWITCH_INTERVAL,
    freeze_gc: bool = False,
    gc_threshold: int | None = None,
) -> ProcessTuning:
    """Tune the whole process for serving: the switch interval, and optionally the cyclic GC.

    - ``switch_interval`` (seconds; None leaves it alone): see :data:`DEFAULT_SWITCH_INTERVAL`.
    - ``gc_threshold``: the GC's first threshold (None leaves it alone); see :data:`DEFAULT_GC_THRESHOLD`.
    - ``freeze_gc``: ``gc.freeze()`` moves every object alive now (the write model and read models an App
      just rebuilt from the log: millions of objects without cycles) to the permanent generation, where
      later collections no longer traverse them. Call it once the App has started. It freezes *every*
      object of the process, which is why an App never does it on its own.
    """
    if gc_threshold is not None and gc_threshold < 1:
        raise ValueError(f"gc_threshold must be at least 1 (0 would disable the cyclic GC), got {gc_threshold}")
    before = sys.getswitchinterval()
    if switch_interval is not None:
        sys.setswitchinterval(switch_interval)
    thresholds_before = gc.get_threshold()
    if gc_threshold is not None:
        gc.set_threshold(gc_threshold, *thresholds_before[1:])
    frozen = 0
    if freeze_gc:
        count = gc.get_freeze_count()
        gc.freeze()
        frozen = gc.get_freeze_count() - count
    return ProcessTuning(
        switch_interval_before=before,
        switch_interval=sys.getswitchinterval(),
        frozen=frozen,
        gc_threshold_before=thresholds_before,
        gc_threshold=gc.get_threshold(),
    )
