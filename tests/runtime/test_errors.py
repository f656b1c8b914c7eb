"""The one error tree: one wire code per class, a code -> class table, codes that round-trip exactly."""

from __future__ import annotations

import pytest

import soloist
from soloist import (
    ActorStopped,
    BadRequest,
    Broken,
    Closed,
    CommandTimeout,
    ConcurrencyError,
    ConsistencyTimeout,
    CQRSError,
    DomainError,
    InternalError,
    NotFound,
    Overloaded,
    RemoteError,
    TooLarge,
    Unauthorized,
    UnknownOp,
    UnknownType,
)
from soloist._errors import WIRE_CODES, error_from_wire


def tree(root: type[CQRSError] = CQRSError) -> list[type[CQRSError]]:
    """Every class of soloist's error tree (subclasses defined elsewhere, e.g. in tests, are left out)."""
    found = [root]
    for sub in root.__subclasses__():
        if sub.__module__.startswith("soloist."):
            found.extend(tree(sub))
    return found


TREE = tree()


class TestCodes:
    def test_every_class_owns_its_code(self) -> None:
        """Each class of the tree sets its own code, no two share one, and the table maps it back."""
        codes = [cls.code for cls in TREE]
        assert len(codes) == len(set(codes)), codes
        for cls in TREE:
            assert "code" in vars(cls), f"{cls.__name__} inherits its code"
            assert WIRE_CODES[cls.code] is cls
        assert set(WIRE_CODES.values()) == set(TREE)

    def test_the_tree_is_public(self) -> None:
        """Every class of the tree is exported by soloist, under its own name."""
        for cls in TREE:
            assert getattr(soloist, cls.__name__) is cls

    def test_the_first_codes_kept_their_owners(self) -> None:
        """The codes of the first protocol version still name the classes that owned them."""
        first = {
            "bad_request": BadRequest,
            "unknown_type": UnknownType,
            "unknown_op": UnknownOp,
            "rejected": DomainError,
            "not_found": NotFound,
            "conflict": ConcurrencyError,
            "overloaded": Overloaded,
            "timeout": ConsistencyTimeout,
            "unauthorized": Unauthorized,
            "too_large": TooLarge,
            "internal": InternalError,
        }
        for code, cls in first.items():
            assert WIRE_CODES[code] is cls

    def test_a_second_owner_of_a_code_is_refused(self) -> None:
        """Defining a class that claims a taken code fails at once, and the table is unchanged."""
        with pytest.raises(TypeError, match=r"'rejected' of .*Clash is already owned by DomainError"):

            class Clash(CQRSError):
                code = "rejected"

        assert WIRE_CODES["rejected"] is DomainError

    def test_a_subclass_without_a_code_travels_as_its_parent(self) -> None:
        """A domain's own subclass (no code of its own) is not registered and answers with its parent's code."""

        class OutOfStock(DomainError):
            pass

        assert OutOfStock.code == "rejected"
        assert OutOfStock not in WIRE_CODES.values()

    def test_closed_and_broken_are_both_actor_stopped(self) -> None:
        """'You closed it' and 'it died' are different classes that `except ActorStopped` still catches."""
        assert issubclass(Closed, ActorStopped)
        assert issubclass(Broken, ActorStopped)
        assert Closed.code != Broken.code


class TestFromWire:
    @pytest.mark.parametrize("cls", TREE, ids=lambda cls: cls.__name__)
    def test_round_trip(self, cls: type[CQRSError]) -> None:
        """error_from_wire(cls.code, message) is exactly cls, with the server's message."""
        error = error_from_wire(cls.code, "the server's words")
        assert type(error) is cls
        assert str(error) == "the server's words"
        assert error.code == cls.code

    def test_bad_request_fields(self) -> None:
        """Request errors from the wire name the field they are about where the class implies one."""
        assert error_from_wire("bad_request", "m").field is None  # type: ignore[attr-defined]
        assert error_from_wire("unknown_type", "m").field == "type"  # type: ignore[attr-defined]
        assert error_from_wire("unknown_op", "m").field == "op"  # type: ignore[attr-defined]

    def test_unknown_code_keeps_the_code(self) -> None:
        """A code this client does not know (a newer server) is a RemoteError that keeps code and message."""
        error = error_from_wire("quota_exceeded", "too many")
        assert type(error) is RemoteError
        assert error.code == "quota_exceeded"
        assert str(error) == "too many"
        odd = error_from_wire(42, {"not": "text"})
        assert type(odd) is RemoteError
        assert odd.code == "42"
        assert str(odd) == "{'not': 'text'}"

    def test_in_process_values_still_work(self) -> None:
        """The value-taking constructors build the messages in-process errors always had."""
        assert "position 7" in str(ConsistencyTimeout(7, 3, 1.0))
        assert CommandTimeout("x").code == "command_timeout"
        assert UnknownOp("no such op").field == "op"
