"""Process managers' checkpoints: a start folds only what came after, and a parked event is never checkpointed."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import msgspec
from structlog.testing import capture_logs

from soloist import App, ProcessManager, RecordedEvent
from soloist._messages import encode
from tests.process.shop import order, outcome, seed, shop_with_gateway
from tests.toy import BANK, Deposit, Moved, Open, Opened

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from soloist import Step


class Owed(msgspec.Struct):
    """Accounts opened and not yet credited; a deposit of 13 cannot be folded (the poison)."""

    owed: dict[str, int] = msgspec.field(default_factory=dict)


def _evolve(state: Owed, event: RecordedEvent) -> Owed:
    data = event.data
    if isinstance(data, Moved) and data.delta == 13:
        raise ValueError("13 is unlucky")
    if isinstance(data, Opened):
        state.owed[data.account] = event.position
    return state


def _no_steps(state: Owed, now: float) -> Sequence[Step]:
    return []


OWED: ProcessManager[Owed] = ProcessManager(name="owed", initial=Owed, evolve=_evolve, steps=_no_steps, state_type=Owed)


class TestProcessCheckpoints:
    async def test_a_start_folds_from_the_checkpoint_to_the_same_state(self, tmp_path: Path) -> None:
        """The checkout's state is checkpointed with the read models; a restart restores it and folds only the
        later events, and ends with the state a fold from position 0 gives."""
        domain = shop_with_gateway(tmp_path / "charges.jsonl", deadline=600.0)
        db, snapshots = tmp_path / "shop.db", tmp_path / "snapshots"
        async with App(domain, db, replicas=1, snapshot_dir=snapshots) as app:
            await seed(app)
            await app.execute(order("o-1", "timeout-1"))  # stays open: this gateway never answers such tokens
            await app.execute(order("o-2", "tok-2"))
            assert await outcome(app, "o-2") == "captured"
            runner = app.process("checkout")
            await runner.wait_for(app.position)
            await app.checkpoint()
            checkpointed = runner.position
            await app.execute(order("o-3", "timeout-3"))  # after the checkpoint
            await runner.wait_for(app.position)
            expected = encode(runner.state)
        assert sorted(msgspec.json.decode(expected)["open"]) == ["o-1", "o-3"]
        with capture_logs() as logs:
            async with App(domain, db, replicas=1, snapshot_dir=snapshots) as app:
                restored = app.process("checkout")
                assert encode(restored.state) == expected
        (event,) = [e for e in logs if e["event"] == "process_restored"]
        assert event["position"] >= checkpointed > 0
        async with App(domain, db, replicas=1) as app:  # no snapshots: folded from position 0
            assert encode(app.process("checkout").state) == expected

    async def test_a_parked_event_is_never_checkpointed(self, tmp_path: Path) -> None:
        """Once an event was parked (then skipped), the process writes no checkpoint in that run, so a restart
        folds the poison again and parks it again instead of starting past it."""
        domain = dataclasses.replace(BANK, processes=(OWED,))
        db, snapshots = tmp_path / "bank.db", tmp_path / "snapshots"
        async with App(domain, db, replicas=1, snapshot_dir=snapshots) as app:
            first = await app.execute(Open(account="a"))
            runner = app.process("owed")
            await runner.wait_for(first.position)
            assert runner.checkpoint() == (first.position, b'{"owed":{"a":1}}')
            poison = await app.execute(Deposit(account="a", amount=13))
            await runner.wait_for(poison.position)
            assert runner.checkpoint() is None
            runner.skip(f"event:{poison.position}")
            assert runner.checkpoint() is None
        async with App(domain, db, replicas=1, snapshot_dir=snapshots) as app:
            assert [p.key for p in app.process("owed").parked] == [f"event:{poison.position}"]

    async def test_a_state_that_cannot_be_checkpointed_is_logged_and_skipped(self, tmp_path: Path) -> None:
        """A state its state_type cannot encode: the process's checkpoint fails alone (logged), the read models'
        is still written."""

        def evolve(state: Owed, event: RecordedEvent) -> Owed:
            state.owed[event.stream] = object()  # type: ignore[assignment]  # a bug: not JSON
            return state

        broken = dataclasses.replace(OWED, evolve=evolve)
        async with App(dataclasses.replace(BANK, processes=(broken,)), tmp_path / "bank.db", replicas=1,
                       snapshot_dir=tmp_path / "snapshots") as app:  # fmt: skip
            first = await app.execute(Open(account="a"))
            await app.process("owed").wait_for(first.position)
            with capture_logs() as logs:
                path = await app.checkpoint()
            assert path is not None
            (failed,) = [e for e in logs if e["event"] == "process_checkpoint_failed"]
            assert failed["process"] == "owed"
