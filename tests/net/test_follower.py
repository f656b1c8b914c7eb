"""A replica process in one loop: it follows the writer, serves queries, refuses commands, survives restarts."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, cast

import anyio
import anyio.abc
import pytest

from soloist import App, NotWriter, UpstreamUnavailable
from soloist._log import LogReader
from soloist.net import Client, Follower, Server, parse_address
from tests.net.test_server import until
from tests.toy import BANK, Deposit, Open

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from anyio.abc import TaskGroup, TaskStatus


class Restartable:
    """A writer's server that can be stopped and started again on the same port."""

    def __init__(self, app: App, tg: TaskGroup) -> None:
        self.app = app
        self.tg = tg
        self.port = 0
        self._scope: anyio.CancelScope | None = None

    async def start(self) -> None:
        scope = self._scope = anyio.CancelScope()

        async def run(*, task_status: TaskStatus[Server]) -> None:
            with scope:
                await Server(self.app, port=self.port).serve(task_status=task_status)

        server = cast("Server", await self.tg.start(run))
        self.port = server.port

    def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@asynccontextmanager
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[App, Restartable, App, Follower, Server]]:
    """A writer App with a restartable server, and a follower App with its Follower and Server."""
    async with App(BANK, tmp_path / "writer.db", replicas=1) as writer, anyio.create_task_group() as tg:
        upstream = Restartable(writer, tg)
        await upstream.start()
        async with App(BANK, tmp_path / "replica.db", replicas=2, follower_of=upstream.address) as app:
            follower = Follower(app, upstream.address, backoff=(0.01, 0.05), probe_timeout=2)
            await tg.start(follower.run)
            server = cast("Server", await tg.start(Server(app, port=0, upstream=follower).serve))
            try:
                yield writer, upstream, app, follower, server
            finally:
                tg.cancel_scope.cancel()


class TestFollower:
    async def test_converges_and_strong_sees_the_writer(self, tmp_path: Path) -> None:
        """Writes on the writer are visible on the replica with strong consistency, at the writer's position."""
        async with cluster(tmp_path) as (writer, upstream, app, _follower, server):
            async with Client.connect("127.0.0.1", upstream.port) as w:
                await w.command("Open", {"account": "a"})
                receipt = await w.command("Deposit", {"account": "a", "amount": 7})
            async with Client.connect("127.0.0.1", server.port) as r:
                answer = await r.query("Balance", {"account": "a"}, consistency="strong")
                assert answer.result == 7
                assert answer.position == receipt["position"] == writer.position
                stats = await r.stats()
                assert stats["role"] == "follower"
                upstream_stats = cast("dict[str, object]", stats["upstream"])
                assert upstream_stats["upstream"] == upstream.address
                assert upstream_stats["connected"] is True
            async with LogReader(app.path, app.events) as local, LogReader(writer.path, writer.events) as origin:
                mine, theirs = await local.read(0), await origin.read(0)
            assert [(e.position, e.stream, e.version, e.data) for e in mine] == [
                (e.position, e.stream, e.version, e.data) for e in theirs
            ]

    async def test_commands_are_refused_naming_the_writer(self, tmp_path: Path) -> None:
        """A command sent to a replica gets not_writer (exactly NotWriter at the client) with the writer's address."""
        async with cluster(tmp_path) as (_, upstream, _app, _, server), Client.connect("127.0.0.1", server.port) as r:
            with pytest.raises(NotWriter, match=upstream.address) as caught:
                await r.command("Open", {"account": "a"})
            assert caught.type is NotWriter

    async def test_reconnects_after_the_writer_restarts(self, tmp_path: Path) -> None:
        """When the writer's server goes away the replica keeps serving, then catches up after it returns."""
        async with cluster(tmp_path) as (writer, upstream, app, follower, server):
            await writer.execute(Open(account="a"))
            await app.router.wait_for(1, timeout=10)  # the follower replicated it and a replica applied it
            async with Client.connect("127.0.0.1", server.port) as r:
                assert (await r.query("Balance", {"account": "a"}, consistency="strong")).position == 1
                upstream.stop()
                await until(lambda: not follower.statistics().connected)
                for _ in range(3):
                    await writer.execute(Deposit(account="a", amount=1))
                with pytest.raises(UpstreamUnavailable, match=upstream.address) as caught:
                    await r.query("Balance", {"account": "a"}, consistency="strong")
                assert caught.type is UpstreamUnavailable
                assert (await r.query("Total")).result == 0  # eventual reads still work from local state
                await upstream.start()
                answer = await r.query("Balance", {"account": "a"}, consistency="strong", timeout_ms=5000)
                assert (answer.result, answer.position) == (3, 4)
            assert follower.statistics().reconnects >= 1

    async def test_survives_a_garbage_upstream(self, tmp_path: Path) -> None:
        """An upstream that answers with garbage is retried with backoff; the replica keeps running."""
        async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
            port = listener.extra(anyio.abc.SocketAttribute.local_port)

            async def garbage(stream: anyio.abc.SocketStream) -> None:
                async with stream:
                    await stream.send(b"this is not json\n")

            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, garbage)
                address = f"127.0.0.1:{port}"
                async with App(BANK, tmp_path / "replica.db", replicas=1, follower_of=address) as app:
                    follower = Follower(app, address, backoff=(0.001, 0.01))
                    await tg.start(follower.run)
                    await until(lambda: follower.statistics().reconnects >= 2)
                    assert "not JSON" in str(follower.statistics().last_error)
                    assert app.position == 0
                tg.cancel_scope.cancel()

    def test_parse_address(self) -> None:
        """Upstream addresses are HOST:PORT."""
        assert parse_address("127.0.0.1:7420") == ("127.0.0.1", 7420)
        assert parse_address("[::1]:80") == ("::1", 80)
        for bad in ("7420", "host:", "host:x", ":1", "h:70000"):
            with pytest.raises(ValueError, match="HOST:PORT"):
                parse_address(bad)

    async def test_needs_a_follower_app(self, tmp_path: Path) -> None:
        """A Follower refuses a writer App."""
        async with App(BANK, tmp_path / "w.db", replicas=1) as app:
            with pytest.raises(ValueError, match="follower_of"):
                Follower(app, "127.0.0.1:1")
