"""Writer -> JetStream -> replicas in one loop: exact logs, NATS restarts, late and restarted replicas."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeVar, cast

import anyio
import nats
import pytest

from soloist import App, UpstreamUnavailable, WrongLog
from soloist.net import Client, Server
from soloist.net._jetstream import JetStreamFollower, JetStreamPublisher, default_stream_name, subject_of
from tests.jetstream.harness import log_rows
from tests.toy import BANK, Balance, Deposit, Open

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from anyio.abc import TaskGroup

    from tests.jetstream.harness import NatsServer

FAST = (0.01, 0.1)  # backoff of the tests' publishers and followers
E = TypeVar("E", bound=BaseException)


def _leaves(group: BaseExceptionGroup[E], kind: type[E]) -> list[E]:
    """The exceptions of ``kind`` in a (nested) exception group."""
    found: list[E] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc, kind))
        elif isinstance(exc, kind):
            found.append(exc)
    return found


@asynccontextmanager
async def writer(
    tmp_path: Path, nats_server: NatsServer, name: str = "writer"
) -> AsyncIterator[tuple[App, JetStreamPublisher, Server, TaskGroup]]:
    """A writer App serving on a free port, publishing to the test's nats-server."""
    async with App(BANK, tmp_path / f"{name}.db", replicas=1) as app, anyio.create_task_group() as tg:
        publisher = JetStreamPublisher(app, nats_server.url, backoff=FAST, publish_timeout=1.0)
        await tg.start(publisher.run)
        server = cast("Server", await tg.start(Server(app, port=0).serve))
        try:
            yield app, publisher, server, tg
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def replica(
    path: Path, nats_server: NatsServer, *, upstream: str | None = None, stream: str | None = None
) -> AsyncIterator[tuple[App, JetStreamFollower]]:
    """A follower App fed by the stream (``upstream``: the writer's socket, for gaps and strong queries)."""
    async with App(BANK, path, replicas=1, follower_of=upstream or "nats") as app, anyio.create_task_group() as tg:
        follower = JetStreamFollower(app, nats_server.url, stream, upstream=upstream, backoff=FAST, idle=0.2)
        await tg.start(follower.run)
        try:
            yield app, follower
        finally:
            tg.cancel_scope.cancel()


async def deposits(app: App, account: str, count: int) -> int:
    """Open an account and deposit 1 ``count`` times; the last position."""
    position = (await app.execute(Open(account=account))).position
    for _ in range(count):
        position = (await app.execute(Deposit(account=account, amount=1))).position
    return position


class TestJetStream:
    async def test_replica_log_is_the_writers(self, tmp_path: Path, nats_server: NatsServer) -> None:
        """Every committed event reaches the replica's log, position by position, and its read models."""
        async with (
            writer(tmp_path, nats_server) as (app, publisher, _server, _tg),
            replica(tmp_path / "r1.db", nats_server) as (copy, follower),
        ):
            head = await deposits(app, "a", 50)
            with anyio.fail_after(20):
                await follower.wait_position(head)
            answer = await copy.query(Balance(account="a"), consistency="session", min_position=head)
            assert answer.result == 50
            assert log_rows(tmp_path / "r1.db") == log_rows(tmp_path / "writer.db")
            stats = follower.statistics()
            assert stats.position == head
            assert stats.log_id == app.log.log_id
            assert stats.lag_ms_p99 is not None
            with anyio.fail_after(20):
                await publisher.wait_published(head)
            assert publisher.statistics().lag_events == 0

    async def test_nats_down_writer_keeps_acknowledging(self, tmp_path: Path, nats_server: NatsServer) -> None:
        """NATS killed mid-load: commands still commit; after its restart both replicas reach the head exactly."""
        async with (
            writer(tmp_path, nats_server) as (app, publisher, _server, _tg),
            replica(tmp_path / "r1.db", nats_server) as (_c1, f1),
            replica(tmp_path / "r2.db", nats_server) as (_c2, f2),
        ):
            before = await deposits(app, "a", 100)
            with anyio.fail_after(20):
                await f1.wait_position(before)
            await nats_server.kill()
            during = await deposits(app, "b", 300)  # acknowledged with the broker dead
            assert during == before + 301
            await nats_server.start()
            after = await deposits(app, "c", 100)
            with anyio.fail_after(30):
                await f1.wait_position(after)
                await f2.wait_position(after)
            expected = log_rows(tmp_path / "writer.db")
            assert len(expected) == after
            assert log_rows(tmp_path / "r1.db") == expected
            assert log_rows(tmp_path / "r2.db") == expected
            assert publisher.statistics().sessions >= 2

    async def test_replica_restart_resumes(self, tmp_path: Path, nats_server: NatsServer) -> None:
        """A replica stopped and started again resumes from its durable position: no gap, no duplicate."""
        async with writer(tmp_path, nats_server) as (app, _publisher, _server, _tg):
            async with replica(tmp_path / "r1.db", nats_server) as (_copy, follower):
                first = await deposits(app, "a", 30)
                with anyio.fail_after(20):
                    await follower.wait_position(first)
            second = await deposits(app, "b", 30)
            async with replica(tmp_path / "r1.db", nats_server) as (copy, follower):
                with anyio.fail_after(20):
                    await follower.wait_position(second)
                assert copy.position == second
                assert follower.statistics().skipped == 0  # the binary search started at the right message
            assert log_rows(tmp_path / "r1.db") == log_rows(tmp_path / "writer.db")

    async def test_late_replica_fills_from_the_writer(self, tmp_path: Path, nats_server: NatsServer) -> None:
        """A stream that dropped old messages: a new replica fetches the missing head from the writer's socket."""
        async with writer(tmp_path, nats_server) as (app, publisher, server, _tg):
            nc = await nats.connect(nats_server.url)
            try:
                js = nc.jetstream()
                head = await deposits(app, "a", 5)
                with anyio.fail_after(20):
                    await publisher.wait_published(head)
                info = await js.stream_info(publisher.stream)
                await js.update_stream(info.config, max_msgs=3)
                for i in range(10):  # one message each: the stream keeps only the last three
                    head = await deposits(app, f"b{i}", 0)
                    with anyio.fail_after(20):
                        await publisher.wait_published(head)
                assert (await js.stream_info(publisher.stream)).state.messages == 3
            finally:
                await nc.close()
            upstream = f"127.0.0.1:{server.port}"
            async with replica(tmp_path / "late.db", nats_server, upstream=upstream) as (_copy, follower):
                head = await deposits(app, "c", 3)
                with anyio.fail_after(20):
                    await follower.wait_position(head)
                assert follower.statistics().gaps_filled > 0
            assert log_rows(tmp_path / "late.db") == log_rows(tmp_path / "writer.db")

    async def test_late_replica_without_upstream_says_so(self, tmp_path: Path, nats_server: NatsServer) -> None:
        """Without --upstream, history the stream dropped cannot be fetched: the replica says what to do."""
        async with writer(tmp_path, nats_server) as (app, publisher, _server, _tg):
            nc = await nats.connect(nats_server.url)
            try:
                js = nc.jetstream()
                head = await deposits(app, "a", 0)
                with anyio.fail_after(20):
                    await publisher.wait_published(head)
                info = await js.stream_info(publisher.stream)
                await js.update_stream(info.config, max_msgs=1)
                head = await deposits(app, "b", 0)
                with anyio.fail_after(20):
                    await publisher.wait_published(head)
            finally:
                await nc.close()
            async with replica(tmp_path / "late.db", nats_server) as (copy, follower):
                with anyio.fail_after(20):
                    error = await follower.wait_error()
                assert "--upstream" in error
                assert copy.position == 0
                with pytest.raises(UpstreamUnavailable, match="--upstream"):
                    await follower.head_future()

    async def test_stream_of_another_log_is_refused(self, tmp_path: Path, nats_server: NatsServer) -> None:
        """A replica that holds log A, pointed at the stream of log B, fails with WrongLog naming both."""
        async with writer(tmp_path, nats_server, "a") as (app, _publisher, _server, _tg):
            position = await deposits(app, "a", 2)
            async with replica(tmp_path / "r.db", nats_server) as (_copy, follower):
                with anyio.fail_after(20):
                    await follower.wait_position(position)
            log_a = app.log.log_id
        # writer b publishes to the same stream name after a's stream is gone: a different log
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream().delete_stream(default_stream_name(BANK.name))
        finally:
            await nc.close()
        async with writer(tmp_path, nats_server, "b") as (other, publisher, _server, _tg):
            head = await deposits(other, "z", 0)
            with anyio.fail_after(20):
                await publisher.wait_published(head)
            refused: list[WrongLog] = []
            try:
                async with replica(tmp_path / "r.db", nats_server):
                    with anyio.fail_after(20):
                        await anyio.sleep_forever()
            except* WrongLog as group:  # raised in the follower's task, so it comes in its task groups
                refused.extend(_leaves(group, WrongLog))
            assert len(refused) == 1
            assert refused[0].expected == log_a
            assert refused[0].found == other.log.log_id
            assert "--nats-stream" in str(refused[0])

    async def test_publisher_refuses_a_stream_of_another_log(self, tmp_path: Path, nats_server: NatsServer) -> None:
        """Two writers, one stream: the second publisher refuses it and its writer keeps committing."""
        async with writer(tmp_path, nats_server, "a") as (first, p1, _s1, _tg1):
            head = await deposits(first, "a", 0)
            with anyio.fail_after(20):
                await p1.wait_published(head)
            async with writer(tmp_path, nats_server, "b") as (second, p2, _s2, _tg2):
                with anyio.fail_after(20):
                    error = await p2.wait_error()
                assert "carries log" in error
                assert await deposits(second, "b", 3) == 4
                assert p2.statistics().published_position == 0

    async def test_strong_query_asks_the_writer(self, tmp_path: Path, nats_server: NatsServer) -> None:
        """On a JetStream replica with --upstream, strong reads the writer's head; commands name the writer."""
        async with writer(tmp_path, nats_server) as (app, _publisher, server, tg):
            upstream = f"127.0.0.1:{server.port}"
            async with replica(tmp_path / "r.db", nats_server, upstream=upstream) as (copy, follower):
                replica_server = cast("Server", await tg.start(Server(copy, port=0, upstream=follower).serve))
                head = await deposits(app, "a", 4)
                async with Client.connect("127.0.0.1", replica_server.port) as client:
                    answer = await client.query("Balance", {"account": "a"}, consistency="strong")
                    assert answer.result == 4
                    assert answer.position >= head
                    with pytest.raises(Exception, match=upstream):
                        await client.command("Open", {"account": "x"})
                    stats = await client.stats()
                    link = stats["upstream"]
                    assert isinstance(link, dict)
                    assert link["stream"] == default_stream_name(BANK.name)


def test_names() -> None:
    """The default stream name is a valid JetStream name naming the domain; one subject per stream."""
    assert default_stream_name("shop.v2") == "soloist-shop_v2"
    assert subject_of("s") == "soloist.s.batch"


class TestOlderCopy:
    async def test_publisher_of_a_restored_older_log_waits(self, tmp_path: Path, nats_server: NatsServer) -> None:
        """A writer restored from an older copy of its log does not publish over the stream's newer positions."""
        async with writer(tmp_path, nats_server) as (app, publisher, _server, _tg):
            head = await deposits(app, "a", 2)
            with anyio.fail_after(20):
                await publisher.wait_published(head)
        for suffix in ("", "-wal", "-shm"):
            source = tmp_path / f"writer.db{suffix}"
            if source.exists():
                (tmp_path / f"older.db{suffix}").write_bytes(source.read_bytes())
        async with writer(tmp_path, nats_server) as (app, publisher, _server, _tg):
            head = await deposits(app, "b", 2)
            with anyio.fail_after(20):
                await publisher.wait_published(head)
        for suffix in ("", "-wal", "-shm"):
            older = tmp_path / f"older.db{suffix}"
            target = tmp_path / f"writer.db{suffix}"
            if older.exists():
                target.write_bytes(older.read_bytes())
            elif target.exists():
                target.unlink()
        async with writer(tmp_path, nats_server) as (app, publisher, _server, _tg):
            with anyio.fail_after(20):
                error = await publisher.wait_error()
            assert "older copy" in error
            assert app.position == 3
            assert publisher.statistics().published_position == 0
