"""The shop's numeric bounds: prices, quantities and stock stay in range, so no read model overflows."""

from __future__ import annotations

import pytest

from soloist_shop.commands import ChangePrice, Restock
from soloist_shop.decider import MAX_PRICE_CENTS, MAX_QUANTITY, MAX_STOCK, decide
from soloist_shop.errors import RuleViolation
from soloist_shop.events import ProductRestocked, product_stream
from soloist_shop.state import ProductState

from .shop_harness import ShopHarness, add_product, place, register

HUGE = 9223372036854775807  # the value of the issue: acknowledged twice, it overflowed the read models


@pytest.fixture(name="shop")
def _shop() -> ShopHarness:
    """A shop with customer c-ada and product A1 (stock 3)."""
    shop = ShopHarness()
    shop.execute_all([register("c-ada"), add_product("A1", price_cents=250, stock=3)])
    return shop


def _stock(shop: ShopHarness, sku: str) -> int:
    state = shop.states[product_stream(sku)]
    assert isinstance(state, ProductState)
    return state.stock


class TestBounds:
    def test_the_bounds_keep_an_order_total_inside_int64(self) -> None:
        """The largest possible order total fits a signed 64-bit integer (SQLite, JSON consumers)."""
        assert 100 * MAX_QUANTITY * MAX_PRICE_CENTS < 2**63 - 1
        assert MAX_STOCK + MAX_QUANTITY < 2**63 - 1

    def test_restock_of_int64_max_is_rejected(self, shop: ShopHarness) -> None:
        """The issue's Restock(quantity=2**63-1) is refused with the value and the bound, the shop untouched."""
        with pytest.raises(RuleViolation) as caught:
            shop.execute(Restock(sku="A1", quantity=HUGE))
        assert str(caught.value) == f"restock quantity of sku 'A1' must be between 1 and {MAX_QUANTITY}, got {HUGE}"
        assert _stock(shop, "A1") == 3

    def test_restock_up_to_the_bound_is_accepted(self, shop: ShopHarness) -> None:
        """MAX_QUANTITY itself is a valid restock."""
        assert shop.execute(Restock(sku="A1", quantity=MAX_QUANTITY)) == [
            ProductRestocked(sku="A1", quantity=MAX_QUANTITY)
        ]

    def test_restock_past_max_stock_is_rejected(self) -> None:
        """A restock that would lift stock above MAX_STOCK is refused, naming the would-be stock."""
        shop = ShopHarness()
        shop.execute(add_product("A1", stock=MAX_STOCK - 10))
        shop.execute(Restock(sku="A1", quantity=10))
        with pytest.raises(RuleViolation) as caught:
            shop.execute(Restock(sku="A1", quantity=1))
        assert str(caught.value) == (
            f"cannot restock 1 of sku 'A1': stock would be {MAX_STOCK + 1}, above the limit of {MAX_STOCK}"
        )
        assert _stock(shop, "A1") == MAX_STOCK

    @pytest.mark.parametrize("stock", [MAX_STOCK + 1, HUGE])
    def test_initial_stock_above_the_bound_is_rejected(self, stock: int) -> None:
        """AddProduct's stock is bounded too."""
        with pytest.raises(RuleViolation, match=f"must be between 0 and {MAX_STOCK}, got {stock}"):
            decide({}, add_product("A1", stock=stock))

    @pytest.mark.parametrize("price", [MAX_PRICE_CENTS + 1, HUGE])
    def test_prices_above_the_bound_are_rejected(self, shop: ShopHarness, price: int) -> None:
        """AddProduct and ChangePrice refuse a price above MAX_PRICE_CENTS."""
        message = f"price_cents for sku 'A1' must be between 1 and {MAX_PRICE_CENTS}, got {price}"
        with pytest.raises(RuleViolation) as caught:
            decide({}, add_product("A1", price_cents=price))
        assert str(caught.value) == message
        with pytest.raises(RuleViolation) as caught:
            shop.execute(ChangePrice(sku="A1", price_cents=price))
        assert str(caught.value) == message

    def test_price_at_the_bound_is_accepted(self, shop: ShopHarness) -> None:
        """MAX_PRICE_CENTS itself is a valid price."""
        shop.execute(ChangePrice(sku="A1", price_cents=MAX_PRICE_CENTS))

    def test_order_line_quantity_above_the_bound_is_rejected(self, shop: ShopHarness) -> None:
        """A line asking for more than MAX_QUANTITY is refused before the stock check."""
        with pytest.raises(RuleViolation) as caught:
            shop.execute(place("o-1", "c-ada", ("A1", HUGE)))
        assert str(caught.value) == (
            f"quantity of sku 'A1' in order 'o-1' must be between 1 and {MAX_QUANTITY}, got {HUGE}"
        )
