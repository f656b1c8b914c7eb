"""Real processes: ``soloist serve --nats`` and ``soloist replica --nats`` against a real nats-server."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import anyio
import pytest

from soloist.net import Client
from soloist.net._jetstream import default_stream_name
from tests.e2e.processes import ROOT, _env, soloist
from tests.jetstream.harness import log_rows
from tests.observe.test_metrics import value
from tests.observe.test_processes import http_port, metrics
from tests.toy import BANK

if TYPE_CHECKING:
    from pathlib import Path

    from tests.e2e.processes import SoloistProcess
    from tests.jetstream.harness import NatsServer

pytestmark = pytest.mark.uvloop_only


async def session_balance(replica: SoloistProcess, account: str, position: int) -> object:
    """A session read at a replica: waits (bounded) until it has applied ``position``."""
    async with Client.connect("127.0.0.1", replica.port) as client:
        answer = await client.query(
            "Balance", {"account": account}, consistency="session", min_position=position, timeout_ms=20_000
        )
        assert answer.position >= position
        return answer.result


async def published(client: Client, position: int) -> dict[str, object]:
    """The writer's ``stats`` once its publisher reports ``position`` in the stream (polled, bounded)."""
    with anyio.fail_after(20):
        while True:
            stats = (await client.stats())["publisher"]
            assert isinstance(stats, dict)
            if stats["published_position"] == position:
                return stats
            await anyio.sleep(0.02)  # another process's publisher: polled, bounded by fail_after


class TestProcesses:
    async def test_two_replicas_read_every_acknowledged_command(self, tmp_path: Path, nats_server: NatsServer) -> None:
        """Writer + two JetStream replica processes: a session read at each sees each acknowledged command."""
        nats = ("--nats", nats_server.url)
        async with soloist(tmp_path / "w.log", "serve", "--db", str(tmp_path / "w.db"), *nats) as w:
            upstream = ("--upstream", w.address)
            async with (
                soloist(tmp_path / "r1.log", "replica", "--db", str(tmp_path / "r1.db"), *nats, *upstream) as r1,
                soloist(tmp_path / "r2.log", "replica", "--db", str(tmp_path / "r2.db"), *nats) as r2,
                Client.connect("127.0.0.1", w.port) as client,
            ):
                await client.command("Open", {"account": "a"})
                for expected in range(1, 21):
                    receipt = await client.command("Deposit", {"account": "a", "amount": 1})
                    position = receipt["position"]
                    assert isinstance(position, int)
                    assert await session_balance(r1, "a", position) == expected
                    assert await session_balance(r2, "a", position) == expected

    async def test_nats_killed_during_load(self, tmp_path: Path, nats_server: NatsServer) -> None:
        """NATS killed mid-load and restarted: acknowledgements never stop; replicas match the writer exactly."""
        nats = ("--nats", nats_server.url)
        async with soloist(tmp_path / "w.log", "serve", "--db", str(tmp_path / "w.db"), *nats) as w:
            upstream = ("--upstream", w.address)
            r1_db, r2_db = tmp_path / "r1.db", tmp_path / "r2.db"
            async with (
                soloist(tmp_path / "r1.log", "replica", "--db", str(r1_db), *nats, *upstream) as r1,
                soloist(tmp_path / "r2.log", "replica", "--db", str(r2_db), *nats, *upstream) as r2,
                Client.connect("127.0.0.1", w.port) as client,
            ):
                account = 0

                async def load(count: int) -> int:
                    nonlocal account
                    position = 0
                    for _ in range(count):
                        account += 1
                        receipt = await client.command("Open", {"account": f"acc-{account}"})
                        assert isinstance(receipt["position"], int)
                        position = receipt["position"]
                    return position

                before = await load(100)
                assert await session_balance(r1, "acc-1", before) == 0
                await nats_server.kill()
                during = await load(300)  # every one acknowledged while the broker is dead
                assert during == before + 300
                await nats_server.start()
                head = await load(100)
                assert await session_balance(r1, f"acc-{account}", head) == 0
                assert await session_balance(r2, f"acc-{account}", head) == 0
                assert await r1.terminate() == 0
                assert await r2.terminate() == 0
            assert await w.terminate() == 0
        expected = log_rows(tmp_path / "w.db")
        assert len(expected) == head
        assert log_rows(r1_db) == expected
        assert log_rows(r2_db) == expected

    async def test_replica_kill_9_and_restart(self, tmp_path: Path, nats_server: NatsServer) -> None:
        """A replica killed with SIGKILL and started again on its own db resumes exactly where it was."""
        nats = ("--nats", nats_server.url)
        replica_db = str(tmp_path / "r.db")
        async with (
            soloist(tmp_path / "w.log", "serve", "--db", str(tmp_path / "w.db"), *nats) as w,
            Client.connect("127.0.0.1", w.port) as client,
        ):
            await client.command("Open", {"account": "a"})
            async with soloist(tmp_path / "r.log", "replica", "--db", replica_db, *nats) as r:
                for _ in range(30):
                    receipt = await client.command("Deposit", {"account": "a", "amount": 1})
                position = receipt["position"]
                assert isinstance(position, int)
                assert await session_balance(r, "a", position) == 30
                r.process.kill()
                with anyio.fail_after(10):
                    await r.process.wait()
            for _ in range(20):
                receipt = await client.command("Deposit", {"account": "a", "amount": 1})
            position = receipt["position"]
            assert isinstance(position, int)
            async with soloist(tmp_path / "r2.log", "replica", "--db", replica_db, *nats) as r:
                assert await session_balance(r, "a", position) == 50
                assert await r.terminate() == 0
            assert await w.terminate() == 0
        assert log_rows(tmp_path / "r.db") == log_rows(tmp_path / "w.db")

    async def test_replica_refuses_another_logs_stream(self, tmp_path: Path, nats_server: NatsServer) -> None:
        """A replica of log A pointed at the stream of log B exits 1 with a message naming both logs."""
        nats = ("--nats", nats_server.url)
        replica_db = str(tmp_path / "r.db")
        async with (
            soloist(tmp_path / "a.log", "serve", "--db", str(tmp_path / "a.db"), *nats, "--nats-stream", "A") as a,
            soloist(tmp_path / "b.log", "serve", "--db", str(tmp_path / "b.db"), *nats, "--nats-stream", "B") as b,
        ):
            for writer in (a, b):
                async with Client.connect("127.0.0.1", writer.port) as client:
                    await client.command("Open", {"account": "x"})
            async with soloist(tmp_path / "r.log", "replica", "--db", replica_db, *nats, "--nats-stream", "A") as r:
                assert await session_balance(r, "x", 1) == 0
                assert await r.terminate() == 0
            with anyio.fail_after(60):
                command = [sys.executable, "-m", "soloist.cli", "replica", "--domain", "tests.toy:BANK", "--port", "0"]
                result = await anyio.run_process(
                    [*command, "--db", replica_db, *nats, "--nats-stream", "B"],
                    stdin=subprocess.DEVNULL,
                    check=False,
                    env=_env(),
                    cwd=ROOT,
                )
        assert result.returncode == 1
        stderr = result.stderr.decode()
        assert "wrong_log" in stderr
        assert "JetStream stream 'B' carries log" in stderr


class TestObservability:
    async def test_publisher_and_follower_in_stats_and_metrics(self, tmp_path: Path, nats_server: NatsServer) -> None:
        """The writer's stats op and /metrics show its publisher's position moving; the replica serves /metrics."""
        nats, http = ("--nats", nats_server.url), ("--http-port", "0")
        stream = default_stream_name(BANK.name)
        async with (
            soloist(tmp_path / "w.log", "serve", "--db", str(tmp_path / "w.db"), *nats, *http) as w,
            soloist(tmp_path / "r.log", "replica", "--db", str(tmp_path / "r.db"), *nats, *http) as r,
            Client.connect("127.0.0.1", w.port) as client,
        ):
            writer_http, replica_http = await http_port(w), await http_port(r)
            assert (await published(client, 0))["stream"] == stream
            assert value(await metrics(writer_http), "soloist_jetstream_published_position", stream=stream) == 0
            await client.command("Open", {"account": "a"})
            for _ in range(4):
                receipt = await client.command("Deposit", {"account": "a", "amount": 1})
            head = receipt["position"]
            assert head == 5
            stats = await published(client, head)
            assert (stats["lag_events"], stats["connected"], stats["events"]) == (0, True, head)
            scraped = await metrics(writer_http)
            assert value(scraped, "soloist_jetstream_published_position", stream=stream) == head
            assert value(scraped, "soloist_jetstream_lag_events", stream=stream) == 0
            assert value(scraped, "soloist_jetstream_connected", stream=stream) == 1
            assert value(scraped, "soloist_jetstream_events_total", stream=stream) == head
            assert await session_balance(r, "a", head) == 4
            followed = await metrics(replica_http)  # labelled with the NATS URL: this replica has no --upstream
            assert value(followed, "soloist_info", role="follower") == 1
            assert value(followed, "soloist_position") == head
            assert value(followed, "soloist_follower_upstream_position", upstream=nats_server.url) == head
            assert value(followed, "soloist_follower_lag_events", upstream=nats_server.url) == 0
            assert value(followed, "soloist_follower_events_total", upstream=nats_server.url) == head
            assert b"soloist_jetstream_" not in followed
            assert await r.terminate() == 0
            assert await w.terminate() == 0
