"""The type registry decodes JSON into dataclasses and names every bad field."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from soloist import BadRequest, UnknownType
from soloist._messages import TypeRegistry


@dataclass(frozen=True, slots=True, kw_only=True)
class Line:
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Order:
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
        """A valid payload becomes the dataclass, with nested lists as tuples of dataclasses."""
        order = registry.decode("Order", {"order_id": "o1", "lines": [{"sku": "a", "quantity": 2}], "weight": 3})
        assert order == Order(order_id="o1", lines=(Line(sku="a", quantity=2),), weight=3.0)

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
            ({"order_id": 1, "lines": []}, "order_id", "expected a string, got integer"),
            ({"order_id": "o", "lines": {}}, "lines", "expected an array, got object"),
            ({"order_id": "o", "lines": [{"sku": "a"}]}, "lines[0].quantity", "missing"),
            ({"order_id": "o", "lines": [{"sku": "a", "quantity": "2"}]}, "lines[0].quantity", "got string"),
            ({"order_id": "o", "lines": [{"sku": "a", "quantity": True}]}, "lines[0].quantity", "got boolean"),
            ({"order_id": "o", "lines": [], "rush": 1}, "rush", "expected a boolean"),
            ({"order_id": "o", "lines": [], "colour": "red"}, "colour", "unknown field"),
            ({"order_id": "o", "lines": [], "note": 5}, "note", "got integer"),
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
        with pytest.raises(BadRequest, match="expected an object"):
            registry.decode("Order", [1, 2])

    def test_null_allowed_only_for_optional(self, registry: TypeRegistry) -> None:
        """None is accepted for an optional field and refused for a required one."""
        assert registry.decode("Order", {"order_id": "o", "lines": [], "note": None}) == Order(order_id="o", lines=())
        with pytest.raises(BadRequest, match="got null"):
            registry.decode("Order", {"order_id": None, "lines": []})

    def test_name_of_unregistered_instance(self, registry: TypeRegistry) -> None:
        """Asking the name of an unregistered message class is an UnknownType."""
        with pytest.raises(UnknownType):
            registry.name_of(Line(sku="a", quantity=1))

    def test_register_twice_is_refused(self, registry: TypeRegistry) -> None:
        """A type name can be registered only once."""
        with pytest.raises(ValueError, match="twice"):
            registry.register(Order)
