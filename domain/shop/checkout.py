"""The checkout process: capture the payment of an order placed with a token, or compensate.

Pure code, like the decider; ``wiring.py`` binds it to the runtime as a process manager (``soloist.ProcessManager``).
Its state is the set of open checkouts, folded from the log in order:

- ``PaymentRequested`` opens a checkout, with a deadline = the event's ``recorded_at`` + ``deadline``.
- While open and before its deadline, it wants the gateway to capture the total (a call keyed by the order,
  retried with backoff by the runtime); the gateway's answer is recorded with ``RecordPayment``.
- After the deadline without a recorded answer it stops capturing and asks the gateway to *void* the order's
  key: "voided" (nothing was charged, and nothing can be any more) is recorded as declined (the gateway timed
  out); if the capture went through after all (a crash between the charge and its record), it is recorded as
  captured. So a cancelled order is never left charged.
- ``PaymentDeclined`` makes it want ``CancelOrder`` (with the reason): the same command a user would send,
  which releases the order's stock. ``PaymentCaptured``, ``OrderCancelled`` or ``OrderShipped`` close it.

Every step's key names the order and the step (``checkout:o-1:cancel``), so a replay after a crash issues
duplicates the writer recognises, and the gateway sees the same key for the same order. The deadline is
part of the state (derived from the log), so a restart recomputes it and loses no timer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, TypeAlias

from .commands import CancelOrder, RecordPayment
from .events import OrderCancelled, OrderShipped, PaymentCaptured, PaymentDeclined, PaymentRequested

__all__ = [
    "DEFAULT_DEADLINE",
    "FOLDED",
    "Capture",
    "Checkout",
    "CheckoutState",
    "Send",
    "Void",
    "Want",
    "capture_key",
    "deadline_of",
    "fold",
    "order_of",
    "outcome_command",
    "wanted_for",
]

DEFAULT_DEADLINE = 5.0
"""Seconds after ``PaymentRequested`` after which an unanswered payment is declined and the order cancelled."""


@dataclass(slots=True, kw_only=True)
class Checkout:
    order_id: str
    token: str
    amount_cents: int
    deadline: float  # wall-clock seconds
    declined: str | None = None  # the reason, once PaymentDeclined is folded


@dataclass(eq=False, slots=True)
class CheckoutState:
    open: dict[str, Checkout] = field(default_factory=dict)  # order id -> its open checkout


class Send(NamedTuple):
    """Send ``command`` under idempotency key ``key``."""

    key: str
    command: CancelOrder | RecordPayment


class Capture(NamedTuple):
    """Ask the gateway to capture ``checkout``'s total under ``key``; record the answer with ``outcome_command``."""

    key: str
    checkout: Checkout


class Void(NamedTuple):
    """Past the deadline: ask the gateway to void ``checkout``'s capture key; record the answer."""

    key: str
    checkout: Checkout


Want: TypeAlias = Send | Capture | Void


FOLDED: frozenset[type] = frozenset({PaymentRequested, PaymentDeclined, PaymentCaptured, OrderCancelled, OrderShipped})
"""The events :func:`fold` reads; it leaves the state as it is for any other."""


def capture_key(order_id: str) -> str:
    """The key of an order's capture at the gateway (and of the command recording its answer)."""
    return f"checkout:{order_id}:capture"


def fold(state: CheckoutState, event: object, recorded_at: float, deadline: float) -> CheckoutState:
    """The state after one committed event (recorded at ``recorded_at``); mutates and returns ``state``."""
    kind = type(event)
    if kind is PaymentRequested:
        assert isinstance(event, PaymentRequested)
        state.open[event.order_id] = Checkout(
            order_id=event.order_id, token=event.token, amount_cents=event.amount_cents, deadline=recorded_at + deadline
        )
    elif kind is PaymentDeclined:
        assert isinstance(event, PaymentDeclined)
        checkout = state.open.get(event.order_id)
        if checkout is not None:
            checkout.declined = event.reason
    elif isinstance(event, PaymentCaptured | OrderCancelled | OrderShipped):
        state.open.pop(event.order_id, None)
    return state


def order_of(event: object) -> str:
    """The checkout an event of :data:`FOLDED` concerns: its order's id."""
    order_id: str = event.order_id  # type: ignore[attr-defined]  # every FOLDED event names its order
    return order_id


def wanted_for(state: CheckoutState, order_id: str, now: float) -> list[Want]:
    """What the checkout of ``order_id`` wants done at wall-clock time ``now`` (nothing once it is closed)."""
    checkout = state.open.get(order_id)
    if checkout is None:
        return []
    if checkout.declined is not None:
        reason = f"payment declined: {checkout.declined}"
        return [Send(f"checkout:{order_id}:cancel", CancelOrder(order_id=order_id, reason=reason))]
    if now < checkout.deadline:
        return [Capture(capture_key(order_id), checkout)]
    return [Void(f"checkout:{order_id}:timeout", checkout)]


def deadline_of(state: CheckoutState, order_id: str) -> float | None:
    """The deadline of the checkout of ``order_id`` if it still waits for the gateway (None otherwise)."""
    checkout = state.open.get(order_id)
    return None if checkout is None or checkout.declined is not None else checkout.deadline


def outcome_command(checkout: Checkout, outcome: str, deadline: float) -> RecordPayment:
    """The command that records what the gateway answered to a capture or a void."""
    if outcome == "captured":
        return RecordPayment(order_id=checkout.order_id, outcome="captured")
    if outcome == "voided":
        reason = f"the payment gateway did not answer within {deadline:g}s"
        return RecordPayment(order_id=checkout.order_id, outcome="declined", reason=reason)
    return RecordPayment(order_id=checkout.order_id, outcome="declined", reason=f"the gateway answered {outcome}")
