"""A chunk's requests are the requests of its lines, one per line, however the stream was cut into chunks.

The server parses each chunk's complete lines in one call (:func:`parse_lines`) and falls back to
parsing line by line (:func:`parse_request`) when that call fails. These properties pin the fast path
to the slow one: for any stream of lines (requests, blank lines, CRLF, spaces, two objects on one
line, one object cut over two lines, garbage, lines at and over the size limit, a last line without
its newline) and any cut into chunks, the answers are those of the whole stream parsed line by line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import orjson
from hypothesis import given
from hypothesis import strategies as st

from soloist.net._framing import LineSplitter
from soloist.net._requests import PingRequest, RequestError, parse_lines, parse_request
from tests.net.harness import raw, serving
from tests.net.test_fuzz import LONG_RUN

if TYPE_CHECKING:
    from pathlib import Path

    from soloist.net._requests import Request

MAX_LINE = 96

Outcome = tuple[str, object]  # ("request", Request) | ("error", (code, id)) | ("too_large", None)


def per_line(line: bytes) -> Outcome | None:
    """The slow path's answer for one line (None for a blank line, which is not answered)."""
    if not line or line.isspace():
        return None
    try:
        return ("request", parse_request(line))
    except RequestError as exc:
        return ("error", (exc.error.code, exc.request_id))


def model(stream: bytes) -> list[Outcome]:
    """The whole stream, parsed line by line, stopping at the first line over the limit."""
    out: list[Outcome] = []
    for line in stream.split(b"\n"):
        if len(line) > MAX_LINE:
            out.append(("too_large", None))
            break
        outcome = per_line(line)
        if outcome is not None:
            out.append(outcome)
    return out


def server_path(chunks: list[bytes]) -> list[Outcome]:
    """What the connection does: split chunks into lines, parse each block at once, line by line if that fails."""
    splitter = LineSplitter(MAX_LINE)
    out: list[Outcome] = []

    def handle(block: bytes) -> None:
        try:
            out.extend(("request", request) for request in parse_lines(block))
        except RequestError:
            out.extend(o for o in map(per_line, block.split(b"\n")) if o is not None)

    for chunk in chunks:
        block, too_long = splitter.feed_block(chunk)
        if block is not None:
            handle(block)
        if too_long:
            out.append(("too_large", None))
            return out
    last = splitter.finish()  # EOF: a last line without its newline is a request too
    if last:
        handle(last)
    return out


ids = st.none() | st.integers(-3, 3) | st.text("ab", max_size=2)
requests = st.builds(
    lambda op, request_id: orjson.dumps({"op": op, "id": request_id} if request_id is not None else {"op": op}),
    st.sampled_from(["ping", "stats", "nope"]),
    ids,
)


def cut_inside(encoded: bytes, at: int) -> bytes:
    """One object cut over two lines at a token boundary (after a ``,`` or ``:``)."""
    marks = [i + 1 for i, byte in enumerate(encoded) if byte in b",:"]
    if not marks:
        return encoded
    i = marks[at % len(marks)]
    return encoded[:i] + b"\n" + encoded[i:]


lines = st.one_of(
    requests,
    requests,
    requests.map(lambda r: r + b"\r"),  # CRLF
    requests.map(lambda r: b" " + r + b"\t"),
    st.just(b""),
    st.sampled_from([b" ", b"\r", b"\t \r", b"\x0c"]),
    st.tuples(requests, requests).map(lambda pair: pair[0] + pair[1]),  # two objects on one line
    st.tuples(requests, requests).map(lambda pair: pair[0] + b" " + pair[1]),
    st.tuples(requests, st.integers(0, 8)).map(lambda pair: cut_inside(*pair)),  # one object over two lines
    st.sampled_from([b"{", b"}", b"[]", b"1", b'"x"', b"null", b"{}", b"}{", b"{}{}"]),
    st.binary(max_size=20).filter(lambda b: b"\n" not in b),
    st.integers(MAX_LINE - 2, MAX_LINE + 2).map(lambda n: b'{"op":"ping","id":"' + b"y" * (n - 20) + b'"}'),
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A stream of lines (the last one maybe without its newline) and a cut of it into chunks."""
    stream = b"\n".join(draw(st.lists(lines, max_size=12)))
    if draw(st.booleans()):
        stream += b"\n"
    cuts = sorted(draw(st.sets(st.integers(0, len(stream)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    return stream, [c for c in chunks if c]


class TestParseLines:
    @LONG_RUN
    @given(case=streams())
    def test_any_cut_into_chunks_gives_the_lines_requests(self, case: tuple[bytes, list[bytes]]) -> None:
        """Feeding the chunks gives the requests (and errors) of the whole stream parsed line by line."""
        stream, chunks = case
        assert server_path(chunks) == model(stream)

    @LONG_RUN
    @given(block=st.lists(lines, max_size=12).map(b"\n".join))
    def test_one_call_answers_as_each_line_would(self, block: bytes) -> None:
        """parse_lines is parse_request per non-blank line, or RequestError when one of them fails."""
        outcomes = [o for o in map(per_line, block.split(b"\n")) if o is not None]
        try:
            parsed = parse_lines(block)
        except RequestError:
            assert any(kind == "error" for kind, _ in outcomes)
        else:
            assert [("request", r) for r in parsed] == outcomes

    def test_two_objects_on_one_line_are_one_bad_line(self) -> None:
        """Two requests on one line are one malformed line, not two requests (decode_lines alone took both)."""
        try:
            parse_lines(b'{"op":"ping","id":1}{"op":"ping","id":2}\n{"op":"ping","id":3}')
        except RequestError:
            pass
        else:
            raise AssertionError("two objects on one line were accepted")
        assert per_line(b'{"op":"ping","id":1}{"op":"ping","id":2}') == ("error", ("bad_request", None))

    def test_one_object_over_two_lines_is_two_bad_lines(self) -> None:
        """An object cut by a newline is two malformed lines in one chunk, as it is in two."""
        block = b'{"op":"ping",\n"id":1}\n{"op":"ping","id":2}'
        assert server_path([block]) == server_path([block[:13], block[13:]]) == model(block)
        assert [kind for kind, _ in model(block)] == ["error", "error", "request"]

    def test_canonical_lines_take_the_one_call(self) -> None:
        """Well-formed lines separated by bare newlines parse in one call to the same requests."""
        block = b"\n".join(msgspec.json.encode({"op": "ping", "id": i}) for i in range(50))
        assert parse_lines(block) == [PingRequest(id=i) for i in range(50)]

    def test_crlf_and_blank_lines_parse(self) -> None:
        """CRLF endings, blank and whitespace-only lines: the requests of the non-blank lines."""
        block = b'{"op":"ping","id":1}\r\n\r\n  \n{"op":"ping","id":2}\r'
        requests: list[Request] = parse_lines(block)
        assert requests == [PingRequest(id=1), PingRequest(id=2)]


class TestOverTheWire:
    async def test_a_line_is_one_request(self, tmp_path: Path) -> None:
        """Two objects on a line and an object over two lines are answered as bad lines, one answer a line."""
        async with serving(tmp_path) as (_, server), raw(server) as conn:
            await conn.send(b'{"id":1,"op":"ping"}{"id":2,"op":"ping"}\n{"id":3,"op":\n"ping"}\n{"id":4,"op":"ping"}\n')
            answers = [await conn.answer() for _ in range(4)]
            assert [a["ok"] for a in answers] == [False, False, False, True]
            assert {a["error"]["code"] for a in answers[:3]} == {"bad_request"}
            assert answers[3]["id"] == 4
            await conn.request(id=5, op="ping")
            assert (await conn.answer())["id"] == 5  # nothing else was answered in between
