"""Upcasting: old versions of an event, read as the current one.

An event class declares its current schema version (``__schema__ = 3``; 1 when absent). The log stores
the version each event was written with. A domain registers *upcasters*, one per step::

    upcasters = {("ProductAdded", 1): product_added_v1_to_v2, ("ProductAdded", 2): product_added_v2_to_v3}

Each is a pure function from the decoded JSON object of version ``n`` (a fresh ``dict`` it may change
and return) to that of version ``n + 1``. Reading an event of version ``k < current`` applies the steps
``k, k + 1, ..., current - 1`` in order, then builds the current class. Writing always uses the current
version. The chain of a type must be contiguous up to its current version (checked when the registry is
built); an event older than its oldest upcaster, or newer than this process's code, is refused with
:class:`~._errors.UnknownSchemaVersion` instead of being misread.

Events at the current version never come here: they take msgspec's one-call decode (the fast path).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple, final

import msgspec

from ._errors import LogCorrupted, UnknownSchemaVersion

__all__ = ["Upcaster", "Upcasters", "UpcastChain", "build_chains"]

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
"""One step: the JSON object of version n -> the JSON object of version n + 1 (pure; may reuse its input)."""

Upcasters = Mapping[tuple[str, int], Upcaster]
"""(type name, the version a step starts from) -> that step."""

_as_object: Final = msgspec.json.Decoder(dict[str, Any]).decode


@final
class UpcastChain(NamedTuple):
    """The steps of one type, from its oldest readable version up to its current one."""

    type_name: str
    current: int
    oldest: int  # the oldest version that can be read (== current when there are no upcasters)
    steps: tuple[Upcaster, ...]  # steps[i] takes version oldest + i to oldest + i + 1

    def upcast(
        self, data: bytes | str | msgspec.Raw | Mapping[str, Any], schema: int, *, at: str = ""
    ) -> dict[str, Any]:
        """The JSON object of ``data`` (version ``schema``) brought to the current version."""
        if schema > self.current or schema < self.oldest:
            raise UnknownSchemaVersion(self.type_name, schema, self.current, oldest=self.oldest, at=at)
        if isinstance(data, Mapping):
            value = dict(data)
        else:
            try:
                value = _as_object(data)
            except msgspec.MsgspecError as exc:
                raise LogCorrupted(
                    f"event {self.type_name!r}{' ' + at if at else ''} (schema {schema}) is not a JSON object: {exc}"
                ) from None
        for step in self.steps[schema - self.oldest :]:
            value = step(value)
            if not isinstance(value, dict):
                raise TypeError(
                    f"an upcaster of {self.type_name!r} returned {type(value).__name__}, not a dict: "
                    "an upcaster must return the event's JSON object at the next version"
                )
        return value


def build_chains(kind: str, currents: Mapping[str, int], upcasters: Upcasters) -> dict[str, UpcastChain]:
    """Check ``upcasters`` against the registered types' current versions; one chain per type that has steps.

    Every step must name a registered type and start below its current version, and the steps of a type
    must be contiguous up to ``current - 1`` (a gap would leave versions that look readable but are not).
    """
    by_type: dict[str, dict[int, Upcaster]] = {}
    for key, step in upcasters.items():
        given: object = key  # a domain's mapping is not type-checked at run time
        if not (isinstance(given, tuple) and len(given) == 2 and type(given[0]) is str and type(given[1]) is int):
            raise TypeError(f"an upcaster key is (type name, from version), e.g. ('ProductAdded', 1); got {key!r}")
        name, version = key
        if name not in currents:
            raise ValueError(f"upcaster for {kind} type {name!r}, which is not registered (known: {sorted(currents)})")
        current = currents[name]
        if not 1 <= version < current:
            raise ValueError(
                f"upcaster ({name!r}, {version}) starts outside 1..{current - 1}: {name} is at schema version "
                f"{current} (its class's __schema__); an upcaster takes version n to n + 1 below it"
            )
        if not callable(step):
            raise TypeError(f"upcaster ({name!r}, {version}) is {type(step).__name__}, not a function")
        by_type.setdefault(name, {})[version] = step
    chains: dict[str, UpcastChain] = {}
    for name, steps in by_type.items():
        current = currents[name]
        oldest = min(steps)
        missing = [v for v in range(oldest, current) if v not in steps]
        if missing:
            raise ValueError(
                f"the upcasters of {name!r} go from version {oldest} to {current} with no step from version(s) "
                f"{missing}: add ({name!r}, {missing[0]}) so every version from {oldest} on can be read"
            )
        chains[name] = UpcastChain(name, current, oldest, tuple(steps[v] for v in range(oldest, current)))
    for name, current in currents.items():
        if name not in chains:
            chains[name] = UpcastChain(name, current, current, ())
    return chains
