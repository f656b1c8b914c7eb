"""kill -9 of a real server during each checkout step: after a restart every order with a token ends captured or
cancelled, and the demo gateway charged each order at most once (its JSON-lines file is what the test sees)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import signal
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import pytest

from soloist import ConnectionLost
from soloist.net import Client
from soloist.testing import open_app
from soloist_shop.commands import RecordPayment
from soloist_shop.payments import read_charges
from soloist_shop.wiring import DOMAIN
from tests.e2e.processes import SoloistProcess, _env, soloist

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable
    from pathlib import Path

pytestmark = pytest.mark.uvloop_only


@asynccontextmanager
async def shop_server(tmp_path: Path, *, deadline: float = 30.0, run: int = 0) -> AsyncIterator[SoloistProcess]:
    """``soloist serve`` with the shop on ``tmp_path/shop.db``, its gateway file ``tmp_path/charges.jsonl``."""
    env = _env()
    env["SOLOIST_SHOP_GATEWAY_FILE"] = str(tmp_path / "charges.jsonl")
    env["SOLOIST_SHOP_PAYMENT_DEADLINE"] = str(deadline)
    env["SOLOIST_SHOP_GATEWAY_CRASH"] = "1"
    log = tmp_path / f"server-{run}.log"
    # checkpoints every few events (read models, write model, the checkout's state): a restart after kill -9
    # starts from whichever it finds, and the checkout must still end every order exactly once
    snapshots = ("--snapshot-dir", str(tmp_path / "snapshots"), "--snapshot-every", "5")
    args = ("serve", "--db", str(tmp_path / "shop.db"), "--replicas", "1", *snapshots)
    async with soloist(log, *args, domain=None, env=env) as running:  # the shop: the CLI's default domain
        yield running


def _place(order_id: str, token: str | None, sku: str = "BK-002") -> dict[str, object]:
    data: dict[str, object] = {"order_id": order_id, "customer_id": "c-ada", "lines": [{"sku": sku, "quantity": 1}]}
    if token is not None:
        data["payment_token"] = token
    return data


async def _settled(client: Client, orders: Iterable[str], *, within: float = 30.0) -> dict[str, str]:
    """Follow the log (bounded) until every order's checkout ended; order -> "captured" | "cancelled"."""
    waiting = set(orders)
    ended: dict[str, str] = {}
    with anyio.fail_after(within):
        async with client.subscribe(0) as events:
            async for event in events:
                data = event["data"]
                assert isinstance(data, dict)
                order_id = data.get("order_id")
                if order_id in waiting and event["type"] in ("PaymentCaptured", "OrderCancelled"):
                    ended[order_id] = "captured" if event["type"] == "PaymentCaptured" else "cancelled"
                    waiting.discard(order_id)
                    if not waiting:
                        return ended
    raise AssertionError(f"the subscription ended with {sorted(waiting)} still open")  # pragma: no cover


def _charges_per_order(tmp_path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for charge in read_charges(tmp_path / "charges.jsonl"):
        if charge["outcome"] == "captured":
            order_id = str(charge["order_id"])
            counts[order_id] = counts.get(order_id, 0) + 1
    return counts


async def _killed(server: SoloistProcess) -> int:
    """Wait (bounded) for the server to die; its return code."""
    with anyio.fail_after(20):
        return await server.process.wait()


class TestKillDuringCheckout:
    async def test_kill_between_the_charge_and_its_record(self, tmp_path: Path) -> None:
        """The gateway charges, then the server is SIGKILLed before RecordPayment: a restart records it; one charge."""
        async with shop_server(tmp_path) as server:
            async with Client.connect("127.0.0.1", server.port) as client:
                with contextlib.suppress(ConnectionLost):  # the kill may beat the receipt (committed either way)
                    await client.command("PlaceOrder", _place("o-1", "crash-capture"))
            assert await _killed(server) == -signal.SIGKILL
        assert _charges_per_order(tmp_path) == {"o-1": 1}
        async with shop_server(tmp_path, run=1) as server, Client.connect("127.0.0.1", server.port) as client:
            assert await _settled(client, ["o-1"]) == {"o-1": "captured"}
            view = (await client.query("GetOrder", {"order_id": "o-1"}, consistency="strong")).result
            assert isinstance(view, dict)
            assert (view["status"], view["payment"]) == ("placed", "captured")
        assert _charges_per_order(tmp_path) == {"o-1": 1}

    async def test_kill_between_the_decline_and_its_record(self, tmp_path: Path) -> None:
        """The gateway declines, then SIGKILL: after the restart the order is cancelled and its stock released."""
        async with shop_server(tmp_path) as server:
            async with Client.connect("127.0.0.1", server.port) as client:
                before = (await client.query("GetProduct", {"sku": "BK-002"}, consistency="strong")).result
                with contextlib.suppress(ConnectionLost):
                    await client.command("PlaceOrder", _place("o-2", "decline-crash"))
            assert await _killed(server) == -signal.SIGKILL
        async with shop_server(tmp_path, run=1) as server, Client.connect("127.0.0.1", server.port) as client:
            assert await _settled(client, ["o-2"]) == {"o-2": "cancelled"}
            after = (await client.query("GetProduct", {"sku": "BK-002"}, consistency="strong")).result
            assert isinstance(before, dict)
            assert isinstance(after, dict)
            assert after["stock"] == before["stock"]
        assert _charges_per_order(tmp_path) == {}

    async def test_kill_while_the_gateway_hangs_then_the_deadline_passes_while_down(self, tmp_path: Path) -> None:
        """A timer is not lost with the process: restarted after the deadline, the order is cancelled at once."""
        async with shop_server(tmp_path, deadline=0.5) as server:
            async with Client.connect("127.0.0.1", server.port) as client:
                await client.command("PlaceOrder", _place("o-3", "timeout-x"))
            server.process.send_signal(signal.SIGKILL)
            assert await _killed(server) == -signal.SIGKILL
        async with shop_server(tmp_path, deadline=0.5, run=1) as server, Client.connect("127.0.0.1", server.port) as c:
            assert await _settled(c, ["o-3"]) == {"o-3": "cancelled"}
            view = (await c.query("GetOrder", {"order_id": "o-3"}, consistency="strong")).result
            assert isinstance(view, dict)
            assert "did not answer within 0.5s" in str(view["cancel_reason"])

    async def test_kill_between_the_declined_record_and_the_cancel(self, tmp_path: Path) -> None:
        """PaymentDeclined committed, CancelOrder not yet: a restart cancels the order and releases its stock.

        The kill leaves exactly this log; it is written deterministically: the server is SIGKILLed while the capture
        hangs, then the declined answer is recorded by an App without the checkout, so no cancel can follow it."""
        async with shop_server(tmp_path) as server:
            async with Client.connect("127.0.0.1", server.port) as client:
                before = (await client.query("GetProduct", {"sku": "BK-002"}, consistency="strong")).result
                await client.command("PlaceOrder", _place("o-4", "timeout-y"))
            server.process.send_signal(signal.SIGKILL)
            assert await _killed(server) == -signal.SIGKILL
        without_checkout = dataclasses.replace(DOMAIN, processes=())
        async with open_app(without_checkout, tmp_path / "shop.db") as app:
            await app.execute(RecordPayment(order_id="o-4", outcome="declined", reason="card"))
        async with shop_server(tmp_path, run=1) as server, Client.connect("127.0.0.1", server.port) as client:
            assert await _settled(client, ["o-4"]) == {"o-4": "cancelled"}
            view = (await client.query("GetOrder", {"order_id": "o-4"}, consistency="strong")).result
            after = (await client.query("GetProduct", {"sku": "BK-002"}, consistency="strong")).result
            assert isinstance(view, dict)
            assert (view["status"], view["payment"], view["cancel_reason"]) == (
                "cancelled",
                "declined",
                "payment declined: card",
            )
            assert isinstance(before, dict)
            assert isinstance(after, dict)
            assert after["stock"] == before["stock"]
        assert _charges_per_order(tmp_path) == {}

    @pytest.mark.parametrize("seed", [1, 2])
    async def test_kill_at_random_moments(self, tmp_path: Path, seed: int) -> None:
        """Orders with every kind of token, the server SIGKILLed at a random moment each round; in the end every
        order is captured or cancelled (declines and timeouts cancelled) and no order was charged twice."""
        await self._kill_loop(tmp_path, random.Random(seed), rounds=3, per_round=12)

    @pytest.mark.slow
    async def test_kill_at_random_moments_long(self, tmp_path: Path) -> None:
        """The same, more rounds and orders (run with -m slow)."""
        await self._kill_loop(tmp_path, random.Random(int.from_bytes(os.urandom(4))), rounds=10, per_round=40)

    async def _kill_loop(self, tmp_path: Path, rng: random.Random, *, rounds: int, per_round: int) -> None:
        kinds = {"tok": "captured", "decline": "cancelled", "timeout": "cancelled"}
        expected: dict[str, str] = {}
        for run in range(rounds):
            async with shop_server(tmp_path, deadline=1.0, run=run) as server:
                async with Client.connect("127.0.0.1", server.port) as client:
                    if run == 0:
                        await client.command("Restock", {"sku": "BK-002", "quantity": 10_000})
                    kill_after = rng.randrange(per_round + 1)
                    for i in range(per_round):
                        if i == kill_after:
                            break
                        kind = rng.choice(sorted(kinds))
                        order_id = f"o-{run}-{i}"
                        await client.command("PlaceOrder", _place(order_id, f"{kind}-{i}"), idempotency_key=order_id)
                        expected[order_id] = kinds[kind]
                    if rng.random() < 0.5:  # sometimes let a little more of the checkout run first
                        await client.ping()
                server.process.send_signal(signal.SIGKILL)
                await _killed(server)
        async with (
            shop_server(tmp_path, deadline=1.0, run=rounds) as server,
            Client.connect("127.0.0.1", server.port) as client,
        ):
            ended = await _settled(client, expected)
        # a good token is cancelled when a restart comes after its deadline and the gateway had not charged it
        assert {o: end for o, end in ended.items() if expected[o] == "cancelled"} == {
            o: end for o, end in expected.items() if end == "cancelled"
        }
        charges = _charges_per_order(tmp_path)
        assert all(n == 1 for n in charges.values()), charges  # at most once
        assert set(charges) == {o for o, end in ended.items() if end == "captured"}  # charged <=> captured
