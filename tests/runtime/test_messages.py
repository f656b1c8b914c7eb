"""The type registry decodes JSON into frozen msgspec Structs and names every bad field."""

from __future__ import annotations

import msgspec
import pytest

from soloist import BadRequest, UnknownType
from soloist._messages import TypeRegistry


class Line(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sku: str
    quantity: int


class Order(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    order_id: str
    lines: tuple[Line, ...]
    note: str | None = None
    rush: bool = False
    weight: float = 0.0


@pytest.fixture(name="registry")
def _registry() -> TypeRegistry:
    return TypeRegistry("command", [Order])


class TestTypeRegistry:
    def test_decodes_nested_dataclasses(self, registry: TypeRegistry) -> None:
        """A valid payload becomes the Struct, with nested arrays as tuples of Structs, from JSON or Python values."""
        order = registry.decode("Order", {"order_id": "o1", "lines": [{"sku": "a", "quantity": 2}], "weight": 3})
        assert order == Order(order_id="o1", lines=(Line(sku="a", quantity=2),), weight=3.0)
        raw = b'{"order_id": "o1", "lines": [{"sku": "a", "quantity": 2}], "weight": 3}'
        assert registry.decode("Order", raw) == order

    def test_unknown_type_lists_known(self, registry: TypeRegistry) -> None:
        """An unregistered type name is an UnknownType that lists the known names."""
        with pytest.raises(UnknownType, match=r"unknown command type 'Nope'.*Order"):
            registry.decode("Nope", {})

    def test_non_string_type_name(self, registry: TypeRegistry) -> None:
        """A type name that is not a string is an UnknownType, not a crash."""
        with pytest.raises(UnknownType):
            registry.decode(["Order"], {})

    @pytest.mark.parametrize(
        ("data", "field", "message"),
        [
            ({"lines": []}, "order_id", "missing"),
            ({"order_id": 1, "lines": []}, "order_id", "expected `str`, got `int`"),
            ({"order_id": "o", "lines": {}}, "lines", "expected `array`, got `object`"),
            ({"order_id": "o", "lines": [{"sku": "a"}]}, "lines[0].quantity", "missing"),
            ({"order_id": "o", "lines": [{"sku": "a", "quantity": "2"}]}, "lines[0].quantity", "got `str`"),
            ({"order_id": "o", "lines": [{"sku": "a", "quantity": True}]}, "lines[0].quantity", "got `bool`"),
            ({"order_id": "o", "lines": [], "rush": 1}, "rush", "expected `bool`"),
            ({"order_id": "o", "lines": [], "colour": "red"}, "colour", "unknown field"),
            ({"order_id": "o", "lines": [{"sku": "a", "quantity": 1, "x": 0}]}, "lines[0].x", "unknown field"),
            ({"order_id": "o", "lines": [], "note": 5}, "note", "got `int`"),
        ],
    )
    def test_bad_fields_are_named(
        self, registry: TypeRegistry, data: dict[str, object], field: str, message: str
    ) -> None:
        """Each wrong, missing or unknown field raises BadRequest naming that field."""
        with pytest.raises(BadRequest, match=message) as info:
            registry.decode("Order", data)
        assert info.value.field == field
        assert field in str(info.value)

    def test_data_must_be_an_object(self, registry: TypeRegistry) -> None:
        """A payload that is not a JSON object is a BadRequest."""
        with pytest.raises(BadRequest, match="expected `object`"):
            registry.decode("Order", [1, 2])

    def test_null_allowed_only_for_optional(self, registry: TypeRegistry) -> None:
        """None is accepted for an optional field and refused for a required one."""
        assert registry.decode("Order", {"order_id": "o", "lines": [], "note": None}) == Order(order_id="o", lines=())
        with pytest.raises(BadRequest, match="got `null`"):
            registry.decode("Order", {"order_id": None, "lines": []})

    def test_name_of_unregistered_instance(self, registry: TypeRegistry) -> None:
        """Asking the name of an unregistered message class is an UnknownType."""
        with pytest.raises(UnknownType):
            registry.name_of(Line(sku="a", quantity=1))

    def test_register_twice_is_refused(self, registry: TypeRegistry) -> None:
        """A type name can be registered only once."""
        with pytest.raises(ValueError, match="twice"):
            registry.register(Order)

    def test_commands_must_forbid_unknown_fields(self) -> None:
        """A command class that would silently ignore a client's typo is refused at registration."""

        class Lax(msgspec.Struct, frozen=True, kw_only=True):
            name: str

        with pytest.raises(TypeError, match="forbid_unknown_fields=True"):
            TypeRegistry("command", [Lax])
        TypeRegistry("event", [Lax])  # events come from our own log: allowed

    def test_only_frozen_structs_register(self) -> None:
        """Mutable Structs and other classes are refused with the fix in the message."""

        class Loose(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
            name: str

        with pytest.raises(TypeError, match="frozen=True"):
            TypeRegistry("query", [Loose])
        with pytest.raises(TypeError, match=r"msgspec\.Struct"):
            TypeRegistry("query", [dict])

    def test_malformed_json_is_a_bad_request(self, registry: TypeRegistry) -> None:
        """Bytes that are not JSON are a BadRequest that says so."""
        with pytest.raises(BadRequest, match="not JSON"):
            registry.decode("Order", b"{not json")

    def test_stored_events_of_unknown_types_stay_plain_json(self) -> None:
        """A reader of the log keeps an event type it does not know as plain JSON values."""
        events = TypeRegistry("event", [Line])
        assert events.decode_stored("Line", b'{"sku": "a", "quantity": 1}') == Line(sku="a", quantity=1)
        assert events.decode_stored("Newer", b'{"x": [1, 2]}') == {"x": [1, 2]}
