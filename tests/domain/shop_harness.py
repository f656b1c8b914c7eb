"""A tiny pure loop that plays the runtime's part for domain tests: decide, evolve, apply.

Not collected by pytest (no ``test_`` prefix); imported by the test modules of this package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

import orjson

from soloist_shop.commands import AddProduct, OrderLineRequest, PlaceOrder, RegisterCustomer
from soloist_shop.decider import decide, evolve
from soloist_shop.events import affects, stream_of
from soloist_shop.read_models import ShopReadModels

if TYPE_CHECKING:
    from soloist_shop.events import Event
    from soloist_shop.state import State


@dataclass(eq=False)
class ShopHarness:
    """The write model (stream -> state), the log so far, and one replica's read models."""

    states: dict[str, State] = field(default_factory=dict)
    log: list[Event] = field(default_factory=list)
    read: ShopReadModels = field(default_factory=ShopReadModels)

    def execute(self, command: object) -> list[Event]:
        """Decide `command` against a read-only view of the states; commit and apply its events."""
        events = decide(MappingProxyType(self.states), command)
        for event in events:
            stream = stream_of(event)
            self.states[stream] = evolve(self.states.get(stream), event)
            for other in affects(event):  # the order's products, whose stock the order's event changes
                self.states[other] = evolve(self.states.get(other), event)
            self.log.append(event)
            self.read.apply(event, len(self.log))
        return events

    def execute_all(self, commands: list[object]) -> None:
        """Execute each command in turn (each must be accepted)."""
        for command in commands:
            self.execute(command)

    def query(self, query: object) -> object:
        """Ask the read models."""
        return self.read.query(query)


def add_product(
    sku: str,
    *,
    name: str | None = None,
    category: str = "misc",
    price_cents: int = 100,
    stock: int = 10,
    description: str = "",
) -> AddProduct:
    """An `AddProduct` with defaults for what the test does not care about."""
    return AddProduct(
        sku=sku,
        name=f"Product {sku}" if name is None else name,
        category=category,
        price_cents=price_cents,
        stock=stock,
        description=description,
    )


def register(customer_id: str, name: str = "Ada Lovelace", email: str = "ada@example.com") -> RegisterCustomer:
    """A valid `RegisterCustomer`."""
    return RegisterCustomer(customer_id=customer_id, name=name, email=email)


def place(order_id: str, customer_id: str, *lines: tuple[str, int]) -> PlaceOrder:
    """A `PlaceOrder` from (sku, quantity) pairs."""
    return PlaceOrder(
        order_id=order_id,
        customer_id=customer_id,
        lines=tuple(OrderLineRequest(sku=sku, quantity=quantity) for sku, quantity in lines),
    )


def json_round_trip(models: ShopReadModels) -> ShopReadModels:
    """A fresh `ShopReadModels` restored from `models`' snapshot after an orjson round trip."""
    restored = ShopReadModels()
    restored.restore(orjson.loads(orjson.dumps(models.snapshot())))
    return restored


def assert_json_native(value: object, path: str = "$") -> None:
    """Fail unless `value` is made only of str-keyed dicts, lists, strs, ints, bools and None."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str), f"{path}: key {key!r} is not a str"
            assert_json_native(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            assert_json_native(item, f"{path}[{i}]")
    else:
        assert value is None or type(value) in (str, int, bool), f"{path}: {type(value).__name__} {value!r}"
