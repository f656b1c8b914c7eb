"""The digest and rebuild ops over a real socket, and `soloist rebuild`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from soloist_shop.commands import Restock
from soloist_shop.seed import seed_commands
from soloist_shop.wiring import DOMAIN
from tests.e2e.processes import run_cli
from tests.net.harness import raw, serving

if TYPE_CHECKING:
    from pathlib import Path


class TestDigestOp:
    async def test_digest_at_each_consistency(self, tmp_path: Path) -> None:
        """eventual, session and strong answer {digest, position} like App.digest; bad asks are refused."""
        async with serving(tmp_path, domain=DOMAIN, replicas=2) as (app, server):
            for command in seed_commands():
                await app.execute(command)
            receipt = await app.execute(Restock(sku="BK-001", quantity=1))
            expected = (await app.digest(consistency="strong")).to_wire()
            async with raw(server) as conn:
                await conn.request(id=1, op="digest", consistency="strong")
                await conn.request(id=2, op="digest", consistency="session", min_position=receipt.position)
                await conn.request(id=3, op="digest")
                answers = [await conn.answer() for _ in range(3)]
                for answer in answers:
                    assert answer["ok"] is True, answer
                    assert answer["result"] == expected
                    assert answer["position"] == receipt.position
                await conn.request(id=4, op="digest", consistency="session")
                refused = await conn.answer()
                assert refused["error"]["code"] == "bad_request"
                await conn.request(id=5, op="digest", consistency="session", min_position=10**6, timeout_ms=20)
                late = await conn.answer()
                assert late["id"] == 5
                assert late["error"]["code"] == "timeout"

    async def test_a_waiting_digest_is_answered_once_the_position_is_reached(self, tmp_path: Path) -> None:
        """A session digest beyond the head waits (no task) and is answered after the command commits."""
        async with serving(tmp_path, domain=DOMAIN, replicas=1) as (app, server), raw(server) as conn:
            await conn.request(id=1, op="digest", consistency="session", min_position=1, timeout_ms=30000)
            await conn.request(id=2, op="ping")
            assert (await conn.answer())["id"] == 2  # the digest waits; the connection does not
            await app.execute(seed_commands()[0])
            answer = await conn.answer()
            assert answer["id"] == 1
            assert answer["result"] == (await app.digest()).to_wire()


class TestRebuildOp:
    async def test_rebuild_and_cancel_over_the_wire(self, tmp_path: Path) -> None:
        """op rebuild answers each swapped copy's digest; cancel with nothing running says so."""
        async with serving(tmp_path, domain=DOMAIN, replicas=2) as (app, server):
            for command in seed_commands():
                await app.execute(command)
            expected = (await app.digest(consistency="strong")).to_wire()
            async with raw(server) as conn:
                await conn.request(id=1, op="rebuild", replica=1)
                one = await conn.answer()
                assert one["ok"] is True, one
                assert one["result"] == {"replicas": [expected], "position": app.position}
                await conn.request(id=2, op="rebuild", cancel=True)
                assert (await conn.answer())["result"] == {"cancelled": False}
                await conn.request(id=3, op="rebuild", replica=7)
                bad = await conn.answer()
                assert bad["error"]["code"] == "bad_request"
            code, out = await run_cli("rebuild", "--port", str(server.port))
            assert code == 0, out
            assert orjson.loads(out)["result"]["replicas"] == [expected, expected]
            code, out = await run_cli("rebuild", "--cancel", "--port", str(server.port))
            assert code == 0
            assert orjson.loads(out)["result"] == {"cancelled": False}

    async def test_a_cancelled_rebuild_is_answered_closed(self, tmp_path: Path) -> None:
        """Cancelling a rebuild over the wire answers the waiting rebuild request `closed` (on purpose)."""
        async with serving(tmp_path, domain=DOMAIN, replicas=1) as (app, server):
            for command in seed_commands():
                await app.execute(command)
            async with raw(server) as conn:
                await conn.request(id=1, op="rebuild")
                await conn.request(id=2, op="rebuild", cancel=True)  # handled before the rebuild task runs
                answers = {a["id"]: a for a in [await conn.answer(), await conn.answer()]}
                assert answers[2]["result"] == {"cancelled": True}
                assert answers[1]["error"]["code"] == "closed"
                assert "cancelled" in answers[1]["error"]["message"]
