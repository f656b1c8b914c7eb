"""The committed v1 log (ProductAdded before ``currency``) served, replayed, digested and verified by today's code."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest

from soloist import App, UnknownSchemaVersion
from soloist._digest import replay_digest
from soloist.net import Client, Follower, Server
from soloist_shop.commands import AddProduct
from soloist_shop.queries import GetOrder, GetProduct, SalesSummary, SearchProducts, TopProducts
from soloist_shop.wiring import DOMAIN
from tests.e2e.processes import ROOT, SoloistProcess, _env, run_cli
from tests.fixtures.v1_history import FIXTURE, V1_HEAD, history, write_log

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@pytest.fixture(name="v1_log")
def _v1_log(tmp_path: Path) -> Path:
    """A copy of the committed v1 fixture log (serving it writes to it)."""
    copy = tmp_path / "shop_v1.db"
    shutil.copyfile(FIXTURE, copy)
    return copy


def _schemas(path: Path) -> dict[int, int]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT schema, count(*) FROM events WHERE type = 'ProductAdded' GROUP BY schema")
        return dict(rows.fetchall())


class TestTheV1Fixture:
    def test_the_fixture_holds_v1_events(self) -> None:
        """The committed file stores ProductAdded at schema 1, without currency (what v1 code wrote)."""
        assert _schemas(FIXTURE) == {1: 12}
        with sqlite3.connect(FIXTURE) as conn:
            (data,) = conn.execute("SELECT data FROM events WHERE position = 1").fetchone()
        assert "currency" not in orjson.loads(data)
        assert replay_digest(DOMAIN, FIXTURE).position == V1_HEAD

    async def test_served_and_queried_by_todays_code(self, v1_log: Path) -> None:
        """Old products read as v2 (currency EUR); new ones are written as v2 beside them; both replay alike."""
        async with App(DOMAIN, v1_log, replicas=2) as app:
            assert app.position == V1_HEAD
            product = (await app.query(GetProduct(sku="BK-003"), consistency="strong")).result
            assert isinstance(product, dict)
            assert product["price_cents"] == 4999
            found = (await app.query(SearchProducts(text="kettle"), consistency="strong")).result
            assert isinstance(found, dict)
            assert found["total"] == 1
            receipt = await app.execute(
                AddProduct(sku="NEW-1", name="Tea kettle", category="kitchen", price_cents=900, stock=1, description="")
            )
            answer = await app.digest(consistency="session", min_position=receipt.position)
            models: Any = app.router.replicas[0].models
            currencies = {p["currency"] for p in models.snapshot()["products"].values()}
            assert currencies == {"EUR"}
        assert _schemas(v1_log) == {1: 12, 2: 1}  # several versions in one log
        assert replay_digest(DOMAIN, v1_log) == answer
        async with App(DOMAIN, v1_log, replicas=2) as again:  # replay at start through the same decoder
            assert await again.digest(consistency="strong") == answer

    async def test_digest_equals_the_same_history_written_as_v2(self, v1_log: Path) -> None:
        """The v1 log and the same events written at v2 (ProductAdded with its currency) give one digest."""
        with sqlite3.connect(v1_log) as conn:
            conn.execute(
                "UPDATE events SET schema = 2, data = json_set(data, '$.currency', 'EUR') WHERE type = 'ProductAdded'"
            )
        assert _schemas(v1_log) == {2: 12}
        assert replay_digest(DOMAIN, v1_log) == replay_digest(DOMAIN, FIXTURE)

    async def test_todays_writer_gives_the_same_answers(self, tmp_path: Path) -> None:
        """The fixture is a log of soloist 0.1 (a StockReserved per order line); today's writer records the same
        commands as one event per order, and every query answers the same."""
        today = tmp_path / "shop_today.db"
        head = await anyio.to_thread.run_sync(lambda: write_log(today, v1=False))
        assert head < V1_HEAD  # fewer events: no StockReserved / StockReleased
        queries = [
            *(GetProduct(sku=command.sku) for command in history() if isinstance(command, AddProduct)),
            *(GetOrder(order_id=f"o-{n}") for n in (1, 2, 3)),
            SalesSummary(),
            TopProducts(),
        ]
        answers = []
        for path in (FIXTURE, today):
            copy = tmp_path / f"copy-{path.name}"
            shutil.copyfile(path, copy)
            async with App(DOMAIN, copy, replicas=1) as app:
                answers.append([app.query_nowait(query).result for query in queries])
        assert answers[0] == answers[1]

    async def test_an_unknown_newer_version_stops_the_reader(self, v1_log: Path) -> None:
        """A row of a schema newer than the code refuses to start the app (and verify) with the fix."""
        with sqlite3.connect(v1_log) as conn:
            conn.execute("UPDATE events SET schema = 3 WHERE position = 5")
        with pytest.raises(UnknownSchemaVersion, match=r"version 3.*up to version 2.*upgrade"):
            async with App(DOMAIN, v1_log, replicas=1):
                pass  # pragma: no cover - never reached
        with pytest.raises(UnknownSchemaVersion):
            replay_digest(DOMAIN, v1_log)

    async def test_verify_prints_the_replay_digest(self) -> None:
        """`soloist verify --db` replays the fixture offline and prints {digest, position} for its head."""
        code, out = await run_cli("verify", "--db", str(FIXTURE))
        assert code == 0, out
        assert orjson.loads(out) == replay_digest(DOMAIN, FIXTURE).to_wire()
        code, out = await run_cli("verify", "--db", str(FIXTURE), "--upto", "3")
        assert orjson.loads(out)["position"] == 3

    async def test_verify_of_a_missing_log_fails(self, tmp_path: Path) -> None:
        """No log at the path: exit code 1, nothing on stdout."""
        code, out = await run_cli("verify", "--db", str(tmp_path / "nope.db"))
        assert code == 1
        assert out == b""


class TestReplicasAgree:
    async def test_in_process_follower_stores_upcast_events(self, v1_log: Path, tmp_path: Path) -> None:
        """A follower of the v1 log receives events with their schema, stores them as v2, and digests alike."""
        async with App(DOMAIN, v1_log, replicas=2) as writer, anyio.create_task_group() as tg:
            server = await tg.start(Server(writer, port=0).serve)
            assert isinstance(server, Server)
            async with App(DOMAIN, tmp_path / "follower.db", replicas=2, follower_of=server.address) as follower:
                await tg.start(Follower(follower, server.address).run)
                expected = await writer.digest(consistency="strong")
                got = await follower.digest(consistency="session", min_position=expected.position)
                assert got == expected
            tg.cancel_scope.cancel()
        assert _schemas(tmp_path / "follower.db") == {2: 12}

    @pytest.mark.uvloop_only
    async def test_replica_processes_give_the_offline_digest(self, v1_log: Path, tmp_path: Path) -> None:
        """A writer process on the v1 log and a replica process answer the digest op with `soloist verify`'s."""
        expected = replay_digest(DOMAIN, v1_log).to_wire()
        async with _process(tmp_path / "writer.log", "serve", "--db", str(v1_log), "--no-seed") as writer:
            writer_port = await writer.wait_listening()
            async with _process(
                tmp_path / "replica.log",
                "replica",
                "--db",
                str(tmp_path / "replica.db"),
                "--upstream",
                f"127.0.0.1:{writer_port}",
            ) as replica:
                replica_port = await replica.wait_listening()
                for port, consistency in ((writer_port, "strong"), (replica_port, "strong")):
                    async with Client.connect("127.0.0.1", port) as client:
                        answer = await client.request({"id": 1, "op": "digest", "consistency": consistency})
                    assert answer["ok"] is True, answer
                    assert answer["result"] == expected
                    assert answer["position"] == V1_HEAD
                assert await replica.terminate() == 0
            assert await writer.terminate() == 0


@asynccontextmanager
async def _process(log: Path, *args: str) -> AsyncIterator[SoloistProcess]:
    """``python -m soloist.cli <args>`` with the shop domain on a free port; killed if still running."""
    with log.open("wb") as sink:
        process = await anyio.open_process(
            [sys.executable, "-m", "soloist.cli", *args, "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            env=_env(),
            cwd=ROOT,
        )
    try:
        yield SoloistProcess(process, log)
    finally:
        if process.returncode is None:
            process.kill()
            with anyio.move_on_after(10, shield=True):
                await process.wait()
        await process.aclose()
