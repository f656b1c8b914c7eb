"""The shop's rules: `decide` turns a command into events, `evolve` folds an event into a state.

Both are pure and synchronous. `decide` reads the states of the streams a command touches from a
mapping (stream id -> state; a missing key means the stream has no events yet), checks every rule
*before* building any event, and either returns the events or raises `RuleViolation`. So a rejected
command emits nothing, and an accepted `PlaceOrder` reserves every line or none.

Invariant kept by these rules: a product's stock = initial + restocks - units in orders that are not
cancelled, and it is never negative.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, TypeVar

from .commands import (
    COMMANDS,
    AddProduct,
    CancelOrder,
    ChangePrice,
    PlaceOrder,
    RecordPayment,
    RegisterCustomer,
    Restock,
    ShipOrder,
)
from .errors import RuleViolation
from .events import (
    EVENTS,
    CancelledLine,
    CustomerRegistered,
    Event,
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
    customer_stream,
    order_stream,
    product_stream,
)
from .state import CANCELLED, PLACED, SHIPPED, CustomerState, OrderState, ProductState, State

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "MAX_ORDER_LINES",
    "MAX_PRICE_CENTS",
    "MAX_QUANTITY",
    "MAX_STOCK",
    "decide",
    "evolve",
]

MAX_ORDER_LINES = 100
"""Most lines one order may have (the fewest is 1)."""

MAX_PRICE_CENTS = 100_000_000
"""Highest price of a product, in cents (1,000,000.00); the lowest is 1 cent."""

MAX_QUANTITY = 1_000_000
"""Most units one order line or one restock may carry (the fewest is 1)."""

MAX_STOCK = 1_000_000_000
"""Most units a product may have in stock (initial stock, and after any restock or release).

With these bounds every sum the read models keep stays far inside a signed 64-bit integer: an order's
total is at most MAX_ORDER_LINES * MAX_QUANTITY * MAX_PRICE_CENTS = 1e16 < 9.2e18, so JSON, SQLite and
checkpoints never see a number they cannot hold.
"""

_S = TypeVar("_S", CustomerState, ProductState, OrderState)
_R = TypeVar("_R")


class _ByType(Generic[_R]):
    """Dispatch on the exact type of the first argument, like ``functools.singledispatch`` without the MRO walk.

    Messages are final Structs, so the exact type is enough; a dict lookup per call instead of
    singledispatch's weak-keyed cache lookup and wrapper (measured: the writer calls decide and evolve
    for every command and event, and this halves their dispatch cost).
    """

    __slots__ = ("_table",)

    def __init__(self) -> None:
        self._table: dict[type, Callable[..., _R]] = {}

    def register(self, cls: type) -> Callable[[Callable[..., _R]], Callable[..., _R]]:
        def add(fn: Callable[..., _R]) -> Callable[..., _R]:
            self._table[cls] = fn
            return fn

        return add

    def lookup(self) -> Callable[[type, Callable[..., _R]], Callable[..., _R]]:
        """The table's ``get``: ``lookup()(type(first), fallback)(first, second)`` dispatches in the caller's
        frame (one Python call less per dispatch than a ``__call__``: decide and evolve run per command)."""
        return self._table.get


def decide(states: Mapping[str, State], command: object) -> list[Event]:
    """Return the events `command` causes given `states`; raise `RuleViolation` if a rule is broken.

    Raises TypeError for an object that is not a shop command.
    """
    return _decide_for(type(command), _not_a_command)(command, states)


def evolve(state: State | None, event: object) -> State:
    """Return the new state of `event`'s stream after `event` (``state`` is None for a new stream).

    Never mutates `state`. Raises TypeError for an object that is not a shop event, or for an event
    that needs an existing state of a particular kind and is given something else.
    """
    return _evolve_for(type(event), _not_an_event)(event, state)


# -- decide ------------------------------------------------------------------------------------


def _lookup(states: Mapping[str, State], stream: str, kind: type[_S]) -> _S | None:
    state = states.get(stream)
    if state is None or isinstance(state, kind):
        return state
    raise TypeError(f"stream {stream!r} holds a {type(state).__name__}, expected {kind.__name__}")


def _existing_product(states: Mapping[str, State], sku: str) -> ProductState:
    product = _lookup(states, product_stream(sku), ProductState)
    if product is None:
        raise RuleViolation(f"product {sku!r} does not exist")
    return product


def _existing_order(states: Mapping[str, State], order_id: str) -> OrderState:
    order = _lookup(states, order_stream(order_id), OrderState)
    if order is None:
        raise RuleViolation(f"order {order_id!r} does not exist")
    return order


def _check_price(sku: str, price_cents: int) -> None:
    if not 1 <= price_cents <= MAX_PRICE_CENTS:
        raise RuleViolation(f"price_cents for sku {sku!r} must be between 1 and {MAX_PRICE_CENTS}, got {price_cents}")


def _not_a_command(command: object, states: Mapping[str, State]) -> list[Event]:
    raise TypeError(
        f"{type(command).__qualname__} is not a shop command; expected one of "
        + ", ".join(c.__name__ for c in COMMANDS)
    )


_decide: _ByType[list[Event]] = _ByType()
_decide_for = _decide.lookup()


@_decide.register(RegisterCustomer)
def _register_customer(command: RegisterCustomer, states: Mapping[str, State]) -> list[Event]:
    if not command.name.strip():
        raise RuleViolation(f"name of customer {command.customer_id!r} must not be empty")
    if "@" not in command.email:
        raise RuleViolation(f"email {command.email!r} of customer {command.customer_id!r} has no '@'")
    if _lookup(states, customer_stream(command.customer_id), CustomerState) is not None:
        raise RuleViolation(f"customer {command.customer_id!r} already exists")
    return [CustomerRegistered(customer_id=command.customer_id, name=command.name, email=command.email)]


@_decide.register(AddProduct)
def _add_product(command: AddProduct, states: Mapping[str, State]) -> list[Event]:
    _check_price(command.sku, command.price_cents)
    if not 0 <= command.stock <= MAX_STOCK:
        raise RuleViolation(f"stock of sku {command.sku!r} must be between 0 and {MAX_STOCK}, got {command.stock}")
    if not command.name.strip():
        raise RuleViolation(f"name of sku {command.sku!r} must not be empty")
    if _lookup(states, product_stream(command.sku), ProductState) is not None:
        raise RuleViolation(f"product {command.sku!r} already exists")
    return [
        ProductAdded(
            sku=command.sku,
            name=command.name,
            category=command.category,
            price_cents=command.price_cents,
            stock=command.stock,
            description=command.description,
        )
    ]


@_decide.register(ChangePrice)
def _change_price(command: ChangePrice, states: Mapping[str, State]) -> list[Event]:
    _existing_product(states, command.sku)
    _check_price(command.sku, command.price_cents)
    return [PriceChanged(sku=command.sku, price_cents=command.price_cents)]


@_decide.register(Restock)
def _restock(command: Restock, states: Mapping[str, State]) -> list[Event]:
    product = _existing_product(states, command.sku)
    if not 1 <= command.quantity <= MAX_QUANTITY:
        raise RuleViolation(
            f"restock quantity of sku {command.sku!r} must be between 1 and {MAX_QUANTITY}, got {command.quantity}"
        )
    if product.stock + command.quantity > MAX_STOCK:
        raise RuleViolation(
            f"cannot restock {command.quantity} of sku {command.sku!r}: stock would be "
            f"{product.stock + command.quantity}, above the limit of {MAX_STOCK}"
        )
    return [ProductRestocked(sku=command.sku, quantity=command.quantity)]


@_decide.register(PlaceOrder)
def _place_order(command: PlaceOrder, states: Mapping[str, State]) -> list[Event]:
    order_id = command.order_id
    requested = command.lines
    if not 1 <= len(requested) <= MAX_ORDER_LINES:
        raise RuleViolation(f"order {order_id!r} must have 1 to {MAX_ORDER_LINES} lines, got {len(requested)}")
    seen: set[str] = set()
    for line in requested:
        if line.sku in seen:
            raise RuleViolation(f"sku {line.sku!r} appears more than once in order {order_id!r}; put it on one line")
        seen.add(line.sku)
        if not 1 <= line.quantity <= MAX_QUANTITY:
            raise RuleViolation(
                f"quantity of sku {line.sku!r} in order {order_id!r} must be between 1 and {MAX_QUANTITY}, "
                f"got {line.quantity}"
            )
    if command.payment_token is not None and not command.payment_token.strip():
        raise RuleViolation(f"payment_token of order {order_id!r} must not be empty; omit it to order without payment")
    if _lookup(states, order_stream(order_id), OrderState) is not None:
        raise RuleViolation(f"order {order_id!r} already exists")
    customer = _lookup(states, customer_stream(command.customer_id), CustomerState)
    if customer is None:
        raise RuleViolation(f"customer {command.customer_id!r} does not exist")
    products = [_existing_product(states, line.sku) for line in requested]
    # A plain loop, no generators: the writer decides every order, and this is its hottest rule (2.0 -> 1.3 us).
    placed: list[OrderLine] = []
    amount = 0
    for line, product in zip(requested, products, strict=True):
        quantity = line.quantity
        if quantity > product.stock:
            raise RuleViolation(f"cannot order {quantity} of sku {line.sku!r}: only {product.stock} in stock")
        price = product.price_cents
        placed.append(OrderLine(sku=product.sku, name=product.name, quantity=quantity, unit_price_cents=price))
        amount += quantity * price
    # Every rule holds: build the events (all or nothing).
    order = OrderPlaced(
        order_id=order_id,
        customer_id=customer.customer_id,
        customer_name=customer.name,
        lines=tuple(placed),
        reserves_stock=True,
    )
    token = command.payment_token
    if token is None:
        return [order]
    return [order, PaymentRequested(order_id=order_id, token=token, amount_cents=amount)]  # token checked above


@_decide.register(RecordPayment)
def _record_payment(command: RecordPayment, states: Mapping[str, State]) -> list[Event]:
    if command.outcome not in ("captured", "declined"):
        raise RuleViolation(f"payment outcome must be 'captured' or 'declined', got {command.outcome!r}")
    order = _existing_order(states, command.order_id)
    if order.payment != "pending":
        state = "no payment token" if order.payment is None else f"a payment already {order.payment}"
        raise RuleViolation(f"cannot record a payment for order {order.order_id!r}: it has {state}")
    if order.status != PLACED:
        raise RuleViolation(f"cannot record a payment for order {order.order_id!r}: it is already {order.status}")
    if command.outcome == "captured":
        return [PaymentCaptured(order_id=order.order_id)]
    reason = command.reason or "payment declined"
    return [PaymentDeclined(order_id=order.order_id, reason=reason)]


@_decide.register(CancelOrder)
def _cancel_order(command: CancelOrder, states: Mapping[str, State]) -> list[Event]:
    order = _existing_order(states, command.order_id)
    if order.status != PLACED:
        raise RuleViolation(f"cannot cancel order {order.order_id!r}: it is already {order.status}")
    if order.payment == "pending":
        # The capture may be in flight: cancelling now could leave a charged, cancelled order. The checkout's own
        # cancel comes only after PaymentDeclined (on a decline, or after voiding at its deadline), never here.
        raise RuleViolation(
            f"cannot cancel order {order.order_id!r}: its payment is pending; retry once the checkout has "
            "recorded it (captured or declined, at the latest after the payment deadline)"
        )
    lines = tuple(CancelledLine(sku=sku, quantity=quantity) for sku, quantity in order.lines)
    return [OrderCancelled(order_id=order.order_id, lines=lines, reason=command.reason)]


@_decide.register(ShipOrder)
def _ship_order(command: ShipOrder, states: Mapping[str, State]) -> list[Event]:
    order = _existing_order(states, command.order_id)
    if order.status != PLACED:
        raise RuleViolation(f"cannot ship order {order.order_id!r}: it is already {order.status}")
    if order.payment == "pending":
        raise RuleViolation(
            f"cannot ship order {order.order_id!r}: its payment is pending; ship it once the payment is captured"
        )
    if order.payment == "declined":  # between PaymentDeclined and the checkout's CancelOrder: do not ship it unpaid
        raise RuleViolation(f"cannot ship order {order.order_id!r}: its payment was declined")
    return [OrderShipped(order_id=order.order_id)]


# -- evolve ------------------------------------------------------------------------------------
# States are rebuilt with their constructors rather than dataclasses.replace: the writer evolves
# every event it commits, and a direct call is several times cheaper.


def _expect(state: State | None, kind: type[_S], event: object) -> _S:
    if isinstance(state, kind):
        return state
    raise TypeError(f"{type(event).__name__} needs an existing {kind.__name__}, got {state!r}")


def _not_an_event(event: object, state: State | None) -> State:
    raise TypeError(
        f"{type(event).__qualname__} is not a shop event; expected one of " + ", ".join(e.__name__ for e in EVENTS)
    )


_evolve: _ByType[State] = _ByType()
_evolve_for = _evolve.lookup()


@_evolve.register(CustomerRegistered)
def _customer_registered(event: CustomerRegistered, state: State | None) -> State:
    return CustomerState(customer_id=event.customer_id, name=event.name, email=event.email)


@_evolve.register(ProductAdded)
def _product_added(event: ProductAdded, state: State | None) -> State:
    return ProductState(sku=event.sku, name=event.name, price_cents=event.price_cents, stock=event.stock)


@_evolve.register(PriceChanged)
def _price_changed(event: PriceChanged, state: State | None) -> State:
    product = _expect(state, ProductState, event)
    return ProductState(sku=product.sku, name=product.name, price_cents=event.price_cents, stock=product.stock)


def _with_stock(product: ProductState, stock: int) -> ProductState:
    return ProductState(sku=product.sku, name=product.name, price_cents=product.price_cents, stock=stock)


@_evolve.register(ProductRestocked)
def _product_restocked(event: ProductRestocked, state: State | None) -> State:
    product = _expect(state, ProductState, event)
    return _with_stock(product, product.stock + event.quantity)


@_evolve.register(StockReserved)
def _stock_reserved(event: StockReserved, state: State | None) -> State:
    product = _expect(state, ProductState, event)
    return _with_stock(product, product.stock - event.quantity)


@_evolve.register(StockReleased)
def _stock_released(event: StockReleased, state: State | None) -> State:
    product = _expect(state, ProductState, event)
    return _with_stock(product, product.stock + event.quantity)


@_evolve.register(OrderPlaced)
def _order_placed(event: OrderPlaced, state: State | None) -> State:
    if isinstance(state, ProductState):  # one of the order's products (see events.affects): stock taken
        return _with_stock(state, state.stock - _units_of(state.sku, event.lines))
    return OrderState(
        order_id=event.order_id,
        status=PLACED,
        lines=tuple([(line.sku, line.quantity) for line in event.lines]),  # a list first: faster than a generator
    )


def _units_of(sku: str, lines: tuple[OrderLine, ...] | tuple[CancelledLine, ...]) -> int:
    units = 0
    for line in lines:
        if line.sku == sku:
            units += line.quantity
    return units


@_evolve.register(OrderCancelled)
def _order_cancelled(event: OrderCancelled, state: State | None) -> State:
    if isinstance(state, ProductState):  # one of the order's products: stock given back
        return _with_stock(state, state.stock + _units_of(state.sku, event.lines))
    order = _expect(state, OrderState, event)
    return OrderState(order_id=order.order_id, status=CANCELLED, lines=order.lines, payment=order.payment)


@_evolve.register(OrderShipped)
def _order_shipped(event: OrderShipped, state: State | None) -> State:
    order = _expect(state, OrderState, event)
    return OrderState(order_id=order.order_id, status=SHIPPED, lines=order.lines, payment=order.payment)


def _with_payment(state: State | None, event: object, payment: str) -> State:
    order = _expect(state, OrderState, event)
    return OrderState(order_id=order.order_id, status=order.status, lines=order.lines, payment=payment)


@_evolve.register(PaymentRequested)
def _payment_requested(event: PaymentRequested, state: State | None) -> State:
    return _with_payment(state, event, "pending")


@_evolve.register(PaymentCaptured)
def _payment_captured(event: PaymentCaptured, state: State | None) -> State:
    return _with_payment(state, event, "captured")


@_evolve.register(PaymentDeclined)
def _payment_declined(event: PaymentDeclined, state: State | None) -> State:
    return _with_payment(state, event, "declined")
