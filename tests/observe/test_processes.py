"""Real processes: `soloist serve|replica --http-port 0` serve /metrics; the dashboard in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import TYPE_CHECKING

import anyio
import pytest

from soloist.net import Client
from tests.e2e.processes import SoloistProcess, soloist
from tests.observe.test_metrics import http_get, value

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.uvloop_only

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


async def http_port(process: SoloistProcess, within: float = 20.0) -> int:
    """The bound port from the process's ``http_listening`` log line (polled, bounded)."""
    with anyio.fail_after(within):
        while True:
            for line in process.lines():
                if line.get("event") == "http_listening":
                    port = line["port"]
                    assert isinstance(port, int)
                    return port
            await anyio.sleep(0.02)


async def metrics(port: int) -> bytes:
    status, _, body = await http_get(port, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert status == "HTTP/1.1 200 OK", body
    return body


def chromium() -> str:
    """The Chromium binary; skips with the reason where it is absent, fails under CI=true."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is not None:
        return found
    reason = "no chromium on PATH: install it with `make browser` (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


async def browse(binary: str, profile: Path, url: str, *extra: str, budget_ms: int = 3500) -> str:
    """Load ``url`` headless for ``budget_ms`` of virtual time (the page's 1 s poll runs a few times)."""
    with anyio.fail_after(60):
        result = await anyio.run_process(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *extra, url],
            check=False,
            stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    return result.stdout.decode()


def figure(dom: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert match is not None, f"no #{element_id} in the page: {dom[:3000]}"
    return match.group(1)


def status(dom: str) -> dict[str, int]:
    match = re.search(r'<div id="status"([^>]*)>', dom)
    assert match is not None, dom[:3000]
    return {k: int(v) for k, v in re.findall(r'data-([a-z-]+)="(\d+)"', match.group(1))}


class TestMetricsEndpoint:
    async def test_writer_and_replica_serve_metrics(self, tmp_path: Path) -> None:
        """Both roles answer /metrics on --http-port; values move after commands; the replica shows its lag."""
        async with (
            soloist(tmp_path / "w.log", "serve", "--db", str(tmp_path / "w.db"), "--http-port", "0") as writer,
            soloist(
                tmp_path / "r.log",
                "replica",
                "--upstream",
                writer.address,
                "--db",
                str(tmp_path / "r.db"),
                "--http-port",
                "0",
            ) as replica,
            Client.connect("127.0.0.1", writer.port) as w,
            Client.connect("127.0.0.1", replica.port) as r,
        ):
            writer_http, replica_http = await http_port(writer), await http_port(replica)
            before = await metrics(writer_http)
            assert value(before, "soloist_commands_accepted_total") == 0
            await w.command("Open", {"account": "a"})
            for _ in range(4):
                receipt = await w.command("Deposit", {"account": "a", "amount": 1})
            after = await metrics(writer_http)
            assert value(after, "soloist_commands_accepted_total") == 5
            assert value(after, "soloist_command_latency_seconds_count") == 5
            assert value(after, "soloist_requests_total", op="command") == 5
            assert value(after, "soloist_info", role="writer") == 1
            await r.query("Total", consistency="strong")  # the replica has caught up with the receipt
            followed = await metrics(replica_http)
            assert value(followed, "soloist_info", role="follower") == 1
            assert value(followed, "soloist_position") == receipt["position"]
            assert value(followed, "soloist_follower_lag_events", upstream=writer.address) == 0
            assert value(followed, "soloist_follower_events_total", upstream=writer.address) == 5
            assert value(followed, "soloist_replica_position", replica="replica-0") == receipt["position"]
            assert b"soloist_commands_accepted_total" not in followed
            assert await replica.terminate() == 0
            assert await writer.terminate() == 0


class TestDashboard:
    async def test_figures_move_in_headless_chromium(self, tmp_path: Path) -> None:
        """Under load the page polls; position, accepted and commands/s move (> 0); a screenshot is kept."""
        binary = chromium()
        async with (
            soloist(tmp_path / "w.log", "serve", "--db", str(tmp_path / "w.db"), "--http-port", "0") as writer,
            Client.connect("127.0.0.1", writer.port) as client,
            anyio.create_task_group() as tg,
        ):
            port = await http_port(writer)
            await client.command("Open", {"account": "a"})

            async def load() -> None:
                while True:
                    await client.command("Deposit", {"account": "a", "amount": 1})

            tg.start_soon(load)
            url = f"http://127.0.0.1:{port}/"
            first = await browse(binary, tmp_path / "profile", url, "--dump-dom")
            doms = [first]
            seen = [status(first)]
            assert seen[0]["samples"] >= 2, first[:3000]
            # moved while the page was open (virtual time runs the polls close together in real time:
            # on a starved machine one load may see no new command, so up to 3 loads are allowed)
            while seen[-1]["position"] <= seen[-1]["first-position"] and len(seen) < 3:
                doms.append(await browse(binary, tmp_path / "profile", url, "--dump-dom"))
                seen.append(status(doms[-1]))
            assert seen[-1]["position"] > seen[-1]["first-position"], seen
            # the commands/s a user watches moved off 0 under load: the page's highest rate shown, and the
            # figure on screen at the end of that load (the rate is over the page's recent samples, not the
            # last two polls, which virtual time runs a few ms apart)
            assert seen[-1]["rate-max"] > 0, seen
            assert int(figure(doms[-1], "rate").replace(",", "")) > 0, (figure(doms[-1], "rate"), seen)
            second = await browse(binary, tmp_path / "profile", url, "--dump-dom")
            assert int(figure(second, "accepted").replace(",", "")) > int(figure(first, "accepted").replace(",", ""))
            assert figure(second, "role") == "writer"
            assert "replica-0" in second
            shot = tmp_path / "dashboard.png"
            await browse(binary, tmp_path / "profile", url, f"--screenshot={shot}", "--window-size=1200,800")
            assert shot.stat().st_size > 1000
            print(f"dashboard screenshot: {shot}")
            tg.cancel_scope.cancel()
