"""The server speaks docs/protocol.md: every op, every error code, pipelining, limits, subscriptions, stop."""

from __future__ import annotations

import sqlite3
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, cast

import anyio
import orjson
import pytest

from soloist import App
from soloist.net import Client, Server
from tests.net.harness import RawConnection, raw, serving
from tests.toy import BANK

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    from anyio.abc import TaskStatus


async def until(condition: Callable[[], bool], *, within: float = 5.0) -> None:
    """Poll ``condition`` (bounded): only for states nothing can be awaited on (a server's or a follower's
    statistics: connections, in-flight counts, reconnects). Positions are awaited with ``wait_for``."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - polling a plain attribute: there is no event to wait on
            await anyio.sleep(0.001)


async def caught_up(app: App, position: int) -> None:
    """Wait (bounded) until every replica of ``app`` has applied ``position``: on their own waiters, no polling."""
    for replica in app.router.replicas:
        await replica.wait_for(position, timeout=10)


@contextmanager
def write_lock(db: Path) -> Iterator[None]:
    """Hold SQLite's write lock from another connection: the writer's commit waits until we let go."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=5)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def line(**request: object) -> bytes:
    return orjson.dumps(request) + b"\n"


def error_of(answer: dict[str, Any]) -> tuple[str, str]:
    assert answer["ok"] is False, answer
    return answer["error"]["code"], answer["error"]["message"]


async def open_accounts(conn: RawConnection, *names: str) -> int:
    """Open accounts one by one; the position of the last."""
    position = 0
    for name in names:
        await conn.request(id=f"open-{name}", op="command", type="Open", data={"account": name})
        answer = await conn.answer()
        assert answer["ok"], answer
        position = answer["position"]
    return position


UNREACHED = {"op": "query", "type": "Total", "consistency": "session", "min_position": 99}


class TestOps:
    async def test_ping(self, tmp_path: Path) -> None:
        """ping answers "pong" with the server's position, echoing the id."""
        async with serving(tmp_path) as (_, server), raw(server) as conn:
            await conn.request(id="p", op="ping")
            assert await conn.answer() == {"id": "p", "ok": True, "result": "pong", "position": 0}

    async def test_command_and_queries(self, tmp_path: Path) -> None:
        """A command's receipt carries its position; queries at every level see it."""
        async with serving(tmp_path) as (app, server), raw(server) as conn:
            await open_accounts(conn, "a")
            await conn.request(id=1, op="command", type="Deposit", data={"account": "a", "amount": 5})
            answer = await conn.answer()
            assert answer["ok"]
            assert answer["position"] == 2
            assert set(answer["result"]) == {"position", "command_id", "duplicate"}
            assert answer["result"]["position"] == 2
            assert answer["result"]["duplicate"] is False
            for level in ({"consistency": "strong"}, {"consistency": "session", "min_position": 2}, {}):
                if not level:  # eventual reads whatever a replica has: let them all catch up first
                    await caught_up(app, 2)
                await conn.request(id=2, op="query", type="Balance", data={"account": "a"}, **level)
                assert await conn.answer() == {"id": 2, "ok": True, "result": 5, "position": 2}

    async def test_idempotent_retry_is_a_duplicate(self, tmp_path: Path) -> None:
        """The same command under the same key is answered as a duplicate at the original position."""
        async with serving(tmp_path) as (_, server), raw(server) as conn:
            await open_accounts(conn, "a")
            deposit = {"op": "command", "type": "Deposit", "data": {"account": "a", "amount": 5}}
            await conn.send(line(id=1, idempotency_key="k", **deposit) + line(id=2, idempotency_key="k", **deposit))
            answers = await conn.answers(2)
            assert answers[1]["result"]["duplicate"] is False
            assert answers[2]["result"] == {**answers[2]["result"], "duplicate": True, "position": 2}

    async def test_a_commits_answers_go_out_in_the_order_given(self, tmp_path: Path) -> None:
        """Receipts and a rejection decided in one batch reach the client in position order, receipts
        byte for byte as ``{"position", "command_id", "duplicate"}``."""
        async with serving(tmp_path) as (_, server), raw(server) as conn:
            await open_accounts(conn, "a")
            deposit = {"op": "command", "type": "Deposit", "data": {"account": "a", "amount": 5}}
            refused = {"op": "command", "type": "Withdraw", "data": {"account": "a", "amount": 10**9}}
            await conn.send(line(id=1, **deposit) + line(id=2, **refused) + line(id=3, **deposit))
            lines = [await conn.line() for _ in range(3)]
            answers = [orjson.loads(raw_line or b"") for raw_line in lines]
            assert [a["id"] for a in answers] == [1, 2, 3]
            assert [a["ok"] for a in answers] == [True, False, True]
            first = answers[0]["result"]
            assert lines[0] == (
                b'{"id":1,"ok":true,"result":{"position":2,"command_id":"'
                + first["command_id"].encode()
                + b'","duplicate":false},"position":2}'
            )

    async def test_stats(self, tmp_path: Path) -> None:
        """stats reports the writer, each replica's position and lag, and the connections."""
        async with serving(tmp_path) as (app, server), raw(server) as conn:
            await open_accounts(conn, "a")
            await caught_up(app, 1)
            await conn.request(id=1, op="stats")
            stats = (await conn.answer())["result"]
            assert stats["position"] == 1
            assert stats["role"] == "writer"
            assert {"queue_depth", "queue_peak", "batch_size_max", "batch_size_mean"} <= set(stats["writer"])
            assert [r["position"] for r in stats["replicas"]] == [1, 1]
            assert {"lag_events", "lag_ms"} <= set(stats["replicas"][0])
            assert stats["server"]["connections"] == 1


class TestErrors:
    @pytest.mark.parametrize(
        ("request_", "code", "mentions"),
        [
            ({}, "bad_request", "'op'"),
            ({"id": [1], "op": "ping"}, "bad_request", "'id'"),
            ({"op": "ping", "extra": 1}, "bad_request", "'extra'"),
            ({"op": "command", "data": {}}, "bad_request", "'type'"),
            ({"op": "command", "type": "Deposit", "data": {"account": "a"}}, "bad_request", "'amount'"),
            ({"op": "command", "type": "Deposit", "data": {"account": "a", "amount": "1"}}, "bad_request", "'amount'"),
            ({"op": "command", "type": "Open", "data": {}, "idempotency_key": 3}, "bad_request", "'idempotency_key'"),
            ({"op": "command", "type": "Open", "data": {}, "timeout_ms": -1}, "bad_request", "'timeout_ms'"),
            ({"op": "query", "type": "Total", "consistency": "linear"}, "bad_request", "'consistency'"),
            ({"op": "query", "type": "Total", "consistency": "session"}, "bad_request", "'min_position'"),
            ({"op": "subscribe", "from_position": -1}, "bad_request", "'from_position'"),
            ({"op": "auth", "token": 5}, "bad_request", "'token'"),
            ({"op": "launch"}, "unknown_op", "'launch'"),
            ({"op": 7}, "unknown_op", "7"),
            ({"op": "command", "type": "Nope", "data": {}}, "unknown_type", "'Nope'"),
            ({"op": "query", "type": "Nope", "data": {}}, "unknown_type", "Balance"),
            ({"op": "command", "type": "Withdraw", "data": {"account": "a", "amount": 9}}, "rejected", "insufficient"),
            ({"op": "query", "type": "Balance", "data": {"account": "zz"}}, "not_found", "'zz'"),
            ({"op": "command", "type": "Crash", "data": {"account": "a"}}, "internal", "ZeroDivisionError"),
            ({**UNREACHED, "timeout_ms": 5}, "timeout", "99"),
        ],
    )  # fmt: skip
    async def test_error_codes(self, tmp_path: Path, request_: dict[str, object], code: str, mentions: str) -> None:
        """Each bad request gets its code and a message naming the field or value; the id is echoed if valid."""
        async with serving(tmp_path) as (_, server), raw(server) as conn:
            await open_accounts(conn, "a")
            await conn.send(orjson.dumps({"id": 1, **request_}) + b"\n")
            answer = await conn.answer()
            got_code, message = error_of(answer)
            assert got_code == code
            assert mentions in message
            assert answer["id"] == (None if "id" in request_ else 1)

    async def test_conflict(self, tmp_path: Path) -> None:
        """An idempotency key reused for a different command is idempotency_conflict naming the key."""
        async with serving(tmp_path) as (_, server), raw(server) as conn:
            await conn.request(id=1, op="command", type="Open", data={"account": "a"}, idempotency_key="k")
            await conn.request(id=2, op="command", type="Open", data={"account": "b"}, idempotency_key="k")
            answers = await conn.answers(2)
            assert answers[1]["ok"]
            code, message = error_of(answers[2])
            assert code == "idempotency_conflict"
            assert "'k'" in message

    async def test_overloaded(self, tmp_path: Path) -> None:
        """Commands beyond the writer's queue capacity are refused with overloaded, the rest committed."""
        async with serving(tmp_path, app_options={"queue_capacity": 1}) as (_, server), raw(server) as conn:
            await conn.send(
                b"".join(line(id=i, op="command", type="Open", data={"account": f"a{i}"}) for i in range(6))
            )
            answers = (await conn.answers(6)).values()
            codes = [a["error"]["code"] for a in answers if not a["ok"]]
            assert codes
            assert set(codes) == {"overloaded"}
            assert any(a["ok"] for a in answers)

    async def test_command_timeout_then_duplicate(self, tmp_path: Path) -> None:
        """A command slower than its timeout_ms gets command_timeout; it still commits, as a retry shows."""
        async with serving(tmp_path) as (app, server), raw(server) as conn:
            await open_accounts(conn, "a")
            deposit = {
                "op": "command",
                "type": "Deposit",
                "data": {"account": "a", "amount": 5},
                "idempotency_key": "d",
            }
            with write_lock(app.path):
                await conn.request(id=1, timeout_ms=20, **deposit)
                code, message = error_of(await conn.answer())
                assert code == "command_timeout"
                assert "idempotency_key" in message
            await conn.request(id=2, **deposit)
            answer = await conn.answer()
            assert answer["result"]["duplicate"] is True
            assert answer["position"] == 2

    async def test_not_json_keeps_the_connection(self, tmp_path: Path) -> None:
        """A line that is not JSON (or not an object) gets bad_request with id null; the next line is served."""
        async with serving(tmp_path) as (_, server), raw(server) as conn:
            await conn.send(b"hello\n[1, 2]\n\xff\xfe\n" + line(id=9, op="ping"))
            answers = [await conn.answer() for _ in range(4)]
            assert [a["id"] for a in answers] == [None, None, None, 9]
            assert [error_of(a)[0] for a in answers[:3]] == ["bad_request"] * 3
            assert "not JSON" in answers[0]["error"]["message"]
            assert "object" in answers[1]["error"]["message"]
            assert answers[3]["result"] == "pong"

    async def test_blank_lines_are_ignored(self, tmp_path: Path) -> None:
        """Empty and whitespace-only lines get no answer."""
        async with serving(tmp_path) as (_, server), raw(server) as conn:
            await conn.send(b"\n \r\n\t\n" + line(id=1, op="ping"))
            assert (await conn.answer())["id"] == 1

    async def test_too_large_closes(self, tmp_path: Path) -> None:
        """An oversized line gets too_large (id null) after the lines before it are answered; then the server closes."""
        async with serving(tmp_path, max_line=100) as (_, server):
            async with raw(server) as conn:
                await conn.send(line(id=1, op="ping") + b"x" * 101 + b"\n" + line(id=2, op="ping"))
                first, second = await conn.answer(), await conn.answer()
                assert first["id"] == 1
                assert second["id"] is None
                assert error_of(second)[0] == "too_large"
                assert await conn.closed()
            async with raw(server) as conn:  # an unfinished line over the limit too
                await conn.send(b'{"op": "ping", "pad": "' + b"x" * 200)
                assert error_of(await conn.answer())[0] == "too_large"
                assert await conn.closed()
            async with raw(server) as conn:  # others are not disturbed
                await conn.request(id=3, op="ping")
                assert (await conn.answer())["ok"]

    async def test_a_refused_client_still_sending_reads_its_answer_then_eof(self, tmp_path: Path) -> None:
        """A client still sending past the limit is not reset: it reads its answers, then the server's EOF.

        Closing a socket that has unread data resets the connection (and a reset can destroy answers not
        yet read): the server sends its answers with a FIN and drops what still comes until the client closes.
        """
        async with serving(tmp_path, max_line=100) as (_, server), raw(server) as conn:
            await conn.send(line(id=1, op="ping"))
            for _ in range(64):  # 4 MiB past the limit: more than the sockets' buffers hold
                await conn.send(b"x" * 65536)
            first, second = await conn.answer(), await conn.answer()
            assert first["id"] == 1
            assert error_of(second)[0] == "too_large"
            with pytest.raises(anyio.EndOfStream):  # a clean end, not a reset
                await conn.stream.receive()


class TestPipelining:
    async def test_answers_out_of_order(self, tmp_path: Path) -> None:
        """A session query waiting for a position, sent before a ping, is answered after it."""
        async with serving(tmp_path) as (_app, server), raw(server) as conn:
            head = await open_accounts(conn, "a")
            await conn.send(
                line(
                    id="q",
                    op="query",
                    type="Balance",
                    data={"account": "a"},
                    consistency="session",
                    min_position=head + 1,
                )
                + line(id="p", op="ping")
            )
            assert (await conn.answer())["id"] == "p"
            async with raw(server) as other:
                await other.request(id=1, op="command", type="Deposit", data={"account": "a", "amount": 3})
                assert (await other.answer())["ok"]
            assert await conn.answer() == {"id": "q", "ok": True, "result": 3, "position": head + 1}

    async def test_many_in_one_write(self, tmp_path: Path) -> None:
        """Hundreds of pipelined requests in one write each get exactly one answer."""
        async with serving(tmp_path) as (_, server), raw(server) as conn:
            await open_accounts(conn, "a")
            batch = b"".join(
                line(id=i, op="command", type="Deposit", data={"account": "a", "amount": 1})
                if i % 2
                else line(id=i, op="query", type="Total")
                for i in range(400)
            )
            await conn.send(batch)
            answers = {int(str(i)): a for i, a in (await conn.answers(400)).items()}
            assert sorted(answers) == list(range(400))
            assert all(a["ok"] for a in answers.values())
            positions = sorted(a["position"] for i, a in answers.items() if i % 2)
            assert positions == list(range(2, 202))

    async def test_in_flight_cap_pauses_reading(self, tmp_path: Path) -> None:
        """At max_in_flight the server stops reading the connection; it resumes as answers drain."""
        async with serving(tmp_path, max_in_flight=2) as (app, server), raw(server) as conn:
            await open_accounts(conn, "a")
            deposits = b"".join(
                line(id=i, op="command", type="Deposit", data={"account": "a", "amount": 1}) for i in range(5)
            )
            with write_lock(app.path):
                await conn.send(deposits + line(id="p", op="ping"))
                await until(lambda: server.statistics().in_flight == 2 and server.statistics().paused == 1)
            answers = await conn.answers(6)
            assert all(a["ok"] for a in answers.values())
            await until(lambda: server.statistics().paused == 0)


class TestAuth:
    async def test_flow(self, tmp_path: Path) -> None:
        """With a token every op but auth is unauthorized until auth; a wrong token closes the connection."""
        async with serving(tmp_path, token="s3cret") as (_, server):
            async with raw(server) as conn:
                await conn.send(line(id=1, op="ping") + line(id=2, op="stats") + line(id=3, op="nope"))
                assert [error_of(a)[0] for a in (await conn.answers(3)).values()] == ["unauthorized"] * 3
                await conn.request(id=4, op="auth", token="s3cret")
                assert (await conn.answer())["ok"]
                await conn.request(id=5, op="ping")
                assert (await conn.answer())["result"] == "pong"
            async with raw(server) as conn:
                await conn.request(id=1, op="auth", token="guess")
                assert error_of(await conn.answer())[0] == "unauthorized"
                assert await conn.closed()

    async def test_auth_without_token_is_harmless(self, tmp_path: Path) -> None:
        """auth on a server without a token succeeds."""
        async with serving(tmp_path) as (_, server), raw(server) as conn:
            await conn.request(id=1, op="auth", token="anything")
            assert (await conn.answer())["ok"]


class TestSubscribe:
    async def test_from_zero_then_live(self, tmp_path: Path) -> None:
        """subscribe from 0 sends the ok answer, every past event in order, then live events."""
        async with serving(tmp_path) as (_, server), raw(server) as conn, raw(server) as sub:
            await open_accounts(conn, "a", "b", "c")
            await sub.request(id="s", op="subscribe", from_position=0)
            answer = await sub.answer()
            log_id = answer["result"]["log_id"]  # the served log's id, checked by followers
            assert answer == {"id": "s", "ok": True, "result": {"from_position": 0, "log_id": log_id}, "position": 3}
            assert len(log_id) == 32
            events = [(await sub.answer())["event"] for _ in range(3)]
            assert [e["position"] for e in events] == [1, 2, 3]
            assert events[0] == {
                **events[0],
                "stream": "account-a",
                "version": 1,
                "type": "Opened",
                "data": {"account": "a"},
            }
            assert isinstance(events[0]["recorded_at"], float)
            await open_accounts(conn, "d")
            assert (await sub.answer())["event"]["position"] == 4

    async def test_from_the_middle(self, tmp_path: Path) -> None:
        """from_position is the last position the client has: events after it, none before."""
        async with serving(tmp_path) as (_, server), raw(server) as conn, raw(server) as sub:
            await open_accounts(conn, "a", "b", "c", "d")
            await sub.request(id="s", op="subscribe", from_position=2)
            assert (await sub.answer())["ok"]
            assert [(await sub.answer())["event"]["position"] for _ in range(2)] == [3, 4]

    async def test_connection_is_dedicated(self, tmp_path: Path) -> None:
        """Requests on a subscribed connection are refused with bad_request."""
        async with serving(tmp_path) as (_, server), raw(server) as sub:
            await sub.request(id="s", op="subscribe")
            assert (await sub.answer())["ok"]
            await sub.request(id=2, op="ping")
            code, message = error_of(await sub.answer())
            assert code == "bad_request"
            assert "subscription" in message

    async def test_a_command_after_subscribe_in_the_same_chunk_is_refused(self, tmp_path: Path) -> None:
        """A command that follows a subscribe in one write is refused with bad_request, and not taken."""
        async with serving(tmp_path) as (app, server), raw(server) as sub:
            deposit = {"op": "command", "type": "Open", "data": {"account": "a"}}
            await sub.send(line(id="s", op="subscribe") + line(id=2, **deposit))
            answers = await sub.answers(2)
            assert answers["s"]["ok"]
            code, message = error_of(answers[2])
            assert code == "bad_request"
            assert "subscription" in message
            assert app.position == 0

    async def test_closing_ends_the_subscription(self, tmp_path: Path) -> None:
        """When the client goes away its subscription is dropped from the app."""
        async with serving(tmp_path) as (app, server):
            before = len(app.statistics().subscriptions)
            async with raw(server) as sub:
                await sub.request(id="s", op="subscribe")
                assert (await sub.answer())["ok"]
                await until(lambda: len(app.statistics().subscriptions) == before + 1)
            await until(lambda: len(app.statistics().subscriptions) == before)
            await until(lambda: server.statistics().connections == 0)

    async def test_slow_reader_gets_everything_in_order(self, tmp_path: Path) -> None:
        """With a tiny write buffer the stream pauses on the transport and still delivers every event."""
        async with serving(tmp_path) as (app, server), raw(server) as sub:
            await sub.request(id="s", op="subscribe")
            assert (await sub.answer())["ok"]
            conn = next(iter(server._connections))
            cast("Any", conn)._transport.set_write_buffer_limits(high=256, low=64)
            for i in range(60):
                await app.execute(BANK.commands[0](account=f"acct-{i}"))
            positions = [(await sub.answer())["event"]["position"] for _ in range(60)]
            assert positions == list(range(1, 61))


class TestConnections:
    async def test_idle_connections_are_closed(self, tmp_path: Path) -> None:
        """A connection with nothing to do for idle_timeout is closed by the server."""
        async with serving(tmp_path, idle_timeout=0.05) as (_, server), raw(server) as conn:
            await conn.request(id=1, op="ping")
            assert (await conn.answer())["ok"]
            with anyio.fail_after(5):
                assert await conn.closed()

    async def test_half_close_answers_in_flight(self, tmp_path: Path) -> None:
        """A client that sends its requests and shuts its side still gets every answer."""
        async with serving(tmp_path) as (_, server), raw(server) as conn:
            await conn.send(line(id=1, op="command", type="Open", data={"account": "a"}) + line(id=2, op="ping"))
            await conn.stream.send_eof()
            answers = await conn.answers(2)
            assert answers[1]["ok"]
            assert answers[2]["ok"]
            assert await conn.closed()

    async def test_unix_socket(self, tmp_path: Path) -> None:
        """The same protocol over a Unix socket; the socket file is removed at stop."""
        path = tmp_path / "s.sock"
        async with serving(tmp_path, unix_path=path) as (_, server):
            assert server.address == f"unix:{path}"
            async with Client.connect_unix(path) as client:
                assert await client.ping() == 0
                await client.command("Open", {"account": "a"})
                assert (await client.query("Total", consistency="strong")).position == 1
        assert not path.exists()

    async def test_graceful_stop_answers_in_flight(self, tmp_path: Path) -> None:
        """Stopping the server stops accepting, answers the command in flight, then closes."""
        async with stoppable(tmp_path) as (app, server, scope), raw(server) as conn:
            await open_accounts(conn, "a")
            with write_lock(app.path):
                await conn.request(id=1, op="command", type="Deposit", data={"account": "a", "amount": 2})
                await until(lambda: server.statistics().in_flight == 1)
                scope.cancel()
                await until(lambda: _refused(server.port))
            answer = await conn.answer()
            assert answer["ok"]
            assert answer["position"] == 2
            assert await conn.closed()
        assert app.position == 2

    async def test_graceful_stop_answers_a_waiting_query_closed(self, tmp_path: Path) -> None:
        """A query waiting for a position when the server stops is answered ``closed`` (on purpose), not ``broken``."""
        async with stoppable(tmp_path) as (_app, server, scope), raw(server) as conn:
            await conn.request(id=1, op="query", type="Total", data={}, consistency="session", min_position=99)
            await until(lambda: server.statistics().in_flight == 1)
            scope.cancel()
            answer = await conn.answer()
            assert not answer["ok"]
            assert answer["error"]["code"] == "closed", answer
            assert "the server is stopping" in answer["error"]["message"]
            assert await conn.closed()


@asynccontextmanager
async def stoppable(tmp_path: Path) -> AsyncIterator[tuple[App, Server, anyio.CancelScope]]:
    """An App and its server, and the scope whose cancel stops the server gracefully (as SIGTERM does)."""
    async with App(BANK, tmp_path / "bank.db", replicas=1) as app, anyio.create_task_group() as tg:
        scope = anyio.CancelScope()
        server = Server(app, port=0)

        async def run(*, task_status: TaskStatus[Server]) -> None:
            with scope:
                await server.serve(task_status=task_status)

        await tg.start(run)
        yield app, server, scope


def _refused(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False
