"""The App as an embedding service expects it: the body's exceptions come out as themselves, and the process
(switch interval, GC) is left exactly as the service set it."""

from __future__ import annotations

import gc
import sys
from typing import TYPE_CHECKING

import anyio
import pytest

from soloist import App, DomainError, WriterLocked
from tests.toy import BANK, Open, Withdraw

if TYPE_CHECKING:
    from pathlib import Path


class TestEmbedding:
    async def test_body_exception_is_not_wrapped(self, db: Path) -> None:
        """An exception raised in the body of `async with App(...)` reaches the caller as itself."""

        async def run() -> None:
            async with App(BANK, db, replicas=1) as app:
                await app.execute(Open(account="a"))
                raise KeyError("mine")

        with pytest.raises(KeyError) as caught:
            await run()
        assert caught.type is KeyError
        assert caught.value.args == ("mine",)

    async def test_runtime_error_from_the_body_is_not_wrapped(self, db: Path) -> None:
        """A runtime error the body lets escape (here a rejection) is caught by its own class outside."""

        async def run() -> None:
            async with App(BANK, db, replicas=1) as app:
                await app.execute(Open(account="a"))
                await app.execute(Withdraw(account="a", amount=5))

        with pytest.raises(DomainError, match="insufficient funds") as caught:
            await run()
        assert caught.type is DomainError

    async def test_cancelling_the_body_exits_cleanly(self, db: Path) -> None:
        """The caller's own cancel scope around the App ends it like a normal exit, the log committed."""
        with anyio.CancelScope() as scope:
            async with App(BANK, db, replicas=1) as app:
                await app.execute(Open(account="a"))
                scope.cancel()
                await anyio.sleep_forever()
        assert scope.cancelled_caught
        async with App(BANK, db, replicas=1) as again:
            assert again.position == 1


class TestProcessIsLeftAlone:
    async def test_switch_interval_and_gc_are_untouched(self, db: Path) -> None:
        """An embedded App changes neither the switch interval nor the GC's frozen set, while it runs or after."""
        interval, frozen = sys.getswitchinterval(), gc.get_freeze_count()
        async with App(BANK, db, replicas=2) as app:
            for i in range(50):
                await app.execute(Open(account=f"a{i}"))
            assert sys.getswitchinterval() == interval
            assert gc.get_freeze_count() == frozen
            assert gc.isenabled()
        async with App(BANK, db, replicas=2) as again:  # a start that replays the log
            assert again.position == 50
            assert sys.getswitchinterval() == interval
            assert gc.get_freeze_count() == frozen
            assert gc.isenabled()
        assert sys.getswitchinterval() == interval
        assert gc.get_freeze_count() == frozen

    async def test_a_disabled_gc_stays_disabled(self, db: Path) -> None:
        """If the service turned the cyclic GC off, starting an App does not turn it on."""
        gc.disable()
        try:
            async with App(BANK, db, replicas=1) as app:
                await app.execute(Open(account="a"))
                assert not gc.isenabled()
            assert not gc.isenabled()
        finally:
            gc.enable()

    async def test_failed_start_leaves_settings(self, db: Path) -> None:
        """If start fails (here: the writer lock is held), the error comes out as itself and nothing changed."""
        interval = sys.getswitchinterval()
        async with App(BANK, db, replicas=1):
            with pytest.raises(WriterLocked, match="already the writer") as caught:
                async with App(BANK, db, replicas=1):
                    pass  # pragma: no cover
            assert caught.type is WriterLocked
            assert gc.isenabled()
        assert sys.getswitchinterval() == interval
