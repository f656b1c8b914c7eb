"""The shop served by a real App and server (the ``soloist_app`` / ``soloist_client`` fixtures of soloist.testing)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from soloist import DomainError
from soloist_shop.wiring import DOMAIN

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractAsyncContextManager

    from soloist import App
    from soloist.net import Client

    AppFactory = Callable[..., AbstractAsyncContextManager[App]]
    ClientFactory = Callable[..., AbstractAsyncContextManager[Client]]


class TestShopOverTheSocket:
    async def test_place_query_cancel_and_a_refused_ship(
        self, soloist_app: AppFactory, soloist_client: ClientFactory
    ) -> None:
        """An order placed over the client reads back placed, with its total; cancelled, it cannot ship (rejected)."""
        async with soloist_app(DOMAIN) as app, soloist_client(app) as client:
            assert DOMAIN.seed is not None
            for command in DOMAIN.seed():
                await app.execute(command)
            lines = [{"sku": "BK-002", "quantity": 2}]
            receipt = await client.command("PlaceOrder", {"order_id": "o-1", "customer_id": "c-ada", "lines": lines})
            answer = await client.query("GetOrder", {"order_id": "o-1"}, consistency="strong")
            position = receipt["position"]
            assert isinstance(position, int)
            assert answer.position >= position
            view = answer.result
            assert isinstance(view, dict)
            assert (view["status"], view["total_cents"], view["customer"]) == (
                "placed",
                11000,
                {"customer_id": "c-ada", "name": "Ada Lovelace"},
            )
            assert "payment" not in view  # placed without a token: no checkout
            await client.command("CancelOrder", {"order_id": "o-1", "reason": "changed my mind"})
            with pytest.raises(DomainError, match="cannot ship order 'o-1': it is already cancelled"):
                await client.command("ShipOrder", {"order_id": "o-1"})
            view = (await client.query("GetOrder", {"order_id": "o-1"}, consistency="strong")).result
            assert isinstance(view, dict)
            assert (view["status"], view["cancel_reason"]) == ("cancelled", "changed my mind")
