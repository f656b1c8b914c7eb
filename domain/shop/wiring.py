"""The one module that binds the pure shop to the runtime. Nothing else in domain/ imports runtime."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol, final

from soloist import BadRequest, Call, Domain, DomainError, Instances, Issue, NotFound, ProcessManager

from .checkout import (
    DEFAULT_DEADLINE,
    FOLDED,
    Capture,
    Checkout,
    CheckoutState,
    Void,
    Want,
    capture_key,
    deadline_of,
    fold,
    order_of,
    outcome_command,
    wanted_for,
)
from .commands import COMMANDS
from .decider import decide, evolve
from .errors import InvalidQuery, RuleViolation
from .errors import NotFound as ShopNotFound
from .events import EVENTS, UPCASTERS, affects, stream_of
from .payments import DemoGateway
from .queries import QUERIES
from .read_models import ShopReadModels
from .seed import seed_commands
from .state import CustomerState, OrderState, ProductState

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from soloist import RecordedEvent, Step

    from .commands import Command
    from .events import Event
    from .queries import Query
    from .state import State

__all__ = ["DEADLINE_ENV", "DOMAIN", "Gateway", "ShopReplicaModels", "checkout_process", "payment_deadline"]

DEADLINE_ENV = "SOLOIST_SHOP_PAYMENT_DEADLINE"


def payment_deadline() -> float:
    """Seconds the checkout waits for the gateway: ``$SOLOIST_SHOP_PAYMENT_DEADLINE``, else the default (5)."""
    text = os.environ.get(DEADLINE_ENV)
    if not text:
        return DEFAULT_DEADLINE
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{DEADLINE_ENV} must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise ValueError(f"{DEADLINE_ENV} must be > 0 seconds, got {value}")
    return value


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


class Gateway(Protocol):
    """What the checkout needs from a payment gateway: a capture that is idempotent by ``key``."""

    async def capture(self, key: str, *, order_id: str, amount_cents: int, token: str) -> str: ...

    async def void(self, key: str, *, order_id: str) -> str: ...


def checkout_process(
    gateway: Gateway,
    *,
    deadline: float = DEFAULT_DEADLINE,
    attempt_timeout: float = 1.0,
    backoff: tuple[float, float] = (0.1, 1.0),
) -> ProcessManager[CheckoutState]:
    """The checkout (``checkout.py``) as a process manager calling ``gateway``; ``deadline`` in seconds."""

    def evolve(state: CheckoutState, event: RecordedEvent) -> CheckoutState:
        return fold(state, event.data, event.recorded_at, deadline)

    def capturing(checkout: Checkout) -> Callable[[str], Awaitable[object]]:
        async def call(key: str) -> object:
            outcome = await gateway.capture(
                key, order_id=checkout.order_id, amount_cents=checkout.amount_cents, token=checkout.token
            )
            return outcome_command(checkout, outcome, deadline)

        return call

    def voiding(checkout: Checkout) -> Callable[[str], Awaitable[object]]:
        async def call(key: str) -> object:
            outcome = await gateway.void(capture_key(checkout.order_id), order_id=checkout.order_id)
            return outcome_command(checkout, outcome, deadline)

        return call

    def step(want: Want) -> Step:
        if isinstance(want, Capture):
            return Call(want.key, capturing(want.checkout))
        if isinstance(want, Void):
            return Call(want.key, voiding(want.checkout))
        return Issue(want.key, want.command)

    def steps(state: CheckoutState, order_id: str, now: float) -> Sequence[Step]:
        return [step(want) for want in wanted_for(state, order_id, now)]

    return ProcessManager(
        name="checkout",
        initial=CheckoutState,
        evolve=evolve,
        # one instance per order: a committed batch asks only the checkouts it touched what they want
        instances=Instances(
            of=lambda event: order_of(event.data),
            keys=lambda state: state.open,
            steps=steps,
            wake_at=deadline_of,
        ),
        events=FOLDED,  # not every order: only those placed with a payment token have a PaymentRequested
        state_type=CheckoutState,  # checkpointed with the read models: a start folds only what came after
        attempt_timeout=attempt_timeout,
        backoff=backoff,
    )


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
    # the checkout, against the demo gateway (a fake: see payments.py); tests build their own with dataclasses.replace
    processes=(checkout_process(DemoGateway.from_env(), deadline=payment_deadline()),),
)
