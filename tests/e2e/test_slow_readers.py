"""Slow and dead readers do not stop the writer, and nothing is lost (real processes, real sockets).

- a subscriber that stops reading (its socket's receive buffer is tiny and never read) and a subscriber
  that disconnects mid-stream, while clients send ~10 MB of events: every command is acknowledged, and
  afterwards the stalled subscriber (reading again) and a fresh one get every position, once, in order;
- a ``soloist replica`` process killed with SIGKILL while commands flow, and restarted on its file:
  commands go on being acknowledged while it is down, and it catches up to the writer's head with the
  same answers.

No timing assertions: progress is checked by counts, waits are bounded with ``fail_after``.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import orjson
import pytest

from soloist.net import Client
from tests.e2e.processes import soloist

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.uvloop_only

WORKERS = 8
PER_WORKER = 250
PAD = "x" * 5000  # ~5 KB events: 2,000 of them (10 MB) overflow every buffer between the server and a stalled reader


def _stalled_subscriber(port: int) -> socket.socket:
    """A subscription whose socket is never read (a 4 KiB receive buffer, set before connecting)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b'{"id": "s", "op": "subscribe"}\n')
    return sock


def _read_positions(sock: socket.socket, head: int) -> list[int]:
    """Read a subscription's lines (blocking, with a timeout per read) until position ``head``; its positions."""
    sock.settimeout(30)
    positions: list[int] = []
    buffer = b""
    while not positions or positions[-1] < head:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise AssertionError(f"the server closed the subscription after position {positions[-1:]}")
        *lines, buffer = (buffer + chunk).split(b"\n")
        for line in lines:
            message = orjson.loads(line) if line else {}
            if "event" in message:
                positions.append(message["event"]["position"])
            elif message:
                assert message["ok"], message  # the subscribe acknowledgement
    return positions


async def _send_commands(port: int, prefix: str, workers: int, per_worker: int) -> list[int]:
    """``workers`` clients each opening ``per_worker`` padded accounts, keyed; every receipt's position."""
    positions: list[int] = []

    async def work(w: int) -> None:
        async with Client.connect("127.0.0.1", port) as client:
            for i in range(per_worker):
                key = f"{prefix}-{w}-{i}"
                receipt = await client.command("Open", {"account": key + PAD}, idempotency_key=key)
                assert receipt["duplicate"] is False
                positions.append(int(str(receipt["position"])))

    async with anyio.create_task_group() as tg:
        for w in range(workers):
            tg.start_soon(work, w)
    return positions


class TestSlowSubscribers:
    async def test_stalled_and_vanished_subscribers_do_not_stop_the_writer(self, tmp_path: Path) -> None:
        """A never-read and a mid-stream-closed subscription: every command acknowledged, every event delivered."""
        async with soloist(tmp_path / "writer.log", "serve", "--db", str(tmp_path / "w.db")) as writer:
            stalled = _stalled_subscriber(writer.port)
            try:
                async with await anyio.connect_tcp("127.0.0.1", writer.port) as vanishing:
                    await vanishing.send(b'{"id": "v", "op": "subscribe"}\n')
                    with anyio.fail_after(60):
                        positions = await _send_commands(writer.port, "a", WORKERS // 2, PER_WORKER)
                        first = await vanishing.receive()  # it read a little, then it goes away mid-stream
                        assert first
                with anyio.fail_after(120):
                    positions += await _send_commands(writer.port, "b", WORKERS // 2, PER_WORKER)
                head = WORKERS * PER_WORKER
                assert sorted(positions) == list(range(1, head + 1))  # every command acknowledged, once
                async with Client.connect("127.0.0.1", writer.port) as client:
                    stats = await client.stats()
                    assert stats["position"] == head
                    assert (await client.query("Total", consistency="strong")).position == head
                with anyio.fail_after(60):  # the stalled reader reads again: every position, once, in order
                    late = await anyio.to_thread.run_sync(_read_positions, stalled, head)
                assert late == list(range(1, head + 1))
            finally:
                stalled.close()
            async with Client.connect("127.0.0.1", writer.port) as client, client.subscribe() as stream:
                fresh: list[int] = []
                with anyio.fail_after(60):
                    while len(fresh) < head:
                        fresh += [int(str(event["position"])) for event in await stream.receive_many()]
            assert fresh == list(range(1, head + 1))
            assert await writer.terminate() == 0


class TestReplicaKilled:
    async def test_replica_killed_and_restarted_catches_up(self, tmp_path: Path) -> None:
        """Commands are acknowledged while the replica is dead; restarted on its file, it reaches the same state."""
        replica_db = str(tmp_path / "r.db")
        async with soloist(tmp_path / "writer.log", "serve", "--db", str(tmp_path / "w.db")) as writer:
            replica_args = ("replica", "--upstream", writer.address, "--db", replica_db)
            async with soloist(tmp_path / "replica1.log", *replica_args) as replica:
                before: list[int] = []
                killed = anyio.Event()

                async def kill_when_busy() -> None:
                    async with Client.connect("127.0.0.1", replica.port) as r:
                        with anyio.fail_after(60):  # the replica followed part of the stream (answers at 200)
                            await r.query("Total", consistency="session", min_position=200, timeout_ms=60_000)
                    replica.process.kill()  # SIGKILL while commands are flowing
                    await replica.process.wait()
                    killed.set()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(kill_when_busy)
                    with anyio.fail_after(120):
                        before = await _send_commands(writer.port, "a", WORKERS, PER_WORKER // 2)
                with anyio.fail_after(10):
                    await killed.wait()
            assert replica.process.returncode == -9
            with anyio.fail_after(120):  # the writer goes on while the replica is dead
                during = await _send_commands(writer.port, "b", WORKERS, PER_WORKER // 2)
            head = len(before) + len(during)
            assert sorted(before + during) == list(range(1, head + 1))
            async with (
                soloist(tmp_path / "replica2.log", *replica_args) as replica,
                Client.connect("127.0.0.1", replica.port) as r,
                Client.connect("127.0.0.1", writer.port) as w,
            ):
                with anyio.fail_after(60):  # it answers once it caught up to the head (a wait inside the replica)
                    await r.query("Total", consistency="session", min_position=head, timeout_ms=60_000)
                assert await r.ping() == head
                for query, data in (("Total", None), ("Balance", {"account": "a-0-0" + PAD})):
                    on_replica = await r.query(query, data, consistency="session", min_position=head)
                    on_writer = await w.query(query, data, consistency="strong")
                    assert (on_replica.result, on_replica.position) == (on_writer.result, on_writer.position)
                r_stats, w_stats = await r.stats(), await w.stats()
                assert r_stats["position"] == w_stats["position"] == head
                assert await replica.terminate() == 0
            assert await writer.terminate() == 0
