"""Property: for random command sequences, live replicas, restored replicas and a fresh replay agree on the digest."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from soloist import App, CQRSError
from soloist._digest import digest_of, replay_digest
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
from soloist_shop.wiring import DOMAIN

SKUS = st.sampled_from(["A", "B", "C"])
CUSTOMERS = st.sampled_from(["c1", "c2"])
ORDERS = st.sampled_from([f"o{i}" for i in range(6)])
SMALL = st.integers(min_value=0, max_value=5)

COMMANDS = st.one_of(
    st.builds(RegisterCustomer, customer_id=CUSTOMERS, name=st.sampled_from(["Ada", "Alan"]), email=st.just("x@y.z")),
    st.builds(
        AddProduct,
        sku=SKUS,
        name=st.sampled_from(["Blue kettle", "Red pan", "Green cup"]),
        category=st.sampled_from(["kitchen", "books"]),
        price_cents=st.integers(min_value=1, max_value=999),
        stock=SMALL,
        description=st.sampled_from(["", "a nice one"]),
    ),
    st.builds(ChangePrice, sku=SKUS, price_cents=st.integers(min_value=1, max_value=999)),
    st.builds(Restock, sku=SKUS, quantity=st.integers(min_value=1, max_value=5)),
    st.builds(
        PlaceOrder,
        order_id=ORDERS,
        customer_id=CUSTOMERS,
        lines=st.lists(
            st.builds(OrderLineRequest, sku=SKUS, quantity=st.integers(min_value=1, max_value=3)),
            min_size=1,
            max_size=2,
        ).map(tuple),
    ),
    st.builds(CancelOrder, order_id=ORDERS),
    st.builds(ShipOrder, order_id=ORDERS),
)


async def _run(directory: Path, commands: list[object], split: int) -> None:
    db, snapshots = directory / "shop.db", directory / "snapshots"
    async with App(DOMAIN, db, replicas=3, snapshot_dir=snapshots) as app:
        for i, command in enumerate(commands):
            if i == split:
                await app.checkpoint()
            with contextlib.suppress(CQRSError):  # rejected by a rule: nothing appended
                await app.execute(command)
        head = app.position
        for replica in app.router.replicas:
            await replica.wait_for(head, timeout=30)
        live = {(digest_of(r.models), r.position) for r in app.router.replicas}
    replayed = replay_digest(DOMAIN, db)
    assert live == {(replayed.digest, replayed.position)}
    async with App(DOMAIN, db, replicas=2, snapshot_dir=snapshots) as again:  # from the checkpoint + the tail
        assert await again.digest(consistency="strong") == replayed


@settings(max_examples=15, deadline=None)
@given(commands=st.lists(COMMANDS, min_size=1, max_size=40), data=st.data())
def test_live_replicas_agree_with_a_fresh_replay(commands: list[object], data: st.DataObject) -> None:
    """Every replica, a restart from a checkpoint and an offline replay give one digest at the head."""
    split = data.draw(st.integers(min_value=0, max_value=len(commands)))
    with tempfile.TemporaryDirectory() as directory:
        anyio.run(_run, Path(directory), commands, split, backend_options={"use_uvloop": True})
