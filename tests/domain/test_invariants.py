"""Properties over random command sequences: the stock invariant and write/read model agreement.

Each sequence runs through the pure loop of `ShopHarness` (decide against the states, evolve each
event, apply it to the read models with increasing positions). Commands are drawn one at a time and
lean towards ids that exist by then (but include unknown ones, duplicates and bad values), so that
most sequences place, cancel and ship real orders. A reference model kept here, from the *accepted
commands* alone, says what stock and sales must be; it never looks at events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from soloist_shop.commands import (
    AddProduct,
    CancelOrder,
    ChangePrice,
    OrderLineRequest,
    PlaceOrder,
    RegisterCustomer,
    Restock,
    ShipOrder,
)
from soloist_shop.errors import NotFound, RuleViolation
from soloist_shop.events import product_stream
from soloist_shop.queries import (
    CustomerOrders,
    GetOrder,
    GetProduct,
    SalesSummary,
    SearchProducts,
    TopProducts,
)
from soloist_shop.read_models import ShopReadModels
from soloist_shop.state import ProductState

from .shop_harness import ShopHarness, json_round_trip

if TYPE_CHECKING:
    from collections.abc import Callable

# Small id pools so that sequences collide: duplicate ids, unknown ids, the same sku over and over.
SKUS = ("A", "B", "C", "D")
CUSTOMERS = ("c1", "c2", "c3")
ORDERS = tuple(f"o{i}" for i in range(1, 13))

KINDS = ("place", "place", "place", "cancel", "ship", "restock", "add", "price", "register")
QUANTITIES = (1, 2, 3, 1, 2, 4, 1, 5, 2, 0, 1, -1)  # mostly small and valid, sometimes not

SETTINGS = settings(max_examples=120, deadline=None)


@dataclass
class Reference:
    """What stock and sales must be, computed from accepted commands only."""

    customers: list[str] = field(default_factory=list)
    initial: dict[str, int] = field(default_factory=dict)
    restocked: dict[str, int] = field(default_factory=dict)
    price: dict[str, int] = field(default_factory=dict)
    orders: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)  # (sku, qty, unit price)
    cancelled: set[str] = field(default_factory=set)
    shipped: set[str] = field(default_factory=set)

    def accept(self, command: object) -> None:
        """Record an accepted command."""
        if isinstance(command, RegisterCustomer):
            self.customers.append(command.customer_id)
        elif isinstance(command, AddProduct):
            self.initial[command.sku] = command.stock
            self.restocked[command.sku] = 0
            self.price[command.sku] = command.price_cents
        elif isinstance(command, Restock):
            self.restocked[command.sku] += command.quantity
        elif isinstance(command, ChangePrice):
            self.price[command.sku] = command.price_cents
        elif isinstance(command, PlaceOrder):
            self.orders[command.order_id] = [(line.sku, line.quantity, self.price[line.sku]) for line in command.lines]
        elif isinstance(command, CancelOrder | ShipOrder):
            # An order leaves "placed" once: never cancelled twice, shipped twice, or both.
            assert command.order_id not in self.cancelled | self.shipped
            (self.cancelled if isinstance(command, CancelOrder) else self.shipped).add(command.order_id)

    def live_lines(self) -> list[tuple[str, int, int]]:
        """Lines of orders that are not cancelled."""
        return [line for order_id, lines in self.orders.items() if order_id not in self.cancelled for line in lines]

    def sold(self, sku: str) -> int:
        """Units of `sku` in orders not cancelled."""
        return sum(quantity for line_sku, quantity, _ in self.live_lines() if line_sku == sku)

    def stock(self, sku: str) -> int:
        """initial + restocks - units in orders not cancelled."""
        return self.initial[sku] + self.restocked[sku] - self.sold(sku)


def pick(data: st.DataObject, known: list[str], pool: tuple[str, ...]) -> str:
    """An id: three times out of four one that exists (if any), else any id of the pool."""
    return data.draw(st.sampled_from([*known, *known, *known, *pool] if known else pool))


def draw_command(data: st.DataObject, reference: Reference) -> object:
    """One random command, leaning towards ids that exist in `reference`."""
    skus = list(reference.initial)
    orders = list(reference.orders)
    kind = data.draw(st.sampled_from(KINDS))
    if kind == "place":
        count = data.draw(st.sampled_from([1, 2, 3, 1, 2, 0, 4]))
        lines = tuple(
            OrderLineRequest(sku=pick(data, skus, SKUS), quantity=data.draw(st.sampled_from(QUANTITIES)))
            for _ in range(count)
        )
        # Mostly a fresh order id (unused ids of the pool), sometimes a used one.
        fresh = [order_id for order_id in ORDERS if order_id not in reference.orders] or list(ORDERS)
        order_id = data.draw(st.sampled_from([*fresh, *fresh, *fresh, *ORDERS]))
        return PlaceOrder(order_id=order_id, customer_id=pick(data, reference.customers, CUSTOMERS), lines=lines)
    if kind == "cancel":
        return CancelOrder(order_id=pick(data, orders, ORDERS))
    if kind == "ship":
        return ShipOrder(order_id=pick(data, orders, ORDERS))
    if kind == "restock":
        return Restock(sku=pick(data, skus, SKUS), quantity=data.draw(st.integers(-1, 6)))
    if kind == "price":
        return ChangePrice(sku=pick(data, skus, SKUS), price_cents=data.draw(st.integers(-1, 500)))
    if kind == "add":
        return AddProduct(
            sku=data.draw(st.sampled_from(SKUS)),
            name=data.draw(st.sampled_from(["Kettle", "Straße Mug", "Lamp", ""])),
            category=data.draw(st.sampled_from(["kitchen", "garden"])),
            price_cents=data.draw(st.integers(-1, 500)),
            stock=data.draw(st.integers(-1, 8)),
            description=data.draw(st.sampled_from(["", "red enamel", "RED steel"])),
        )
    return RegisterCustomer(
        customer_id=data.draw(st.sampled_from(CUSTOMERS)),
        name=data.draw(st.sampled_from(["Ada", "Zoë Groß", " "])),
        email=data.draw(st.sampled_from(["ada@example.com", "ada@example.com", "no-at-sign"])),
    )


# A head start (two customers, two products) that most runs get, so orders start early.
SETUP: list[object] = [
    RegisterCustomer(customer_id="c1", name="Ada", email="ada@example.com"),
    RegisterCustomer(customer_id="c2", name="Bob", email="bob@example.com"),
    AddProduct(sku="A", name="Kettle", category="kitchen", price_cents=250, stock=6),
    AddProduct(sku="B", name="Mug", category="kitchen", price_cents=100, stock=9, description="red enamel"),
]


def run(data: st.DataObject, after_each: Callable[[ShopHarness, Reference], None] | None = None) -> ShopHarness:
    """Execute a random sequence (RuleViolation is an allowed outcome), checking after each command."""
    shop = ShopHarness()
    reference = Reference()
    head = SETUP if data.draw(st.sampled_from([True, True, True, False])) else []
    steps = data.draw(st.integers(0, 50))
    for i in range(len(head) + steps):
        command = head[i] if i < len(head) else draw_command(data, reference)
        states_before = dict(shop.states)
        log_length = len(shop.log)
        try:
            shop.execute(command)
        except RuleViolation:
            assert shop.states == states_before  # a rejected command changes nothing
            assert len(shop.log) == log_length
        else:
            reference.accept(command)
        if after_each is not None:
            after_each(shop, reference)
    return shop


def check(shop: ShopHarness, reference: Reference) -> None:
    """The write model, the read models and the reference agree, and no stock is negative."""
    for sku in reference.initial:
        state = shop.states[product_stream(sku)]
        assert isinstance(state, ProductState)
        expected = reference.stock(sku)
        assert state.stock == expected >= 0
        assert state.price_cents == reference.price[sku]
        answer = shop.query(GetProduct(sku=sku))
        assert isinstance(answer, dict)
        assert (answer["stock"], answer["units_sold"], answer["price_cents"]) == (
            state.stock,
            reference.sold(sku),
            state.price_cents,
        )
    live = reference.live_lines()
    assert shop.query(SalesSummary()) == {
        "orders_placed": len(reference.orders),
        "orders_cancelled": len(reference.cancelled),
        "orders_shipped": len(reference.shipped),
        "units_sold": sum(quantity for _, quantity, _ in live),
        "revenue_cents": sum(quantity * price for _, quantity, price in live),
    }


def every_answer(models: ShopReadModels) -> list[object]:
    """The answer (or NotFound message) of a query about every id in the pools."""
    queries: list[object] = [SalesSummary(), TopProducts(limit=100), SearchProducts(limit=100)]
    queries += [SearchProducts(text=t, in_stock=s) for t in ("red", "straße", "kettle mug") for s in (None, True)]
    queries += [GetProduct(sku=sku) for sku in SKUS]
    queries += [GetOrder(order_id=order_id) for order_id in ORDERS]
    queries += [CustomerOrders(customer_id=customer_id) for customer_id in CUSTOMERS]
    answers: list[object] = []
    for query in queries:
        try:
            answers.append(models.query(query))
        except NotFound as error:
            answers.append(str(error))
    return answers


class TestInvariants:
    @SETTINGS
    @given(data=st.data())
    def test_stock_invariant_and_models_agree_at_every_step(self, data: st.DataObject) -> None:
        """After every command, stock = initial + restocks - live order units >= 0, on both sides."""
        shop = run(data, after_each=check)
        assert shop.read.position == len(shop.log)

    @SETTINGS
    @given(data=st.data(), cut=st.floats(0, 1))
    def test_snapshot_at_any_point_then_catch_up_matches_replay(self, data: st.DataObject, cut: float) -> None:
        """Snapshot at any log position, restore, apply the rest: same answers as an uninterrupted replica."""
        shop = run(data)
        at = int(cut * len(shop.log))
        partial = ShopReadModels()
        for position, event in enumerate(shop.log[:at], start=1):
            partial.apply(event, position)
        restored = json_round_trip(partial)
        for position, event in enumerate(shop.log[at:], start=at + 1):
            restored.apply(event, position)
        assert restored.position == shop.read.position
        assert every_answer(restored) == every_answer(shop.read)
        assert orjson.loads(orjson.dumps(restored.snapshot())) == orjson.loads(orjson.dumps(shop.read.snapshot()))

    @SETTINGS
    @given(data=st.data())
    def test_replay_is_deterministic(self, data: st.DataObject) -> None:
        """Replaying the log into a fresh replica rebuilds exactly the same state."""
        shop = run(data)
        replica = ShopReadModels()
        for position, event in enumerate(shop.log, start=1):
            replica.apply(event, position)
        assert replica.snapshot() == shop.read.snapshot()
        assert every_answer(replica) == every_answer(shop.read)
