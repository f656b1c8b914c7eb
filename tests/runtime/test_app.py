"""App-level process settings: what it changes while it runs, and that it puts them back."""

from __future__ import annotations

import gc
import sys
from typing import TYPE_CHECKING

import pytest

from soloist import App, WriterLocked
from tests.toy import BANK, Open

if TYPE_CHECKING:
    from pathlib import Path


class TestProcessSettings:
    async def test_switch_interval_is_set_and_restored(self, db: Path) -> None:
        """While the app runs the GIL switch interval is 0.5 ms; on exit the previous value is back."""
        before = sys.getswitchinterval()
        async with App(BANK, db, replicas=1) as app:
            assert sys.getswitchinterval() == 0.0005
            await app.execute(Open(account="a"))
        assert sys.getswitchinterval() == before

    async def test_switch_interval_none_leaves_it_alone(self, db: Path) -> None:
        """switch_interval=None does not touch the interpreter's setting."""
        before = sys.getswitchinterval()
        async with App(BANK, db, replicas=1, switch_interval=None):
            assert sys.getswitchinterval() == before

    async def test_gc_is_enabled_again_after_start(self, db: Path) -> None:
        """The cyclic GC, off while the log is replayed at start, is on again once the app is up."""
        assert gc.isenabled()
        async with App(BANK, db, replicas=1) as app:
            assert gc.isenabled()
            await app.execute(Open(account="a"))
        gc.unfreeze()

    async def test_failed_start_restores_settings(self, db: Path) -> None:
        """If start fails (here: the writer lock is held), the interval and the GC are restored."""
        before = sys.getswitchinterval()
        async with App(BANK, db, replicas=1):
            with pytest.raises(WriterLocked, match="already the writer"):
                async with App(BANK, db, replicas=1):
                    pass
            assert gc.isenabled()
        assert sys.getswitchinterval() == before
