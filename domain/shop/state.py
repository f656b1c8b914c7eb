"""Write-model states: what the decider needs to know about one stream, nothing more."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

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


@dataclass(frozen=True, slots=True, kw_only=True)
class CustomerState:
    customer_id: str
    name: str
    email: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ProductState:
    sku: str
    name: str
    price_cents: int
    stock: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderState:
    order_id: str
    status: OrderStatus
    lines: tuple[tuple[str, int], ...]
    """(sku, quantity) pairs, in the order they were placed."""


State: TypeAlias = CustomerState | ProductState | OrderState
