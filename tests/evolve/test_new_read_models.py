"""New read-model code in a running App: installed by a rebuild, kept by later rebuilds, versioned checkpoints."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import anyio
from structlog.testing import capture_logs

from soloist import App, Broken, RecordedEvent
from soloist._digest import replay_digest
from tests.toy import BANK, Balance, Bank, Deposit, Moved, Msg, Open, Total

if TYPE_CHECKING:
    from pathlib import Path

    from soloist._replica import Replica

POISON = 666  # the first deposit of this amount in this process makes DepositCounts raise once


class Deposits(Msg, frozen=True, kw_only=True):
    """The new query: how many deposits an account has had."""

    account: str


class DepositCounts(Bank):
    """The bank's read models plus a new one (deposits per account); trips once on the first POISON deposit."""

    tripped = False

    def __init__(self) -> None:
        super().__init__()
        self.deposits: dict[str, int] = {}

    def apply(self, event: RecordedEvent) -> None:
        data = event.data
        if isinstance(data, Moved) and data.delta > 0:
            if data.delta == POISON and not DepositCounts.tripped:
                DepositCounts.tripped = True
                raise RuntimeError("a transient fault in the new projection")
            self.deposits[data.account] = self.deposits.get(data.account, 0) + 1
        super().apply(event)

    def query(self, query: object) -> object:
        if isinstance(query, Deposits):
            return self.deposits.get(query.account, 0)
        assert isinstance(query, Balance | Total)
        return super().query(query)

    def snapshot(self) -> object:
        state = super().snapshot()
        assert isinstance(state, dict)
        return {**state, "deposits": self.deposits}

    def restore(self, state: object) -> None:
        super().restore(state)
        assert isinstance(state, dict)
        self.deposits = dict(state["deposits"])


BANK_V2 = dataclasses.replace(BANK, read_models=DepositCounts, read_models_version=2)


async def _all_settled(app: App, position: int) -> None:
    """Wait until every routed replica is healthy, ready and at ``position`` (a failed one is rebuilt first)."""

    def settled(replica: Replica) -> bool:
        return not replica.failed and replica.ready and replica.position >= position

    with anyio.fail_after(10):
        while not all(settled(r) for r in app.router.replicas):
            await anyio.wait_all_tasks_blocked()


class TestNewReadModelInARunningApp:
    async def test_installed_by_a_rebuild_and_kept_by_the_automatic_one(self, tmp_path: Path) -> None:
        """A read model added by rebuild answers its new query, and a failed replica is rebuilt with it."""
        DepositCounts.tripped = False
        db, snaps = tmp_path / "bank.db", tmp_path / "snaps"
        async with App(BANK, db, replicas=2, rebuild_backoff=(0.0, 0.0), snapshot_dir=snaps) as app:
            await app.execute(Open(account="a"))
            await app.execute(Deposit(account="a", amount=5))
            await app.execute(Deposit(account="a", amount=7))
            assert all(type(r.models) is Bank for r in app.router.replicas)  # the domain's code
            digests = await app.rebuild(read_models=DepositCounts)
            assert len(digests) == 2
            assert (await app.query(Deposits(account="a"), consistency="strong")).result == 2
            swapped = list(app.router.replicas)
            receipt = await app.execute(Deposit(account="a", amount=POISON))  # one replica trips on it
            tripped = []
            for replica in swapped:
                try:
                    await replica.wait_for(receipt.position, timeout=10)
                except Broken:
                    tripped.append(replica)
            assert len(tripped) == 1
            await _all_settled(app, receipt.position)
            assert tripped[0] not in app.router.replicas  # replaced by the automatic rebuild...
            for replica in app.router.replicas:  # ...which runs the installed code, not the domain's
                assert isinstance(replica.models, DepositCounts)
                assert replica.models_version == 2
                assert replica.query_nowait(Deposits(account="a")).result == 3
        # its checkpoints carry version 2: restored by code that declares it, skipped by the old code
        async with App(BANK_V2, db, replicas=1, snapshot_dir=snaps) as app:
            (replica,) = app.router.replicas
            assert replica.statistics().applied == 0  # restored, nothing replayed
            assert replica.query_nowait(Deposits(account="a")).result == 3
        with capture_logs() as logs:
            async with App(BANK, db, replicas=1, snapshot_dir=snaps) as app:
                assert app.router.replicas[0].statistics().applied == 4  # replayed from the log
                assert app.query_nowait(Balance(account="a")).result == 5 + 7 + POISON
        assert "snapshot_rejected" in [entry["event"] for entry in logs]


class TestCheckpointVersion:
    async def test_a_checkpoint_of_another_version_is_replayed_not_restored(self, tmp_path: Path) -> None:
        """Written under read-model version 1, a checkpoint is skipped under version 2: same answers, from the log."""
        db, snaps = tmp_path / "bank.db", tmp_path / "snaps"
        async with App(BANK, db, replicas=1, snapshot_dir=snaps) as app:
            await app.execute(Open(account="a"))
            await app.execute(Deposit(account="a", amount=5))
        assert len(list(snaps.glob("bank-*.snapshot"))) == 1  # the final checkpoint, version 1
        with capture_logs() as logs:
            async with App(BANK_V2, db, replicas=1, snapshot_dir=snaps) as app:
                (replica,) = app.router.replicas
                assert replica.statistics().applied == 2  # replayed from the log, not restored
                assert replica.query_nowait(Deposits(account="a")).result == 1
                assert replica.query_nowait(Balance(account="a")).result == 5
                assert replica.models.snapshot() == {
                    "balances": {"a": 5},
                    "total": 5,
                    "applied": [1, 2],
                    "deposits": {"a": 1},
                }
        rejected = [entry for entry in logs if entry["event"] == "snapshot_rejected"]
        assert len(rejected) == 1
        assert "schema 1, need 'bank' schema 2" in rejected[0]["reason"]
        assert replay_digest(BANK_V2, db).position == 2
