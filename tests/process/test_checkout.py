"""The checkout in a real App: capture, decline, gateway timeout, restart without second effects, stats."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import anyio
import pytest

from soloist import DomainError
from soloist_shop.commands import CancelOrder, RecordPayment, Restock
from soloist_shop.payments import read_charges
from soloist_shop.queries import GetOrder, GetProduct
from tests.process.shop import order, outcome, seed, shop_with_gateway

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractAsyncContextManager
    from pathlib import Path

    from soloist import App
    from soloist.net import Client

    AppFactory = Callable[..., AbstractAsyncContextManager[App]]
    ClientFactory = Callable[..., AbstractAsyncContextManager[Client]]


async def _order_view(app: App, order_id: str) -> dict[str, object]:
    answer = await app.query(GetOrder(order_id=order_id), consistency="strong")
    assert isinstance(answer.result, dict)
    return answer.result


async def _stock(app: App, sku: str) -> int:
    answer = await app.query(GetProduct(sku=sku), consistency="strong")
    assert isinstance(answer.result, dict)
    stock = answer.result["stock"]
    assert isinstance(stock, int)
    return stock


class TestCheckout:
    async def test_capture_charges_once_and_leaves_the_order_placed(
        self, tmp_path: Path, soloist_app: AppFactory
    ) -> None:
        """A token is captured: one charge of the order's total; the order stays placed, payment captured."""
        charges = tmp_path / "charges.jsonl"
        async with soloist_app(shop_with_gateway(charges)) as app:
            await seed(app)
            await app.execute(order("o-1", "tok-1"))
            assert await outcome(app, "o-1") == "captured"
            view = await _order_view(app, "o-1")
            assert (view["status"], view["payment"]) == ("placed", "captured")
        assert [(c["order_id"], c["amount_cents"], c["outcome"]) for c in read_charges(charges)] == [
            ("o-1", 11000, "captured")
        ]

    async def test_decline_cancels_and_releases_stock(self, tmp_path: Path, soloist_app: AppFactory) -> None:
        """A declined token cancels the order through CancelOrder, with a reason, and gives its stock back."""
        async with soloist_app(shop_with_gateway(tmp_path / "charges.jsonl")) as app:
            await seed(app)
            before = await _stock(app, "BK-002")
            await app.execute(order("o-2", "decline-card"))
            result = await outcome(app, "o-2")
            assert result.startswith("cancelled: payment declined")
            view = await _order_view(app, "o-2")
            assert (view["status"], view["payment"]) == ("cancelled", "declined")
            assert "declined" in str(view["cancel_reason"])
            assert await _stock(app, "BK-002") == before

    async def test_gateway_timeout_compensates_after_the_deadline(
        self, tmp_path: Path, soloist_app: AppFactory
    ) -> None:
        """A gateway that never answers is retried until the deadline, then the order is cancelled; nothing charged."""
        charges = tmp_path / "charges.jsonl"
        # the deadline is the behaviour here: long enough for a few attempts even on a loaded machine, still short
        domain = shop_with_gateway(charges, deadline=1.0, attempt_timeout=0.05, backoff=(0.01, 0.05))
        async with soloist_app(domain) as app:
            await seed(app)
            await app.execute(order("o-3", "timeout-card"))
            assert (
                await outcome(app, "o-3") == "cancelled: payment declined: the payment gateway did not answer within 1s"
            )
            view = await _order_view(app, "o-3")
            assert (view["status"], view["payment"]) == ("cancelled", "declined")
            stats = app.process("checkout").statistics()
            assert stats.retries >= 1
            assert stats.last_error is not None
            assert "TimeoutError" in stats.last_error
        assert [c["outcome"] for c in read_charges(charges)] == ["voided"]  # no charge, and none can follow

    async def test_orders_without_a_token_have_no_payment(self, tmp_path: Path, soloist_app: AppFactory) -> None:
        """Without a token an order is as before: no payment field, no checkout step."""
        async with soloist_app(shop_with_gateway(tmp_path / "charges.jsonl")) as app:
            await seed(app)
            receipt = await app.execute(order("o-4", None))
            assert receipt.events == 1  # OrderPlaced (it takes its stock itself), no PaymentRequested
            assert "payment" not in await _order_view(app, "o-4")
            runner = app.process("checkout")
            await runner.wait_for(receipt.position)
            assert runner.statistics().in_flight == 0

    async def test_user_cancel_while_pending_is_refused(self, tmp_path: Path, soloist_app: AppFactory) -> None:
        """A user's CancelOrder before the gateway answers is refused: the checkout stays open, nothing is parked."""
        domain = shop_with_gateway(tmp_path / "charges.jsonl", deadline=60, attempt_timeout=0.05, backoff=(0.01, 0.05))
        async with soloist_app(domain) as app:
            await seed(app)
            placed = await app.execute(order("o-5", "timeout-card"))
            with pytest.raises(DomainError, match="its payment is pending"):
                await app.execute(CancelOrder(order_id="o-5", reason="changed my mind"))
            runner = app.process("checkout")
            await runner.wait_for(placed.position)
            assert set(runner.state.open) == {"o-5"}  # still capturing; the deadline will void and cancel it
            view = await _order_view(app, "o-5")
            assert (view["status"], view["payment"]) == ("placed", "pending")
            assert runner.statistics().parked == ()

    async def test_restart_replays_without_second_effects(self, tmp_path: Path, soloist_app: AppFactory) -> None:
        """Reopening the log folds it again: finished checkouts issue nothing, the gateway is not called again."""
        charges = tmp_path / "charges.jsonl"
        log = tmp_path / "shop.db"
        async with soloist_app(shop_with_gateway(charges), path=log) as app:
            await seed(app)
            await app.execute(order("o-6", "tok"))
            await app.execute(order("o-7", "decline-it"))
            assert await outcome(app, "o-6") == "captured"
            assert (await outcome(app, "o-7")).startswith("cancelled")
            head = app.position
        async with soloist_app(shop_with_gateway(charges), path=log) as app:
            runner = app.process("checkout")
            await runner.wait_for(head)
            stats = runner.statistics()
            assert (stats.position, stats.issued, stats.in_flight, stats.parked) == (head, 0, 0, ())
            assert app.position == head
        assert len(read_charges(charges)) == 2  # one capture, one decline: each key once

    async def test_no_step_runs_on_a_state_folded_only_part_of_the_way(
        self, tmp_path: Path, soloist_app: AppFactory
    ) -> None:
        """At start the checkout acts only once caught up: an order declined and cancelled 2,000+ events after its
        PaymentRequested (a later catch-up chunk) is never sent to the gateway."""
        charges = tmp_path / "charges.jsonl"
        log = tmp_path / "shop.db"
        without = dataclasses.replace(shop_with_gateway(charges), processes=())
        async with soloist_app(without, path=log) as app:
            await seed(app)
            placed = await app.execute(order("o-9", "tok"))

            async def restock(n: int) -> None:
                for _ in range(n):
                    await app.execute(Restock(sku="BK-001", quantity=1))

            async with anyio.create_task_group() as tg:
                for _ in range(50):
                    tg.start_soon(restock, 45)
            await app.execute(RecordPayment(order_id="o-9", outcome="declined", reason="card"))  # as if answered
            await app.execute(CancelOrder(order_id="o-9", reason="payment declined: card"))
            head = app.position
        assert head - placed.position > 2000  # the log reader's chunk: the cancel comes in a later chunk
        async with soloist_app(shop_with_gateway(charges), path=log) as app:
            runner = app.process("checkout")
            await runner.wait_for(head)
            assert runner.state.open == {}
            assert runner.statistics().issued == 0
        assert read_charges(charges) == []

    async def test_stats_over_the_socket_show_the_process(
        self, tmp_path: Path, soloist_app: AppFactory, soloist_client: ClientFactory
    ) -> None:
        """`stats` lists each process manager with its position, counters and parked items."""
        async with soloist_app(shop_with_gateway(tmp_path / "charges.jsonl")) as app, soloist_client(app) as client:
            await seed(app)
            await app.execute(order("o-8", "tok"))
            assert await outcome(app, "o-8") == "captured"
            await app.process("checkout").wait_for(app.position)
            stats = await client.stats()
            processes = stats["processes"]
            assert isinstance(processes, list)
            (checkout,) = processes
            assert checkout["name"] == "checkout"
            assert checkout["position"] == app.position
            assert checkout["issued"] == 1
            assert checkout["parked"] == []
