"""Wire contract edges: the last line before EOF, half-closed subscribers, subscriptions from beyond the head."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import orjson

from tests.net.harness import raw, serving
from tests.toy import Open

if TYPE_CHECKING:
    from pathlib import Path


class TestEndOfStream:
    async def test_last_line_without_newline_is_answered(self, tmp_path: Path) -> None:
        """A request cut by EOF before its newline is still a request: it is answered, then the server closes."""
        async with serving(tmp_path) as (_, server), raw(server) as conn:
            await conn.send(b'{"id": 1, "op": "ping"}\n{"id": 2, "op": "ping"}')
            await conn.stream.send_eof()
            answers = await conn.answers(2)
            assert answers[1]["ok"]
            assert answers[2]["ok"]
            assert await conn.closed()

    async def test_half_closed_subscriber_keeps_streaming(self, tmp_path: Path) -> None:
        """A subscriber that shuts down its sending side still receives every event until it closes."""
        async with serving(tmp_path) as (app, server), raw(server) as conn:
            await conn.request(id="s", op="subscribe")
            assert (await conn.answer())["ok"]
            await conn.stream.send_eof()
            for name in ("a", "b", "c"):
                await app.execute(Open(account=name))
            positions: list[int] = []
            with anyio.fail_after(5):
                while len(positions) < 3:
                    line = await conn.line()
                    assert line is not None, "the server closed a half-closed subscription"
                    if line:  # empty keep-alive lines are ignored
                        positions.append(orjson.loads(line)["event"]["position"])
            assert positions == [1, 2, 3]


class TestSubscribeBeyondHead:
    async def test_refused_with_the_head(self, tmp_path: Path) -> None:
        """Subscribing from a position the log does not have is refused, naming the head; the connection stays."""
        async with serving(tmp_path) as (app, server), raw(server) as conn:
            await app.execute(Open(account="a"))
            await conn.request(id=1, op="subscribe", from_position=5)
            answer = await conn.answer()
            assert answer["ok"] is False
            assert answer["error"]["code"] == "bad_request"
            assert "beyond this log's head 1" in answer["error"]["message"]
            await conn.request(id=2, op="ping")
            assert (await conn.answer())["ok"]
