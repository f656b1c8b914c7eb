"""The shop bound to the runtime: concurrency, read models agreeing with the log, field errors before the writer."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import TYPE_CHECKING

import pytest

from soloist import App, BadRequest, DomainError, NotFound, Receipt
from soloist_shop.commands import AddProduct, OrderLineRequest, PlaceOrder, RegisterCustomer
from soloist_shop.queries import GetProduct, SalesSummary, SearchProducts, TopProducts
from soloist_shop.wiring import DOMAIN

if TYPE_CHECKING:
    from pathlib import Path


class TestShopOnTheRuntime:
    async def test_fifty_clients_race_for_one_hundred_units(self, tmp_path: Path) -> None:
        """150 concurrent orders of 1 unit against 100 in stock: exactly 100 succeed; read models agree with the log."""
        db = tmp_path / "shop.db"
        async with App(DOMAIN, db, replicas=3) as app:
            await app.execute(RegisterCustomer(customer_id="c1", name="Ada", email="ada@example.org"))
            await app.execute(
                AddProduct(sku="HOT", name="Hot item", category="toys", price_cents=250, stock=100, description="")
            )

            async def client(n: int) -> list[Receipt | BaseException]:
                results: list[Receipt | BaseException] = []
                for attempt in range(3):
                    order = PlaceOrder(
                        order_id=f"o-{n}-{attempt}", customer_id="c1", lines=(OrderLineRequest(sku="HOT", quantity=1),)
                    )
                    try:
                        results.append(await app.execute(order))
                    except DomainError as exc:
                        results.append(exc)
                return results

            outcomes = [r for rs in await asyncio.gather(*(client(n) for n in range(50))) for r in rs]
            accepted = [r for r in outcomes if isinstance(r, Receipt)]
            rejected = [r for r in outcomes if isinstance(r, DomainError)]
            assert len(accepted) == 100
            assert len(rejected) == 50
            assert all("in stock" in str(r) for r in rejected)
            product = (await app.query(GetProduct(sku="HOT"), consistency="strong")).result
            assert product == {
                "sku": "HOT",
                "name": "Hot item",
                "category": "toys",
                "description": "",
                "price_cents": 250,
                "stock": 0,
                "units_sold": 100,
            }
            summary = (await app.query(SalesSummary(), consistency="strong")).result
            assert summary == {
                "orders_placed": 100,
                "orders_cancelled": 0,
                "orders_shipped": 0,
                "units_sold": 100,
                "revenue_cents": 25_000,
            }
            for replica in app.router.replicas:
                await replica.wait_for(app.position, timeout=5)
                assert replica.query_nowait(GetProduct(sku="HOT")).result == product
        with sqlite3.connect(db) as conn:
            placed = conn.execute("SELECT COUNT(*) FROM events WHERE type = 'OrderPlaced'").fetchone()[0]
            reserved = conn.execute("SELECT COUNT(*) FROM events WHERE type = 'StockReserved'").fetchone()[0]
        assert placed == 100
        assert reserved == 0  # each OrderPlaced takes its stock itself (one event per order)
        async with App(DOMAIN, db, replicas=1) as again:  # a full replay agrees with the live replicas
            assert again.query_nowait(GetProduct(sku="HOT")).result == product
            assert again.query_nowait(TopProducts()).result == [
                {"sku": "HOT", "name": "Hot item", "units_sold": 100, "revenue_cents": 25_000}
            ]

    async def test_wrong_field_never_reaches_the_writer(self, tmp_path: Path) -> None:
        """A wrong or missing field is a BadRequest naming it; the log is untouched."""
        async with App(DOMAIN, tmp_path / "shop.db", replicas=1) as app:
            with pytest.raises(BadRequest) as info:
                app.commands.decode("AddProduct", {"sku": "A", "name": "x", "category": "c", "price_cents": "9"})
            assert info.value.field == "price_cents"
            with pytest.raises(BadRequest) as info:
                app.commands.decode("PlaceOrder", {"order_id": "o", "customer_id": "c", "lines": [{"sku": "A"}]})
            assert info.value.field == "lines[0].quantity"
            assert app.position == 0

    async def test_domain_errors_are_translated(self, tmp_path: Path) -> None:
        """Shop rule violations become DomainError, unknown things NotFound, bad limits BadRequest."""
        async with App(DOMAIN, tmp_path / "shop.db", replicas=1) as app:
            with pytest.raises(DomainError, match="@"):
                await app.execute(RegisterCustomer(customer_id="c", name="Bob", email="nope"))
            with pytest.raises(NotFound, match="NOPE"):
                await app.query(GetProduct(sku="NOPE"))
            with pytest.raises(BadRequest, match="limit"):
                await app.query(SearchProducts(limit=1000))

    async def test_seed_catalogue_is_accepted(self, tmp_path: Path) -> None:
        """The seed commands that `make run` loads into an empty log are all accepted."""
        assert DOMAIN.seed is not None
        async with App(DOMAIN, tmp_path / "shop.db", replicas=1) as app:
            for command in DOMAIN.seed():
                await app.execute(command)
            items = (await app.query(SearchProducts(limit=100), consistency="strong")).result
            assert isinstance(items, dict)
            assert items["total"] >= 10
