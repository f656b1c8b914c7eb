"""Queries of the shop, answered by `soloist_shop.read_models.ShopReadModels.query`."""

from __future__ import annotations

from typing import TypeAlias

from .message import Message

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


class GetProduct(Message, frozen=True, kw_only=True):
    sku: str


class SearchProducts(Message, frozen=True, kw_only=True):
    """Products whose name and description hold every word of `text`, filtered, ordered by (name, sku)."""

    text: str | None = None
    category: str | None = None
    max_price_cents: int | None = None
    in_stock: bool | None = None
    limit: int = 20


class GetOrder(Message, frozen=True, kw_only=True):
    order_id: str


class CustomerOrders(Message, frozen=True, kw_only=True):
    """A customer's orders, newest first."""

    customer_id: str
    limit: int = 20


class SalesSummary(Message, frozen=True, kw_only=True):
    pass


class TopProducts(Message, frozen=True, kw_only=True):
    """Best sellers by units sold (ties by sku)."""

    limit: int = 10


Query: TypeAlias = GetProduct | SearchProducts | GetOrder | CustomerOrders | SalesSummary | TopProducts

QUERIES: tuple[type, ...] = (GetProduct, SearchProducts, GetOrder, CustomerOrders, SalesSummary, TopProducts)
