"""mypy checks a domain's functions against the runtime's seams (`make types` runs mypy over tests/).

Not collected by pytest: the check is mypy's. Each deliberately wrong binding below carries a
``# type: ignore[code]`` on the line mypy must flag. ``warn_unused_ignores`` is on (mypy --strict), so if
``Domain`` stopped checking a seam (say ``decide`` were typed ``Callable[..., Any]``), that ignore would
become unused and `make types` would fail.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from soloist import Domain
from tests.toy import BANK, Account, Bank, Command, Event, Open, Opened, Query, Total, evolve, stream_of

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

Bank_ = Domain[Account, Command, Event, Query]


def decide_only_open(states: Mapping[str, Account], command: Open) -> Sequence[Event]:
    """Too narrow: the runtime hands decide every command of the domain."""
    return [Opened(account=command.account)]


def decide_returns_commands(states: Mapping[str, Account], command: Command) -> Sequence[Command]:
    """Wrong result: decide returns events, not commands."""
    return [command]


def evolve_wrong_state(state: int | None, event: Event) -> int:
    """Wrong state type for this domain."""
    return 0


def stream_of_open(event: Open) -> str:
    """Takes a command where an event is due."""
    return event.account


class TotalOnly:
    """Read models that answer only Total, so not every query of the domain."""

    def apply(self, event: object) -> None: ...

    def query(self, query: Total) -> object:
        return 0

    def snapshot(self) -> object:
        return None

    def restore(self, state: object) -> None: ...


RIGHT: Bank_ = Domain(
    name="bank",
    commands=BANK.commands,
    events=BANK.events,
    queries=BANK.queries,
    decide=BANK.decide,
    evolve=evolve,
    stream_of=stream_of,
    read_models=Bank,
)

NARROW_DECIDE: Bank_ = Domain(
    name="bank",
    commands=BANK.commands,
    events=BANK.events,
    queries=BANK.queries,
    decide=decide_only_open,  # type: ignore[arg-type]
    evolve=evolve,
    stream_of=stream_of,
    read_models=Bank,
)

DECIDE_RETURNS_COMMANDS: Bank_ = Domain(
    name="bank",
    commands=BANK.commands,
    events=BANK.events,
    queries=BANK.queries,
    decide=decide_returns_commands,  # type: ignore[arg-type]
    evolve=evolve,
    stream_of=stream_of,
    read_models=Bank,
)

WRONG_STATE: Bank_ = Domain(
    name="bank",
    commands=BANK.commands,
    events=BANK.events,
    queries=BANK.queries,
    decide=BANK.decide,
    evolve=evolve_wrong_state,  # type: ignore[arg-type]
    stream_of=stream_of,
    read_models=Bank,
)

STREAM_OF_COMMAND: Bank_ = Domain(
    name="bank",
    commands=BANK.commands,
    events=BANK.events,
    queries=BANK.queries,
    decide=BANK.decide,
    evolve=evolve,
    stream_of=stream_of_open,  # type: ignore[arg-type]
    read_models=Bank,
)

PARTIAL_READ_MODELS: Bank_ = Domain(
    name="bank",
    commands=BANK.commands,
    events=BANK.events,
    queries=BANK.queries,
    decide=BANK.decide,
    evolve=evolve,
    stream_of=stream_of,
    read_models=TotalOnly,  # type: ignore[arg-type]
)
