"""A tiny bank domain for the runtime's own tests: accounts, deposits, withdrawals, transfers.

Pure decide/evolve over ``account-<id>`` streams; a transfer touches two streams in one command.
``Poison`` records a ``Poisoned`` event that :class:`FragileBank` read models fail on (a bug in a
projection, for the replica-failure tests); :func:`first_replica_fragile` makes only the first replica so.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import TYPE_CHECKING, TypeAlias, assert_never

import msgspec

from soloist import Domain, DomainError, NotFound, RecordedEvent

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


class Msg(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of the toy bank's messages."""


class Refused(Exception):
    """A business rule of the toy bank."""


class Missing(Exception):
    """A query for an unknown account."""


class Open(Msg, frozen=True, kw_only=True):
    account: str


class Deposit(Msg, frozen=True, kw_only=True):
    account: str
    amount: int


class Withdraw(Msg, frozen=True, kw_only=True):
    account: str
    amount: int


class Transfer(Msg, frozen=True, kw_only=True):
    source: str
    target: str
    amount: int


class Crash(Msg, frozen=True, kw_only=True):
    """A command whose decide raises an undeclared exception (a bug)."""

    account: str


class Poison(Msg, frozen=True, kw_only=True):
    """A command that records a Poisoned event: FragileBank read models raise on it."""

    account: str


class Opened(Msg, frozen=True, kw_only=True):
    account: str


class Moved(Msg, frozen=True, kw_only=True):
    account: str
    delta: int


class Poisoned(Msg, frozen=True, kw_only=True):
    account: str


class Balance(Msg, frozen=True, kw_only=True):
    account: str


class Total(Msg, frozen=True, kw_only=True):
    pass


class Account(Msg, frozen=True, kw_only=True):
    balance: int


Command: TypeAlias = Open | Deposit | Withdraw | Transfer | Crash | Poison
Event: TypeAlias = Opened | Moved | Poisoned
Query: TypeAlias = Balance | Total


def stream_of(event: Event) -> str:
    return f"account-{event.account}"


def _balance(states: Mapping[str, Account], account: str) -> int:
    state = states.get(f"account-{account}")
    if state is None:
        raise Refused(f"account {account!r} does not exist")
    return state.balance


def decide(states: Mapping[str, Account], command: Command) -> Sequence[Event]:
    if isinstance(command, Open):
        if f"account-{command.account}" in states:
            raise Refused(f"account {command.account!r} exists")
        return [Opened(account=command.account)]
    if isinstance(command, Deposit):
        _balance(states, command.account)
        if command.amount <= 0:
            raise Refused(f"amount must be positive, got {command.amount}")
        return [Moved(account=command.account, delta=command.amount)]
    if isinstance(command, Withdraw):
        if _balance(states, command.account) < command.amount:
            raise Refused(f"insufficient funds in {command.account!r}")
        return [Moved(account=command.account, delta=-command.amount)]
    if isinstance(command, Transfer):
        if _balance(states, command.source) < command.amount or command.amount <= 0:
            raise Refused(f"cannot move {command.amount} from {command.source!r}")
        _balance(states, command.target)
        return [
            Moved(account=command.source, delta=-command.amount),
            Moved(account=command.target, delta=command.amount),
        ]
    if isinstance(command, Crash):
        raise ZeroDivisionError("a bug in decide")
    if isinstance(command, Poison):
        _balance(states, command.account)
        return [Poisoned(account=command.account)]
    assert_never(command)


def evolve(state: Account | None, event: Event) -> Account:
    if isinstance(event, Opened):
        return Account(balance=0)
    assert state is not None
    if isinstance(event, Poisoned):
        return state
    return Account(balance=state.balance + event.delta)


class Bank:
    """Read models: balances by account, and the bank's total."""

    def __init__(self) -> None:
        self.balances: dict[str, int] = {}
        self.total = 0
        self.applied: list[int] = []

    def apply(self, event: RecordedEvent) -> None:
        self.applied.append(event.position)
        data = event.data
        if isinstance(data, Opened):
            self.balances[data.account] = 0
        elif isinstance(data, Moved):
            self.balances[data.account] += data.delta
            self.total += data.delta

    def query(self, query: Query) -> object:
        if isinstance(query, Balance):
            if query.account not in self.balances:
                raise Missing(f"no account {query.account!r}")
            return self.balances[query.account]
        return self.total

    def snapshot(self) -> object:
        return {"balances": self.balances, "total": self.total, "applied": self.applied}

    def restore(self, state: object) -> None:
        assert isinstance(state, dict)
        self.balances = dict(state["balances"])
        self.total = state["total"]
        self.applied = list(state["applied"])


BANK: Domain[Account, Command, Event, Query] = Domain(
    name="bank",
    commands=(Open, Deposit, Withdraw, Transfer, Crash, Poison),
    events=(Opened, Moved, Poisoned),
    queries=(Balance, Total),
    decide=decide,
    evolve=evolve,
    stream_of=stream_of,
    read_models=Bank,
    errors={Refused: DomainError, Missing: NotFound},
    states=(Account,),
)


class PoisonError(Exception):
    """What a fragile projection raises on a Poisoned event."""


class FragileBank(Bank):
    """Read models with a bug: applying a Poisoned event raises."""

    def apply(self, event: RecordedEvent) -> None:
        if isinstance(event.data, Poisoned):
            raise PoisonError(f"a bug in a projection at position {event.position}")
        super().apply(event)


def first_replica_fragile() -> Domain[Account, Command, Event, Query]:
    """The bank with FragileBank read models for the first replica only (replicas are made in order);
    every later one, including a rebuilt replica, gets healthy ones."""
    made = itertools.count()

    def read_models() -> Bank:
        return FragileBank() if next(made) == 0 else Bank()

    return replace(BANK, read_models=read_models)
