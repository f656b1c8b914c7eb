"""What the runtime needs from a domain: pure decide/evolve, message types, read models, error mapping.

A domain never imports the runtime. One small wiring module on the domain's side builds a
:class:`Domain` from the domain's pure functions; the runtime only sees this bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from ._errors import CQRSError
    from ._messages import RecordedEvent
    from ._process import ProcessManager
    from ._upcast import Upcasters

__all__ = ["Domain", "ReadModels"]

S = TypeVar("S")  # the state of one stream
C = TypeVar("C")  # the domain's commands (usually a union of frozen dataclasses)
E = TypeVar("E")  # the domain's events
Q = TypeVar("Q")  # the domain's queries
Q_contra = TypeVar("Q_contra", contravariant=True)


class ReadModels(Protocol[Q_contra]):
    """One replica's denormalised read models: applies events in log order and answers queries.

    No business rules live here. ``snapshot`` returns JSON-native data that ``restore`` accepts.
    Generic in the queries it answers. ``event.data`` is one of the domain's events, but ``RecordedEvent``
    is not generic in its data (a plain NamedTuple, the cheapest to build per event), so the events are
    checked through ``decide``/``evolve``/``stream_of`` instead (see :class:`Domain`).
    """

    def apply(self, event: RecordedEvent) -> None: ...

    def query(self, query: Q_contra) -> object: ...

    def snapshot(self) -> object: ...

    def restore(self, state: object) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Domain(Generic[S, C, E, Q]):
    """A domain bound to the runtime, generic over its state, command, event and query types.

    Declare it as ``DOMAIN: Domain[State, Command, Event, Query] = Domain(...)`` and mypy checks the
    domain's functions against what the runtime calls them with:

    - ``decide(states, command) -> events``: pure; ``states`` maps stream id -> that stream's state
      (absent = no events yet). Raises one of ``errors``' keys to reject.
    - ``evolve(state | None, event) -> state``: pure; the new state of ``stream_of(event)`` (the stream the
      event belongs to and is versioned in), and of each stream ``affects(event)`` names.
    - ``affects(event) -> streams``: optional; the streams *besides its own* whose state the event also
      changes. The single writer sees every stream, so one event may keep several streams' write models
      in step (the shop's ``OrderPlaced`` takes stock from its products) instead of one event per stream.
    - ``read_models()``: a fresh :class:`ReadModels` for one replica.
    - ``read_models_version``: the version of what ``read_models().snapshot()`` produces, stored in each
      read-model checkpoint; raise it with read-model code whose snapshots the old ``restore`` (or the new
      one the old snapshots) would misread: a checkpoint of another version is skipped and the log replayed.
    - ``errors``: domain exception class -> runtime error class (e.g. ``RuleViolation -> DomainError``).
    - ``seed``: commands to run when the log is empty (used by ``soloist serve``).
    - ``states``: the classes ``evolve`` returns; without them the write model is rebuilt from the log.
    - ``upcasters``: ``(event type name, from version) -> step`` to read events written with an older
      ``__schema__`` as the current one (see ``docs/evolution.md``).
    - ``processes``: process managers (:class:`soloist.ProcessManager`) the writer App runs beside it.
    """

    name: str
    commands: Sequence[type]
    events: Sequence[type]
    queries: Sequence[type]
    decide: Callable[[Mapping[str, S], C], Sequence[E]]
    evolve: Callable[[S | None, E], S]
    stream_of: Callable[[E], str]
    read_models: Callable[[], ReadModels[Q]]
    read_models_version: int = 1  # in every read-model checkpoint's header; another version is not restored
    errors: Mapping[type[Exception], type[CQRSError]] = field(default_factory=dict)
    states: Sequence[type] = ()  # the write-model state classes (Structs): lets the writer checkpoint its model
    seed: Callable[[], Sequence[object]] | None = None
    affects: Callable[[E], Sequence[str]] | None = None
    upcasters: Upcasters = field(default_factory=dict)  # (event type, from version) -> step to version + 1
    processes: Sequence[ProcessManager[Any]] = ()  # run by a writer App (not by followers); see runtime/_process.py

    def translate(self, exc: Exception) -> CQRSError | None:
        """The runtime error for a domain exception, or None if the domain did not declare it."""
        for cls in type(exc).__mro__:
            target = self.errors.get(cls) if issubclass(cls, Exception) else None
            if target is not None:
                error = target(str(exc))
                error.__cause__ = exc
                return error
        return None
