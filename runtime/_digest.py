"""The replay digest: one hash of a replica's read models at a position.

``digest = sha256(canonical JSON of models.snapshot())``, canonical meaning msgspec's encoding with
object keys sorted (``order="sorted"``): two read-model objects that hold the same data give the same
digest whatever order their dicts were filled in. Lists keep their order (they are in log order).

It is computed in the loop, in one synchronous step, so the models cannot move while they are encoded:
the answer's ``position`` is the replica's position at that moment. Every replica, every replica
process and a fresh replay of the log (:func:`replay_digest`, ``soloist verify``) give the same digest at
the same position; a difference means a projection is not a pure function of the log (or a bug).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import msgspec

from ._errors import PersistenceError
from ._gc import gc_paused
from ._log import LogScanner, check_contiguous
from ._messages import TypeRegistry

if TYPE_CHECKING:
    import os

    from ._domain import Domain, ReadModels

__all__ = ["Digest", "digest_of", "replay_digest"]

_canonical: Final = msgspec.json.Encoder(order="sorted").encode


class Digest(NamedTuple):
    """A digest of read models and the log position they reflect."""

    digest: str
    position: int

    def to_wire(self) -> dict[str, object]:
        return {"digest": self.digest, "position": self.position}


def digest_of(models: ReadModels[Any]) -> str:
    """The hex sha256 of the canonical encoding of ``models.snapshot()``."""
    return hashlib.sha256(_canonical(models.snapshot())).hexdigest()


def replay_digest(
    domain: Domain[Any, Any, Any, Any], path: str | os.PathLike[str], *, upto: int | None = None
) -> Digest:
    """Replay the log at ``path`` (up to ``upto``, default its head) into fresh read models; their digest.

    Offline and synchronous (``soloist verify``): events go through the same decoder (and upcasters) as
    every other reader of the log.
    """
    if not Path(path).exists():
        raise PersistenceError(f"no log at {path}: give the path of an existing soloist SQLite log (--db PATH)")
    events = TypeRegistry("event", domain.events, upcasters=domain.upcasters)
    models = domain.read_models()
    apply = models.apply
    after = 0
    with LogScanner(path, events) as scanner:
        while upto is None or after < upto:
            with gc_paused():
                chunk = scanner.read(after, 4096)
                if not chunk:
                    break
                check_contiguous(Path(path), after, chunk)
                for event in chunk:
                    if upto is not None and event.position > upto:
                        break
                    apply(event)
                    after = event.position
    return Digest(digest_of(models), after)
