"""No input crashes the server or disturbs other connections (hypothesis throws bytes, bad JSON, huge lines).

The server runs in a background event loop (an anyio blocking portal, on uvloop); hypothesis drives
plain blocking sockets against it, and after every example a well-behaved connection that stayed
open the whole time must still get right answers.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.net.harness import serving
from tests.net.test_server import caught_up

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anyio.from_thread import BlockingPortal

    from soloist import App

MAX_LINE = 4096
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
LONG_RUN = settings(  # FUZZ_EXAMPLES=100000 in `make fuzz`; no explain phase (it traces every line: slow)
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink),
)
OPS = ["ping", "command", "query", "subscribe", "stats", "auth", "nope", "", "PING"]
TYPES = ["Open", "Deposit", "Withdraw", "Transfer", "Crash", "Balance", "Total", "Nope", 7, None]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

# a failing example with huge lines is worth its repr; the warning about its size is not an error here
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any] = json_values) -> st.SearchStrategy[Any]:
    """Usually a plausible value, sometimes anything."""
    return st.integers(0, 7).flatmap(lambda n: good if n else bad)


ids = mostly(st.integers(-5, 5) | st.text(max_size=5))
accounts = mostly(st.sampled_from(["a", "b", "fuzz-witness"]))
data = mostly(st.fixed_dictionaries({"account": accounts}, optional={"amount": mostly(st.integers(-3, 10))}))
positions = mostly(st.integers(-1, 40))
commands = st.fixed_dictionaries(
    {"op": st.just("command"), "type": st.sampled_from(TYPES)},
    optional={"id": ids, "data": data, "idempotency_key": mostly(st.sampled_from(["k1", "k2"])),
              "timeout_ms": mostly(st.integers(-1, 50))},
)  # fmt: skip
queries = st.fixed_dictionaries(
    {"op": st.just("query"), "type": st.sampled_from(TYPES)},
    optional={"id": ids, "data": data, "consistency": st.sampled_from(["eventual", "session", "strong", "x"]),
              "min_position": positions, "timeout_ms": mostly(st.integers(-1, 20))},
)  # fmt: skip
others = st.one_of(
    st.fixed_dictionaries({"op": st.sampled_from(["ping", "stats"])}, optional={"id": ids}),
    st.fixed_dictionaries({"op": st.just("subscribe")}, optional={"id": ids, "from_position": positions}),
    st.fixed_dictionaries({"op": st.just("auth")}, optional={"id": ids, "token": mostly(st.text(max_size=4))}),
)
# requests of a real op with plausible fields, so that they reach the handlers
well_aimed = st.integers(0, 6).flatmap(lambda n: (commands, queries, others)[n % 3 if n < 6 else 2])
anything = st.fixed_dictionaries(  # any op, any field, any type
    {"op": st.sampled_from(OPS) | json_values},
    optional={
        "id": ids,
        "type": st.sampled_from(TYPES) | json_values,
        "data": data,
        "consistency": st.sampled_from(["eventual", "session", "strong", "x"]) | json_values,
        "min_position": positions,
        "from_position": positions,
        "surprise": json_values,
    },
)
requests = (
    st.integers(0, 3)
    .flatmap(lambda n: well_aimed if n else anything)
    .map(lambda r: orjson.dumps(r, option=orjson.OPT_NON_STR_KEYS) + b"\n")
)
broken_json = st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass") + b"\n")
huge_lines = st.integers(MAX_LINE + 1, 3 * MAX_LINE).map(lambda n: b'{"op": "ping", "x": "' + b"y" * n + b'"}\n')
# Mostly requests (they reach the handlers); a huge line ends the connection, so it comes rarely.
payloads = st.lists(
    st.integers(0, 15).flatmap(
        lambda n: (
            requests if n < 12 else (broken_json, st.binary(max_size=300), st.binary(max_size=300), huge_lines)[n - 12]
        )
    ),
    min_size=1,
    max_size=8,
)


class Line:
    """A blocking socket that reads lines."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> bytes | None:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(name="served", scope="module")
def _served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BlockingPortal, App, int]]:
    """One server (toy bank, small max_line) in a background uvloop loop for the whole module."""
    path = tmp_path_factory.mktemp("fuzz")
    with (
        start_blocking_portal(backend_options={"use_uvloop": True}) as portal,
        portal.wrap_async_context_manager(serving(path, max_line=MAX_LINE, idle_timeout=30)) as (app, server),
    ):
        yield portal, app, server.port


@pytest.fixture(name="port", scope="module")
def _port(served: tuple[BlockingPortal, App, int]) -> int:
    return served[2]


@pytest.fixture(name="good", scope="module")
def _good(served: tuple[BlockingPortal, App, int]) -> Iterator[Line]:
    """A well-behaved connection that lives through every example, with an account every replica knows."""
    portal, app, port = served
    conn = Line(port)
    conn.send(b'{"id": "open", "op": "command", "type": "Open", "data": {"account": "fuzz-witness"}}\n')
    assert orjson.loads(conn.read() or b"null")["ok"]

    async def every_replica_has_it() -> None:
        await caught_up(app, 1)

    portal.call(every_replica_has_it)
    yield conn
    conn.close()


class TestFuzz:
    @LONG_RUN
    @given(payload=payloads)
    def test_garbage_does_not_disturb_others(self, port: int, good: Line, payload: list[bytes]) -> None:
        """Whatever one connection sends, it gets well-formed answers (or is closed) and others are served."""
        conn = Line(port)
        try:
            conn.send(b"".join(payload) + b'\n{"id": "end", "op": "ping"}\n')
            while True:  # until our sentinel is answered, or the server closed us (too_large, bad auth)
                raw = conn.read()
                if raw is None:
                    break
                message: Any = orjson.loads(raw)
                assert isinstance(message, dict)
                if "event" in message:
                    continue
                assert isinstance(message["ok"], bool)
                assert "id" in message
                if not message["ok"]:
                    assert set(message["error"]) == {"code", "message"}
                    assert message["error"]["code"] != "internal" or "ZeroDivisionError" in message["error"]["message"]
                if message["id"] == "end":
                    break
        finally:
            conn.close()
        good.send(b'{"id": 1, "op": "ping"}\n')
        good.send(b'{"id": 2, "op": "query", "type": "Balance", "data": {"account": "fuzz-witness"}}\n')
        first, second = orjson.loads(good.read() or b"null"), orjson.loads(good.read() or b"null")
        by_id = {first["id"]: first, second["id"]: second}
        assert by_id[1]["result"] == "pong"
        assert by_id[2]["ok"]
        assert isinstance(by_id[2]["result"], int)
