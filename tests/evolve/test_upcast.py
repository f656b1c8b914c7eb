"""Schema versions and upcasting in the one row decoder: chains, mixed versions, refusals."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from soloist import LogCorrupted, RecordedEvent, UnknownSchemaVersion
from soloist._log import StoredRow, decode_rows
from soloist._messages import TypeRegistry, encode
from soloist._upcast import build_chains


class Renamed(msgspec.Struct, frozen=True, kw_only=True):
    """v3: v1 had ``title``; v2 renamed it ``name``; v3 added ``tags`` (derived from the name)."""

    __schema__ = 3

    name: str
    tags: tuple[str, ...]


class Plain(msgspec.Struct, frozen=True, kw_only=True):
    value: int


def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    data["name"] = data.pop("title")
    return data


def v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    data["tags"] = [word.lower() for word in data["name"].split()]
    return data


UPCASTERS = {("Renamed", 1): v1_to_v2, ("Renamed", 2): v2_to_v3}


@pytest.fixture(name="events")
def _events() -> TypeRegistry:
    """An event registry with a v3 type and its v1 -> v2 -> v3 chain."""
    return TypeRegistry("event", [Renamed, Plain], upcasters=UPCASTERS)


class TestUpcastChain:
    def test_each_version_is_read_as_the_current_one(self, events: TypeRegistry) -> None:
        """v1, v2 and v3 JSON of one event all decode to the same v3 Struct."""
        expected = Renamed(name="Blue Kettle", tags=("blue", "kettle"))
        assert events.decode_stored("Renamed", b'{"title": "Blue Kettle"}', 1) == expected
        assert events.decode_stored("Renamed", b'{"name": "Blue Kettle"}', 2) == expected
        assert events.decode_stored("Renamed", b'{"name": "Blue Kettle", "tags": ["blue", "kettle"]}', 3) == expected
        assert events.decode_stored("Renamed", encode(expected)) == expected  # no schema: the current one

    def test_writing_uses_the_current_version(self, events: TypeRegistry) -> None:
        """The writer stores the class's __schema__; types without one are version 1."""
        assert events.schema_of(Renamed(name="a", tags=())) == 3
        assert events.schema_of(Plain(value=1)) == 1
        assert events.current_schema("Renamed") == 3
        assert events.current_schema("Unknown", 7) == 7

    def test_a_newer_version_is_refused_with_the_fix(self, events: TypeRegistry) -> None:
        """An event written by newer code stops the reader instead of being misread."""
        with pytest.raises(UnknownSchemaVersion, match=r"'Renamed' is schema version 4.*up to version 3.*upgrade"):
            events.decode_stored("Renamed", b'{"name": "x", "tags": [], "extra": 1}', 4)
        assert issubclass(UnknownSchemaVersion, LogCorrupted)
        assert UnknownSchemaVersion.code == "unknown_schema"

    def test_a_version_without_upcaster_is_refused(self) -> None:
        """A v1 event of a v2 type that has no upcaster names the missing step."""
        registry = TypeRegistry("event", [Renamed], upcasters={("Renamed", 2): v2_to_v3})
        with pytest.raises(UnknownSchemaVersion, match=r"from version 2 to 3.*\('Renamed', 1\)"):
            registry.decode_stored("Renamed", b'{"title": "x"}', 1)
        plain = TypeRegistry("event", [Plain])
        with pytest.raises(UnknownSchemaVersion, match="is schema version 2"):
            plain.decode_stored("Plain", b'{"value": 1}', 2)

    def test_a_gap_in_the_chain_is_refused_when_registered(self) -> None:
        """Steps must be contiguous up to the current version."""
        with pytest.raises(ValueError, match=r"no step from version\(s\) \[2\]"):
            TypeRegistry("event", [Renamed], upcasters={("Renamed", 1): v1_to_v2})

    @pytest.mark.parametrize(
        ("key", "error", "match"),
        [
            (("Nope", 1), ValueError, "not registered"),
            (("Renamed", 3), ValueError, r"outside 1\.\.2"),
            (("Renamed", 0), ValueError, r"outside 1\.\.2"),
            ("Renamed", TypeError, "type name, from version"),
        ],
    )
    def test_bad_keys_are_refused(self, key: object, error: type[Exception], match: str) -> None:
        """A key that names no type or a version outside the chain is an error at wiring time."""
        with pytest.raises(error, match=match):
            build_chains("event", {"Renamed": 3}, {key: v1_to_v2})  # type: ignore[dict-item]

    def test_an_upcaster_that_breaks_the_event_is_reported(self) -> None:
        """A step returning a non-dict, or a result the class refuses, names the upcaster as the culprit."""
        bad = TypeRegistry("event", [Renamed], upcasters={("Renamed", 1): v1_to_v2, ("Renamed", 2): lambda d: d})
        with pytest.raises(TypeError, match=r"built an invalid version 3.*fix the upcaster"):
            bad.decode_stored("Renamed", b'{"title": "x"}', 1)
        worse = TypeRegistry(
            "event",
            [Renamed],
            upcasters={("Renamed", 1): v1_to_v2, ("Renamed", 2): lambda d: [d]},  # type: ignore[dict-item,return-value]
        )
        with pytest.raises(TypeError, match="not a dict"):
            worse.decode_stored("Renamed", b'{"title": "x"}', 1)

    def test_an_old_event_that_is_not_an_object_is_log_corruption(self, events: TypeRegistry) -> None:
        """Upcasting needs a JSON object."""
        with pytest.raises(LogCorrupted, match="not a JSON object"):
            events.decode_stored("Renamed", b"[1, 2]", 1)

    def test_wire_data_is_upcast_too(self, events: TypeRegistry) -> None:
        """decode() with a schema (a follower's path) upcasts JSON-native data and bytes alike."""
        expected = Renamed(name="A b", tags=("a", "b"))
        assert events.decode("Renamed", {"title": "A b"}, schema=1) == expected
        assert events.decode("Renamed", b'{"name": "A b"}', schema=2) == expected
        with pytest.raises(UnknownSchemaVersion):
            events.decode("Renamed", {"name": "A b", "tags": []}, schema=9)
        with pytest.raises(Exception, match="expected a JSON object"):
            events.decode("Renamed", [1], schema=1)

    def test_recorded_events_say_the_version_of_their_data(self, events: TypeRegistry) -> None:
        """After upcasting, as_current() sets each event's schema to its data's version (and sends it on the wire)."""
        old = RecordedEvent(position=1, stream="s", version=1, type="Renamed", data=None, recorded_at=0.0, schema=1)
        same = RecordedEvent(position=2, stream="s", version=2, type="Other", data={}, recorded_at=0.0, schema=5)
        out = events.as_current([old, same])
        assert [e.schema for e in out] == [3, 5]
        assert out[0].to_wire()["schema"] == 3
        kept = [same]
        assert events.as_current(kept) is kept  # nothing to change: no copy
        assert events.upcasting
        assert not TypeRegistry("event", [Plain]).upcasting


class TestRowDecoder:
    def test_an_unreadable_version_names_its_position(self, events: TypeRegistry) -> None:
        """decode_rows, the one row decoder of every reader, says where in the log the unreadable event is."""
        rows: list[StoredRow] = [
            (1, "s", 1, "Renamed", 1, b'{"title": "Old Kettle"}', "c1", None, 0.0),
            (2, "s", 2, "Plain", 1, b'{"value": 1}', "c2", None, 0.0),
            (3, "s", 3, "Renamed", 4, b'{"name": "x", "tags": [], "extra": 1}', "c3", None, 0.0),
        ]
        with pytest.raises(UnknownSchemaVersion, match=r"^event 'Renamed' at position 3 is schema version 4") as caught:
            decode_rows(rows, events)
        assert caught.value.__suppress_context__  # the unplaced first error is not shown beside it
        older = TypeRegistry("event", [Renamed, Plain], upcasters={("Renamed", 2): v2_to_v3})
        placed = r"'Renamed' at position 1 is schema version 1.*\('Renamed', 1\)"
        with pytest.raises(UnknownSchemaVersion, match=placed):
            decode_rows(rows[:2], older)
        assert [e.data for e in decode_rows(rows[:2], events)] == [
            Renamed(name="Old Kettle", tags=("old", "kettle")),
            Plain(value=1),
        ]
