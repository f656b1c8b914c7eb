"""The base of every shop message (commands, events, queries, write-model states).

A frozen, keyword-only ``msgspec.Struct``: the runtime decodes JSON straight into these classes in C,
with errors that name the field (``lines[0].quantity``). ``forbid_unknown_fields`` turns a client's typo
into an error instead of a silent default; ``gc=False`` keeps millions of replayed events out of the
cyclic garbage collector's way (they never form reference cycles).
"""

from __future__ import annotations

import msgspec

__all__ = ["Message"]


class Message(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """A frozen, keyword-only, strictly decoded shop value.

    Subclasses repeat ``frozen=True, kw_only=True``: msgspec applies ``kw_only`` to the fields a class itself
    declares, and type checkers read each class's own keywords (the other options are inherited).
    """
