"""The read models of one replica: every query's answer, ordering, limits, errors, snapshots."""

from __future__ import annotations

import orjson
import pytest

from soloist_shop.commands import CancelOrder, ChangePrice, Restock, ShipOrder
from soloist_shop.errors import InvalidQuery, NotFound
from soloist_shop.events import (
    CancelledLine,
    CustomerRegistered,
    OrderCancelled,
    OrderLine,
    OrderPlaced,
    ProductAdded,
    StockReleased,
    StockReserved,
)
from soloist_shop.queries import (
    CustomerOrders,
    GetOrder,
    GetProduct,
    SalesSummary,
    SearchProducts,
    TopProducts,
)
from soloist_shop.read_models import SNAPSHOT_VERSION, ShopReadModels, words_of
from soloist_shop.seed import seed_commands

from .shop_harness import ShopHarness, add_product, assert_json_native, json_round_trip, place, register


@pytest.fixture(name="shop")
def _shop() -> ShopHarness:
    """A small catalogue (two products share the name "Mug") and two customers."""
    shop = ShopHarness()
    shop.execute_all(
        [
            register("c-ada", "Ada Lovelace"),
            register("c-bob", "Bob Bäcker", "bob@example.com"),
            add_product(
                "K1",
                name="Kettle",
                category="kitchen",
                price_cents=2500,
                stock=4,
                description="Stainless steel kettle; whistles when the water boils.",
            ),
            add_product(
                "K2",
                name="Cast Iron Skillet",
                category="kitchen",
                price_cents=3500,
                stock=0,
                description="Pre-seasoned cast iron pan.",
            ),
            add_product(
                "M2",
                name="Mug",
                category="kitchen",
                price_cents=900,
                stock=2,
                description="Enamel camping mug",
            ),
            add_product(
                "M1",
                name="Mug",
                category="kitchen",
                price_cents=800,
                stock=10,
                description="Stoneware tea mug",
            ),
            add_product(
                "G1",
                name="Garden Hose",
                category="garden",
                price_cents=2999,
                stock=5,
                description="Expandable hose with brass fittings.",
            ),
            add_product(
                "G2",
                name="Große Gießkanne",
                category="garden",
                price_cents=1999,
                stock=3,
                description="Verzinkte Kanne, 10 Liter.",
            ),
            add_product(
                "B1",
                name="Éclair Recipes",
                category="books",
                price_cents=1500,
                stock=3,
                description="French pastry: ÉCLAIRS, choux and crème pâtissière.",
            ),
        ]
    )
    return shop


def skus(result: object) -> list[str]:
    """The skus of a SearchProducts answer, in order."""
    assert isinstance(result, dict)
    items = result["items"]
    assert isinstance(items, list)
    found: list[str] = []
    for item in items:
        assert isinstance(item, dict)
        found.append(item["sku"])
    return found


def total(result: object) -> int:
    """The total of a SearchProducts answer."""
    assert isinstance(result, dict)
    value = result["total"]
    assert isinstance(value, int)
    return value


def search(
    shop: ShopHarness,
    *,
    text: str | None = None,
    category: str | None = None,
    max_price_cents: int | None = None,
    in_stock: bool | None = None,
    limit: int = 20,
) -> list[str]:
    """The skus SearchProducts returns for these filters."""
    query = SearchProducts(
        text=text, category=category, max_price_cents=max_price_cents, in_stock=in_stock, limit=limit
    )
    return skus(shop.query(query))


ALL_BY_NAME = ["K2", "G1", "G2", "K1", "M1", "M2", "B1"]
"""Every sku of the fixture, ordered by (name, sku): code point order, so 'É' sorts after ASCII."""


class TestWordsOf:
    def test_words_are_casefolded_word_runs(self) -> None:
        """Punctuation splits words, case folds fully (ß -> ss), digits and accents stay."""
        assert words_of("Pre-seasoned GROSSE Straße, 10 Liter; crème") == [
            "pre",
            "seasoned",
            "grosse",
            "strasse",
            "10",
            "liter",
            "crème",
        ]


class TestGetProduct:
    def test_answer_shape(self, shop: ShopHarness) -> None:
        """A product answers with its catalogue fields, stock and units sold."""
        assert shop.query(GetProduct(sku="K1")) == {
            "sku": "K1",
            "name": "Kettle",
            "category": "kitchen",
            "description": "Stainless steel kettle; whistles when the water boils.",
            "price_cents": 2500,
            "stock": 4,
            "units_sold": 0,
        }

    def test_follows_price_restock_orders_and_cancellations(self, shop: ShopHarness) -> None:
        """Price, stock and units sold track every event; cancelled orders do not count as sold."""
        shop.execute(ChangePrice(sku="K1", price_cents=2700))
        shop.execute(Restock(sku="K1", quantity=6))
        shop.execute(place("o-1", "c-ada", ("K1", 3)))
        shop.execute(place("o-2", "c-bob", ("K1", 2)))
        shop.execute(CancelOrder(order_id="o-1"))
        shop.execute(ShipOrder(order_id="o-2"))
        answer = shop.query(GetProduct(sku="K1"))
        assert isinstance(answer, dict)
        assert (answer["price_cents"], answer["stock"], answer["units_sold"]) == (2700, 8, 2)

    def test_answers_follow_each_change_between_queries(self, shop: ShopHarness) -> None:
        """Asked after every event (answers are kept until the product changes), GetProduct is never stale."""

        def seen() -> tuple[object, ...]:
            answer = shop.query(GetProduct(sku="K1"))
            assert isinstance(answer, dict)
            assert shop.query(GetProduct(sku="K1")) is answer  # kept while nothing changes
            return answer["price_cents"], answer["stock"], answer["units_sold"]

        start = seen()
        shop.execute(ChangePrice(sku="K1", price_cents=2700))
        assert seen() == (2700, start[1], 0)
        shop.execute(Restock(sku="K1", quantity=6))
        assert seen() == (2700, start[1] + 6, 0)  # type: ignore[operator]
        shop.execute(place("o-1", "c-ada", ("K1", 3)))
        assert seen() == (2700, start[1] + 3, 3)  # type: ignore[operator]
        shop.execute(CancelOrder(order_id="o-1"))
        assert seen() == (2700, start[1] + 6, 0)  # type: ignore[operator]
        shop.read.restore(orjson.loads(orjson.dumps(shop.read.snapshot())))  # restore drops kept answers
        assert seen() == (2700, start[1] + 6, 0)  # type: ignore[operator]

    def test_unknown_sku_is_not_found(self, shop: ShopHarness) -> None:
        """An absent product raises NotFound naming it."""
        with pytest.raises(NotFound) as caught:
            shop.query(GetProduct(sku="nope"))
        assert str(caught.value) == "product 'nope' not found"


class TestSearchProducts:
    def test_no_filter_lists_everything_by_name_then_sku(self, shop: ShopHarness) -> None:
        """Without filters every product is listed, ordered by (name, sku); ties broken by sku."""
        assert search(shop) == ALL_BY_NAME

    def test_item_shape_and_total(self, shop: ShopHarness) -> None:
        """Items carry sku, name, category, price and stock; total counts every match."""
        assert shop.query(SearchProducts(text="kettle")) == {
            "items": [{"sku": "K1", "name": "Kettle", "category": "kitchen", "price_cents": 2500, "stock": 4}],
            "total": 1,
        }

    @pytest.mark.parametrize("text", ["", "   ", "\t\n"])
    def test_blank_text_is_no_filter(self, shop: ShopHarness, text: str) -> None:
        """Empty or whitespace-only text does not filter."""
        assert search(shop, text=text) == ALL_BY_NAME

    def test_punctuation_only_text_is_no_filter(self, shop: ShopHarness) -> None:
        """Text without any word characters has no words to require, so it does not filter."""
        assert search(shop, text=" ;-! ") == ALL_BY_NAME

    def test_matches_words_of_name_and_description(self, shop: ShopHarness) -> None:
        """A word matches whether it is in the name or the description."""
        assert search(shop, text="mug") == ["M1", "M2"]
        assert search(shop, text="stoneware") == ["M1"]
        assert search(shop, text="brass") == ["G1"]

    def test_all_words_are_required_in_any_order(self, shop: ShopHarness) -> None:
        """Every query word must match (name and description together); word order does not matter."""
        assert search(shop, text="cast iron") == ["K2"]
        assert search(shop, text="pan SKILLET") == ["K2"]
        assert search(shop, text="mug tea") == ["M1"]
        assert search(shop, text="mug kettle") == []

    def test_repeated_words_count_once(self, shop: ShopHarness) -> None:
        """Repeating a word does not change the answer."""
        assert search(shop, text="mug mug MUG") == ["M1", "M2"]

    def test_whole_words_only(self, shop: ShopHarness) -> None:
        """A prefix or a fragment of a word does not match."""
        assert search(shop, text="kett") == []
        assert search(shop, text="seasoned") == ["K2"]
        assert search(shop, text="preseasoned") == []

    def test_unknown_word_matches_nothing(self, shop: ShopHarness) -> None:
        """A word in no product empties the result, even next to matching words."""
        result = shop.query(SearchProducts(text="mug zeppelin"))
        assert result == {"items": [], "total": 0}

    def test_case_and_unicode_casefold(self, shop: ShopHarness) -> None:
        """Matching is case-insensitive with full casefolding: ß ~ ss, É ~ é."""
        assert search(shop, text="GROSSE giesskanne") == ["G2"]
        assert search(shop, text="große") == ["G2"]
        assert search(shop, text="éclair") == ["B1"]
        assert search(shop, text="éclairs CRÈME") == ["B1"]
        assert search(shop, text="eclair") == []  # accents are not stripped

    def test_category_is_exact(self, shop: ShopHarness) -> None:
        """The category filter is an exact, case-sensitive match."""
        assert search(shop, category="garden") == ["G1", "G2"]
        assert search(shop, category="Garden") == []
        assert search(shop, category="toys") == []

    def test_category_with_text(self, shop: ShopHarness) -> None:
        """Text and category combine."""
        assert search(shop, text="steel", category="kitchen") == ["K1"]
        assert search(shop, text="steel", category="garden") == []

    def test_max_price_is_inclusive(self, shop: ShopHarness) -> None:
        """max_price_cents keeps products priced at or under it."""
        assert search(shop, max_price_cents=1500) == ["M1", "M2", "B1"]
        assert search(shop, max_price_cents=1499) == ["M1", "M2"]
        assert search(shop, max_price_cents=0) == []

    def test_in_stock_filter(self, shop: ShopHarness) -> None:
        """in_stock True keeps stock > 0, False keeps stock == 0, None keeps all."""
        assert search(shop, in_stock=False) == ["K2"]
        assert search(shop, in_stock=True) == [sku for sku in ALL_BY_NAME if sku != "K2"]
        assert search(shop, in_stock=None) == ALL_BY_NAME

    def test_in_stock_follows_orders_and_restocks(self, shop: ShopHarness) -> None:
        """Selling the last unit takes a product out of stock; restocking brings it back."""
        shop.execute(place("o-1", "c-ada", ("M2", 2)))
        assert search(shop, in_stock=False) == ["K2", "M2"]
        shop.execute(Restock(sku="K2", quantity=1))
        assert search(shop, in_stock=False) == ["M2"]

    def test_all_filters_together(self, shop: ShopHarness) -> None:
        """Text, category, price and stock filters all apply at once."""
        result = shop.query(SearchProducts(text="mug", category="kitchen", max_price_cents=850, in_stock=True))
        assert skus(result) == ["M1"]

    def test_limit_truncates_but_total_counts_all(self, shop: ShopHarness) -> None:
        """total is the number of matches before the limit."""
        result = shop.query(SearchProducts(category="kitchen", limit=2))
        assert (skus(result), total(result)) == (["K2", "K1"], 4)
        result = shop.query(SearchProducts(limit=1))
        assert (skus(result), total(result)) == (["K2"], 7)

    @pytest.mark.parametrize("limit", [1, 100])
    def test_limit_bounds_are_inclusive(self, shop: ShopHarness, limit: int) -> None:
        """Limits 1 and 100 are accepted."""
        assert len(search(shop, limit=limit)) == min(limit, 7)

    @pytest.mark.parametrize("limit", [0, -1, 101])
    def test_limit_out_of_range_is_invalid(self, shop: ShopHarness, limit: int) -> None:
        """A limit outside 1..100 raises InvalidQuery naming the field and the range."""
        with pytest.raises(InvalidQuery) as caught:
            shop.query(SearchProducts(text="mug", limit=limit))
        assert str(caught.value) == f"limit must be between 1 and 100, got {limit}"

    def test_empty_catalogue(self) -> None:
        """An empty shop answers no items."""
        models = ShopReadModels()
        assert models.query(SearchProducts()) == {"items": [], "total": 0}
        assert models.query(SearchProducts(text="anything")) == {"items": [], "total": 0}

    def test_products_added_later_are_listed_in_order(self, shop: ShopHarness) -> None:
        """The sorted listing takes in products added after a previous search."""
        assert search(shop, limit=1) == ["K2"]
        shop.execute(add_product("A0", name="Apron", description="Linen mug-proof apron"))
        assert search(shop, limit=2) == ["A0", "K2"]
        assert search(shop, text="mug") == ["A0", "M1", "M2"]


class TestGetOrder:
    def test_answer_shape(self, shop: ShopHarness) -> None:
        """An order answers with status, customer, priced lines and the total."""
        shop.execute(place("o-1", "c-bob", ("M1", 3), ("K1", 1)))
        assert shop.query(GetOrder(order_id="o-1")) == {
            "order_id": "o-1",
            "status": "placed",
            "customer": {"customer_id": "c-bob", "name": "Bob Bäcker"},
            "lines": [
                {
                    "sku": "M1",
                    "name": "Mug",
                    "quantity": 3,
                    "unit_price_cents": 800,
                    "line_total_cents": 2400,
                },
                {
                    "sku": "K1",
                    "name": "Kettle",
                    "quantity": 1,
                    "unit_price_cents": 2500,
                    "line_total_cents": 2500,
                },
            ],
            "total_cents": 4900,
        }

    @pytest.mark.parametrize(("command", "status"), [(CancelOrder, "cancelled"), (ShipOrder, "shipped")])
    def test_status_follows_transitions(
        self, shop: ShopHarness, command: type[CancelOrder | ShipOrder], status: str
    ) -> None:
        """Cancelling or shipping changes the order's status."""
        shop.execute(place("o-1", "c-ada", ("M1", 1)))
        shop.execute(command(order_id="o-1"))
        answer = shop.query(GetOrder(order_id="o-1"))
        assert isinstance(answer, dict)
        assert answer["status"] == status

    def test_keeps_the_price_paid(self, shop: ShopHarness) -> None:
        """A later price change does not alter an order already placed."""
        shop.execute(place("o-1", "c-ada", ("M1", 2)))
        shop.execute(ChangePrice(sku="M1", price_cents=5000))
        answer = shop.query(GetOrder(order_id="o-1"))
        assert isinstance(answer, dict)
        assert answer["total_cents"] == 1600

    def test_unknown_order_is_not_found(self, shop: ShopHarness) -> None:
        """An absent order raises NotFound naming it."""
        with pytest.raises(NotFound, match="order 'o-9' not found"):
            shop.query(GetOrder(order_id="o-9"))

    def test_answers_are_copies(self, shop: ShopHarness) -> None:
        """Changing an answer does not change the model."""
        shop.execute(place("o-1", "c-ada", ("M1", 2)))
        answer = shop.query(GetOrder(order_id="o-1"))
        assert isinstance(answer, dict)
        answer["lines"][0]["quantity"] = 99
        answer["customer"]["name"] = "Mallory"
        again = shop.query(GetOrder(order_id="o-1"))
        assert isinstance(again, dict)
        assert again["lines"][0]["quantity"] == 2
        assert again["customer"]["name"] == "Ada Lovelace"


class TestCustomerOrders:
    def test_newest_first_with_totals(self, shop: ShopHarness) -> None:
        """A customer's orders are listed newest first with status, total and item count."""
        shop.execute(place("o-b", "c-ada", ("M1", 2), ("M2", 1)))
        shop.execute(place("o-x", "c-bob", ("K1", 1)))
        shop.execute(place("o-a", "c-ada", ("G1", 1)))
        shop.execute(CancelOrder(order_id="o-b"))
        assert shop.query(CustomerOrders(customer_id="c-ada")) == [
            {"order_id": "o-a", "status": "placed", "total_cents": 2999, "item_count": 1},
            {"order_id": "o-b", "status": "cancelled", "total_cents": 2500, "item_count": 3},
        ]
        assert shop.query(CustomerOrders(customer_id="c-bob")) == [
            {"order_id": "o-x", "status": "placed", "total_cents": 2500, "item_count": 1}
        ]

    def test_limit_keeps_the_newest(self, shop: ShopHarness) -> None:
        """The limit keeps the newest orders."""
        shop.execute(Restock(sku="M1", quantity=100))
        for i in range(5):
            shop.execute(place(f"o-{i}", "c-ada", ("M1", 1)))
        answer = shop.query(CustomerOrders(customer_id="c-ada", limit=2))
        assert isinstance(answer, list)
        assert [order["order_id"] for order in answer] == ["o-4", "o-3"]
        answer = shop.query(CustomerOrders(customer_id="c-ada", limit=100))
        assert isinstance(answer, list)
        assert [order["order_id"] for order in answer] == ["o-4", "o-3", "o-2", "o-1", "o-0"]

    def test_customer_without_orders_or_unknown_is_empty(self, shop: ShopHarness) -> None:
        """A customer with no orders, or no such customer, gets an empty list, not an error."""
        assert shop.query(CustomerOrders(customer_id="c-ada")) == []
        assert shop.query(CustomerOrders(customer_id="c-nobody")) == []

    @pytest.mark.parametrize("limit", [0, 101])
    def test_limit_out_of_range_is_invalid(self, shop: ShopHarness, limit: int) -> None:
        """A limit outside 1..100 raises InvalidQuery, even for an unknown customer."""
        with pytest.raises(InvalidQuery, match=f"limit must be between 1 and 100, got {limit}"):
            shop.query(CustomerOrders(customer_id="c-nobody", limit=limit))


class TestSalesSummary:
    def test_empty_shop_is_all_zero(self) -> None:
        """Before any order every counter is zero."""
        assert ShopReadModels().query(SalesSummary()) == {
            "orders_placed": 0,
            "orders_cancelled": 0,
            "orders_shipped": 0,
            "units_sold": 0,
            "revenue_cents": 0,
        }

    def test_counts_transitions_and_excludes_cancelled_sales(self, shop: ShopHarness) -> None:
        """Placed counts every order; units and revenue count only orders not cancelled."""
        shop.execute(place("o-1", "c-ada", ("M1", 2), ("K1", 1)))  # 1600 + 2500
        shop.execute(place("o-2", "c-bob", ("M1", 1)))  # 800
        shop.execute(place("o-3", "c-bob", ("G1", 1)))  # 2999
        shop.execute(CancelOrder(order_id="o-1"))
        shop.execute(ShipOrder(order_id="o-2"))
        assert shop.query(SalesSummary()) == {
            "orders_placed": 3,
            "orders_cancelled": 1,
            "orders_shipped": 1,
            "units_sold": 2,
            "revenue_cents": 3799,
        }

    def test_answer_is_a_copy(self, shop: ShopHarness) -> None:
        """Changing the answer does not change the model."""
        answer = shop.query(SalesSummary())
        assert isinstance(answer, dict)
        answer["orders_placed"] = 42
        assert shop.query(SalesSummary()) == {**answer, "orders_placed": 0}


class TestTopProducts:
    def test_ordered_by_units_then_sku(self, shop: ShopHarness) -> None:
        """Best sellers first; equal units ordered by sku; unsold products left out."""
        shop.execute(place("o-1", "c-ada", ("M2", 2), ("K1", 2), ("G1", 1)))
        shop.execute(place("o-2", "c-bob", ("M1", 3), ("G2", 2)))
        assert shop.query(TopProducts()) == [
            {"sku": "M1", "name": "Mug", "units_sold": 3, "revenue_cents": 2400},
            {"sku": "G2", "name": "Große Gießkanne", "units_sold": 2, "revenue_cents": 3998},
            {"sku": "K1", "name": "Kettle", "units_sold": 2, "revenue_cents": 5000},
            {"sku": "M2", "name": "Mug", "units_sold": 2, "revenue_cents": 1800},
            {"sku": "G1", "name": "Garden Hose", "units_sold": 1, "revenue_cents": 2999},
        ]

    def test_cancelled_orders_do_not_count(self, shop: ShopHarness) -> None:
        """A cancelled order's units and revenue are taken back; a product with none left drops out."""
        shop.execute(place("o-1", "c-ada", ("M1", 2)))
        shop.execute(place("o-2", "c-ada", ("M1", 1), ("K1", 1)))
        shop.execute(CancelOrder(order_id="o-1"))
        shop.execute(CancelOrder(order_id="o-2"))
        shop.execute(place("o-3", "c-ada", ("K1", 1)))
        assert shop.query(TopProducts()) == [
            {"sku": "K1", "name": "Kettle", "units_sold": 1, "revenue_cents": 2500},
        ]

    def test_revenue_uses_the_price_paid(self, shop: ShopHarness) -> None:
        """Revenue sums quantity times the unit price of each order at the time it was placed."""
        shop.execute(place("o-1", "c-ada", ("M1", 1)))
        shop.execute(ChangePrice(sku="M1", price_cents=1000))
        shop.execute(place("o-2", "c-ada", ("M1", 2)))
        assert shop.query(TopProducts(limit=1)) == [
            {"sku": "M1", "name": "Mug", "units_sold": 3, "revenue_cents": 2800},
        ]

    def test_limit(self, shop: ShopHarness) -> None:
        """The limit keeps the best sellers."""
        shop.execute(place("o-1", "c-ada", ("M1", 3), ("K1", 2), ("G1", 1)))
        answer = shop.query(TopProducts(limit=2))
        assert isinstance(answer, list)
        assert [row["sku"] for row in answer] == ["M1", "K1"]

    def test_nothing_sold_is_empty(self, shop: ShopHarness) -> None:
        """With no sales the list is empty."""
        assert shop.query(TopProducts()) == []

    @pytest.mark.parametrize("limit", [0, 101])
    def test_limit_out_of_range_is_invalid(self, shop: ShopHarness, limit: int) -> None:
        """A limit outside 1..100 raises InvalidQuery."""
        with pytest.raises(InvalidQuery, match="limit must be between 1 and 100"):
            shop.query(TopProducts(limit=limit))


class TestApplyAndQuery:
    def test_position_is_the_last_applied(self, shop: ShopHarness) -> None:
        """position reports the log position of the last event applied, ignored ones included."""
        assert shop.read.position == len(shop.log)
        assert ShopReadModels().position == 0

    def test_unknown_and_uninteresting_events_are_ignored(self) -> None:
        """Events the read models do not use only advance the position."""
        models = ShopReadModels()
        models.apply(CustomerRegistered(customer_id="c", name="C", email="c@x"), 1)
        models.apply(object(), 2)
        assert models.position == 2
        assert models.query(SearchProducts()) == {"items": [], "total": 0}

    def test_unknown_query_is_a_type_error(self) -> None:
        """Anything that is not a shop query raises TypeError."""
        with pytest.raises(TypeError, match="GetThing is not a shop query"):
            ShopReadModels().query(type("GetThing", (), {})())

    def test_order_for_a_product_it_never_saw_is_still_recorded(self) -> None:
        """An order line whose product is missing (impossible in a decided log) neither crashes nor half-applies."""
        models = ShopReadModels()
        line = OrderLine(sku="ghost", name="Ghost", quantity=2, unit_price_cents=300)
        models.apply(OrderPlaced(order_id="o-1", customer_id="c", customer_name="C", lines=(line,)), 1)
        models.apply(OrderCancelled(order_id="o-1"), 2)
        answer = models.query(GetOrder(order_id="o-1"))
        assert isinstance(answer, dict)
        assert (answer["status"], answer["total_cents"]) == ("cancelled", 600)
        assert models.query(TopProducts()) == []

    def test_applies_events_directly(self) -> None:
        """apply works from events alone, with no write model behind it."""
        models = ShopReadModels()
        event = ProductAdded(sku="X", name="Thing", category="c", price_cents=5, stock=1, description="odd")
        models.apply(event, 7)
        assert skus(models.query(SearchProducts(text="ODD thing"))) == ["X"]
        assert models.position == 7


def busy_shop() -> ShopHarness:
    """The seed shop after a mix of orders, a cancellation, a shipment, a repricing and a restock."""
    shop = ShopHarness()
    shop.execute_all(seed_commands())
    shop.execute_all(
        [
            place("o-1", "c-ada", ("BK-001", 1), ("EL-003", 2)),
            place("o-2", "c-grace", ("KIT-001", 1)),
            ChangePrice(sku="EL-003", price_cents=3500),
            place("o-3", "c-ada", ("EL-003", 1), ("GRD-003", 4)),
            CancelOrder(order_id="o-2"),
            ShipOrder(order_id="o-1"),
            Restock(sku="KIT-003", quantity=5),
            place("o-4", "c-alan", ("KIT-003", 5)),
        ]
    )
    return shop


def every_answer(models: ShopReadModels, shop: ShopHarness) -> list[tuple[object, object]]:
    """Each query a client could ask about `shop`, with the answer or the error it raises."""
    queries: list[object] = [SalesSummary(), TopProducts(limit=100), SearchProducts(limit=100)]
    queries += [SearchProducts(text=text, limit=100) for text in ("usb", "steel", "usb c charger", "zzz")]
    queries += [SearchProducts(category=c, in_stock=s) for c in ("books", "kitchen", "x") for s in (True, False)]
    queries += [SearchProducts(max_price_cents=4000, limit=3)]
    queries += [GetProduct(sku=sku) for sku in ("BK-001", "EL-003", "KIT-003", "nope")]
    queries += [GetOrder(order_id=order_id) for order_id in ("o-1", "o-2", "o-3", "o-4", "nope")]
    queries += [CustomerOrders(customer_id=c) for c in ("c-ada", "c-grace", "c-alan", "nope")]
    answers: list[tuple[object, object]] = []
    for query in queries:
        try:
            answers.append((query, models.query(query)))
        except NotFound as error:
            answers.append((query, str(error)))
    return answers


class TestSnapshot:
    def test_snapshot_is_json_native(self) -> None:
        """The snapshot holds only str-keyed dicts, lists, strs, ints and bools."""
        snapshot = busy_shop().read.snapshot()
        assert_json_native(snapshot)
        assert snapshot["version"] == SNAPSHOT_VERSION

    def test_round_trip_answers_every_query_the_same(self) -> None:
        """Restoring an orjson round trip of the snapshot gives the same answers and position."""
        shop = busy_shop()
        restored = json_round_trip(shop.read)
        assert restored.position == shop.read.position
        assert every_answer(restored, shop) == every_answer(shop.read, shop)
        assert orjson.dumps(restored.snapshot()) == orjson.dumps(shop.read.snapshot())

    def test_restored_models_keep_applying(self) -> None:
        """After restore, new events (incl. new products for the rebuilt indexes) apply as usual."""
        shop = busy_shop()
        restored = json_round_trip(shop.read)
        cut = len(shop.log)
        shop.execute_all(
            [
                add_product("NEW-1", name="USB Lamp", category="electronics", description="steel lamp"),
                place("o-5", "c-grace", ("NEW-1", 2), ("EL-003", 1)),
                CancelOrder(order_id="o-3"),
                ShipOrder(order_id="o-4"),
            ]
        )
        for position, event in enumerate(shop.log[cut:], start=cut + 1):
            restored.apply(event, position)
        assert every_answer(restored, shop) == every_answer(shop.read, shop)
        assert skus(restored.query(SearchProducts(text="usb"))) == skus(shop.query(SearchProducts(text="usb")))

    def test_restore_replaces_existing_state(self) -> None:
        """Restoring into a used model discards what it held."""
        models = busy_shop().read
        models.restore(orjson.loads(orjson.dumps(ShopReadModels().snapshot())))
        assert models.position == 0
        assert models.query(SearchProducts()) == {"items": [], "total": 0}
        assert models.query(SearchProducts(text="usb")) == {"items": [], "total": 0}
        assert models.query(CustomerOrders(customer_id="c-ada")) == []

    def test_restore_rejects_another_version(self) -> None:
        """A snapshot of an unknown layout version is refused."""
        data = ShopReadModels().snapshot()
        data["version"] = SNAPSHOT_VERSION + 1
        with pytest.raises(ValueError, match="cannot restore a shop snapshot of version 2; expected 1"):
            ShopReadModels().restore(data)

    @pytest.mark.parametrize(("table", "column"), [("orders", "status"), ("lines", "quantity")])
    def test_restore_rejects_ragged_columns_and_keeps_its_state(self, table: str, column: str) -> None:
        """Columns of unequal length are refused before anything is replaced."""
        shop = busy_shop()
        before = orjson.dumps(shop.read.snapshot())
        data = orjson.loads(before)
        data[table][column].pop()
        with pytest.raises(ValueError, match=f"snapshot column '{column}' is not a list of"):
            shop.read.restore(data)
        assert orjson.dumps(shop.read.snapshot()) == before

    def test_restore_rejects_a_column_that_is_not_a_list(self) -> None:
        """A column must be a list."""
        data = orjson.loads(orjson.dumps(ShopReadModels().snapshot()))
        data["orders"]["order_id"] = {}
        with pytest.raises(ValueError, match="snapshot column 'order_id' is not a list"):
            ShopReadModels().restore(data)

    def test_restore_rejects_a_bad_position(self) -> None:
        """The position must be an int."""
        data = ShopReadModels().snapshot()
        data["position"] = "12"
        with pytest.raises(ValueError, match="snapshot position must be an int"):
            ShopReadModels().restore(data)


class TestLegacyLogs:
    def test_0_1_orders_with_reservation_events_give_the_same_models(self) -> None:
        """A 0.1 log (OrderPlaced, then StockReserved per line; OrderCancelled, then StockReleased) and today's
        one-event orders build the same read models."""
        product = ProductAdded(sku="A1", name="Kettle", category="k", price_cents=250, stock=5, description="")
        line = OrderLine(sku="A1", name="Kettle", quantity=2, unit_price_cents=250)
        customer = CustomerRegistered(customer_id="c", name="C", email="c@x")
        old, new = ShopReadModels(), ShopReadModels()
        legacy = [
            customer,
            product,
            OrderPlaced(order_id="o", customer_id="c", customer_name="C", lines=(line,)),
            StockReserved(sku="A1", order_id="o", quantity=2),
        ]
        today = [
            customer,
            product,
            OrderPlaced(order_id="o", customer_id="c", customer_name="C", lines=(line,), reserves_stock=True),
        ]
        for position, event in enumerate(legacy, 1):
            old.apply(event, position)
        for position, event in enumerate(today, 1):
            new.apply(event, position)
        assert old.query(GetProduct(sku="A1")) == new.query(GetProduct(sku="A1"))
        assert new.query(GetProduct(sku="A1"))["stock"] == 3  # type: ignore[index]
        old.apply(OrderCancelled(order_id="o"), 5)
        old.apply(StockReleased(sku="A1", order_id="o", quantity=2), 6)
        new.apply(OrderCancelled(order_id="o", lines=(CancelledLine(sku="A1", quantity=2),)), 4)
        assert old.query(GetProduct(sku="A1")) == new.query(GetProduct(sku="A1"))
        assert new.query(GetProduct(sku="A1"))["stock"] == 5  # type: ignore[index]
