"""A real partition: nats-server and the replica process each in a network namespace of their own, the link
between them cut while the writer commits, then healed.

Needs root (``ip netns``, veth; skipped with the reason otherwise, about 8 s). Three veth pairs, each its own
/30: the test's namespace (the writer, and the test's client) to NATS, NATS to the replica, and the test's
namespace to the replica (queries, ``--upstream``). The partition is ``ip link set <NATS's end> down`` on the
NATS-replica pair: the replica loses NATS and nothing else.
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

pytestmark = pytest.mark.uvloop_only

# (address here, address there) of each veth pair: test <-> NATS, NATS <-> replica, test <-> replica
TO_NATS, NATS_REPLICA, TO_REPLICA = (
    ("10.231.7.1", "10.231.7.2"),
    ("10.231.7.5", "10.231.7.6"),
    ("10.231.7.9", "10.231.7.10"),
)
NS_IP = TO_REPLICA[1]  # where the test reaches the replica


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _veth(end: str, ns: str | None, address: str) -> None:
    """Move one end of a veth pair into ``ns`` (None: stay here), give it ``address``/30 and bring it up."""
    into = ("-n", ns) if ns is not None else ()
    if ns is not None:
        _ip("link", "set", end, "netns", ns)
    _ip(*into, "addr", "add", f"{address}/30", "dev", end)
    _ip(*into, "link", "set", end, "up")


@contextmanager
def namespaces() -> Iterator[tuple[str, str, str]]:
    """NATS's and the replica's namespaces, joined as the module docstring draws; their names and the end of the
    NATS-replica pair on NATS's side (down: the partition)."""
    if os.geteuid() != 0:
        pytest.skip("a real partition needs root (ip netns, veth)")
    tag = secrets.token_hex(3)
    nats_ns, replica_ns = f"soloist-n{tag}", f"soloist-r{tag}"
    try:
        _ip("netns", "add", nats_ns)
        _ip("netns", "add", replica_ns)
    except (OSError, subprocess.CalledProcessError) as exc:
        subprocess.run(["ip", "netns", "del", nats_ns], check=False, capture_output=True)
        pytest.skip(f"ip netns add failed here: {exc}")
    try:  # deleting a namespace deletes its veth ends, and so their peers
        for i, (a_ns, b_ns, (a_ip, b_ip)) in enumerate(
            ((None, nats_ns, TO_NATS), (nats_ns, replica_ns, NATS_REPLICA), (None, replica_ns, TO_REPLICA))
        ):
            _ip("link", "add", f"vs{i}a{tag}", "type", "veth", "peer", "name", f"vs{i}b{tag}")
            _veth(f"vs{i}a{tag}", a_ns, a_ip)
            _veth(f"vs{i}b{tag}", b_ns, b_ip)
        yield nats_ns, replica_ns, f"vs1a{tag}"
    finally:
        for ns in (nats_ns, replica_ns):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


async def balance_at(port: int, position: int, within: float) -> object:
    async with Client.connect(NS_IP, port) as client:
        answer = await client.query(
            "Balance", {"account": "a"}, consistency="session", min_position=position, timeout_ms=within * 1000
        )
        return answer.result


class TestPartition:
    async def test_replica_cut_off_and_healed(self, tmp_path: Path) -> None:
        """Cut from NATS while the writer commits, the replica converges exactly once healed."""
        need_nats_server()
        with namespaces() as (nats_ns, ns, nats_end), (tmp_path / "nats.log").open("wb") as nats_log:
            nats_port = 4222  # namespaces of their own: the standard ports are free there
            serve_nats = [NATS_SERVER, "-a", "0.0.0.0", "-p", str(nats_port), "-js", "-sd", str(tmp_path / "store")]
            nats = await anyio.open_process(
                ["ip", "netns", "exec", nats_ns, *serve_nats],
                stdout=nats_log,
                stderr=nats_log,
            )
            try:
                url = f"nats://{TO_NATS[1]}:{nats_port}"
                async with soloist(
                    tmp_path / "w.log", "serve", "--db", str(tmp_path / "w.db"), "--host", "0.0.0.0", "--nats", url
                ) as w:
                    replica_port = 7421
                    argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "soloist.cli", "replica"]
                    argv += ["--domain", "tests.toy:BANK", "--db", str(tmp_path / "r.db"), "--host", NS_IP]
                    argv += ["--port", str(replica_port), "--nats", f"nats://{NATS_REPLICA[0]}:{nats_port}"]
                    argv += ["--upstream", f"{TO_REPLICA[0]}:{w.port}"]
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
                            _ip("-n", nats_ns, "link", "set", nats_end, "down")  # the partition
                            for _ in range(200):
                                receipt = await client.command("Deposit", {"account": "a", "amount": 1})
                            # the replica notices: its idle PING to NATS goes unanswered
                            await wait_log_line(tmp_path / "r.log", b"jetstream_follower_interrupted", 30)
                            _ip("-n", nats_ns, "link", "set", nats_end, "up")
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
