"""Line framing: splitting chunks into lines under a length limit, and answer encoding."""

from __future__ import annotations

import itertools

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from soloist.net._framing import LineSplitter, encode_error, encode_ok


class TestLineSplitter:
    def test_lines_across_chunks(self) -> None:
        """A line split over several chunks comes out whole, once it is finished."""
        splitter = LineSplitter(100)
        assert splitter.feed(b'{"a"') == ([], False)
        assert splitter.feed(b": 1}\n{") == ([b'{"a": 1}'], False)
        assert splitter.pending == 1
        assert splitter.feed(b"}\n\n") == ([b"{}", b""], False)

    def test_unfinished_line_over_the_limit(self) -> None:
        """An unfinished line longer than the limit is reported without keeping its bytes."""
        splitter = LineSplitter(10)
        assert splitter.feed(b"x" * 8) == ([], False)
        assert splitter.feed(b"x" * 3) == ([], True)
        assert splitter.pending == 0

    def test_long_line_after_good_lines(self) -> None:
        """Lines before a too-long line are returned; the too-long one is flagged, not returned."""
        splitter = LineSplitter(5)
        lines, too_long = splitter.feed(b"ab\ncd\n" + b"y" * 6 + b"\nef\n")
        assert (lines, too_long) == ([b"ab", b"cd"], True)

    def test_limit_excludes_newline(self) -> None:
        """A line of exactly ``max_line`` bytes is accepted."""
        assert LineSplitter(3).feed(b"abc\n") == ([b"abc"], False)

    def test_rejects_nonsense_limit(self) -> None:
        """max_line must be positive."""
        with pytest.raises(ValueError, match="max_line"):
            LineSplitter(0)

    @settings(max_examples=80, deadline=None)
    @given(
        lines=st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")), max_size=20),
        cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=10),
    )
    def test_any_chunking_gives_the_same_lines(self, lines: list[bytes], cuts: list[int]) -> None:
        """However the byte stream is cut into chunks, the same lines come out in order."""
        data = b"".join(line + b"\n" for line in lines)
        points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
        splitter = LineSplitter(20)
        out: list[bytes] = []
        for start, end in itertools.pairwise(points):
            got, too_long = splitter.feed(data[start:end])
            assert not too_long
            out += got
        assert out == lines
        assert splitter.pending == 0


class TestEncoding:
    def test_ok_and_error_lines(self) -> None:
        """Answers are one JSON object and a newline, with the id echoed."""
        assert orjson.loads(encode_ok("a", {"x": 1}, 7)) == {"id": "a", "ok": True, "result": {"x": 1}, "position": 7}
        assert encode_ok(1, None).endswith(b"\n")
        error = orjson.loads(encode_error(None, "bad_request", "no"))
        assert error == {"id": None, "ok": False, "error": {"code": "bad_request", "message": "no"}}
