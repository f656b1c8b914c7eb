"""The process runner on the toy bank: poison events parked while others flow, parked steps, operators, rejections.

Every runner test runs twice: with ``steps`` over the whole state, and with the same process declared per
instance (``Instances``, one per account).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import pytest

from soloist import App, Instances, Issue, NotFound, ProcessManager, RecordedEvent
from tests.process.shop import wait_event
from tests.toy import BANK, Balance, Crash, Deposit, Moved, Open, Opened, Poisoned, Withdraw

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from contextlib import AbstractAsyncContextManager

    from soloist import Domain, Step
    from soloist.net import Client

    AppFactory = Callable[..., AbstractAsyncContextManager[App]]
    ClientFactory = Callable[..., AbstractAsyncContextManager[Client]]


class Bonus:
    """A welcome bonus per opened account; folding a deposit of 13 raises (a bug: the poison)."""

    def __init__(self) -> None:
        self.owed: dict[str, int] = {}  # account -> position of its Opened


def _evolve(state: Bonus, event: RecordedEvent) -> Bonus:
    data = event.data
    if isinstance(data, Moved) and data.delta == 13:
        raise ValueError(f"13 is unlucky (position {event.position})")
    if isinstance(data, Opened):
        state.owed[data.account] = event.position
    elif isinstance(data, Moved) and data.delta in (1, -(10**6)):
        state.owed.pop(data.account, None)
    return state


def _pay(account: str, position: int) -> Step:
    key = f"bonus:{position}:pay"
    if account.startswith("crash"):
        return Issue(key, Crash(account=account))  # decide raises a bug: InternalError, parked
    if account.startswith("broke"):
        return Issue(key, Withdraw(account=account, amount=10**6))  # refused: counted, not parked
    return Issue(key, Deposit(account=account, amount=1))


def _steps(state: Bonus, now: float) -> Sequence[Step]:
    return [_pay(account, position) for account, position in state.owed.items()]


def _steps_of(state: Bonus, account: str, now: float) -> Sequence[Step]:
    position = state.owed.get(account)
    return [] if position is None else [_pay(account, position)]


def _account_of(event: RecordedEvent) -> str:
    data = event.data
    assert isinstance(data, Opened | Moved | Poisoned)  # every bank event names its account
    return data.account


BONUS: ProcessManager[Bonus] = ProcessManager(name="bonus", initial=Bonus, evolve=_evolve, steps=_steps)
BONUS_BY_ACCOUNT: ProcessManager[Bonus] = ProcessManager(
    name="bonus",
    initial=Bonus,
    evolve=_evolve,
    instances=Instances(of=_account_of, keys=lambda state: state.owed, steps=_steps_of),
)


def bank_with_bonus(bonus: ProcessManager[Bonus] = BONUS) -> Domain[Any, Any, Any, Any]:
    return dataclasses.replace(BANK, processes=(bonus,))


@pytest.fixture(params=["whole state", "per instance"])
def bonus_manager(request: pytest.FixtureRequest) -> ProcessManager[Bonus]:
    return BONUS if request.param == "whole state" else BONUS_BY_ACCOUNT


def _by_account(**changes: Any) -> ProcessManager[Bonus]:
    """BONUS_BY_ACCOUNT with some of its Instances' functions replaced (a test's own ``of``, ``steps``, ``wake_at``)."""
    instances = dataclasses.replace(BONUS_BY_ACCOUNT.instances, **changes)  # type: ignore[type-var]
    return dataclasses.replace(BONUS_BY_ACCOUNT, instances=instances)


async def _open(app: App, accounts: Sequence[str]) -> None:
    """Open the accounts, one command each, in order."""
    for account in accounts:
        await app.execute(Open(account=account))


async def _bonus_paid(app: App, account: str) -> RecordedEvent:
    """The bonus deposit of ``account``, once committed."""
    return await wait_event(app, lambda e: isinstance(e, Moved) and e.account == account and e.delta == 1)


async def _balance(app: App, account: str) -> object:
    return (await app.query(Balance(account=account), consistency="strong")).result


class TestProcessRunner:
    async def test_issues_keyed_commands_once(
        self, soloist_app: AppFactory, bonus_manager: ProcessManager[Bonus]
    ) -> None:
        """Each opened account gets its bonus once, under a key derived from the causing event."""
        async with soloist_app(bank_with_bonus(bonus_manager)) as app:
            receipt = await app.execute(Open(account="a"))
            runner = app.process("bonus")
            await runner.wait_for(receipt.position + 1)  # the bonus deposit follows the Opened
            assert await _balance(app, "a") == 1
            assert runner.statistics().issued == 1

    async def test_a_poison_event_is_parked_and_the_others_continue(
        self, soloist_app: AppFactory, bonus_manager: ProcessManager[Bonus]
    ) -> None:
        """evolve raising on one event parks it (visible in stats); later events are folded and acted on."""
        async with soloist_app(bank_with_bonus(bonus_manager)) as app:
            await app.execute(Open(account="a"))
            poison = await app.execute(Deposit(account="a", amount=13))
            await app.execute(Open(account="b"))
            runner = app.process("bonus")
            bonus = await _bonus_paid(app, "b")
            await runner.wait_for(bonus.position)
            (parked,) = runner.statistics().parked
            assert (parked.key, parked.kind, parked.position) == (f"event:{poison.position}", "event", poison.position)
            assert "13 is unlucky" in parked.error
            stats = app.statistics().processes[0]
            assert stats.last_error is not None
            assert stats.last_error.startswith(f"event:{poison.position}")

    async def test_operator_retry_and_skip(self, soloist_app: AppFactory, bonus_manager: ProcessManager[Bonus]) -> None:
        """retry folds a parked event again (still failing: parked again); skip drops it; unknown keys are NotFound."""
        async with soloist_app(bank_with_bonus(bonus_manager)) as app:
            await app.execute(Open(account="a"))
            poison = await app.execute(Deposit(account="a", amount=13))
            runner = app.process("bonus")
            await runner.wait_for(poison.position)
            key = f"event:{poison.position}"
            runner.retry(key)
            assert [p.key for p in runner.parked] == [key]
            runner.skip(key)
            assert runner.parked == ()
            with pytest.raises(NotFound, match="no parked item"):
                runner.skip(key)
            with pytest.raises(NotFound, match="no process manager named 'nope'"):
                app.process("nope")

    async def test_a_step_that_cannot_succeed_is_parked(
        self, soloist_app: AppFactory, bonus_manager: ProcessManager[Bonus]
    ) -> None:
        """A command that crashes the decider parks its step (others still run); retry runs it again."""
        async with soloist_app(bank_with_bonus(bonus_manager)) as app:
            await app.execute(Open(account="crash-1"))
            await app.execute(Open(account="c"))
            runner = app.process("bonus")
            bonus = await _bonus_paid(app, "c")
            await runner.wait_for(bonus.position)
            (parked,) = runner.parked
            assert (parked.key, parked.kind) == ("bonus:1:pay", "step")
            assert "InternalError" in parked.error
            runner.retry("bonus:1:pay")
            assert runner.parked == ()  # unparked now; it runs again (and fails again) on the next turn

    async def test_a_refused_command_is_counted_not_parked(
        self, soloist_app: AppFactory, bonus_manager: ProcessManager[Bonus]
    ) -> None:
        """A command the domain refuses is counted as rejected with its reason and not issued again."""
        async with soloist_app(bank_with_bonus(bonus_manager)) as app:
            await app.execute(Open(account="broke-1"))
            after = await app.execute(Open(account="d"))
            runner = app.process("bonus")
            await runner.wait_for(after.position + 1)
            stats = runner.statistics()
            assert (stats.rejected, stats.parked) == (1, ())
            assert stats.last_error is not None
            assert "insufficient funds" in stats.last_error

    async def test_only_the_declared_events_are_folded(
        self, soloist_app: AppFactory, bonus_manager: ProcessManager[Bonus]
    ) -> None:
        """A manager declaring the events it reads is handed only those; the others just advance its position."""
        seen: list[type] = []

        def evolve(state: Bonus, event: RecordedEvent) -> Bonus:
            seen.append(type(event.data))
            return _evolve(state, event)  # the poison (a Moved of 13) would be parked if it were handed over

        manager = dataclasses.replace(bonus_manager, evolve=evolve, events=frozenset({Opened}))
        async with soloist_app(dataclasses.replace(BANK, processes=(manager,))) as app:
            await app.execute(Open(account="a"))
            last = await app.execute(Deposit(account="a", amount=13))
            runner = app.process("bonus")
            await runner.wait_for(last.position)
            assert runner.position >= last.position
            assert set(seen) == {Opened}
            assert runner.parked == ()

    async def test_duplicate_names_are_refused(self) -> None:
        """Two process managers with one name: ValueError naming it."""
        with pytest.raises(ValueError, match="bonus"):
            App(dataclasses.replace(BANK, processes=(BONUS, BONUS)), "unused.db")


class TestInstances:
    async def test_a_batch_asks_only_the_instances_it_touched(self, soloist_app: AppFactory) -> None:
        """Per instance, a new account's events ask that account what it wants, not every account still owed.

        20 accounts stay owed for good (their bonus is refused: not wanted again). With steps over the whole
        state every pass asks all 20 again: ten new accounts, two passes or more each, 400 asks or more.
        """
        asked: list[str] = []

        def steps_of(state: Bonus, account: str, now: float) -> Sequence[Step]:
            asked.append(account)
            return _steps_of(state, account, now)

        manager = _by_account(steps=steps_of)
        async with soloist_app(bank_with_bonus(manager)) as app:
            runner = app.process("bonus")
            owed = [f"broke-{i}" for i in range(20)]
            await _open(app, owed)
            await app.execute(Open(account="sync"))  # its bonus is paid after the 20 refusals were decided
            paid = await _bonus_paid(app, "sync")
            await runner.wait_for(paid.position)
            asked.clear()
            for i in range(10):
                await app.execute(Open(account=f"n{i}"))
                paid = await _bonus_paid(app, f"n{i}")
                await runner.wait_for(paid.position)
            again = [a for a in asked if a in owed]
            # at most twice each: a pass still due from before, and the end of its refused step
            assert len(again) <= 2 * len(owed), again
            assert {f"n{i}" for i in range(10)} <= set(asked)
            stats = runner.statistics()
            assert stats.rejected == 20
            assert stats.issued >= 10  # the last new account's step may still be ending
            assert len(runner.state.owed) == 20

    async def test_instances_waiting_for_a_slot_all_get_their_turn(self, soloist_app: AppFactory) -> None:
        """One step at a time (max_in_flight=1): every account still gets its bonus, in turn."""
        manager = dataclasses.replace(BONUS_BY_ACCOUNT, max_in_flight=1)
        async with soloist_app(bank_with_bonus(manager)) as app:
            accounts = [f"a{i}" for i in range(15)]
            await _open(app, accounts)
            for account in accounts:
                await _bonus_paid(app, account)
            assert [await _balance(app, a) for a in accounts] == [1] * len(accounts)
            assert app.process("bonus").statistics().parked == ()

    async def test_an_event_whose_instance_cannot_be_named_is_parked(self, soloist_app: AppFactory) -> None:
        """``of`` raising parks the event as ``evolve`` raising does (state unchanged); the others flow."""

        def account_of(event: RecordedEvent) -> str:
            if isinstance(event.data, Opened) and event.data.account == "nameless":
                raise KeyError("no instance for this account")
            return _account_of(event)

        manager = _by_account(of=account_of)
        async with soloist_app(bank_with_bonus(manager)) as app:
            bad = await app.execute(Open(account="nameless"))
            await app.execute(Open(account="b"))
            runner = app.process("bonus")
            paid = await _bonus_paid(app, "b")
            await runner.wait_for(paid.position)
            (parked,) = runner.parked
            assert (parked.key, parked.kind) == (f"event:{bad.position}", "event")
            assert "no instance for this account" in parked.error
            assert "nameless" not in runner.state.owed
            assert await _balance(app, "nameless") == 0

    async def test_timers_of_closed_instances_do_not_pile_up(self, soloist_app: AppFactory) -> None:
        """Each owed account has a timer far in the future; once paid it has none, and the runner's heap of
        timers is compacted instead of keeping one stale entry per account ever opened."""

        def far_off(state: Bonus, account: str) -> float | None:
            position = state.owed.get(account)
            return None if position is None else 1e12 + position

        manager = _by_account(wake_at=far_off)
        async with soloist_app(bank_with_bonus(manager)) as app:
            runner = app.process("bonus")
            accounts = [f"t{i}" for i in range(150)]
            await _open(app, accounts)
            for account in accounts:
                paid = await _bonus_paid(app, account)
            await runner.wait_for(paid.position)
            # the pass that starts this account's bonus comes after every other payment was folded
            await app.execute(Open(account="last"))
            await _bonus_paid(app, "last")
            assert runner.statistics().issued >= len(accounts)  # "last"'s step may still be ending
            assert set(runner._wake_of) <= {"last"}
            assert len(runner._timers) <= 2 * 1 + 64, len(runner._timers)  # 151 without the compaction
            # an account that stays owed (its bonus is refused) keeps a live timer, which stats report
            await app.execute(Open(account="broke-z"))
            await app.execute(Open(account="sync"))  # its bonus starts in a pass after broke-z was asked
            await _bonus_paid(app, "sync")
            assert "broke-z" in runner._wake_of
            wake_in = runner.statistics().next_wake_in_s
            assert wake_in is not None
            assert wake_in > 1e11

    def test_steps_or_instances_exactly_one(self) -> None:
        """A manager declares steps over the whole state or instances, not both nor neither; timers go with them."""
        instances = BONUS_BY_ACCOUNT.instances
        with pytest.raises(ValueError, match="exactly one"):
            ProcessManager(name="x", initial=Bonus, evolve=_evolve)
        with pytest.raises(ValueError, match="exactly one"):
            ProcessManager(name="x", initial=Bonus, evolve=_evolve, steps=_steps, instances=instances)
        with pytest.raises(ValueError, match="wake_at belongs to Instances"):
            ProcessManager(name="x", initial=Bonus, evolve=_evolve, instances=instances, wake_at=lambda s: None)

    def test_the_whole_state_view_of_instances(self) -> None:
        """wanted() and next_wake() of a per-instance manager: every instance's steps, the earliest timer."""
        state = Bonus()
        state.owed.update({"a": 3, "b": 5})
        assert [s.key for s in BONUS_BY_ACCOUNT.wanted(state, 0.0)] == ["bonus:3:pay", "bonus:5:pay"]
        assert [s.key for s in BONUS.wanted(state, 0.0)] == ["bonus:3:pay", "bonus:5:pay"]
        assert BONUS_BY_ACCOUNT.next_wake(state) is None
        timed = dataclasses.replace(
            BONUS_BY_ACCOUNT,
            instances=Instances(
                of=_account_of, keys=lambda s: s.owed, steps=_steps_of, wake_at=lambda s, a: s.owed[a] * 10.0
            ),
        )
        assert timed.next_wake(state) == 30.0


class TestProcessOp:
    async def test_an_operator_skips_a_parked_event_over_the_socket(
        self, soloist_app: AppFactory, soloist_client: ClientFactory
    ) -> None:
        """`process` op: retry leaves a still-failing event parked, skip drops it; unknown names are not_found."""
        async with soloist_app(bank_with_bonus()) as app, soloist_client(app) as client:
            await app.execute(Open(account="a"))
            poison = await app.execute(Deposit(account="a", amount=13))
            await app.process("bonus").wait_for(poison.position)
            key = f"event:{poison.position}"
            stats = await client.stats()
            assert [p["key"] for p in stats["processes"][0]["parked"]] == [key]  # type: ignore[index]
            retried = await client.request({"id": 1, "op": "process", "name": "bonus", "action": "retry", "key": key})
            assert retried["result"] == {"parked": [key]}
            skipped = await client.request({"id": 2, "op": "process", "name": "bonus", "action": "skip", "key": key})
            assert skipped["result"] == {"parked": []}
            missing = await client.request({"id": 3, "op": "process", "name": "x", "action": "skip", "key": key})
            assert missing["error"]["code"] == "not_found"  # type: ignore[index]
            bad = await client.request({"id": 4, "op": "process", "name": "bonus", "action": "redo", "key": key})
            assert bad["error"]["code"] == "bad_request"  # type: ignore[index]
