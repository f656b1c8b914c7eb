"""A checkpoint that fails (a read model that cannot serialise) is logged and counted, never fatal."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import anyio
from structlog.testing import capture_logs

from soloist import App
from tests.toy import BANK, Balance, Bank, Deposit, Open

if TYPE_CHECKING:
    from pathlib import Path


class PoisonBank(Bank):
    """The toy bank's read models, whose snapshot raises once an account named 'poison' exists."""

    def snapshot(self) -> object:
        if "poison" in self.balances:
            raise OverflowError("Integer exceeds 64-bit range (the poison account)")
        return super().snapshot()


POISON_BANK = dataclasses.replace(BANK, read_models=PoisonBank)


async def _wait_for_failures(app: App, count: int) -> None:
    with anyio.fail_after(10):
        while app.checkpoint_failures < count:
            await anyio.lowlevel.checkpoint()  # yields to the checkpoint task; bounded by fail_after


class TestCheckpointFailures:
    async def test_a_failing_checkpoint_does_not_stop_the_app(self, tmp_path: Path) -> None:
        """The checkpoint task logs checkpoint_failed and the app keeps taking commands and queries."""
        db, snapshots = tmp_path / "log.db", tmp_path / "snapshots"
        with capture_logs() as logs:
            async with App(POISON_BANK, db, replicas=2, snapshot_dir=snapshots, snapshot_every=1) as app:
                await app.execute(Open(account="a"))
                await app.execute(Open(account="poison"))  # from here on every checkpoint raises
                await _wait_for_failures(app, 1)
                receipt = await app.execute(Deposit(account="a", amount=5))
                answer = await app.query(Balance(account="a"), consistency="session", min_position=receipt.position)
                assert answer.result == 5
            # the final checkpoint at exit failed too, and exit was clean
        failed = [entry for entry in logs if entry["event"] == "checkpoint_failed"]
        assert len(failed) >= 2
        assert "OverflowError: Integer exceeds 64-bit range" in failed[0]["error"]
        async with App(POISON_BANK, db, replicas=1, snapshot_dir=snapshots) as again:
            answer = await again.query(Balance(account="a"), consistency="strong")
            assert answer.result == 5  # restarted from the log (and any checkpoint before the poison)
