"""Property: a SQLite log and a PostgreSQL log fed the same random shop commands hold the same events
and give the same read models (the same digest, the same answers), live and after a restart."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soloist import App, CQRSError
from soloist_shop.commands import AddProduct, RegisterCustomer
from soloist_shop.queries import GetProduct, SalesSummary
from soloist_shop.wiring import DOMAIN
from tests.evolve.test_digest_property import COMMANDS

if TYPE_CHECKING:
    from soloist._digest import Digest

pytestmark = pytest.mark.uvloop_only  # hypothesis runs each example on its own loop (anyio.run)

SKUS = ("A", "B", "C")
# a shop with customers and products first, so that most random commands are accepted
SETUP: list[object] = [
    *(RegisterCustomer(customer_id=c, name="Ada", email="ada@example.com") for c in ("c1", "c2")),
    *(AddProduct(sku=sku, name=f"Item {sku}", category="kitchen", price_cents=100, stock=5) for sku in SKUS),
]


async def _fold(target: str | Path, commands: list[object]) -> tuple[list[tuple[object, ...]], list[object], Digest]:
    """Run the commands (rejections included) on a log; its events, the outcome of each command, the digest."""
    outcomes: list[object] = []
    async with App(DOMAIN, target, replicas=2) as app:
        for command in commands:
            try:
                receipt = await app.execute(command, idempotency_key=f"k{len(outcomes)}")
                outcomes.append(receipt.position)
            except CQRSError as exc:
                outcomes.append(exc.code)
        for query in [*(GetProduct(sku=sku) for sku in SKUS), SalesSummary()]:
            try:
                outcomes.append((await app.query(query, consistency="strong")).result)
            except CQRSError as exc:  # not_found for a product never added
                outcomes.append(exc.code)
        digest = await app.digest(consistency="strong")
    async with App(DOMAIN, target, replicas=1) as again:  # rebuilt from the log alone
        assert await again.digest(consistency="strong") == digest
        events: list[tuple[object, ...]] = [
            (e.position, e.stream, e.version, e.type, e.data, e.idempotency_key) for e in await again.store.read(0)
        ]
    return events, outcomes, digest


async def _compare(dsn: str, commands: list[object]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP SCHEMA IF EXISTS soloist CASCADE")  # each example starts from an empty log
    finally:
        await conn.close()
    with tempfile.TemporaryDirectory() as directory:
        on_sqlite = await _fold(Path(directory) / "shop.db", commands)
    on_postgres = await _fold(dsn, commands)
    assert on_postgres == on_sqlite


# the database is the fixture's; each example drops the log's schema first (see _compare)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(commands=st.lists(COMMANDS, min_size=5, max_size=40))
def test_sqlite_and_postgres_logs_agree(postgres_dsn: str, commands: list[object]) -> None:
    anyio.run(_compare, postgres_dsn, [*SETUP, *commands], backend_options={"use_uvloop": True})
