"""Queries of the shop, answered by `soloist_shop.read_models.ShopReadModels.query`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

__all__ = [
    "MAX_LIMIT",
    "QUERIES",
    "CustomerOrders",
    "GetOrder",
    "GetProduct",
    "Query",
    "SalesSummary",
    "SearchProducts",
    "TopProducts",
]

MAX_LIMIT = 100
"""Largest ``limit`` any query accepts (the smallest is 1)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GetProduct:
    sku: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchProducts:
    """Products whose name and description hold every word of `text`, filtered, ordered by (name, sku)."""

    text: str | None = None
    category: str | None = None
    max_price_cents: int | None = None
    in_stock: bool | None = None
    limit: int = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class GetOrder:
    order_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CustomerOrders:
    """A customer's orders, newest first."""

    customer_id: str
    limit: int = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class SalesSummary:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class TopProducts:
    """Best sellers by units sold (ties by sku)."""

    limit: int = 10


Query: TypeAlias = GetProduct | SearchProducts | GetOrder | CustomerOrders | SalesSummary | TopProducts

QUERIES: tuple[type, ...] = (GetProduct, SearchProducts, GetOrder, CustomerOrders, SalesSummary, TopProducts)
