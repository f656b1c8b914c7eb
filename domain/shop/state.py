"""Write-model states: what the decider needs to know about one stream, nothing more."""

from __future__ import annotations

from typing import Literal, TypeAlias

from .message import Message

__all__ = [
    "CANCELLED",
    "PLACED",
    "SHIPPED",
    "CustomerState",
    "OrderState",
    "OrderStatus",
    "ProductState",
    "State",
]

OrderStatus: TypeAlias = Literal["placed", "cancelled", "shipped"]
PLACED: OrderStatus = "placed"
CANCELLED: OrderStatus = "cancelled"
SHIPPED: OrderStatus = "shipped"


class CustomerState(Message, frozen=True, kw_only=True):
    customer_id: str
    name: str
    email: str


class ProductState(Message, frozen=True, kw_only=True):
    sku: str
    name: str
    price_cents: int
    stock: int


class OrderState(Message, frozen=True, kw_only=True):
    order_id: str
    status: OrderStatus
    lines: tuple[tuple[str, int], ...]
    """(sku, quantity) pairs, in the order they were placed."""
    payment: str | None = None
    """None (placed without a payment token), "pending", "captured" or "declined"."""


State: TypeAlias = CustomerState | ProductState | OrderState
