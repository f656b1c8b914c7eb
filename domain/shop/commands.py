"""Commands of the shop: what a client asks the writer to do.

Each is a frozen :class:`~soloist_shop.message.Message` (a msgspec Struct) that the runtime decodes
from JSON with every field checked; nested values (``OrderLineRequest``) are module-level names.
"""

from __future__ import annotations

from typing import TypeAlias

from .message import Message

__all__ = [
    "COMMANDS",
    "AddProduct",
    "CancelOrder",
    "ChangePrice",
    "Command",
    "OrderLineRequest",
    "PlaceOrder",
    "RecordPayment",
    "RegisterCustomer",
    "Restock",
    "ShipOrder",
]


class RegisterCustomer(Message, frozen=True, kw_only=True):
    customer_id: str
    name: str
    email: str


class AddProduct(Message, frozen=True, kw_only=True):
    sku: str
    name: str
    category: str
    price_cents: int
    stock: int
    description: str = ""


class ChangePrice(Message, frozen=True, kw_only=True):
    sku: str
    price_cents: int


class Restock(Message, frozen=True, kw_only=True):
    sku: str
    quantity: int


class OrderLineRequest(Message, frozen=True, kw_only=True):
    """One line of a `PlaceOrder` (a value inside the command, not a command itself)."""

    sku: str
    quantity: int


class PlaceOrder(Message, frozen=True, kw_only=True):
    order_id: str
    customer_id: str
    lines: tuple[OrderLineRequest, ...]
    payment_token: str | None = None
    """With a token, the checkout process (``checkout.py``) captures the order's total or cancels the order."""


class CancelOrder(Message, frozen=True, kw_only=True):
    order_id: str
    reason: str = ""


class RecordPayment(Message, frozen=True, kw_only=True):
    """Record what the payment gateway answered for an order placed with a token (sent by the checkout)."""

    order_id: str
    outcome: str
    """"captured" or "declined"."""
    reason: str = ""


class ShipOrder(Message, frozen=True, kw_only=True):
    order_id: str


Command: TypeAlias = (
    RegisterCustomer | AddProduct | ChangePrice | Restock | PlaceOrder | CancelOrder | ShipOrder | RecordPayment
)

COMMANDS: tuple[type, ...] = (
    RegisterCustomer,
    AddProduct,
    ChangePrice,
    Restock,
    PlaceOrder,
    CancelOrder,
    ShipOrder,
    RecordPayment,
)
