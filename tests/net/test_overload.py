"""Overload over real sockets: more commands than the writer's queue holds get typed ``overloaded`` answers.

A short version of ``benchmarks/bench_overload.py`` (no timing): a writer with a small queue (64), four
connections each pipelining 400 keyed deposits in one write. Every command is answered, ``ok`` or
``overloaded``; the queue never holds more than its capacity; an overloaded command was not done (its key
is not in the log) and every acknowledged one was; a query connection is answered throughout; once the
load stops, the refused commands resent (within the queue's capacity at a time) all succeed.
"""

from __future__ import annotations

import sqlite3
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from tests.net.harness import raw, serving
from tests.toy import Account, Open

if TYPE_CHECKING:
    from pathlib import Path

    from tests.net.harness import RawConnection

CAPACITY = 64
CONNECTIONS = 4
PER_CONNECTION = 400


def _keys_in_log(db: Path) -> set[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        keys = {str(row[0]) for row in conn.execute("SELECT idempotency_key FROM events") if row[0]}
    conn.close()
    return keys


def _deposit(key: str) -> bytes:
    request = {"id": key, "op": "command", "type": "Deposit", "data": {"account": "a", "amount": 1}}
    return orjson.dumps({**request, "idempotency_key": key}) + b"\n"


class TestOverload:
    async def test_overload_is_answered_bounded_and_recovers(self, tmp_path: Path) -> None:
        """Commands past the queue's capacity are refused as overloaded (not done); queries go on; it recovers."""
        async with serving(tmp_path, app_options={"queue_capacity": CAPACITY}) as (app, server):
            await app.execute(Open(account="a"))
            answers: dict[str, dict[str, object]] = {}
            queries_answered = 0
            load_done = anyio.Event()

            async def load(n: int, conn: RawConnection) -> None:
                keys = [f"c{n}-{i}" for i in range(PER_CONNECTION)]
                await conn.send(b"".join(map(_deposit, keys)))  # one write: the server reads it in big chunks
                for _ in keys:
                    answer = await conn.answer()
                    answers[str(answer["id"])] = answer

            async def query(conn: RawConnection) -> None:
                nonlocal queries_answered
                while not load_done.is_set():
                    await conn.request(id="q", op="query", type="Total")
                    answer = await conn.answer()
                    assert answer["ok"] is True, answer
                    queries_answered += 1

            async with raw(server) as q, anyio.create_task_group() as queries:
                queries.start_soon(query, q)
                async with AsyncExitStack() as stack:
                    conns = [await stack.enter_async_context(raw(server)) for _ in range(CONNECTIONS)]
                    with anyio.fail_after(60):
                        async with anyio.create_task_group() as tg:
                            for n, conn in enumerate(conns):
                                tg.start_soon(load, n, conn)
                load_done.set()
            assert queries_answered >= 1
            assert len(answers) == CONNECTIONS * PER_CONNECTION
            codes = {a["error"]["code"] for a in answers.values() if not a["ok"]}  # type: ignore[index]
            refused = {key for key, a in answers.items() if not a["ok"]}
            acknowledged = set(answers) - refused
            assert codes == {"overloaded"}
            assert refused, "the queue never filled"
            stats = app.writer.statistics()
            assert stats.queue_capacity == CAPACITY
            # the writer waiting on an empty queue takes the first command straight from the sender (anyio's
            # hand-off), then the buffer fills behind it: at most capacity + 1 commands are ever held
            assert stats.queue_peak <= CAPACITY + 1
            in_log = _keys_in_log(tmp_path / "bank.db")
            assert acknowledged <= in_log
            assert not refused & in_log  # an overloaded command was not done
            async with raw(server) as conn:  # the load is gone: the refused commands, resent, all succeed
                resend = sorted(refused)
                with anyio.fail_after(30):
                    for start in range(0, len(resend), CAPACITY // 2):  # within the queue's capacity at a time
                        keys = resend[start : start + CAPACITY // 2]
                        await conn.send(b"".join(map(_deposit, keys)))
                        assert all([(await conn.answer())["ok"] is True for _ in keys])
            assert app.writer.states["account-a"] == Account(balance=CONNECTIONS * PER_CONNECTION)


class TestAFloodWaits:
    async def test_a_refused_client_is_not_read_until_the_writer_has_room(self, tmp_path: Path) -> None:
        """Once a connection got ``overloaded``, the server stops reading it (TCP pushes back: the client
        waits) until the writer's queue is half empty: what it sends meanwhile is read then, and done.

        The writer is stalled for real: another SQLite connection holds the write lock, so the writer's
        commit waits (up to its 5 s busy timeout) and its queue fills."""
        options = {"queue_capacity": 4, "max_batch": 1}
        async with serving(tmp_path, app_options=options) as (app, server), raw(server) as conn:
            await app.execute(Open(account="a"))
            blocker = sqlite3.connect(tmp_path / "bank.db", isolation_level=None)
            try:
                blocker.execute("BEGIN IMMEDIATE")  # the writer's next commit waits for this lock
                await conn.send(b"".join(_deposit(f"first-{i}") for i in range(20)))
                first: dict[object, dict[str, Any]] = {}
                with anyio.fail_after(10):
                    while not any(not a["ok"] for a in first.values()):  # until the first refusal
                        answer = await conn.answer()
                        first[answer["id"]] = answer
                assert server.statistics().paused == 1  # held: nothing more is read from it
                await conn.send(b"".join(_deposit(f"later-{i}") for i in range(2)))
            finally:
                blocker.execute("ROLLBACK")  # the writer commits, its queue drains, the client is read again
                blocker.close()
            with anyio.fail_after(10):
                rest = await conn.answers(20 + 2 - len(first))
        answers = {**first, **rest}
        assert all(answers[f"later-{i}"]["ok"] for i in range(2))  # sent while held: done, not refused
        refused = {key for key, a in answers.items() if not a["ok"]}
        assert {answers[key]["error"]["code"] for key in refused} == {"overloaded"}
        assert not refused & _keys_in_log(tmp_path / "bank.db")
