"""Commands of the shop: what a client asks the writer to do.

Field annotations are kept plain (``str``, ``int``, ``tuple[Dataclass, ...]``) because the runtime
decodes JSON into these classes by reading them with ``typing.get_type_hints``; nested dataclasses
are therefore module-level names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

__all__ = [
    "COMMANDS",
    "AddProduct",
    "CancelOrder",
    "ChangePrice",
    "Command",
    "OrderLineRequest",
    "PlaceOrder",
    "RegisterCustomer",
    "Restock",
    "ShipOrder",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterCustomer:
    customer_id: str
    name: str
    email: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AddProduct:
    sku: str
    name: str
    category: str
    price_cents: int
    stock: int
    description: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangePrice:
    sku: str
    price_cents: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Restock:
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderLineRequest:
    """One line of a `PlaceOrder` (a value inside the command, not a command itself)."""

    sku: str
    quantity: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PlaceOrder:
    order_id: str
    customer_id: str
    lines: tuple[OrderLineRequest, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelOrder:
    order_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ShipOrder:
    order_id: str


Command: TypeAlias = RegisterCustomer | AddProduct | ChangePrice | Restock | PlaceOrder | CancelOrder | ShipOrder

COMMANDS: tuple[type, ...] = (
    RegisterCustomer,
    AddProduct,
    ChangePrice,
    Restock,
    PlaceOrder,
    CancelOrder,
    ShipOrder,
)
