"""The issue's repro on a real shop server with checkpoints: Restock(2**63-1) twice is rejected, the server lives."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import anyio
import pytest

from soloist import DomainError
from soloist.net import Client
from tests.e2e.processes import ROOT, SoloistProcess, _env

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.uvloop_only

HUGE = 9223372036854775807
SERVE = (sys.executable, "-m", "soloist.cli", "serve", "--port", "0")


class TestOutOfRange:
    async def test_huge_restock_is_rejected_and_checkpoints_go_on(self, tmp_path: Path) -> None:
        """Both restocks are rejected naming the bound; queries answer; the server survives and restarts."""
        db, snapshots = tmp_path / "shop.db", tmp_path / "snapshots"
        for start in range(2):
            log = tmp_path / f"serve-{start}.log"
            with log.open("wb") as sink:
                process = await anyio.open_process(
                    [*SERVE, "--db", str(db), "--snapshot-dir", str(snapshots), "--snapshot-every", "1"],
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=sink,
                    env=_env(),
                    cwd=ROOT,
                )
            server = SoloistProcess(process, log)
            try:
                await server.wait_listening()
                async with Client.connect("127.0.0.1", server.port) as client:
                    for _ in range(2):
                        with pytest.raises(DomainError, match=f"must be between 1 and 1000000, got {HUGE}"):
                            await client.command("Restock", {"sku": "KIT-002", "quantity": HUGE})
                    receipt = await client.command("Restock", {"sku": "KIT-002", "quantity": 5})
                    answer = await client.query(
                        "GetProduct",
                        {"sku": "KIT-002"},
                        consistency="session",
                        min_position=int(str(receipt["position"])),
                    )
                    assert answer.result["stock"] == 15 + 5 * (start + 1)  # type: ignore[index]
                assert await server.terminate() == 0
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
                await process.aclose()
        for start in range(2):  # the periodic checkpoint and the one at exit never trip over each other
            assert "checkpoint_failed" not in (tmp_path / f"serve-{start}.log").read_text()
