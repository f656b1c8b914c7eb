"""Helpers for the checkout tests: the shop with a checkout against a demo gateway file, orders, and outcomes."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import anyio

from soloist_shop.commands import OrderLineRequest, PlaceOrder
from soloist_shop.events import OrderCancelled, PaymentCaptured
from soloist_shop.payments import DemoGateway
from soloist_shop.wiring import DOMAIN, checkout_process

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from soloist import App, Domain, RecordedEvent

__all__ = ["order", "outcome", "seed", "shop_with_gateway", "wait_event"]


def shop_with_gateway(
    charges: Path, *, deadline: float = 5.0, attempt_timeout: float = 1.0, backoff: tuple[float, float] = (0.05, 0.2)
) -> Domain[Any, Any, Any, Any]:
    """The shop whose checkout calls a demo gateway that keeps its charges in ``charges`` (JSON lines)."""
    process = checkout_process(
        DemoGateway(charges, durable=False), deadline=deadline, attempt_timeout=attempt_timeout, backoff=backoff
    )
    return dataclasses.replace(DOMAIN, processes=(process,))


async def seed(app: App) -> None:
    """The demo catalogue and customers (the seed `soloist serve` runs on an empty log)."""
    assert DOMAIN.seed is not None
    for command in DOMAIN.seed():
        await app.execute(command)


def order(order_id: str, token: str | None, *, sku: str = "BK-002", quantity: int = 2) -> PlaceOrder:
    """A PlaceOrder by c-ada for ``quantity`` of ``sku`` (BK-002 costs 5500 and starts with 20 in stock)."""
    lines = (OrderLineRequest(sku=sku, quantity=quantity),)
    return PlaceOrder(order_id=order_id, customer_id="c-ada", lines=lines, payment_token=token)


async def outcome(app: App, order_id: str, *, within: float = 10.0) -> str:
    """Wait (bounded) for the order's checkout to end: "captured", or "cancelled: <reason>"."""
    with anyio.fail_after(within):
        async with app.subscribe(0) as events:
            async for batch in events:
                for event in batch.events:
                    data = event.data
                    if isinstance(data, PaymentCaptured) and data.order_id == order_id:
                        return "captured"
                    if isinstance(data, OrderCancelled) and data.order_id == order_id:
                        return f"cancelled: {data.reason}"
    raise AssertionError("the subscription ended")  # pragma: no cover


async def wait_event(app: App, matches: Callable[[object], bool], *, within: float = 10.0) -> RecordedEvent:
    """Wait (bounded) for the first committed event whose data ``matches``."""
    with anyio.fail_after(within):
        async with app.subscribe(0) as events:
            async for batch in events:
                for event in batch.events:
                    if matches(event.data):
                        return event
    raise AssertionError("the subscription ended")  # pragma: no cover
