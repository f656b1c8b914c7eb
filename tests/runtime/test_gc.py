"""Process tuning is an explicit call (the CLI makes it), and it says what it changed."""

from __future__ import annotations

import gc
import sys

import pytest

from soloist import tune_process
from soloist._gc import DEFAULT_GC_THRESHOLD, DEFAULT_SWITCH_INTERVAL, gc_paused


class TestTuneProcess:
    def test_sets_the_switch_interval_and_reports_it(self) -> None:
        """tune_process() sets 0.1 ms, returns what was there before, and undo() puts it back."""
        before = sys.getswitchinterval()
        tuning = tune_process()
        try:
            assert DEFAULT_SWITCH_INTERVAL == 0.0001
            assert sys.getswitchinterval() == pytest.approx(DEFAULT_SWITCH_INTERVAL)  # kept in whole nanoseconds
            assert tuning.switch_interval == sys.getswitchinterval()
            assert tuning.switch_interval_before == before
            assert tuning.frozen == 0
        finally:
            tuning.undo()
        assert sys.getswitchinterval() == before

    def test_freeze_gc_moves_live_objects_to_the_permanent_generation(self) -> None:
        """freeze_gc=True freezes what is alive now (counted), and undo() unfreezes it."""
        assert gc.get_freeze_count() == 0
        kept = [{"n": i} for i in range(1000)]  # objects the GC tracks
        tuning = tune_process(switch_interval=None, freeze_gc=True)
        try:
            assert tuning.frozen >= len(kept)
            assert gc.get_freeze_count() == tuning.frozen
        finally:
            tuning.undo()
        assert gc.get_freeze_count() == 0

    def test_gc_threshold_sets_the_first_threshold_and_undo_restores_it(self) -> None:
        """gc_threshold=N sets the young generation's threshold only, reports both, and undo() restores them."""
        before = gc.get_threshold()
        tuning = tune_process(switch_interval=None, gc_threshold=DEFAULT_GC_THRESHOLD)
        try:
            assert gc.get_threshold() == (DEFAULT_GC_THRESHOLD, *before[1:])
            assert tuning.gc_threshold == gc.get_threshold()
            assert tuning.gc_threshold_before == before
        finally:
            tuning.undo()
        assert gc.get_threshold() == before

    def test_gc_threshold_refuses_zero(self) -> None:
        """0 would disable the collector altogether: refused, nothing changed."""
        before = gc.get_threshold()
        with pytest.raises(ValueError, match="at least 1"):
            tune_process(switch_interval=None, gc_threshold=0)
        assert gc.get_threshold() == before

    def test_by_default_the_gc_thresholds_stay(self) -> None:
        """Without gc_threshold the collector's thresholds are left alone."""
        before = gc.get_threshold()
        tuning = tune_process(switch_interval=None)
        try:
            assert gc.get_threshold() == tuning.gc_threshold == tuning.gc_threshold_before == before
        finally:
            tuning.undo()

    def test_none_leaves_the_switch_interval(self) -> None:
        """switch_interval=None does not touch the interpreter's setting."""
        sys.setswitchinterval(0.002)
        try:
            tuning = tune_process(switch_interval=None)
            assert sys.getswitchinterval() == tuning.switch_interval == tuning.switch_interval_before == 0.002
        finally:
            sys.setswitchinterval(0.005)


class TestGcPaused:
    def test_pauses_and_restores(self) -> None:
        """The cyclic GC is off inside the block and on again after, even if the block raises."""
        assert gc.isenabled()
        try:
            with gc_paused():
                assert not gc.isenabled()
                raise ValueError("inside")
        except ValueError:
            pass
        assert gc.isenabled()

    def test_leaves_a_disabled_gc_disabled(self) -> None:
        """If the GC was already off, the block does not turn it on."""
        gc.disable()
        try:
            with gc_paused():
                assert not gc.isenabled()
            assert not gc.isenabled()
        finally:
            gc.enable()
