"""The one module that binds the pure shop to the runtime. Nothing else in domain/ imports runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from soloist import BadRequest, Domain, DomainError, NotFound

from .commands import COMMANDS
from .decider import decide, evolve
from .errors import InvalidQuery, RuleViolation
from .errors import NotFound as ShopNotFound
from .events import EVENTS, UPCASTERS, affects, stream_of
from .queries import QUERIES
from .read_models import ShopReadModels
from .seed import seed_commands
from .state import CustomerState, OrderState, ProductState

if TYPE_CHECKING:
    from collections.abc import Callable

    from soloist import RecordedEvent

    from .commands import Command
    from .events import Event
    from .queries import Query
    from .state import State

__all__ = ["DOMAIN", "ShopReplicaModels"]


@final
class ShopReplicaModels:
    """Adapts :class:`ShopReadModels` (which takes a domain event and a position) to ``soloist.ReadModels``."""

    __slots__ = ("_apply", "models", "query")

    def __init__(self) -> None:
        self.models = ShopReadModels()
        self._apply = self.models.apply
        self.query: Callable[[object], object] = self.models.query  # bound once: no hop per query

    def apply(self, event: RecordedEvent) -> None:
        self._apply(event.data, event.position)

    def snapshot(self) -> object:
        return self.models.snapshot()

    def restore(self, state: object) -> None:
        if not isinstance(state, dict):
            raise TypeError(f"a shop snapshot is a JSON object, got {type(state).__name__}")
        self.models.restore(state)


# Declared with its four types, so mypy checks decide/evolve/stream_of/read_models against the runtime's seams.
DOMAIN: Domain[State, Command, Event, Query] = Domain(
    name="shop",
    commands=COMMANDS,
    events=EVENTS,
    queries=QUERIES,
    decide=decide,
    evolve=evolve,
    stream_of=stream_of,
    read_models=ShopReplicaModels,
    errors={RuleViolation: DomainError, ShopNotFound: NotFound, InvalidQuery: BadRequest},
    seed=seed_commands,
    states=(CustomerState, ProductState, OrderState),
    affects=affects,
    upcasters=UPCASTERS,
)
