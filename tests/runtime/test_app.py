"""The App as an embedding service expects it: the body's exceptions come out as themselves, the App's own
failures surface unwrapped, and the process (switch interval, GC) is left exactly as the service set it."""

from __future__ import annotations

import dataclasses
import gc
import sys
from typing import TYPE_CHECKING

import anyio
import pytest

from soloist import App, DomainError, WriterLocked
from tests.toy import BANK, Bank, Open, Withdraw

if TYPE_CHECKING:
    from pathlib import Path


class SnapshotBug(Exception):
    """Raised by read models that cannot be checkpointed."""


class UnsnapshottableBank(Bank):
    def snapshot(self) -> object:
        try:
            return {"rows": self.balances["nobody"]}
        except KeyError as exc:
            raise SnapshotBug("this read model cannot be checkpointed") from exc


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

    async def test_app_task_failure_surfaces_as_itself(self, db: Path, tmp_path: Path) -> None:
        """A failure of the App's own tasks (a checkpoint that raises) cancels the body and comes out unwrapped."""
        domain = dataclasses.replace(BANK, read_models=UnsnapshottableBank)

        async def run() -> None:
            async with App(domain, db, replicas=1, snapshot_dir=tmp_path / "snaps", snapshot_every=1) as app:
                await app.execute(Open(account="a"))
                await anyio.sleep_forever()  # the App's failure cancels this

        with pytest.raises(SnapshotBug) as caught:
            await run()
        assert caught.type is SnapshotBug
        assert isinstance(caught.value.__cause__, KeyError)  # unwrapped, with its own cause

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
