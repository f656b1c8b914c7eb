"""Events of the shop: facts the writer has committed, one stream per aggregate.

Streams are ``customer-{customer_id}``, ``product-{sku}`` and ``order-{order_id}``. `OrderPlaced`
carries the customer's and products' names and prices at that moment, so read models never join.
Frozen msgspec Structs, like the commands; the log stores each as its JSON.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

from .message import Message

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "EVENTS",
    "UPCASTERS",
    "CustomerRegistered",
    "Event",
    "CancelledLine",
    "OrderCancelled",
    "OrderLine",
    "OrderPlaced",
    "OrderShipped",
    "PaymentCaptured",
    "PaymentDeclined",
    "PaymentRequested",
    "PriceChanged",
    "ProductAdded",
    "ProductRestocked",
    "StockReleased",
    "StockReserved",
    "affects",
    "customer_stream",
    "order_stream",
    "product_added_v1_to_v2",
    "product_stream",
    "stream_of",
]


def customer_stream(customer_id: str) -> str:
    """Return the stream id of a customer."""
    return f"customer-{customer_id}"


def product_stream(sku: str) -> str:
    """Return the stream id of a product."""
    return f"product-{sku}"


def order_stream(order_id: str) -> str:
    """Return the stream id of an order."""
    return f"order-{order_id}"


# -- customer stream ---------------------------------------------------------------------------


class CustomerRegistered(Message, frozen=True, kw_only=True):
    customer_id: str
    name: str
    email: str


# -- product stream ----------------------------------------------------------------------------


class ProductAdded(Message, frozen=True, kw_only=True):
    """Schema version 2: ``currency`` (ISO 4217) was added; version 1 events are read through
    :func:`product_added_v1_to_v2` (every product of that time was priced in euros)."""

    __schema__ = 2  # unannotated: a class attribute, not a field

    sku: str
    name: str
    category: str
    price_cents: int
    stock: int
    description: str
    currency: str = "EUR"


def product_added_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """ProductAdded v1 -> v2: the shop sold in euros only before prices carried a currency."""
    data["currency"] = "EUR"
    return data


class PriceChanged(Message, frozen=True, kw_only=True):
    sku: str
    price_cents: int


class ProductRestocked(Message, frozen=True, kw_only=True):
    sku: str
    quantity: int


class StockReserved(Message, frozen=True, kw_only=True):
    """Units of a product taken by an order (lives on the product's stream).

    Legacy: written by soloist 0.1 after each ``OrderPlaced``; today an ``OrderPlaced`` with
    ``reserves_stock`` takes the stock itself. Still read, so that older logs replay the same.
    """

    sku: str
    order_id: str
    quantity: int


class StockReleased(Message, frozen=True, kw_only=True):
    """Units of a product given back by a cancelled order (lives on the product's stream).

    Legacy, like :class:`StockReserved`: today an ``OrderCancelled`` carries the lines it gives back.
    """

    sku: str
    order_id: str
    quantity: int


# -- order stream ------------------------------------------------------------------------------


class OrderLine(Message, frozen=True, kw_only=True):
    """One line of an `OrderPlaced`: a value, not an event; name and price as they were then."""

    sku: str
    name: str
    quantity: int
    unit_price_cents: int


class OrderPlaced(Message, frozen=True, kw_only=True):
    """An order, and (``reserves_stock``) the stock it takes from each product of its lines.

    One event per order: the single writer sees every stream's state, so the order's event also
    evolves its products' states (``affects``); measured, a ``StockReserved`` event per line on the
    product streams cost 30% of the writer's work per order. ``reserves_stock`` is False in logs
    written by soloist 0.1, where a ``StockReserved`` per line followed.
    """

    order_id: str
    customer_id: str
    customer_name: str
    lines: tuple[OrderLine, ...]
    reserves_stock: bool = False


class CancelledLine(Message, frozen=True, kw_only=True):
    """Units of one product an ``OrderCancelled`` gives back."""

    sku: str
    quantity: int


class OrderCancelled(Message, frozen=True, kw_only=True):
    """An order cancelled, and the stock it gives back (``lines``; empty in logs of soloist 0.1, where a
    ``StockReleased`` per line followed)."""

    order_id: str
    lines: tuple[CancelledLine, ...] = ()
    reason: str = ""


class PaymentRequested(Message, frozen=True, kw_only=True):
    """An order placed with a payment token: the checkout process is to capture ``amount_cents``."""

    order_id: str
    token: str
    amount_cents: int


class PaymentCaptured(Message, frozen=True, kw_only=True):
    order_id: str


class PaymentDeclined(Message, frozen=True, kw_only=True):
    """The gateway declined, or did not answer before the checkout's deadline; the order is to be cancelled."""

    order_id: str
    reason: str


class OrderShipped(Message, frozen=True, kw_only=True):
    order_id: str


Event: TypeAlias = (
    CustomerRegistered
    | ProductAdded
    | PriceChanged
    | ProductRestocked
    | StockReserved
    | StockReleased
    | OrderPlaced
    | OrderCancelled
    | OrderShipped
    | PaymentRequested
    | PaymentCaptured
    | PaymentDeclined
)

EVENTS: tuple[type, ...] = (
    CustomerRegistered,
    ProductAdded,
    PriceChanged,
    ProductRestocked,
    StockReserved,
    StockReleased,
    OrderPlaced,
    OrderCancelled,
    OrderShipped,
    PaymentRequested,
    PaymentCaptured,
    PaymentDeclined,
)

# Event type -> (stream prefix, name of the field holding the aggregate id). A dict lookup is the
# cheapest dispatch here; the writer calls stream_of once per event.
_STREAM_KEYS: dict[type, tuple[str, str]] = {
    CustomerRegistered: ("customer-", "customer_id"),
    ProductAdded: ("product-", "sku"),
    PriceChanged: ("product-", "sku"),
    ProductRestocked: ("product-", "sku"),
    StockReserved: ("product-", "sku"),
    StockReleased: ("product-", "sku"),
    OrderPlaced: ("order-", "order_id"),
    OrderCancelled: ("order-", "order_id"),
    OrderShipped: ("order-", "order_id"),
    PaymentRequested: ("order-", "order_id"),
    PaymentCaptured: ("order-", "order_id"),
    PaymentDeclined: ("order-", "order_id"),
}


def stream_of(event: object) -> str:
    """Return the id of the stream `event` belongs to; TypeError if it is not a shop event."""
    key = _STREAM_KEYS.get(type(event))
    if key is None:
        raise TypeError(f"{type(event).__qualname__} is not a shop event; expected one of {_names(EVENTS)}")
    prefix, field = key
    aggregate_id: str = getattr(event, field)
    return prefix + aggregate_id


def affects(event: object) -> tuple[str, ...]:
    """The streams besides its own whose write-model state `event` changes: an order's products."""
    if type(event) is OrderPlaced and event.reserves_stock:  # lists, then tuples: faster than generators
        return tuple([f"product-{line.sku}" for line in event.lines])
    if type(event) is OrderCancelled:
        return tuple([f"product-{line.sku}" for line in event.lines])
    return ()


def _names(types: tuple[type, ...]) -> str:
    return ", ".join(t.__name__ for t in types)


UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {
    ("ProductAdded", 1): product_added_v1_to_v2,
}
"""(event type, from schema version) -> the step to the next version; handed to the runtime by the wiring."""
