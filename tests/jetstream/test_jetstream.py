"""Writer -> JetStream -> replicas in one loop: exact logs, NATS restarts, late and restarted replicas."""

from __future__ import annotations

import dataclasses
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

import anyio
import asyncpg
import nats
import orjson
import pytest

from soloist import App, Domain, UpstreamUnavailable, WrongLog
from soloist.net import Client, Server
from soloist.net._jetstream import JetStreamFollower, JetStreamPublisher, default_stream_name, subject_of
from tests.jetstream.harness import log_rows
from tests.toy import BANK, Account, Balance, Command, Deposit, Moved, Msg, Open, Opened, Poisoned, decide

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence
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
    tmp_path: Path, nats_server: NatsServer, name: str = "writer", *, db: str | None = None
) -> AsyncIterator[tuple[App, JetStreamPublisher, Server, TaskGroup]]:
    """A writer App serving on a free port, publishing to the test's nats-server (``db``: a PostgreSQL log)."""
    async with App(BANK, db or tmp_path / f"{name}.db", replicas=1) as app, anyio.create_task_group() as tg:
        publisher = JetStreamPublisher(app, nats_server.url, backoff=FAST, publish_timeout=1.0)
        await tg.start(publisher.run)
        server = cast("Server", await tg.start(Server(app, port=0).serve))
        try:
            yield app, publisher, server, tg
        finally:
            tg.cancel_scope.cancel()


class MovedV2(Msg, frozen=True, kw_only=True):
    """The bank's ``Moved`` as newer code has it: v2 adds ``source`` (v1 events read as ``"v1"``)."""

    __type_name__ = "Moved"
    __schema__ = 2

    account: str
    delta: int
    source: str


def _moved_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "source": "v1"}


def _decide_newer(states: Mapping[str, Account], command: Command) -> Sequence[object]:
    return [
        MovedV2(account=e.account, delta=e.delta, source="v2") if isinstance(e, Moved) else e
        for e in decide(states, command)
    ]


# the bank as a later release has it (a replica process upgraded before its writer, or a writer before its replica)
BANK_NEWER: Domain[Any, Any, Any, Any] = dataclasses.replace(
    cast("Domain[Any, Any, Any, Any]", BANK),
    events=(Opened, MovedV2, Poisoned),
    upcasters={("Moved", 1): _moved_v1_to_v2},
    decide=_decide_newer,
)


@asynccontextmanager
async def replica(
    path: Path,
    nats_server: NatsServer,
    *,
    upstream: str | None = None,
    stream: str | None = None,
    upstream_db: str | None = None,
    domain: Domain[Any, Any, Any, Any] = BANK,
) -> AsyncIterator[tuple[App, JetStreamFollower]]:
    """A follower App fed by the stream (``upstream``: the writer's socket, for gaps and strong queries;
    ``upstream_db``: the writer's PostgreSQL log, for gaps)."""
    async with App(domain, path, replicas=1, follower_of=upstream or "nats") as app, anyio.create_task_group() as tg:
        follower = JetStreamFollower(
            app, nats_server.url, stream, upstream=upstream, upstream_db=upstream_db, backoff=FAST, idle=0.2
        )
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


async def trim_stream(app: App, publisher: JetStreamPublisher, nats_server: NatsServer, keep: int) -> None:
    """Publish a few messages, then make the stream keep only its last ``keep``: its oldest positions are gone."""
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        head = await deposits(app, "a", 5)
        with anyio.fail_after(20):
            await publisher.wait_published(head)
        info = await js.stream_info(publisher.stream)
        await js.update_stream(info.config, max_msgs=keep)
        for i in range(keep + 2):  # one message each: the stream keeps only the last ``keep``
            head = await deposits(app, f"b{i}", 0)
            with anyio.fail_after(20):
                await publisher.wait_published(head)
        assert (await js.stream_info(publisher.stream)).state.messages == keep
    finally:
        await nc.close()


async def postgres_rows(dsn: str) -> list[tuple[object, ...]]:
    """Every event of a PostgreSQL log, as :func:`log_rows` gives a SQLite log's."""
    conn = await asyncpg.connect(dsn)
    try:
        records = await conn.fetch(
            "SELECT position, stream, version, type, schema, convert_from(data, 'UTF8'), recorded_at "
            "FROM soloist.events ORDER BY position"
        )
    finally:
        await conn.close()
    return [tuple(record) for record in records]


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
            await trim_stream(app, publisher, nats_server, keep=3)
            upstream = f"127.0.0.1:{server.port}"
            async with replica(tmp_path / "late.db", nats_server, upstream=upstream) as (_copy, follower):
                head = await deposits(app, "c", 3)
                with anyio.fail_after(20):
                    await follower.wait_position(head)
                assert follower.statistics().gaps_filled > 0
            assert log_rows(tmp_path / "late.db") == log_rows(tmp_path / "writer.db")

    async def test_late_replica_fills_from_the_postgres_log(
        self, tmp_path: Path, nats_server: NatsServer, postgres_dsn: str
    ) -> None:
        """A writer on PostgreSQL; a late replica without --upstream reads what the stream dropped from that log."""
        async with writer(tmp_path, nats_server, db=postgres_dsn) as (app, publisher, _server, _tg):
            await trim_stream(app, publisher, nats_server, keep=3)
            async with replica(tmp_path / "late.db", nats_server, upstream_db=postgres_dsn) as (_copy, follower):
                head = await deposits(app, "c", 3)
                with anyio.fail_after(20):
                    await follower.wait_position(head)
                stats = follower.statistics()
                assert stats.gaps_filled > 0
                assert stats.log_id == app.log_id
        expected = await postgres_rows(postgres_dsn)
        assert len(expected) == head
        assert log_rows(tmp_path / "late.db") == expected

    async def test_postgres_log_of_another_log_is_refused(
        self, tmp_path: Path, nats_server: NatsServer, postgres_dsn: str
    ) -> None:
        """--upstream-db naming another log than the stream's: the gap is not filled, WrongLog names both."""
        async with App(BANK, postgres_dsn, replicas=1) as other:  # another writer's log in that database
            await other.execute(Open(account="elsewhere"))
        async with writer(tmp_path, nats_server) as (app, publisher, _server, _tg):
            await trim_stream(app, publisher, nats_server, keep=1)
            refused: list[WrongLog] = []
            try:
                async with replica(tmp_path / "late.db", nats_server, upstream_db=postgres_dsn) as (copy, _follower):
                    with anyio.fail_after(20):
                        await anyio.sleep_forever()
            except* WrongLog as group:  # raised in the follower's task, so it comes in its task groups
                refused.extend(_leaves(group, WrongLog))
            assert len(refused) == 1
            assert refused[0].expected == app.log_id
            assert "--upstream-db" in str(refused[0])
            assert copy.position == 0

    async def test_a_database_without_a_log_is_read_not_written(
        self, tmp_path: Path, nats_server: NatsServer, postgres_dsn: str
    ) -> None:
        """--upstream-db naming a database that holds no soloist log: the replica says so and creates nothing."""
        async with writer(tmp_path, nats_server) as (app, publisher, _server, _tg):
            await trim_stream(app, publisher, nats_server, keep=1)
            async with replica(tmp_path / "late.db", nats_server, upstream_db=postgres_dsn) as (copy, follower):
                with anyio.fail_after(20):
                    error = await follower.wait_error()
                assert "is not a soloist event log" in error
                assert "--upstream-db" in error
                assert copy.position == 0
        conn = await asyncpg.connect(postgres_dsn)
        try:
            created = await conn.fetchval(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'soloist'"
            )
        finally:
            await conn.close()
        assert created == 0

    async def test_late_replica_without_upstream_says_so(self, tmp_path: Path, nats_server: NatsServer) -> None:
        """Without --upstream, history the stream dropped cannot be fetched: the replica says what to do."""
        async with writer(tmp_path, nats_server) as (app, publisher, _server, _tg):
            await trim_stream(app, publisher, nats_server, keep=1)
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


class TestSchemaVersions:
    async def test_a_newer_replica_upcasts_what_an_older_writer_publishes(
        self, tmp_path: Path, nats_server: NatsServer
    ) -> None:
        """v1 ``Moved`` events reach a replica whose code has v2: upcast, stored as v2, read back after restart."""
        async with (
            writer(tmp_path, nats_server) as (app, _publisher, _server, _tg),
            replica(tmp_path / "r1.db", nats_server, domain=BANK_NEWER) as (copy, follower),
        ):
            head = await deposits(app, "a", 3)
            with anyio.fail_after(20):
                await follower.wait_position(head)
            moved = [event for event in await copy.store.read(0) if event.type == "Moved"]
            assert [(e.data, e.schema) for e in moved] == [(MovedV2(account="a", delta=1, source="v1"), 2)] * 3
        rows = [row for row in log_rows(tmp_path / "r1.db") if row[3] == "Moved"]
        assert [(row[4], orjson.loads(cast("str", row[5]))["source"]) for row in rows] == [(2, "v1")] * 3
        async with App(BANK_NEWER, tmp_path / "r1.db", replicas=1, follower_of="nats") as again:
            assert [e.data for e in await again.store.read(0) if e.type == "Moved"] == [m.data for m in moved]

    async def test_an_older_replica_refuses_what_a_newer_writer_publishes(
        self, tmp_path: Path, nats_server: NatsServer
    ) -> None:
        """A replica whose code is older than the events stops with UnknownSchemaVersion, nothing misread."""
        async with (
            anyio.create_task_group() as outer,
            App(BANK_NEWER, tmp_path / "writer.db", replicas=1) as app,
        ):
            publisher = JetStreamPublisher(app, nats_server.url, backoff=FAST, publish_timeout=1.0)
            await outer.start(publisher.run)
            await app.execute(Open(account="a"))
            head = (await app.execute(Deposit(account="a", amount=1))).position
            with anyio.fail_after(20):
                await publisher.wait_published(head)
            async with replica(tmp_path / "old.db", nats_server) as (copy, follower):
                with anyio.fail_after(20):
                    error = await follower.wait_error()
                assert f"'Moved' at position {head} is schema version 2" in error, error  # named by decode_rows
                assert copy.position < head  # nothing of the newer event is applied or stored
            assert [row[3] for row in log_rows(tmp_path / "old.db")] in ([], ["Opened"])
            outer.cancel_scope.cancel()


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
