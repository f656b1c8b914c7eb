"""End to end with real processes: `soloist serve`, `soloist replica`, `soloist send/stats`, SIGTERM, restarts."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
import pytest

from soloist import ConnectionLost, NotWriter
from soloist.net import Client
from tests.e2e.processes import run_cli, soloist

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.uvloop_only


def events_named(lines: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    return [line for line in lines if line.get("event") == name]


class TestServe:
    async def test_serve_send_stats_and_stop(self, tmp_path: Path) -> None:
        """A served writer takes commands and queries over TCP, answers the CLI, and stops cleanly on SIGTERM."""
        async with soloist(tmp_path / "writer.log", "serve", "--db", str(tmp_path / "w.db")) as writer:
            async with Client.connect("127.0.0.1", writer.port) as client:
                await client.command("Open", {"account": "a"})
                receipt = await client.command("Deposit", {"account": "a", "amount": 12})
                answer = await client.query("Balance", {"account": "a"}, consistency="session", min_position=2)
                assert (answer.result, answer.position, receipt["position"]) == (12, 2, 2)
            port = str(writer.port)
            code, out = await run_cli("send", "--port", port, '{"id": 7, "op": "query", "type": "Total"}')
            assert code == 0
            assert orjson.loads(out) == {"id": 7, "ok": True, "result": 12, "position": 2}
            code, out = await run_cli(
                "send", "--port", port, stdin=b'{"op": "query", "type": "Balance", "data": {"account": "zz"}}'
            )
            assert code == 1
            assert orjson.loads(out)["error"]["code"] == "not_found"
            code, out = await run_cli("stats", "--port", port)
            assert code == 0
            assert orjson.loads(out)["position"] == 2
            assert await writer.terminate() == 0
            lines = writer.lines()
            assert events_named(lines, "signal_received")[0]["signal"] == "SIGTERM"
            assert events_named(lines, "app_stopped")[0]["position"] == 2
            tuned = events_named(lines, "process_tuned")[0]  # the CLI owns its process and tunes it
            assert tuned["switch_interval"] == pytest.approx(0.0001)
            assert isinstance(tuned["gc_frozen"], int)
            assert tuned["gc_frozen"] > 0

    async def test_subscription_continues_across_a_restart(self, tmp_path: Path) -> None:
        """A subscription from the middle, resumed after the writer restarts on the same log, has no gaps."""
        db = str(tmp_path / "w.db")
        received: list[int] = []
        async with (
            soloist(tmp_path / "first.log", "serve", "--db", db) as writer,
            Client.connect("127.0.0.1", writer.port) as client,
        ):
            for i in range(5):
                await client.command("Open", {"account": f"a{i}"})
            async with client.subscribe(2) as events:
                received += [int(str((await events.receive())["position"])) for _ in range(3)]
                assert await writer.terminate() == 0
                with pytest.raises(ConnectionLost):
                    await events.receive()
                last = events.position
        async with soloist(tmp_path / "second.log", "serve", "--db", db) as writer:
            async with Client.connect("127.0.0.1", writer.port) as client:
                await client.command("Open", {"account": "b0"})
                await client.command("Open", {"account": "b1"})
                async with client.subscribe(last) as events:
                    received += [int(str((await events.receive())["position"])) for _ in range(2)]
            assert await writer.terminate() == 0
        assert received == [3, 4, 5, 6, 7]

    async def test_token_and_cli_errors(self, tmp_path: Path) -> None:
        """With --token the CLI must authenticate; bad input exits 2, an unreachable server exits 1."""
        async with soloist(
            tmp_path / "writer.log", "serve", "--db", str(tmp_path / "w.db"), "--token", "t0k"
        ) as writer:
            port = str(writer.port)
            code, out = await run_cli("send", "--port", port, "--token", "t0k", '{"op": "ping"}')
            assert code == 0
            assert orjson.loads(out)["result"] == "pong"
            code, out = await run_cli("send", "--port", port, '{"op": "ping"}')
            assert code == 1
            assert orjson.loads(out)["error"]["code"] == "unauthorized"
            code, _ = await run_cli("send", "--port", port, "--token", "t0k", "not json")
            assert code == 2
            assert await writer.terminate() == 0
        code, _ = await run_cli("send", "--port", port, '{"op": "ping"}')
        assert code == 1


class TestReplica:
    async def test_replica_follows_and_refuses_commands(self, tmp_path: Path) -> None:
        """A replica process converges with the writer (strong reads see its writes) and refuses commands."""
        async with (
            soloist(tmp_path / "writer.log", "serve", "--db", str(tmp_path / "w.db")) as writer,
            soloist(
                tmp_path / "replica.log", "replica", "--upstream", writer.address, "--db", str(tmp_path / "r.db")
            ) as replica,
            Client.connect("127.0.0.1", writer.port) as w,
            Client.connect("127.0.0.1", replica.port) as r,
        ):
            await w.command("Open", {"account": "a"})
            await w.command("Open", {"account": "b"})
            await w.command("Deposit", {"account": "a", "amount": 20})
            await w.command("Transfer", {"source": "a", "target": "b", "amount": 5}, idempotency_key="t")
            for _ in range(3):
                receipt = await w.command("Deposit", {"account": "a", "amount": 5})
            answer = await r.query("Balance", {"account": "a"}, consistency="strong")
            assert (answer.result, answer.position) == (30, receipt["position"])
            total = await r.query("Total", consistency="session", min_position=int(str(receipt["position"])))
            assert total.result == 35
            with pytest.raises(NotWriter, match=writer.address):
                await r.command("Open", {"account": "c"})
            stats = await r.stats()
            assert stats["role"] == "follower"
            assert stats["position"] == receipt["position"]
            assert await replica.terminate() == 0
            assert await writer.terminate() == 0
