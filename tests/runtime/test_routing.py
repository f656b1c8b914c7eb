"""One query router for the App and the socket: one behaviour when replicas fail, and waits that never leak."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import anyio
import pytest

from soloist import ActorStopped, App, Broken, ConsistencyTimeout, RecordedEvent
from soloist.net import Client
from tests.net.harness import serving
from tests.toy import BANK, Balance, Bank, Deposit, Moved, Open

if TYPE_CHECKING:
    from pathlib import Path

POISON = 666  # a deposit of this amount makes the poisoned read model raise


class PoisonedBank(Bank):
    """The toy bank's read models with a bug: a deposit of POISON crashes ``apply``."""

    def apply(self, event: RecordedEvent) -> None:
        if isinstance(event.data, Moved) and event.data.delta == POISON:
            raise RuntimeError("a bug in a projection")
        super().apply(event)


class FlakyBank(Bank):
    """Crashes on the first POISON deposit it sees in this process, then never again (a transient fault)."""

    tripped = False

    def apply(self, event: RecordedEvent) -> None:
        if isinstance(event.data, Moved) and event.data.delta == POISON and not FlakyBank.tripped:
            FlakyBank.tripped = True
            raise RuntimeError("a transient fault in a projection")
        super().apply(event)


POISONED = dataclasses.replace(BANK, read_models=PoisonedBank)
FLAKY = dataclasses.replace(BANK, read_models=FlakyBank)
HOLD_FAILED = (3600.0, 3600.0)  # rebuild back-off long enough that a failed replica stays failed in the test


class TestEveryReplicaFailed:
    async def test_app_and_socket_agree(self, tmp_path: Path) -> None:
        """With the only replica failed, query_nowait, query and the socket all raise the same error: Broken."""
        options = {"rebuild_backoff": HOLD_FAILED}
        async with serving(tmp_path, domain=POISONED, replicas=1, app_options=options) as (app, server):
            await app.execute(Open(account="a"))
            await app.execute(Deposit(account="a", amount=POISON))
            (replica,) = app.router.replicas
            with pytest.raises(ActorStopped, match="stopped at position 1"):
                await replica.wait_for(app.position, timeout=5)  # it stops at the poisoned event
            assert replica.failed
            with pytest.raises(Broken, match="every replica has failed"):
                app.query_nowait(Balance(account="a"))
            with pytest.raises(Broken, match="every replica has failed"):
                await app.query(Balance(account="a"))
            with pytest.raises(Broken, match="every replica has failed"):
                await app.query(Balance(account="a"), consistency="strong")
            async with Client.connect("127.0.0.1", server.port) as client:
                with pytest.raises(Broken, match="every replica has failed"):
                    await client.query("Balance", {"account": "a"})
                with pytest.raises(Broken, match="every replica has failed"):
                    await client.query("Balance", {"account": "a"}, consistency="session", min_position=1)


class TestFailedReplicaIsRebuilt:
    async def test_rebuilt_while_the_others_serve(self, tmp_path: Path) -> None:
        """A replica whose read model raises is marked failed, rebuilt from the log, and catches up."""
        FlakyBank.tripped = False
        async with App(FLAKY, tmp_path / "log.db", replicas=2, rebuild_backoff=(0.0, 0.0)) as app:
            await app.execute(Open(account="a"))
            receipt = await app.execute(Deposit(account="a", amount=POISON))
            # one replica tripped over the deposit; the other answers at once
            answer = await app.query(Balance(account="a"), consistency="session", min_position=receipt.position)
            assert answer.result == POISON
            with anyio.fail_after(10):  # the failed one is replaced, then its replacement catches up: no sleeps
                while not all(r.ready and r.position == receipt.position for r in app.router.replicas):
                    for replica in app.router.replicas:
                        if not replica.failed:
                            await replica.wait_for(receipt.position, timeout=10)
                    await anyio.wait_all_tasks_blocked()  # the rebuild task runs (a replaced slot)
            snapshots = [r.models.snapshot() for r in app.router.replicas]
            assert snapshots[0] == snapshots[1]
            assert not any(r.failed for r in app.router.replicas)


class TestTimedOutWaitsFree:
    async def test_socket_session_timeouts_leave_no_waiters(self, tmp_path: Path) -> None:
        """Thousands of session queries that time out leave nothing behind in the replicas."""
        async with serving(tmp_path, replicas=2) as (app, server):
            await app.execute(Open(account="a"))
            async with Client.connect("127.0.0.1", server.port) as client:

                async def one() -> None:
                    with pytest.raises(ConsistencyTimeout):
                        await client.query(
                            "Balance", {"account": "a"}, consistency="session", min_position=10**9, timeout_ms=1
                        )

                async with anyio.create_task_group() as tg:
                    for _ in range(2000):
                        tg.start_soon(one)
            assert all(r.waiters <= 32 for r in app.statistics().replicas), app.statistics().replicas

    async def test_in_process_timeouts_leave_no_waiters(self, tmp_path: Path) -> None:
        """The same through App.query: a timed-out wait frees its waiter."""
        async with App(BANK, tmp_path / "log.db", replicas=2) as app:
            for _ in range(500):
                with pytest.raises(ConsistencyTimeout):
                    await app.query(Balance(account="a"), consistency="session", min_position=10**9, timeout=0)
            assert all(r.waiters <= 32 for r in app.statistics().replicas), app.statistics().replicas
