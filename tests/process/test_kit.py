"""The test kit: decider and process-manager scenarios on the shop, and their failure messages."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from soloist.testing import ScenarioFailed, decider, process
from soloist_shop.commands import CancelOrder, OrderLineRequest, PlaceOrder, RecordPayment
from soloist_shop.events import (
    CancelledLine,
    CustomerRegistered,
    OrderCancelled,
    OrderLine,
    OrderPlaced,
    PaymentCaptured,
    PaymentDeclined,
    PaymentRequested,
    ProductAdded,
    stream_of,
)
from soloist_shop.payments import DemoGateway
from soloist_shop.wiring import DOMAIN, checkout_process

if TYPE_CHECKING:
    from pathlib import Path

ADA = CustomerRegistered(customer_id="c-ada", name="Ada", email="ada@example.com")
KETTLE = ProductAdded(sku="K", name="Kettle", category="kitchen", price_cents=4200, stock=5, description="")
PLACED = OrderPlaced(
    order_id="o-1",
    customer_id="c-ada",
    customer_name="Ada",
    lines=(OrderLine(sku="K", name="Kettle", quantity=2, unit_price_cents=4200),),
    reserves_stock=True,
)
REQUESTED = PaymentRequested(order_id="o-1", token="tok", amount_cents=8400)


def place(token: str | None) -> PlaceOrder:
    lines = (OrderLineRequest(sku="K", quantity=2),)
    return PlaceOrder(order_id="o-1", customer_id="c-ada", lines=lines, payment_token=token)


class TestDeciderScenarios:
    def test_a_token_requests_the_payment_of_the_total(self) -> None:
        """PlaceOrder with a token also emits PaymentRequested for the order's total."""
        decider(DOMAIN).given(ADA, KETTLE).when(place("tok")).then(PLACED, REQUESTED)

    def test_without_a_token_nothing_changes(self) -> None:
        """PlaceOrder without a token emits what it always did."""
        decider(DOMAIN).given(ADA, KETTLE).when(place(None)).then(PLACED)

    def test_payment_outcomes(self) -> None:
        """RecordPayment of a pending payment emits captured or declined; a second one is refused."""
        shop = decider(DOMAIN).given(ADA, KETTLE, PLACED, REQUESTED)
        shop.when(RecordPayment(order_id="o-1", outcome="captured")).then(PaymentCaptured(order_id="o-1"))
        shop.when(RecordPayment(order_id="o-1", outcome="declined", reason="no")).then(
            PaymentDeclined(order_id="o-1", reason="no")
        )
        shop.given(PaymentCaptured(order_id="o-1")).when(
            RecordPayment(order_id="o-1", outcome="declined")
        ).then_rejected("already captured")

    @pytest.mark.parametrize(
        ("given", "command", "match"),
        [
            ((ADA, KETTLE, PLACED), RecordPayment(order_id="o-1", outcome="captured"), "no payment token"),
            ((ADA, KETTLE), RecordPayment(order_id="o-1", outcome="captured"), "does not exist"),
            ((ADA, KETTLE, PLACED, REQUESTED), RecordPayment(order_id="o-1", outcome="maybe"), "'maybe'"),
            ((ADA, KETTLE), place("  "), "must not be empty"),
        ],
    )
    def test_rejections(self, given: tuple[object, ...], command: object, match: str) -> None:
        """Payments are recorded only for orders with a pending payment, with a known outcome; tokens are not blank."""
        decider(DOMAIN).given(*given).when(command).then_rejected(match)

    def test_cancel_carries_its_reason(self) -> None:
        """CancelOrder's reason is on OrderCancelled; the stock is released."""
        decider(DOMAIN).given(ADA, KETTLE, PLACED).when(CancelOrder(order_id="o-1", reason="r")).then(
            OrderCancelled(order_id="o-1", lines=(CancelledLine(sku="K", quantity=2),), reason="r")
        )

    def test_a_wrong_expectation_shows_the_difference(self) -> None:
        """The failure names the given events and the command, and marks expected (-) and actual (+) lines."""
        with pytest.raises(ScenarioFailed) as failed:
            decider(DOMAIN).given(ADA, KETTLE).when(place("tok")).then(PLACED)
        message = str(failed.value)
        assert "given: CustomerRegistered(" in message
        assert "when:  PlaceOrder(" in message
        assert "+ PaymentRequested(order_id='o-1', token='tok', amount_cents=8400)" in message

    def test_an_unexpected_acceptance_or_rejection_fails(self) -> None:
        """then_rejected on an accepted command fails, so does then on a rejected one, and a mismatched message."""
        with pytest.raises(ScenarioFailed, match="accepted, expected a rejection"):
            decider(DOMAIN).given(ADA, KETTLE).when(place(None)).then_rejected("")
        with pytest.raises(ScenarioFailed, match="the command was rejected"):
            decider(DOMAIN).given(KETTLE).when(place(None)).then(PLACED)
        with pytest.raises(ScenarioFailed, match="does not match"):
            decider(DOMAIN).given(KETTLE).when(place(None)).then_rejected("out of stock")
        with pytest.raises(ScenarioFailed, match="does not declare"):
            decider(DOMAIN).given(KETTLE).when(object()).then_rejected("")
        with pytest.raises(ScenarioFailed, match=r"needs \.when"):
            decider(DOMAIN).given(KETTLE).then()


class TestProcessScenarios:
    def test_checkout_steps(self, tmp_path: Path) -> None:
        """Requested: capture; past the deadline: record the timeout; declined: cancel; captured: nothing."""
        checkout = process(checkout_process(DemoGateway(tmp_path / "g.jsonl"), deadline=5.0), stream_of=stream_of)
        requested = checkout.given(PLACED, REQUESTED)
        requested.then_keys("checkout:o-1:capture")
        requested.then_commands()
        requested.at(5.0).then_keys("checkout:o-1:timeout")
        requested.given(PaymentDeclined(order_id="o-1", reason="card")).then_commands(
            CancelOrder(order_id="o-1", reason="payment declined: card")
        )
        requested.given(PaymentCaptured(order_id="o-1")).then_keys()
        requested.given(OrderCancelled(order_id="o-1")).then_keys()
        assert requested.recorded()[1].stream == "order-o-1"

    async def test_a_call_returns_the_recording_command(self, tmp_path: Path) -> None:
        """Running the wanted call hands back the command that records the gateway's answer."""
        checkout = process(checkout_process(DemoGateway(tmp_path / "g.jsonl")))
        requested = checkout.given(PaymentRequested(order_id="o-1", token="decline-1", amount_cents=5))
        assert await requested.then_call("checkout:o-1:capture") == RecordPayment(
            order_id="o-1", outcome="declined", reason="the gateway answered declined"
        )
        with pytest.raises(ScenarioFailed, match="wants no call"):
            await requested.then_call("checkout:o-1:nothing")

    async def test_past_the_deadline_the_gateway_voids(self, tmp_path: Path) -> None:
        """Past the deadline the checkout voids the capture key: nothing charged -> declined; charged -> captured."""
        gateway = DemoGateway(tmp_path / "g.jsonl")
        checkout = process(checkout_process(gateway, deadline=5.0))
        late = checkout.given(PaymentRequested(order_id="o-1", token="timeout-1", amount_cents=5)).at(6.0)
        assert await late.then_call("checkout:o-1:timeout") == RecordPayment(
            order_id="o-1", outcome="declined", reason="the payment gateway did not answer within 5s"
        )
        charged = checkout.given(PaymentRequested(order_id="o-2", token="tok", amount_cents=5))
        assert await charged.then_call("checkout:o-2:capture") == RecordPayment(order_id="o-2", outcome="captured")
        assert await charged.at(6.0).then_call("checkout:o-2:timeout") == RecordPayment(
            order_id="o-2", outcome="captured"
        )
        assert await gateway.capture("checkout:o-1:capture", order_id="o-1", amount_cents=5, token="tok") == "declined"

    def test_a_wrong_expectation_shows_the_difference(self) -> None:
        """A process scenario's failure shows the given events, the time and the difference."""
        checkout = process(checkout_process(DemoGateway()))
        with pytest.raises(ScenarioFailed) as failed:
            checkout.given(REQUESTED).then_keys("checkout:o-1:cancel")
        message = str(failed.value)
        assert "at:    0s after the last event" in message
        assert "- 'checkout:o-1:cancel'" in message
        assert "+ 'checkout:o-1:capture'" in message
        with pytest.raises(ScenarioFailed, match="other commands"):
            checkout.given(REQUESTED).at(60).then_commands(CancelOrder(order_id="o-1"))
