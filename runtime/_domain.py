"""What the runtime needs from a domain: pure decide/evolve, message types, read models, error mapping.

A domain never imports the runtime. One small wiring module on the domain's side builds a
:class:`Domain` from the domain's pure functions; the runtime only sees this bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from ._errors import CQRSError
    from ._messages import RecordedEvent

__all__ = ["Domain", "ReadModels"]

S = TypeVar("S")


class ReadModels(Protocol):
    """One replica's denormalised read models: applies events in log order and answers queries.

    No business rules live here. ``snapshot`` returns JSON-native data that ``restore`` accepts.
    """

    def apply(self, event: RecordedEvent) -> None: ...

    def query(self, query: object) -> object: ...

    def snapshot(self) -> object: ...

    def restore(self, state: object) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Domain(Generic[S]):
    """A domain bound to the runtime.

    - ``decide(states, command) -> events``: pure; ``states`` maps stream id -> that stream's state
      (absent = no events yet). Raises one of ``errors``' keys to reject.
    - ``evolve(state | None, event) -> state``: pure; the new state of ``stream_of(event)``.
    - ``errors``: domain exception class -> runtime error class (e.g. ``RuleViolation -> DomainError``).
    - ``seed``: commands to run when the log is empty (used by ``soloist serve``).
    - ``states``: the classes ``evolve`` returns; without them the write model is rebuilt from the log.
    """

    name: str
    commands: Sequence[type]
    events: Sequence[type]
    queries: Sequence[type]
    decide: Callable[[Mapping[str, S], Any], Sequence[object]]
    evolve: Callable[[S | None, Any], S]
    stream_of: Callable[[Any], str]
    read_models: Callable[[], ReadModels]
    errors: Mapping[type[Exception], type[CQRSError]] = field(default_factory=dict)
    states: Sequence[type] = ()  # the write-model state classes (Structs): lets the writer checkpoint its model
    seed: Callable[[], Sequence[object]] | None = None

    def translate(self, exc: Exception) -> CQRSError | None:
        """The runtime error for a domain exception, or None if the domain did not declare it."""
        for cls in type(exc).__mro__:
            target = self.errors.get(cls) if issubclass(cls, Exception) else None
            if target is not None:
                error = target(str(exc))
                error.__cause__ = exc
                return error
        return None
