"""The client: typed errors for every code, many requests in flight, subscriptions, connection loss."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from soloist import (
    Answer,
    BadRequest,
    CommandTimeout,
    ConnectionLost,
    ConsistencyTimeout,
    CQRSError,
    DomainError,
    IdempotencyConflict,
    InternalError,
    NotFound,
    Overloaded,
    TooLarge,
    Unauthorized,
    UnknownOp,
    UnknownType,
)
from soloist.net import Client
from tests.net.harness import serving
from tests.net.test_server import until, write_lock

if TYPE_CHECKING:
    from pathlib import Path

    from soloist.net import Server


def connect(server: Server, **options: object) -> Client:
    return Client.connect("127.0.0.1", server.port, **options)  # type: ignore[arg-type]


class TestClient:
    async def test_round_trips(self, tmp_path: Path) -> None:
        """ping, command, query and stats return plain values; the query answer carries its position."""
        async with serving(tmp_path) as (_, server), connect(server) as client:
            assert await client.ping() == 0
            receipt = await client.command("Open", {"account": "a"}, idempotency_key="o")
            assert receipt["position"] == 1
            assert receipt["duplicate"] is False
            assert (await client.command("Open", {"account": "a"}, idempotency_key="o"))["duplicate"] is True
            await client.command("Deposit", {"account": "a", "amount": 4}, timeout_ms=5000)
            assert await client.query("Balance", {"account": "a"}, consistency="strong") == Answer(result=4, position=2)
            answer = await client.query("Total", consistency="session", min_position=2, timeout_ms=1000)
            assert answer.position == 2
            assert (await client.stats())["position"] == 2

    async def test_raw_request_keeps_the_callers_id(self, tmp_path: Path) -> None:
        """request() returns the raw answer with the caller's own id (or null) and never raises for ok:false."""
        async with serving(tmp_path) as (_, server), connect(server) as client:
            assert (await client.request({"id": "mine", "op": "ping"}))["id"] == "mine"
            with pytest.raises(BadRequest, match="subscribe"):
                await client.request({"op": "subscribe"})
            answer = await client.request({"op": "nope"})
            assert answer["id"] is None
            assert answer["ok"] is False

    @pytest.mark.parametrize(
        ("call", "cls"),
        [
            (lambda c: c.command("Withdraw", {"account": "a", "amount": 1}), DomainError),
            (lambda c: c.query("Balance", {"account": "x"}), NotFound),
            (lambda c: c.command("Deposit", {"account": "a"}), BadRequest),
            (lambda c: c.command("Nope"), UnknownType),
            (lambda c: c.command("Open", {"account": "a"}, idempotency_key="o"), IdempotencyConflict),
            (lambda c: c.query("Total", consistency="session", min_position=50, timeout_ms=1), ConsistencyTimeout),
            (lambda c: c.command("Crash", {"account": "a"}), InternalError),
            (lambda c: c.request({"op": "command", "type": "Open", "data": {}, "pad": "x" * 2000}), TooLarge),
            (lambda c: c._call({"op": "nope"}), UnknownOp),
        ],
    )
    async def test_typed_errors(self, tmp_path: Path, call: object, cls: type[CQRSError]) -> None:
        """Error answers raise exactly the class the server raised (one wire code per class)."""
        async with serving(tmp_path) as (_, server), connect(server, max_line=1000) as client:
            await client.command("Open", {"account": "a"})
            await client.command("Open", {"account": "b"}, idempotency_key="o")
            with pytest.raises(cls) as caught:
                await call(client)  # type: ignore[operator]
            assert caught.type is cls
            assert caught.value.code == cls.code
            assert await client.ping() == 2  # the connection is still usable

    async def test_command_timeout(self, tmp_path: Path) -> None:
        """A command slower than timeout_ms raises exactly CommandTimeout."""
        async with serving(tmp_path) as (app, server), connect(server) as client:
            with write_lock(app.path), pytest.raises(CommandTimeout, match="idempotency_key") as caught:
                await client.command("Open", {"account": "a"}, timeout_ms=10)
            assert caught.type is CommandTimeout

    async def test_overloaded(self, tmp_path: Path) -> None:
        """With the writer's queue full, a command over the socket raises exactly Overloaded (nothing was done)."""
        overloaded: list[Overloaded] = []
        seen = anyio.Event()

        async def one(client: Client, i: int) -> None:
            try:
                await client.command("Open", {"account": f"a{i}"})
            except Overloaded as exc:
                overloaded.append(exc)
                seen.set()

        options = {"queue_capacity": 1, "max_batch": 1}
        async with serving(tmp_path, app_options=options) as (app, server), connect(server) as client:
            async with anyio.create_task_group() as tg:
                with write_lock(app.path):  # the writer's first commit waits: the queue fills up behind it
                    for i in range(8):
                        tg.start_soon(one, client, i)
                    with anyio.fail_after(10):
                        await seen.wait()
            assert type(overloaded[0]) is Overloaded
            assert "queue is full" in str(overloaded[0])
            assert (await client.query("Total", consistency="strong")).position == 8 - len(overloaded)

    async def test_many_requests_in_flight(self, tmp_path: Path) -> None:
        """Concurrent requests on one connection are matched to their answers by id."""
        async with serving(tmp_path) as (_, server), connect(server) as client:
            receipts: dict[int, dict[str, object]] = {}

            async def open_one(i: int) -> None:
                receipts[i] = await client.command("Open", {"account": f"a{i}"})

            async with anyio.create_task_group() as tg:
                for i in range(200):
                    tg.start_soon(open_one, i)
            assert sorted(r["position"] for r in receipts.values()) == list(range(1, 201))  # type: ignore[type-var]
            total = await client.query("Total", consistency="strong")
            assert total.position == 200

    async def test_cancelled_request_leaves_the_connection_usable(self, tmp_path: Path) -> None:
        """A caller cancelled while waiting forgets its answer; later requests still work."""
        async with serving(tmp_path) as (_, server), connect(server) as client:
            with anyio.move_on_after(0.01):
                await client.query("Total", consistency="session", min_position=10, timeout_ms=60_000)
            await client.command("Open", {"account": "a"})
            assert await client.ping() == 1

    async def test_auth(self, tmp_path: Path) -> None:
        """connect(token=...) authenticates; a missing or wrong token raises Unauthorized."""
        async with serving(tmp_path, token="t") as (_, server):
            async with connect(server, token="t") as client:
                assert await client.ping() == 0
            async with connect(server) as client:
                with pytest.raises(Unauthorized):
                    await client.ping()
            with pytest.raises(Unauthorized):
                async with connect(server, token="wrong"):
                    pass  # pragma: no cover

    async def test_subscribe(self, tmp_path: Path) -> None:
        """subscribe() streams past then live events on its own connection, as dicts."""
        async with serving(tmp_path, token="t") as (_app, server), connect(server, token="t") as client:
            await client.command("Open", {"account": "a"})
            await client.command("Open", {"account": "b"})
            async with client.subscribe(1) as events:
                first = await events.receive()
                assert first["position"] == 2
                assert first["data"] == {"account": "b"}
                await client.command("Deposit", {"account": "a", "amount": 1})
                async for event in events:
                    assert event["position"] == 3
                    assert event["type"] == "Moved"
                    break
                assert events.position == 3
            assert await client.ping() == 3  # the request connection was not disturbed

    async def test_subscribe_error(self, tmp_path: Path) -> None:
        """A refused subscription raises at open."""
        async with serving(tmp_path) as (_, server), connect(server) as client:
            with pytest.raises(BadRequest, match="from_position"):
                async with client.subscribe(-5):
                    pass  # pragma: no cover

    async def test_connection_lost(self, tmp_path: Path) -> None:
        """When the server goes away, waiting and later requests raise ConnectionLost."""
        async with serving(tmp_path, idle_timeout=0.05) as (_, server), connect(server) as client:
            await until(lambda: server.statistics().connections == 0)
            with pytest.raises(ConnectionLost):
                await client.ping()
            with pytest.raises(ConnectionLost):
                await client.ping()

    async def test_cannot_connect(self, tmp_path: Path) -> None:
        """A refused connection raises ConnectionLost naming the address."""
        async with serving(tmp_path) as (_, server):
            port = server.port
        with pytest.raises(ConnectionLost, match=f"127.0.0.1:{port}"):
            async with Client.connect("127.0.0.1", port):
                pass  # pragma: no cover

    async def test_body_errors_are_not_wrapped(self, tmp_path: Path) -> None:
        """An exception in the caller's `async with` body comes out as itself, not in an ExceptionGroup."""
        async with serving(tmp_path) as (_, server):
            with pytest.raises(KeyError):
                async with connect(server):
                    raise KeyError("mine")
