"""Errors of the shop domain.

::

    ShopError(Exception)
     +-- RuleViolation   a command broke a business rule; nothing was emitted
     +-- NotFound        a query asked for something that does not exist
     +-- InvalidQuery    a query's parameters are out of range

The domain does not import the runtime; the wiring module translates these into its error tree.
`NotFound` and `InvalidQuery` keep their parts in ``args`` (so they pickle) and format on ``str()``.
"""

from __future__ import annotations

__all__ = ["InvalidQuery", "NotFound", "RuleViolation", "ShopError"]


class ShopError(Exception):
    """Root of every error the shop domain raises on purpose."""


class RuleViolation(ShopError):
    """A command broke a business rule; the message says which, with the offending values."""


class NotFound(ShopError):
    """A query asked for a thing that does not exist, e.g. ``NotFound("product", "A1")``."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(kind, key)
        self.kind = kind
        self.key = key

    def __str__(self) -> str:
        return f"{self.kind} {self.key!r} not found"


class InvalidQuery(ShopError):
    """A query parameter is out of range, e.g. ``InvalidQuery("limit", 0, 1, 100)``."""

    def __init__(self, field: str, value: object, low: int, high: int) -> None:
        super().__init__(field, value, low, high)
        self.field = field
        self.value = value
        self.low = low
        self.high = high

    def __str__(self) -> str:
        return f"{self.field} must be between {self.low} and {self.high}, got {self.value!r}"
