"""The read side of one replica: catalogue + search, orders, analytics, in one object.

`ShopReadModels.apply` folds committed events (exactly once, in log order) into three models:

* **catalogue**: one JSON-native record per product, plus derived indexes: an inverted index
  (word -> skus, words being ``re.findall(r"\\w+", s.casefold())`` of name and description),
  category -> skus, and the skus ranked by (name, sku), re-ranked lazily after products are added
  (names never change), so results sort by a C-level rank lookup and an unfiltered listing is
  O(limit);
* **orders**: a column store, one row per order in log order (id, status, customer id and name,
  total, item count, first line) and one row per order line (sku, name, quantity, unit price),
  plus derived indexes order id -> row and customer id -> rows;
* **analytics**: running sales totals, and units sold / revenue inside each product record.

Why columns for orders: a million-event shop holds hundreds of thousands of orders (267k in our
test log, with 10k products). As one dict per order and per line, its snapshot was 91 MB and took
orjson 2.5 s to load on this machine, nearly all of it allocating and garbage-collecting millions
of small containers. As a dozen flat lists of strs and ints it is 23 MB, loads in ~0.2 s, and
`restore` adds ~0.15 s (rebuilding the derived indexes). Appending to lists is also cheaper than
building dicts in `apply` (1.0 us/event on that log, against 3.6 us). The lists are the snapshot
itself: `snapshot` hands out the live containers and `restore` adopts freshly decoded ones.

`apply` and `query` are hot paths: both dispatch through a dict of type -> bound method, and the
event handlers touch only the rows they change.
"""

from __future__ import annotations

import heapq
import re
from collections import defaultdict
from itertools import islice
from typing import TYPE_CHECKING, Final, TypedDict, cast, final

from .errors import InvalidQuery, NotFound
from .events import (
    OrderCancelled,
    OrderPlaced,
    OrderShipped,
    PaymentCaptured,
    PaymentDeclined,
    PaymentRequested,
    PriceChanged,
    ProductAdded,
    ProductRestocked,
    StockReleased,
    StockReserved,
)
from .queries import (
    MAX_LIMIT,
    CustomerOrders,
    GetOrder,
    GetProduct,
    SalesSummary,
    SearchProducts,
    TopProducts,
)
from .state import CANCELLED, PLACED, SHIPPED

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping

__all__ = ["SNAPSHOT_VERSION", "ShopReadModels", "words_of"]

SNAPSHOT_VERSION: Final = 1
"""Version of the `ShopReadModels.snapshot` layout; `restore` refuses any other."""

_WORD = re.compile(r"\w+")


def words_of(text: str) -> list[str]:
    """Return the search words of `text`: runs of word characters, casefolded."""
    return _WORD.findall(text.casefold())


class _Product(TypedDict):
    sku: str
    name: str
    category: str
    description: str
    price_cents: int
    stock: int
    currency: str  # ISO 4217 (ProductAdded v2; "EUR" for products added before)
    units_sold: int  # units in orders that are not cancelled
    revenue_cents: int  # sum of quantity * unit price over those orders


class _Sales(TypedDict):
    orders_placed: int
    orders_cancelled: int
    orders_shipped: int
    units_sold: int
    revenue_cents: int


def _new_sales() -> _Sales:
    return {
        "orders_placed": 0,
        "orders_cancelled": 0,
        "orders_shipped": 0,
        "units_sold": 0,
        "revenue_cents": 0,
    }


def _check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidQuery("limit", limit, 1, MAX_LIMIT)
    return limit


def _search_item(product: _Product) -> dict[str, object]:
    return {
        "sku": product["sku"],
        "name": product["name"],
        "category": product["category"],
        "price_cents": product["price_cents"],
        "stock": product["stock"],
    }


def _best_seller(product: _Product) -> tuple[int, str]:
    return (-product["units_sold"], product["sku"])


def _column(table: Mapping[str, object], name: str, length: int | None) -> list[object]:
    column = table[name]
    if not isinstance(column, list) or (length is not None and len(column) != length):
        raise ValueError(f"snapshot column {name!r} is not a list of {length} values")
    return column


def _str_map(data: Mapping[str, object], name: str) -> dict[str, str]:
    """A str -> str mapping of a snapshot; absent in snapshots written before payments existed."""
    value = data.get(name, {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"snapshot entry {name!r} is not an object of strings")
    return cast("dict[str, str]", value)


# Snapshot columns are trusted to hold what snapshot() wrote (checking every value would cost a
# pass over hundreds of thousands of rows); their shape is checked above, their element type cast.
def _strs(table: Mapping[str, object], name: str, length: int | None = None) -> list[str]:
    return cast("list[str]", _column(table, name, length))


def _ints(table: Mapping[str, object], name: str, length: int) -> list[int]:
    return cast("list[int]", _column(table, name, length))


@final
class ShopReadModels:
    """All read models of one replica; not thread-safe (one replica applies and queries in turn)."""

    __slots__ = (
        "_by_category",
        "_by_name",
        "_cancel_reasons",
        "_customer_rows",
        "_event_handlers",
        "_index",
        "_line_names",
        "_line_prices",
        "_line_quantities",
        "_line_skus",
        "_order_customer_ids",
        "_order_customer_names",
        "_order_ids",
        "_order_item_counts",
        "_order_line_starts",
        "_order_rows",
        "_order_statuses",
        "_order_totals",
        "_payments",
        "_position",
        "_products",
        "_query_handlers",
        "_rank",
        "_ranked",
        "_sales",
        "_views",
    )

    def __init__(self) -> None:
        self._position = 0
        # Catalogue and per-product analytics (source state).
        self._products: dict[str, _Product] = {}
        # GetProduct's answers, built on first ask and dropped when the product changes: reads far outnumber
        # changes, and building the dict was a fifth of a pipelined GetProduct's cost (measured). Answers are
        # shared between callers: treat query results as read-only.
        self._views: dict[str, dict[str, object]] = {}
        # Orders, one row each in log order (source state).
        self._order_ids: list[str] = []
        self._order_statuses: list[str] = []
        self._order_customer_ids: list[str] = []
        self._order_customer_names: list[str] = []
        self._order_totals: list[int] = []
        self._order_item_counts: list[int] = []
        self._order_line_starts: list[int] = []  # row of the order's first line; lines are contiguous
        # Order lines, one row each (source state).
        self._line_skus: list[str] = []
        self._line_names: list[str] = []
        self._line_quantities: list[int] = []
        self._line_prices: list[int] = []
        # Sales totals (source state).
        self._sales: _Sales = _new_sales()
        # Payments of orders placed with a token, and reasons given for cancellations (source state; sparse).
        self._payments: dict[str, str] = {}  # order id -> "pending" | "captured" | "declined"
        self._cancel_reasons: dict[str, str] = {}  # order id -> reason (only non-empty ones)
        # Derived indexes, rebuilt by restore().
        self._index: dict[str, set[str]] = {}  # search word -> skus
        self._by_category: dict[str, set[str]] = {}
        self._by_name: list[tuple[str, str]] = []  # (name, sku) of every product, in no set order
        self._ranked: list[str] | None = []  # skus in (name, sku) order; None when a product was added
        self._rank: dict[str, int] = {}  # sku -> its index in _ranked
        self._order_rows: dict[str, int] = {}  # order id -> row
        self._customer_rows: dict[str, list[int]] = {}  # customer id -> order rows, oldest first
        # Dispatch tables: one dict lookup per event or query instead of an isinstance chain.
        self._event_handlers: dict[type, Callable[..., None]] = {
            ProductAdded: self._on_product_added,
            PriceChanged: self._on_price_changed,
            ProductRestocked: self._on_product_restocked,
            StockReserved: self._on_stock_reserved,
            StockReleased: self._on_stock_released,
            OrderPlaced: self._on_order_placed,
            OrderCancelled: self._on_order_cancelled,
            OrderShipped: self._on_order_shipped,
            PaymentRequested: self._on_payment_requested,
            PaymentCaptured: self._on_payment_captured,
            PaymentDeclined: self._on_payment_declined,
        }
        self._query_handlers: dict[type, Callable[..., object]] = {
            GetProduct: self._get_product,
            SearchProducts: self._search_products,
            GetOrder: self._get_order,
            CustomerOrders: self._customer_orders,
            SalesSummary: self._sales_summary,
            TopProducts: self._top_products,
        }

    @property
    def position(self) -> int:
        """Log position of the last event applied (0 before any)."""
        return self._position

    # -- write side: events ------------------------------------------------------------------

    def apply(self, event: object, position: int) -> None:
        """Fold one committed event at log `position` into the models; other event types are ignored."""
        handler = self._event_handlers.get(type(event))
        if handler is not None:
            handler(event)
        self._position = position

    def _on_product_added(self, event: ProductAdded) -> None:
        sku = event.sku
        self._views.pop(sku, None)
        self._products[sku] = {
            "sku": sku,
            "name": event.name,
            "category": event.category,
            "description": event.description,
            "price_cents": event.price_cents,
            "stock": event.stock,
            "currency": event.currency,
            "units_sold": 0,
            "revenue_cents": 0,
        }
        self._index_product(sku, event.name, event.category, event.description)
        self._ranked = None

    def _index_product(self, sku: str, name: str, category: str, description: str) -> None:
        index = self._index
        for word in set(words_of(name)).union(words_of(description)):
            skus = index.get(word)
            if skus is None:
                index[word] = {sku}
            else:
                skus.add(sku)
        in_category = self._by_category.get(category)
        if in_category is None:
            self._by_category[category] = {sku}
        else:
            in_category.add(sku)
        self._by_name.append((name, sku))

    def _on_price_changed(self, event: PriceChanged) -> None:
        self._products[event.sku]["price_cents"] = event.price_cents
        self._views.pop(event.sku, None)

    def _on_product_restocked(self, event: ProductRestocked) -> None:
        self._products[event.sku]["stock"] += event.quantity
        self._views.pop(event.sku, None)

    def _on_stock_reserved(self, event: StockReserved) -> None:
        self._products[event.sku]["stock"] -= event.quantity
        self._views.pop(event.sku, None)

    def _on_stock_released(self, event: StockReleased) -> None:
        self._products[event.sku]["stock"] += event.quantity
        self._views.pop(event.sku, None)

    def _on_order_placed(self, event: OrderPlaced) -> None:
        products = self._products
        skus = self._line_skus
        names = self._line_names
        quantities = self._line_quantities
        prices = self._line_prices
        row = len(self._order_ids)
        first_line = len(skus)
        total = 0
        count = 0
        reserves = event.reserves_stock  # False in 0.1 logs, where StockReserved events follow
        views = self._views
        for line in event.lines:
            quantity = line.quantity
            price = line.unit_price_cents
            skus.append(line.sku)
            names.append(line.name)
            quantities.append(quantity)
            prices.append(price)
            line_total = quantity * price
            total += line_total
            count += quantity
            product = products.get(line.sku)  # always there in a log the decider wrote; never half-apply
            if product is not None:
                views.pop(line.sku, None)
                product["units_sold"] += quantity
                product["revenue_cents"] += line_total
                if reserves:
                    product["stock"] -= quantity
        order_id = event.order_id
        customer_id = event.customer_id
        self._order_ids.append(order_id)
        self._order_statuses.append(PLACED)
        self._order_customer_ids.append(customer_id)
        self._order_customer_names.append(event.customer_name)
        self._order_totals.append(total)
        self._order_item_counts.append(count)
        self._order_line_starts.append(first_line)
        self._order_rows[order_id] = row
        rows = self._customer_rows.get(customer_id)
        if rows is None:
            self._customer_rows[customer_id] = [row]
        else:
            rows.append(row)
        sales = self._sales
        sales["orders_placed"] += 1
        sales["units_sold"] += count
        sales["revenue_cents"] += total

    def _line_range(self, row: int) -> range:
        starts = self._order_line_starts
        end = starts[row + 1] if row + 1 < len(starts) else len(self._line_skus)
        return range(starts[row], end)

    def _on_payment_requested(self, event: PaymentRequested) -> None:
        self._payments[event.order_id] = "pending"

    def _on_payment_captured(self, event: PaymentCaptured) -> None:
        self._payments[event.order_id] = "captured"

    def _on_payment_declined(self, event: PaymentDeclined) -> None:
        self._payments[event.order_id] = "declined"

    def _on_order_cancelled(self, event: OrderCancelled) -> None:
        if event.reason:
            self._cancel_reasons[event.order_id] = event.reason
        row = self._order_rows[event.order_id]
        self._order_statuses[row] = CANCELLED
        products = self._products
        skus = self._line_skus
        quantities = self._line_quantities
        prices = self._line_prices
        for i in self._line_range(row):
            product = products.get(skus[i])
            if product is not None:
                product["units_sold"] -= quantities[i]
                product["revenue_cents"] -= quantities[i] * prices[i]
                self._views.pop(skus[i], None)
        for line in event.lines:  # empty in 0.1 logs, where StockReleased events follow
            products[line.sku]["stock"] += line.quantity
            self._views.pop(line.sku, None)
        sales = self._sales
        sales["orders_cancelled"] += 1
        sales["units_sold"] -= self._order_item_counts[row]
        sales["revenue_cents"] -= self._order_totals[row]

    def _on_order_shipped(self, event: OrderShipped) -> None:
        self._order_statuses[self._order_rows[event.order_id]] = SHIPPED
        self._sales["orders_shipped"] += 1

    # -- read side: queries ------------------------------------------------------------------

    def query(self, query: object) -> object:
        """Answer `query` with JSON-native data; raise NotFound / InvalidQuery, TypeError if unknown."""
        handler = self._query_handlers.get(type(query))
        if handler is None:
            raise TypeError(f"{type(query).__qualname__} is not a shop query")
        return handler(query)

    def _get_product(self, query: GetProduct) -> object:
        view = self._views.get(query.sku)
        if view is not None:
            return view
        product = self._products.get(query.sku)
        if product is None:
            raise NotFound("product", query.sku)
        view = self._views[query.sku] = {
            "sku": product["sku"],
            "name": product["name"],
            "category": product["category"],
            "description": product["description"],
            "price_cents": product["price_cents"],
            "stock": product["stock"],
            "units_sold": product["units_sold"],
        }
        return view

    def _ranking(self) -> list[str]:
        """Every sku in (name, sku) order, re-ranked after products were added (names never change)."""
        ranked = self._ranked
        if ranked is None:
            self._by_name.sort()  # timsort: a sorted run plus the newly added tail
            ranked = self._ranked = [sku for _, sku in self._by_name]
            self._rank = {sku: rank for rank, sku in enumerate(ranked)}
        return ranked

    def _search_products(self, query: SearchProducts) -> object:
        limit = _check_limit(query.limit)
        products = self._products
        category = query.category
        max_price = query.max_price_cents
        in_stock = query.in_stock
        words = words_of(query.text) if query.text else []
        ranked = self._ranking()
        pool: Collection[str]
        if words:
            # Intersect the posting sets smallest first; never a scan of the catalogue.
            postings: list[set[str]] = []
            for word in set(words):
                skus = self._index.get(word)
                if skus is None:
                    return {"items": [], "total": 0}
                postings.append(skus)
            if category is not None:
                postings.append(self._by_category.get(category, set()))
            postings.sort(key=len)
            pool = postings[0].intersection(*postings[1:])
        elif category is not None:
            pool = self._by_category.get(category, ())
        else:
            pool = ranked  # already in order
        selected: list[str]
        if max_price is None and in_stock is None:
            selected = ranked if pool is ranked else list(pool)
        else:
            selected = []
            for sku in pool:
                product = products[sku]
                if max_price is not None and product["price_cents"] > max_price:
                    continue
                if in_stock is not None and (product["stock"] > 0) != in_stock:
                    continue
                selected.append(sku)
        if pool is not ranked:
            selected.sort(key=self._rank.__getitem__)  # a C-level key: far cheaper than (name, sku) tuples
        return {
            "items": [_search_item(products[sku]) for sku in islice(selected, limit)],
            "total": len(selected),
        }

    def _get_order(self, query: GetOrder) -> object:
        row = self._order_rows.get(query.order_id)
        if row is None:
            raise NotFound("order", query.order_id)
        skus = self._line_skus
        names = self._line_names
        quantities = self._line_quantities
        prices = self._line_prices
        order: dict[str, object] = {
            "order_id": query.order_id,
            "status": self._order_statuses[row],
            "customer": {"customer_id": self._order_customer_ids[row], "name": self._order_customer_names[row]},
            "lines": [
                {
                    "sku": skus[i],
                    "name": names[i],
                    "quantity": quantities[i],
                    "unit_price_cents": prices[i],
                    "line_total_cents": quantities[i] * prices[i],
                }
                for i in self._line_range(row)
            ],
            "total_cents": self._order_totals[row],
        }
        payment = self._payments.get(query.order_id)
        if payment is not None:
            order["payment"] = payment
        reason = self._cancel_reasons.get(query.order_id)
        if reason is not None:
            order["cancel_reason"] = reason
        return order

    def _customer_orders(self, query: CustomerOrders) -> object:
        limit = _check_limit(query.limit)
        rows = self._customer_rows.get(query.customer_id)
        if rows is None:
            return []
        ids = self._order_ids
        statuses = self._order_statuses
        totals = self._order_totals
        counts = self._order_item_counts
        return [
            {
                "order_id": ids[row],
                "status": statuses[row],
                "total_cents": totals[row],
                "item_count": counts[row],
            }
            for row in islice(reversed(rows), limit)  # newest first
        ]

    def _sales_summary(self, query: SalesSummary) -> object:
        return self._sales.copy()

    def _top_products(self, query: TopProducts) -> object:
        limit = _check_limit(query.limit)
        sold = (product for product in self._products.values() if product["units_sold"] > 0)
        return [
            {
                "sku": product["sku"],
                "name": product["name"],
                "units_sold": product["units_sold"],
                "revenue_cents": product["revenue_cents"],
            }
            for product in heapq.nsmallest(limit, sold, key=_best_seller)
        ]

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        """Return the whole state as JSON-native data (str-keyed dicts, lists, ints, strs).

        The result shares the models' live containers (no copy, so it is cheap at any size):
        serialise it before the next `apply`, e.g. ``orjson.dumps(models.snapshot())``.
        """
        return {
            "version": SNAPSHOT_VERSION,
            "position": self._position,
            "products": self._products,
            "orders": {
                "order_id": self._order_ids,
                "status": self._order_statuses,
                "customer_id": self._order_customer_ids,
                "customer_name": self._order_customer_names,
                "total_cents": self._order_totals,
                "item_count": self._order_item_counts,
                "line_start": self._order_line_starts,
            },
            "lines": {
                "sku": self._line_skus,
                "name": self._line_names,
                "quantity": self._line_quantities,
                "unit_price_cents": self._line_prices,
            },
            "sales": self._sales,
            "payments": self._payments,
            "cancel_reasons": self._cancel_reasons,
        }

    def restore(self, data: Mapping[str, object]) -> None:
        """Replace the whole state with a decoded `snapshot`, rebuilding the derived indexes.

        Takes ownership of the containers in `data` (no copy). Raises ValueError for a snapshot
        of another layout version or with columns of unequal length; the models are then unchanged.
        """
        version = data.get("version")
        if version != SNAPSHOT_VERSION:
            raise ValueError(f"cannot restore a shop snapshot of version {version!r}; expected {SNAPSHOT_VERSION}")
        position = data["position"]
        if not isinstance(position, int):
            raise ValueError(f"snapshot position must be an int, got {position!r}")
        orders = cast("Mapping[str, object]", data["orders"])
        lines = cast("Mapping[str, object]", data["lines"])
        # Check every column before touching any state.
        order_ids = _strs(orders, "order_id")
        n = len(order_ids)
        statuses = _strs(orders, "status", n)
        customer_ids = _strs(orders, "customer_id", n)
        customer_names = _strs(orders, "customer_name", n)
        totals = _ints(orders, "total_cents", n)
        item_counts = _ints(orders, "item_count", n)
        line_starts = _ints(orders, "line_start", n)
        line_skus = _strs(lines, "sku")
        n = len(line_skus)
        line_names = _strs(lines, "name", n)
        line_quantities = _ints(lines, "quantity", n)
        line_prices = _ints(lines, "unit_price_cents", n)
        payments = _str_map(data, "payments")
        cancel_reasons = _str_map(data, "cancel_reasons")
        self._position = position
        self._payments = payments
        self._cancel_reasons = cancel_reasons
        self._products = cast("dict[str, _Product]", data["products"])
        self._sales = cast("_Sales", data["sales"])
        self._order_ids = order_ids
        self._order_statuses = statuses
        self._order_customer_ids = customer_ids
        self._order_customer_names = customer_names
        self._order_totals = totals
        self._order_item_counts = item_counts
        self._order_line_starts = line_starts
        self._line_skus = line_skus
        self._line_names = line_names
        self._line_quantities = line_quantities
        self._line_prices = line_prices
        self._rebuild_indexes()

    def _rebuild_indexes(self) -> None:
        self._views = {}
        for product in self._products.values():
            product.setdefault("currency", "EUR")  # a checkpoint taken before ProductAdded v2
        self._index = {}
        self._by_category = {}
        self._by_name = []
        self._ranked = None
        for product in self._products.values():
            self._index_product(product["sku"], product["name"], product["category"], product["description"])
        self._order_rows = dict(zip(self._order_ids, range(len(self._order_ids)), strict=True))
        customer_rows: defaultdict[str, list[int]] = defaultdict(list)  # C-level grouping
        for row, customer_id in enumerate(self._order_customer_ids):
            customer_rows[customer_id].append(row)
        self._customer_rows = dict(customer_rows)
