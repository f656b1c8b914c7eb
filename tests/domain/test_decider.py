"""The shop's rules: decide (every rule and its edges), evolve, stream_of, the message types, seed."""

from __future__ import annotations

import pickle
import re
import typing
from types import MappingProxyType

import msgspec
import pytest

from soloist.testing import decider
from soloist_shop.commands import (
    COMMANDS,
    AddProduct,
    CancelOrder,
    ChangePrice,
    OrderLineRequest,
    PlaceOrder,
    RegisterCustomer,
    Restock,
    ShipOrder,
)
from soloist_shop.decider import MAX_ORDER_LINES, decide, evolve
from soloist_shop.errors import InvalidQuery, NotFound, RuleViolation, ShopError
from soloist_shop.events import (
    EVENTS,
    CancelledLine,
    CustomerRegistered,
    OrderCancelled,
    OrderLine,
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
    affects,
    customer_stream,
    order_stream,
    product_stream,
    stream_of,
)
from soloist_shop.queries import QUERIES, SearchProducts
from soloist_shop.seed import seed_commands
from soloist_shop.state import CustomerState, OrderState, ProductState
from soloist_shop.wiring import DOMAIN

from .shop_harness import ShopHarness, add_product, place, register


@pytest.fixture(name="shop")
def _shop() -> ShopHarness:
    """A shop with customer c-ada and products A1 (stock 3, 250c) and B2 (stock 5, 100c)."""
    shop = ShopHarness()
    shop.execute_all(
        [
            register("c-ada"),
            add_product("A1", name="Kettle", price_cents=250, stock=3),
            add_product("B2", name="Mug", price_cents=100, stock=5),
        ]
    )
    return shop


def stock_of(shop: ShopHarness, sku: str) -> int:
    state = shop.states[product_stream(sku)]
    assert isinstance(state, ProductState)
    return state.stock


def order_state(shop: ShopHarness, order_id: str) -> OrderState:
    state = shop.states[order_stream(order_id)]
    assert isinstance(state, OrderState)
    return state


def rejects(shop: ShopHarness, command: object, message: str) -> None:
    """Assert `command` is rejected with exactly `message` and leaves the shop untouched."""
    states = dict(shop.states)
    log_length = len(shop.log)
    with pytest.raises(RuleViolation) as caught:
        shop.execute(command)
    assert str(caught.value) == message
    assert shop.states == states
    assert len(shop.log) == log_length


class TestRegisterCustomer:
    def test_emits_customer_registered(self) -> None:
        """A new customer with a name and an email is registered."""
        events = decide({}, register("c-1", "Grace Hopper", "grace@example.com"))
        assert events == [CustomerRegistered(customer_id="c-1", name="Grace Hopper", email="grace@example.com")]

    def test_unicode_name_is_kept_as_given(self) -> None:
        """Names outside ASCII are accepted and stored verbatim."""
        command = register("c-ü", "Zoë Šimková 李雷", "zoë@例え.jp")
        assert decide({}, command) == [
            CustomerRegistered(customer_id="c-ü", name="Zoë Šimková 李雷", email="zoë@例え.jp")
        ]

    @pytest.mark.parametrize("name", ["", "   ", "\t\n"])
    def test_rejects_blank_name(self, name: str) -> None:
        """A name that is empty after stripping is rejected."""
        with pytest.raises(RuleViolation, match="name of customer 'c-1' must not be empty"):
            decide({}, register("c-1", name))

    def test_rejects_email_without_at(self) -> None:
        """An email without '@' is rejected, naming the email."""
        with pytest.raises(RuleViolation) as caught:
            decide({}, register("c-1", "Ada", "ada.example.com"))
        assert str(caught.value) == "email 'ada.example.com' of customer 'c-1' has no '@'"

    def test_rejects_existing_id(self, shop: ShopHarness) -> None:
        """A customer id can be registered once."""
        rejects(shop, register("c-ada", "Another Ada"), "customer 'c-ada' already exists")

    def test_same_id_as_a_product_sku_is_a_different_stream(self, shop: ShopHarness) -> None:
        """Customer and product ids live in separate streams, so they may coincide."""
        shop.execute(register("A1", "Ann"))
        assert isinstance(shop.states[customer_stream("A1")], CustomerState)


class TestAddProduct:
    def test_emits_product_added_with_default_description(self) -> None:
        """A valid product is added; the description defaults to empty."""
        command = AddProduct(sku="A1", name="Kettle", category="kitchen", price_cents=250, stock=3)
        assert decide({}, command) == [
            ProductAdded(sku="A1", name="Kettle", category="kitchen", price_cents=250, stock=3, description="")
        ]

    def test_zero_stock_and_one_cent_are_allowed(self) -> None:
        """Stock 0 and a price of 1 cent are the smallest accepted values."""
        events = decide({}, add_product("A1", price_cents=1, stock=0))
        assert isinstance(events[0], ProductAdded)
        assert (events[0].price_cents, events[0].stock) == (1, 0)

    @pytest.mark.parametrize("price", [0, -1])
    def test_rejects_non_positive_price(self, price: int) -> None:
        """A price must be at least 1 cent."""
        with pytest.raises(RuleViolation) as caught:
            decide({}, add_product("A1", price_cents=price))
        assert str(caught.value) == f"price_cents for sku 'A1' must be between 1 and 100000000, got {price}"

    def test_rejects_negative_stock(self) -> None:
        """Initial stock must be >= 0."""
        with pytest.raises(RuleViolation, match="stock of sku 'A1' must be between 0 and 1000000000, got -1"):
            decide({}, add_product("A1", stock=-1))

    @pytest.mark.parametrize("name", ["", "  "])
    def test_rejects_blank_name(self, name: str) -> None:
        """A product needs a non-blank name."""
        with pytest.raises(RuleViolation, match="name of sku 'A1' must not be empty"):
            decide({}, add_product("A1", name=name))

    def test_rejects_existing_sku(self, shop: ShopHarness) -> None:
        """A sku can be added once."""
        rejects(shop, add_product("A1"), "product 'A1' already exists")

    def test_unicode_sku_and_name(self) -> None:
        """Skus and names outside ASCII work, and stream ids carry them."""
        shop = ShopHarness()
        shop.execute(add_product("Ж-1", name="Чайник «Утро»"))
        assert shop.states[product_stream("Ж-1")] == ProductState(
            sku="Ж-1", name="Чайник «Утро»", price_cents=100, stock=10
        )


class TestChangePrice:
    def test_changes_the_price(self, shop: ShopHarness) -> None:
        """A price change is recorded and evolves the product."""
        assert shop.execute(ChangePrice(sku="A1", price_cents=199)) == [PriceChanged(sku="A1", price_cents=199)]
        assert shop.states[product_stream("A1")] == ProductState(sku="A1", name="Kettle", price_cents=199, stock=3)

    def test_rejects_unknown_sku(self, shop: ShopHarness) -> None:
        """Only existing products can be repriced."""
        rejects(shop, ChangePrice(sku="ZZ", price_cents=10), "product 'ZZ' does not exist")

    @pytest.mark.parametrize("price", [0, -5])
    def test_rejects_non_positive_price(self, shop: ShopHarness, price: int) -> None:
        """The new price must be at least 1 cent."""
        rejects(
            shop,
            ChangePrice(sku="A1", price_cents=price),
            f"price_cents for sku 'A1' must be between 1 and 100000000, got {price}",
        )


class TestRestock:
    def test_adds_to_stock(self, shop: ShopHarness) -> None:
        """Restocking adds the quantity to the stock."""
        assert shop.execute(Restock(sku="A1", quantity=4)) == [ProductRestocked(sku="A1", quantity=4)]
        assert stock_of(shop, "A1") == 7

    def test_rejects_unknown_sku(self, shop: ShopHarness) -> None:
        """Only existing products can be restocked."""
        rejects(shop, Restock(sku="ZZ", quantity=1), "product 'ZZ' does not exist")

    @pytest.mark.parametrize("quantity", [0, -3])
    def test_rejects_non_positive_quantity(self, shop: ShopHarness, quantity: int) -> None:
        """The restocked quantity must be > 0."""
        rejects(
            shop,
            Restock(sku="A1", quantity=quantity),
            f"restock quantity of sku 'A1' must be between 1 and 1000000, got {quantity}",
        )


class TestPlaceOrder:
    def test_emits_one_order_placed_that_reserves_the_stock(self, shop: ShopHarness) -> None:
        """One OrderPlaced (with names and prices) that takes the stock of each line's product itself."""
        events = shop.execute(place("o-1", "c-ada", ("B2", 2), ("A1", 1)))
        assert events == [
            OrderPlaced(
                order_id="o-1",
                customer_id="c-ada",
                customer_name="Ada Lovelace",
                lines=(
                    OrderLine(sku="B2", name="Mug", quantity=2, unit_price_cents=100),
                    OrderLine(sku="A1", name="Kettle", quantity=1, unit_price_cents=250),
                ),
                reserves_stock=True,
            ),
        ]
        assert affects(events[0]) == ("product-B2", "product-A1")
        assert (stock_of(shop, "A1"), stock_of(shop, "B2")) == (2, 3)
        assert order_state(shop, "o-1") == OrderState(order_id="o-1", status="placed", lines=(("B2", 2), ("A1", 1)))

    def test_lines_take_the_current_price(self, shop: ShopHarness) -> None:
        """The unit price in the order is the price at the moment the order is placed."""
        shop.execute(ChangePrice(sku="A1", price_cents=999))
        placed = shop.execute(place("o-1", "c-ada", ("A1", 1)))[0]
        assert isinstance(placed, OrderPlaced)
        assert placed.lines[0].unit_price_cents == 999

    def test_exact_stock_is_accepted_and_leaves_zero(self, shop: ShopHarness) -> None:
        """Ordering exactly the stock on hand succeeds and leaves zero."""
        shop.execute(place("o-1", "c-ada", ("A1", 3)))
        assert stock_of(shop, "A1") == 0

    def test_rejects_more_than_stock_with_values_in_message(self, shop: ShopHarness) -> None:
        """Ordering more than the stock names the quantity, the sku and what is left."""
        rejects(shop, place("o-1", "c-ada", ("A1", 5)), "cannot order 5 of sku 'A1': only 3 in stock")

    def test_rejects_any_quantity_of_zero_stock(self) -> None:
        """A product with no stock cannot be ordered at all."""
        shop = ShopHarness()
        shop.execute_all([register("c-1"), add_product("Z0", stock=0)])
        rejects(shop, place("o-1", "c-1", ("Z0", 1)), "cannot order 1 of sku 'Z0': only 0 in stock")

    def test_one_line_over_stock_rejects_the_whole_order(self, shop: ShopHarness) -> None:
        """All or nothing: a single bad line means no reservation for the good ones."""
        rejects(shop, place("o-1", "c-ada", ("B2", 1), ("A1", 4)), "cannot order 4 of sku 'A1': only 3 in stock")
        assert (stock_of(shop, "A1"), stock_of(shop, "B2")) == (3, 5)

    def test_restock_then_order_more_than_initial_stock(self, shop: ShopHarness) -> None:
        """Restocked units can be ordered."""
        shop.execute(Restock(sku="A1", quantity=2))
        shop.execute(place("o-1", "c-ada", ("A1", 5)))
        assert stock_of(shop, "A1") == 0

    def test_stock_taken_by_an_earlier_order_is_not_available(self, shop: ShopHarness) -> None:
        """A second order sees the stock left by the first."""
        shop.execute(place("o-1", "c-ada", ("A1", 2)))
        rejects(shop, place("o-2", "c-ada", ("A1", 2)), "cannot order 2 of sku 'A1': only 1 in stock")

    def test_rejects_duplicate_order_id(self, shop: ShopHarness) -> None:
        """An order id can be used once."""
        shop.execute(place("o-1", "c-ada", ("A1", 1)))
        rejects(shop, place("o-1", "c-ada", ("B2", 1)), "order 'o-1' already exists")

    def test_rejects_same_sku_twice(self, shop: ShopHarness) -> None:
        """Each sku may appear on one line only, even if the total would fit."""
        rejects(
            shop,
            place("o-1", "c-ada", ("A1", 1), ("B2", 1), ("A1", 1)),
            "sku 'A1' appears more than once in order 'o-1'; put it on one line",
        )

    def test_rejects_no_lines(self, shop: ShopHarness) -> None:
        """An order needs at least one line."""
        rejects(shop, place("o-1", "c-ada"), "order 'o-1' must have 1 to 100 lines, got 0")

    def test_accepts_100_lines_and_rejects_101(self) -> None:
        """The line limit is inclusive at 100."""
        shop = ShopHarness()
        shop.execute(register("c-1"))
        shop.execute_all([add_product(f"S{i}", stock=1) for i in range(MAX_ORDER_LINES + 1)])
        too_many = place("o-big", "c-1", *((f"S{i}", 1) for i in range(MAX_ORDER_LINES + 1)))
        rejects(shop, too_many, "order 'o-big' must have 1 to 100 lines, got 101")
        (placed,) = shop.execute(place("o-ok", "c-1", *((f"S{i}", 1) for i in range(MAX_ORDER_LINES))))
        assert isinstance(placed, OrderPlaced)
        assert len(placed.lines) == MAX_ORDER_LINES
        assert all(stock_of(shop, f"S{i}") == 0 for i in range(MAX_ORDER_LINES))

    @pytest.mark.parametrize("quantity", [0, -1])
    def test_rejects_non_positive_quantity(self, shop: ShopHarness, quantity: int) -> None:
        """Every line's quantity must be > 0."""
        rejects(
            shop,
            place("o-1", "c-ada", ("A1", 1), ("B2", quantity)),
            f"quantity of sku 'B2' in order 'o-1' must be between 1 and 1000000, got {quantity}",
        )

    def test_rejects_unknown_customer(self, shop: ShopHarness) -> None:
        """The customer must exist."""
        rejects(shop, place("o-1", "c-nobody", ("A1", 1)), "customer 'c-nobody' does not exist")

    def test_rejects_unknown_sku(self, shop: ShopHarness) -> None:
        """Every sku must exist."""
        rejects(shop, place("o-1", "c-ada", ("A1", 1), ("ZZ", 1)), "product 'ZZ' does not exist")

    def test_unicode_customer_and_product(self) -> None:
        """Non-ASCII ids and names flow into the order event unchanged."""
        shop = ShopHarness()
        shop.execute_all([register("c-ß", "Jürgen Groß"), add_product("茶-1", name="緑茶", stock=2)])
        placed = shop.execute(place("注文-1", "c-ß", ("茶-1", 2)))[0]
        assert placed == OrderPlaced(
            order_id="注文-1",
            customer_id="c-ß",
            customer_name="Jürgen Groß",
            lines=(OrderLine(sku="茶-1", name="緑茶", quantity=2, unit_price_cents=100),),
            reserves_stock=True,
        )


# -- orders, as soloist.testing scenarios: given the committed events, when a command, then events or a rejection

ADA = CustomerRegistered(customer_id="c-ada", name="Ada Lovelace", email="ada@example.com")
KETTLE = ProductAdded(sku="A1", name="Kettle", category="misc", price_cents=250, stock=3, description="")
MUG = ProductAdded(sku="B2", name="Mug", category="misc", price_cents=100, stock=5, description="")
SHOP = (ADA, KETTLE, MUG)  # the `shop` fixture's catalogue, as events


def placed(order_id: str, *lines: tuple[str, int]) -> OrderPlaced:
    """The OrderPlaced of c-ada's order of (sku, quantity) pairs of the catalogue above."""
    names = {"A1": ("Kettle", 250), "B2": ("Mug", 100)}
    return OrderPlaced(
        order_id=order_id,
        customer_id="c-ada",
        customer_name="Ada Lovelace",
        lines=tuple(
            OrderLine(sku=sku, name=names[sku][0], quantity=quantity, unit_price_cents=names[sku][1])
            for sku, quantity in lines
        ),
        reserves_stock=True,
    )


def cancelled(order_id: str, *lines: tuple[str, int], reason: str = "") -> OrderCancelled:
    """The OrderCancelled giving back (sku, quantity) pairs."""
    back = tuple(CancelledLine(sku=sku, quantity=quantity) for sku, quantity in lines)
    return OrderCancelled(order_id=order_id, lines=back, reason=reason)


def exactly(message: str) -> str:
    """A then_rejected pattern that matches ``message`` and nothing longer."""
    return f"^{re.escape(message)}$"


O1 = placed("o-1", ("A1", 1))
PENDING = PaymentRequested(order_id="o-1", token="tok", amount_cents=250)


class TestCancelOrder:
    def test_emits_one_cancelled_that_gives_each_line_back(self) -> None:
        """Cancelling emits one OrderCancelled carrying the lines whose stock it gives back."""
        scenario = decider(DOMAIN).given(*SHOP, placed("o-1", ("A1", 3), ("B2", 1)))
        scenario.when(CancelOrder(order_id="o-1")).then(cancelled("o-1", ("A1", 3), ("B2", 1)))

    def test_released_stock_can_be_ordered_again(self) -> None:
        """Units released by a cancellation are available to the next order."""
        scenario = decider(DOMAIN).given(*SHOP, placed("o-1", ("A1", 3)), cancelled("o-1", ("A1", 3)))
        scenario.when(place("o-2", "c-ada", ("A1", 3))).then(placed("o-2", ("A1", 3)))

    @pytest.mark.parametrize(
        ("given", "message"),
        [
            ((), "order 'o-x' does not exist"),
            ((O1, cancelled("o-1", ("A1", 1))), "cannot cancel order 'o-1': it is already cancelled"),
            ((O1, OrderShipped(order_id="o-1")), "cannot cancel order 'o-1': it is already shipped"),
        ],
        ids=["unknown", "twice", "after-ship"],
    )
    def test_rejects_an_order_that_is_not_placed(self, given: tuple[object, ...], message: str) -> None:
        """Only an existing, placed order can be cancelled (so its stock is released at most once)."""
        order_id = "o-1" if given else "o-x"
        decider(DOMAIN).given(*SHOP, *given).when(CancelOrder(order_id=order_id)).then_rejected(exactly(message))

    def test_rejects_cancel_while_the_payment_is_pending(self) -> None:
        """A capture may be in flight: a cancel now could leave a charged, cancelled order, so it is refused."""
        decider(DOMAIN).given(*SHOP, O1, PENDING).when(
            CancelOrder(order_id="o-1", reason="changed my mind")
        ).then_rejected("^cannot cancel order 'o-1': its payment is pending")

    @pytest.mark.parametrize(
        "answer",
        [PaymentDeclined(order_id="o-1", reason="card"), PaymentCaptured(order_id="o-1")],
        ids=["declined", "captured"],
    )
    def test_cancel_once_the_payment_is_recorded(self, answer: object) -> None:
        """After the answer is recorded the order can be cancelled: the checkout's compensation follows a decline."""
        decider(DOMAIN).given(*SHOP, O1, PENDING, answer).when(CancelOrder(order_id="o-1", reason="r")).then(
            cancelled("o-1", ("A1", 1), reason="r")
        )


class TestShipOrder:
    def test_emits_order_shipped_and_keeps_the_stock_taken(self) -> None:
        """A placed order ships, and its stock stays taken: a second order sees only what is left."""
        shop = decider(DOMAIN).given(*SHOP, placed("o-1", ("A1", 2)))
        shop.when(ShipOrder(order_id="o-1")).then(OrderShipped(order_id="o-1"))
        shop.given(OrderShipped(order_id="o-1")).when(place("o-2", "c-ada", ("A1", 2))).then_rejected(
            exactly("cannot order 2 of sku 'A1': only 1 in stock")
        )

    @pytest.mark.parametrize(
        ("given", "message"),
        [
            ((), "order 'o-x' does not exist"),
            ((O1, cancelled("o-1", ("A1", 1))), "cannot ship order 'o-1': it is already cancelled"),
            ((O1, OrderShipped(order_id="o-1")), "cannot ship order 'o-1': it is already shipped"),
            ((O1, PENDING), "cannot ship order 'o-1': its payment is pending; ship it once the payment is captured"),
            (
                (O1, PENDING, PaymentDeclined(order_id="o-1", reason="card")),
                "cannot ship order 'o-1': its payment was declined",
            ),
        ],
        ids=["unknown", "after-cancel", "twice", "payment-pending", "payment-declined"],
    )
    def test_rejects(self, given: tuple[object, ...], message: str) -> None:
        """Only an existing, placed order ships, once, and not while its payment is pending or after a decline."""
        order_id = "o-1" if given else "o-x"
        decider(DOMAIN).given(*SHOP, *given).when(ShipOrder(order_id=order_id)).then_rejected(exactly(message))

    def test_ships_once_the_payment_is_captured(self) -> None:
        """An order with a captured payment ships."""
        decider(DOMAIN).given(*SHOP, O1, PENDING, PaymentCaptured(order_id="o-1")).when(ShipOrder(order_id="o-1")).then(
            OrderShipped(order_id="o-1")
        )


class TestDecide:
    def test_unknown_command_is_a_type_error(self) -> None:
        """Anything that is not a shop command raises TypeError naming its type."""
        with pytest.raises(TypeError, match=r"^SearchProducts is not a shop command"):
            decide({}, SearchProducts())

    def test_order_line_request_alone_is_not_a_command(self) -> None:
        """OrderLineRequest is a value inside PlaceOrder, not a command."""
        with pytest.raises(TypeError, match="OrderLineRequest is not a shop command"):
            decide({}, OrderLineRequest(sku="A1", quantity=1))

    def test_reads_states_without_mutating_them(self, shop: ShopHarness) -> None:
        """decide works on a read-only mapping and returns events without touching the states."""
        before = dict(shop.states)
        decide(MappingProxyType(shop.states), place("o-1", "c-ada", ("A1", 1)))
        assert shop.states == before

    def test_wrong_state_kind_in_a_stream_is_a_type_error(self) -> None:
        """A product stream holding a customer state is a wiring bug, not a rule violation."""
        states = {product_stream("A1"): CustomerState(customer_id="x", name="X", email="x@x")}
        with pytest.raises(TypeError, match="stream 'product-A1' holds a CustomerState, expected ProductState"):
            decide(states, Restock(sku="A1", quantity=1))


class TestEvolve:
    def test_returns_new_states_and_keeps_the_old(self) -> None:
        """evolve builds a new state; the previous one is unchanged."""
        before = ProductState(sku="A1", name="Kettle", price_cents=250, stock=3)
        after = evolve(before, StockReserved(sku="A1", order_id="o-1", quantity=2))
        assert after == ProductState(sku="A1", name="Kettle", price_cents=250, stock=1)
        assert before.stock == 3

    def test_order_lifecycle(self) -> None:
        """An order evolves from placed to shipped, keeping its (sku, quantity) lines."""
        placed = evolve(
            None,
            OrderPlaced(
                order_id="o-1",
                customer_id="c",
                customer_name="C",
                lines=(OrderLine(sku="A1", name="Kettle", quantity=2, unit_price_cents=250),),
            ),
        )
        assert placed == OrderState(order_id="o-1", status="placed", lines=(("A1", 2),))
        assert evolve(placed, OrderShipped(order_id="o-1")) == OrderState(
            order_id="o-1", status="shipped", lines=(("A1", 2),)
        )

    def test_unknown_event_is_a_type_error(self) -> None:
        """Anything that is not a shop event raises TypeError."""
        with pytest.raises(TypeError, match=r"^RegisterCustomer is not a shop event"):
            evolve(None, register("c-1"))

    def test_event_on_missing_state_is_a_type_error(self) -> None:
        """A product event on an empty stream cannot be folded."""
        with pytest.raises(TypeError, match="PriceChanged needs an existing ProductState, got None"):
            evolve(None, PriceChanged(sku="A1", price_cents=1))

    def test_event_on_wrong_state_kind_is_a_type_error(self) -> None:
        """An order event on a product state cannot be folded."""
        product = ProductState(sku="A1", name="K", price_cents=1, stock=1)
        with pytest.raises(TypeError, match="OrderShipped needs an existing OrderState"):
            evolve(product, OrderShipped(order_id="o-1"))

    def test_legacy_reservation_events_still_fold(self) -> None:
        """Logs of soloist 0.1 carry StockReserved/StockReleased after orders without reserves_stock: still read."""
        product = ProductState(sku="A1", name="K", price_cents=1, stock=5)
        legacy_order = OrderPlaced(
            order_id="o-1",
            customer_id="c",
            customer_name="C",
            lines=(OrderLine(sku="A1", name="K", quantity=2, unit_price_cents=1),),
        )
        assert affects(legacy_order) == ()  # its stock is taken by the StockReserved that follows it
        reserved = evolve(product, StockReserved(sku="A1", order_id="o-1", quantity=2))
        assert reserved == ProductState(sku="A1", name="K", price_cents=1, stock=3)
        assert affects(OrderCancelled(order_id="o-1")) == ()
        assert evolve(reserved, StockReleased(sku="A1", order_id="o-1", quantity=2)) == product


STREAM_CASES: list[tuple[object, str]] = [
    (CustomerRegistered(customer_id="c-1", name="A", email="a@b"), "customer-c-1"),
    (ProductAdded(sku="A1", name="K", category="k", price_cents=1, stock=0, description=""), "product-A1"),
    (PriceChanged(sku="A1", price_cents=2), "product-A1"),
    (ProductRestocked(sku="A1", quantity=1), "product-A1"),
    (StockReserved(sku="A1", order_id="o-1", quantity=1), "product-A1"),
    (StockReleased(sku="A1", order_id="o-1", quantity=1), "product-A1"),
    (OrderPlaced(order_id="o-1", customer_id="c-1", customer_name="A", lines=()), "order-o-1"),
    (OrderCancelled(order_id="o-1"), "order-o-1"),
    (OrderShipped(order_id="o-1"), "order-o-1"),
    (PaymentRequested(order_id="o-1", token="t", amount_cents=1), "order-o-1"),
    (PaymentCaptured(order_id="o-1"), "order-o-1"),
    (PaymentDeclined(order_id="o-1", reason="r"), "order-o-1"),
]


class TestStreamOf:
    @pytest.mark.parametrize(("event", "stream"), STREAM_CASES)
    def test_every_event_has_its_stream(self, event: object, stream: str) -> None:
        """Each event lives in its aggregate's stream; stock movements live on the product."""
        assert stream_of(event) == stream

    def test_cases_cover_every_event_type(self) -> None:
        """The cases above exercise every type listed in EVENTS."""
        assert {type(event) for event, _ in STREAM_CASES} == set(EVENTS)

    def test_stream_helpers(self) -> None:
        """The stream id helpers use the documented prefixes."""
        assert (customer_stream("x"), product_stream("x"), order_stream("x")) == (
            "customer-x",
            "product-x",
            "order-x",
        )

    def test_unknown_event_is_a_type_error(self) -> None:
        """A non-event has no stream."""
        with pytest.raises(TypeError, match="OrderLine is not a shop event"):
            stream_of(OrderLine(sku="A1", name="K", quantity=1, unit_price_cents=1))


class TestMessageTypes:
    def test_registries_list_the_top_level_types(self) -> None:
        """COMMANDS, EVENTS and QUERIES hold the top-level messages and not the nested values."""
        assert len(COMMANDS) == 8  # with RecordPayment
        assert OrderLineRequest not in COMMANDS
        assert len(EVENTS) == 12  # with the three payment events
        assert OrderLine not in EVENTS
        assert len(QUERIES) == 6

    @pytest.mark.parametrize("cls", [*COMMANDS, *EVENTS, *QUERIES, OrderLineRequest, OrderLine])
    def test_messages_are_frozen_strict_keyword_only_structs(self, cls: type) -> None:
        """Every message is a frozen, keyword-only msgspec Struct that refuses unknown fields."""
        assert issubclass(cls, msgspec.Struct)
        config = cls.__struct_config__
        assert config.frozen
        assert config.forbid_unknown_fields
        assert all(f.required or f.default is not msgspec.NODEFAULT for f in msgspec.structs.fields(cls))
        with pytest.raises(TypeError, match="positional"):
            cls(*[object()] * max(1, len(cls.__struct_fields__)))

    @pytest.mark.parametrize("cls", [*COMMANDS, *EVENTS, *QUERIES, OrderLineRequest, OrderLine])
    def test_annotations_resolve_to_plain_types(self, cls: type) -> None:
        """get_type_hints resolves every field to str, int, bool, X | None or tuple[Struct, ...]."""
        allowed = {str, int, bool, str | None, int | None, bool | None}
        for name, hint in typing.get_type_hints(cls).items():
            if typing.get_origin(hint) is tuple:
                item, ellipsis = typing.get_args(hint)
                assert ellipsis is Ellipsis
                assert issubclass(item, msgspec.Struct), name
            else:
                assert hint in allowed, (cls.__name__, name, hint)

    def test_nested_values_resolve_to_their_classes(self) -> None:
        """The nested line types are module-level names that get_type_hints can find."""
        assert typing.get_type_hints(PlaceOrder)["lines"] == tuple[OrderLineRequest, ...]
        assert typing.get_type_hints(OrderPlaced)["lines"] == tuple[OrderLine, ...]


class TestErrors:
    def test_hierarchy(self) -> None:
        """Every domain error is a ShopError."""
        assert issubclass(RuleViolation, ShopError)
        assert issubclass(NotFound, ShopError)
        assert issubclass(InvalidQuery, ShopError)

    def test_messages_carry_the_values(self) -> None:
        """NotFound names the thing; InvalidQuery names the field, the range and the value."""
        assert str(NotFound("product", "A1")) == "product 'A1' not found"
        assert str(InvalidQuery("limit", 0, 1, 100)) == "limit must be between 1 and 100, got 0"

    def test_errors_pickle(self) -> None:
        """Errors survive pickling with their parts (for process boundaries)."""
        error = pickle.loads(pickle.dumps(InvalidQuery("limit", 101, 1, 100)))
        assert (error.field, error.value, str(error)) == (
            "limit",
            101,
            "limit must be between 1 and 100, got 101",
        )
        assert str(pickle.loads(pickle.dumps(NotFound("order", "o-1")))) == "order 'o-1' not found"


class TestSeed:
    def test_seed_is_accepted_on_an_empty_shop(self) -> None:
        """Every seed command is accepted in order."""
        ShopHarness().execute_all(seed_commands())

    def test_seed_shape(self) -> None:
        """About a dozen products over several categories, one out of stock, a few customers incl. Ada."""
        commands = seed_commands()
        products = [c for c in commands if isinstance(c, AddProduct)]
        customers = [c for c in commands if isinstance(c, RegisterCustomer)]
        assert len(products) == 12
        assert len({p.category for p in products}) == 4
        assert [p.sku for p in products if p.stock == 0] == ["KIT-003"]
        assert all(p.description for p in products)
        assert RegisterCustomer(customer_id="c-ada", name="Ada Lovelace", email="ada@example.com") in customers
        assert len(customers) >= 2
