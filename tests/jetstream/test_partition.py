"""A real partition: the replica process in its own network namespace, cut from NATS and the writer, then healed.

Slow (``-m slow``) and needs root (``ip netns``, veth): the writer and nats-server run in the test's namespace,
the replica in a fresh one joined by a veth pair; the partition is ``ip link set <host end> down``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING

import anyio
import pytest

from soloist.net import Client
from tests.e2e.processes import ROOT, SoloistProcess, _env, soloist
from tests.jetstream.harness import NATS_SERVER, log_rows, need_nats_server, wait_log_line

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [pytest.mark.slow, pytest.mark.uvloop_only]

HOST_IP, NS_IP = "10.231.7.1", "10.231.7.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextmanager
def namespace() -> Iterator[tuple[str, str]]:
    """A network namespace joined to this one by a veth pair (HOST_IP here, NS_IP there); its name and host end."""
    if os.geteuid() != 0:
        pytest.skip("a real partition needs root (ip netns, veth)")
    tag = secrets.token_hex(3)
    name, host_end, ns_end = f"soloist-{tag}", f"vsh{tag}", f"vsn{tag}"
    try:
        _ip("netns", "add", name)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"ip netns add failed here: {exc}")
    try:
        _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        _ip("link", "set", ns_end, "netns", name)
        _ip("addr", "add", f"{HOST_IP}/30", "dev", host_end)
        _ip("link", "set", host_end, "up")
        _ip("netns", "exec", name, "ip", "addr", "add", f"{NS_IP}/30", "dev", ns_end)
        _ip("netns", "exec", name, "ip", "link", "set", ns_end, "up")
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name, host_end
    finally:
        subprocess.run(["ip", "link", "del", host_end], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


async def balance_at(port: int, position: int, within: float) -> object:
    async with Client.connect(NS_IP, port) as client:
        answer = await client.query(
            "Balance", {"account": "a"}, consistency="session", min_position=position, timeout_ms=within * 1000
        )
        return answer.result


class TestPartition:
    async def test_replica_cut_off_and_healed(self, tmp_path: Path) -> None:
        """Cut from NATS and the writer while the writer commits, the replica converges exactly once healed."""
        need_nats_server()
        with namespace() as (ns, host_end), (tmp_path / "nats.log").open("wb") as nats_log:
            nats_port = 14222 + secrets.randbelow(1000)
            nats = await anyio.open_process(
                [NATS_SERVER, "-a", "0.0.0.0", "-p", str(nats_port), "-js", "-sd", str(tmp_path / "store")],
                stdout=nats_log,
                stderr=nats_log,
            )
            try:
                url = f"nats://{HOST_IP}:{nats_port}"
                async with soloist(
                    tmp_path / "w.log", "serve", "--db", str(tmp_path / "w.db"), "--host", "0.0.0.0", "--nats", url
                ) as w:
                    replica_port = 7500 + secrets.randbelow(1000)
                    argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "soloist.cli", "replica"]
                    argv += ["--domain", "tests.toy:BANK", "--db", str(tmp_path / "r.db"), "--host", NS_IP]
                    argv += ["--port", str(replica_port), "--nats", url, "--upstream", f"{HOST_IP}:{w.port}"]
                    with (tmp_path / "r.log").open("wb") as sink:
                        replica = await anyio.open_process(
                            argv,
                            stdout=sink,
                            stderr=sink,
                            env=_env(),
                            cwd=ROOT,
                        )
                    try:
                        async with Client.connect("127.0.0.1", w.port) as client:
                            await client.command("Open", {"account": "a"})
                            for _ in range(50):
                                receipt = await client.command("Deposit", {"account": "a", "amount": 1})
                            position = receipt["position"]
                            assert isinstance(position, int)
                            await SoloistProcess(replica, tmp_path / "r.log").wait_listening(within=60)
                            assert await balance_at(replica_port, position, 30) == 50
                            _ip("link", "set", host_end, "down")  # the partition
                            for _ in range(200):
                                receipt = await client.command("Deposit", {"account": "a", "amount": 1})
                            # the replica notices: its idle PING to NATS goes unanswered
                            await wait_log_line(tmp_path / "r.log", b"jetstream_follower_interrupted", 30)
                            _ip("link", "set", host_end, "up")
                            head = receipt["position"]
                            assert isinstance(head, int)
                            assert await balance_at(replica_port, head, 90) == 250
                    finally:
                        replica.terminate()
                        with anyio.fail_after(20):
                            await replica.wait()
                    assert await w.terminate() == 0
            finally:
                nats.kill()
                await nats.wait()
        assert log_rows(tmp_path / "r.db") == log_rows(tmp_path / "w.db")
