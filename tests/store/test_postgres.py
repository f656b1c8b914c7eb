"""The contract against the PostgreSQL adapter, plus what only it has: the lease that fences writers."""

from __future__ import annotations

import functools

import anyio
import asyncpg
import pytest
from structlog.testing import capture_logs

from soloist import LogCorrupted, PersistenceError, ReadOnlyStorage
from soloist._errors import Fenced
from soloist._postgres import PostgresStore
from soloist._store import EventStore, Forget, Lease
from tests.store.contract import EVENTS, RefusesVersionClashes, rows

TTL = 0.5  # seconds; the fencing tests wait for a lease to expire (time is the behaviour there)


async def wait_until_expired(store: PostgresStore) -> None:
    """Sleep past this store's lease TTL: the lease must expire on the server's clock."""
    await anyio.sleep(TTL + 0.2)


class TestPostgresStore(RefusesVersionClashes):
    @pytest.fixture(autouse=True)
    def _storage(self, postgres_dsn: str) -> None:
        self.dsn = postgres_dsn

    def make_store(self) -> PostgresStore:
        return PostgresStore(self.dsn, EVENTS)

    async def become_writer(self, store: EventStore) -> None:
        assert isinstance(store, PostgresStore)
        assert await store.acquire_lease("contract", 30) is not None

    async def test_is_a_lease(self) -> None:
        """The PostgreSQL store implements the Lease protocol; the others do not need to."""
        assert isinstance(self.make_store(), Lease)

    async def test_lease_holder_names_the_holder_until_released(self) -> None:
        async with self.make_store() as store, self.make_store() as other:
            assert await other.lease_holder() == ""
            await store.acquire_lease("writer-a", 30)
            assert await other.lease_holder() == "writer-a"
            await store.release_lease()
            assert await other.lease_holder() == ""

    async def test_append_without_a_lease_is_fenced(self) -> None:
        """A store that never took the lease cannot append, and says how to fix it."""
        async with self.make_store() as store:
            with pytest.raises(Fenced, match="wait_for_lease"):
                await store.append(rows(1, 1))
            assert await store.head() == 0

    async def test_takeover_fences_the_old_writer(self) -> None:
        """A's lease expires, B takes it (epoch + 1): A's append raises Fenced naming B and appends nothing."""
        async with self.make_store() as a, self.make_store() as b:
            epoch = await a.acquire_lease("writer-a", TTL)
            assert epoch is not None
            await a.append(rows(1, 2))
            assert await b.acquire_lease("writer-b", 30) is None  # A's lease is live
            await wait_until_expired(a)
            assert await b.acquire_lease("writer-b", 30) == epoch + 1
            with pytest.raises(Fenced, match="writer-b") as caught:
                await a.append(rows(3, 1), [("k", "fp", 3, "c", 1.0)])
            assert (caught.value.epoch, caught.value.holder, caught.value.code) == (epoch + 1, "writer-b", "fenced")
            assert await a.acquire_lease("writer-a", TTL) is None  # B holds it
            with pytest.raises(Fenced):
                await a.renew_lease()
            assert await b.head() == 2
            assert await b.keys() == {}
            await b.append(rows(3, 1))  # the new writer goes on from the log
            assert await a.head() == 3

    async def test_paused_writer_can_never_append_again(self) -> None:
        """A writer paused past its TTL is fenced even if nobody took over, and stays fenced under that epoch."""
        async with self.make_store() as a:
            assert await a.acquire_lease("writer-a", TTL) is not None
            await a.append(rows(1, 1))
            await wait_until_expired(a)  # "paused": the connection stays open, the lease lapses
            for _ in range(2):
                with pytest.raises(Fenced, match="expired"):
                    await a.append(rows(2, 1))
            with pytest.raises(Fenced):
                await a.renew_lease()
            assert await a.head() == 1

    async def test_appends_renew_the_lease(self) -> None:
        """Each append pushes the expiry ahead, so a writer that keeps appending keeps its lease."""
        async with self.make_store() as a, self.make_store() as b:
            assert await a.acquire_lease("writer-a", TTL) is not None
            for i in range(1, 5):
                await anyio.sleep(TTL / 2)
                await a.append(rows(i, 1))
                assert await b.acquire_lease("writer-b", 30) is None
            await a.renew_lease()
            assert await b.acquire_lease("writer-b", 30) is None

    async def test_keep_lease_holds_it_while_idle(self) -> None:
        """keep_lease renews an idle writer's lease, so no one else can take it until it stops."""
        async with self.make_store() as a, self.make_store() as b:
            assert await a.acquire_lease("writer-a", TTL) is not None
            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(a.keep_lease, every=TTL / 5))
                await anyio.sleep(TTL * 2)  # time is the behaviour: longer than the TTL
                assert await b.acquire_lease("writer-b", 30) is None
                tg.cancel_scope.cancel()
            await a.append(rows(1, 1))

    async def test_release_hands_over_at_once(self) -> None:
        """A released (or closed) writer's lease is free: the next one takes it without waiting for the TTL."""
        async with self.make_store() as b:
            async with self.make_store() as a:
                first = await a.acquire_lease("writer-a", 30)
                assert first is not None
            assert await b.acquire_lease("writer-b", 30) == first + 1

    async def test_wait_for_lease_waits_for_expiry(self) -> None:
        """wait_for_lease returns once the holder's lease has expired, with the next epoch."""
        async with self.make_store() as a, self.make_store() as b:
            first = await a.acquire_lease("writer-a", TTL)
            assert first is not None
            with anyio.fail_after(10), capture_logs() as logs:
                assert await b.wait_for_lease("writer-b", 30, poll=0.1) == first + 1
            waits = [e for e in logs if e["event"] == "lease_wait"]
            assert len(waits) == 1  # said once that it waits, and for whom
            assert (waits[0]["holder"], waits[0]["current_holder"]) == ("writer-b", "writer-a")
            with pytest.raises(Fenced):
                await a.append(rows(1, 1))

    async def test_killed_connection_never_leaks_and_stays_fenced(self) -> None:
        """A's backend is killed, its lease expires and B takes over: A only ever gets PersistenceError/Fenced."""
        async with self.make_store() as a, self.make_store() as b:
            assert await a.acquire_lease("writer-a", TTL) is not None
            admin = await asyncpg.connect(self.dsn)
            try:
                killed = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = '' "
                    "AND query LIKE '%lease%'"
                )
            finally:
                await admin.close()
            assert killed >= 1
            await wait_until_expired(a)
            assert await b.acquire_lease("writer-b", 30) is not None
            with pytest.raises(PersistenceError):
                await a.append(rows(1, 1))
            with pytest.raises(Fenced):  # reconnected, and fenced
                await a.append(rows(1, 1))
            assert await b.head() == 0

    async def test_read_only_database_is_read_only_storage(self) -> None:
        """A database that refuses writes (as a hot standby does) gives ReadOnlyStorage, not a driver error."""
        async with self.make_store():
            pass  # the log exists
        admin = await asyncpg.connect(self.dsn)
        try:
            database = self.dsn.rsplit("/", 1)[1]
            await admin.execute(f"ALTER DATABASE {database} SET default_transaction_read_only = on")
        finally:
            await admin.close()
        async with self.make_store() as store:
            with pytest.raises(ReadOnlyStorage, match="primary"):
                await store.acquire_lease("writer-a", 30)
            assert await store.head() == 0

    async def test_old_keys_table_is_rebuilt_in_position_order(self) -> None:
        """A log whose keys table is keyed by the key (before keys expired) is rebuilt by the writer's open: in
        position order, each key with the upgrade's time (it lives one more whole key_ttl); then it is the
        append-only table (the oldest are forgotten first, new keys store their own time)."""
        async with self.make_store() as store:
            await self.become_writer(store)
            await store.append(rows(1, 1))
        admin = await asyncpg.connect(self.dsn)
        try:
            await admin.execute(
                "DROP TABLE soloist.keys; CREATE TABLE soloist.keys (key text PRIMARY KEY, fingerprint text NOT NULL,"
                " position bigint NOT NULL, command_id text NOT NULL);"
                "INSERT INTO soloist.keys VALUES ('z', 'fp', 1, 'c1'), ('a', 'fp', 2, 'c2'), ('m', 'fp', 1, 'c0')"
            )
            before = await admin.fetchval("SELECT extract(epoch FROM now())::float8")
        finally:
            await admin.close()
        async with self.make_store() as store:
            await self.become_writer(store)
            keys = await store.keys()
            assert [(k, v.command_id) for k, v in keys.items()] == [("m", "c0"), ("z", "c1"), ("a", "c2")]
            assert all(v.recorded_at >= before for v in keys.values())
            await store.append(rows(2, 1), [("new", "fp", 2, "c3", 7.0)], Forget(2, before + 3600))
            after = {k: v.recorded_at for k, v in (await store.keys()).items()}
            assert after == {"a": keys["a"].recorded_at, "new": 7.0}

    async def test_two_stores_create_one_log(self) -> None:
        """Two stores opening a new database at once create the schema once and agree on the log id."""
        a, b = self.make_store(), self.make_store()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.open)
                tg.start_soon(b.open)
            assert a.log_id == b.log_id != ""
        finally:
            await a.aclose()
            await b.aclose()

    async def test_refuses_a_schema_that_is_not_a_log(self) -> None:
        """Tables that are not a soloist log are refused, naming them and the fix; nothing is created."""
        admin = await asyncpg.connect(self.dsn)
        try:
            await admin.execute("CREATE SCHEMA soloist; CREATE TABLE soloist.orders (id int)")
        finally:
            await admin.close()
        with pytest.raises(LogCorrupted, match=r"orders.*another schema="):
            async with self.make_store():
                pass

    async def test_schemas_are_separate_logs(self) -> None:
        """Two schemas in one database are two logs with their own ids and positions (even one named like a keyword)."""
        async with (
            PostgresStore(self.dsn, EVENTS, schema="one") as one,
            PostgresStore(self.dsn, EVENTS, schema="select") as two,
        ):
            assert one.log_id != two.log_id
            assert await one.acquire_lease("w", 30) is not None
            await one.append(rows(1, 3))
            assert await two.head() == 0

    async def test_unreachable_server_is_a_persistence_error(self) -> None:
        """Connection refused becomes PersistenceError naming host and port and how to fix it."""
        with pytest.raises(PersistenceError, match=r"127\.0\.0\.1:1/x.*start the server"):
            async with PostgresStore("postgresql://postgres@127.0.0.1:1/x", EVENTS, connect_timeout=5):
                pass

    async def test_missing_database_is_a_persistence_error(self) -> None:
        """A database that does not exist becomes PersistenceError saying to create it."""
        dsn = self.dsn.rsplit("/", 1)[0] + "/soloist_no_such_db"
        with pytest.raises(PersistenceError, match="create the database"):
            async with PostgresStore(dsn, EVENTS):
                pass
