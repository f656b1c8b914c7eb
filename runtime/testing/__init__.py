"""A test kit for domain authors: scenarios for deciders and process managers, and a real App and server.

Deciders::

    from soloist.testing import decider
    decider(DOMAIN).given(CustomerRegistered(...), ProductAdded(...)).when(PlaceOrder(...)).then(OrderPlaced(...), ...)
    decider(DOMAIN).given().when(PlaceOrder(...)).then_rejected("does not exist")

Process managers (given committed events, expect commands; ``at`` moves the clock past the last event)::

    from soloist.testing import process
    process(CHECKOUT).given(PaymentDeclined(...)).then_commands(CancelOrder(...))
    process(CHECKOUT).given(PaymentRequested(...)).at(10.0).then_keys("checkout:o-1:timeout")

A failed expectation raises :class:`ScenarioFailed` (an ``AssertionError``) whose message shows the given events,
the command, and a line-by-line difference between what was expected and what came out.

Integration tests: :func:`open_app` runs an App on a log file, :func:`serve` a server for it on a free port of
127.0.0.1 with a connected client. ``soloist.testing.plugin`` (a pytest plugin, registered through the
``pytest11`` entry point) offers them as the factory fixtures ``soloist_app`` and ``soloist_client``.
"""

from __future__ import annotations

import difflib
import re
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, final

import anyio

from .._app import App
from .._messages import RecordedEvent
from .._process import Call, Issue
from ..net import Client, Server

if TYPE_CHECKING:
    import os
    from collections.abc import AsyncIterator, Callable, Sequence

    from .._domain import Domain
    from .._process import ProcessManager, Step

__all__ = [
    "DeciderScenario",
    "ProcessScenario",
    "ScenarioFailed",
    "decider",
    "open_app",
    "process",
    "serve",
]


class ScenarioFailed(AssertionError):
    """A scenario's outcome differs from its expectation; the message shows the difference."""


def _lines(items: Sequence[object]) -> list[str]:
    return [repr(item) for item in items] or ["(nothing)"]


def _differ(title: str, context: list[str], expected: Sequence[object], actual: Sequence[object]) -> ScenarioFailed:
    diff = difflib.ndiff(_lines(expected), _lines(actual))
    body = "\n".join(f"  {line}" for line in diff if not line.startswith("?"))
    return ScenarioFailed("\n".join([title, *context, "difference (- expected, + actual):", body]))


# -- deciders --------------------------------------------------------------------------------------


@final
class DeciderScenario:
    """``given(*events).when(command).then(*events)`` / ``.then_rejected(match)`` against a domain's decider."""

    def __init__(self, domain: Domain[Any, Any, Any, Any], given: Sequence[object] = (), command: object = None):
        self._domain = domain
        self._given = tuple(given)
        self._command = command

    def given(self, *events: object) -> DeciderScenario:
        """The events already in the log (folded with the domain's ``evolve``, stream by stream)."""
        return DeciderScenario(self._domain, (*self._given, *events), self._command)

    def when(self, command: object) -> DeciderScenario:
        return DeciderScenario(self._domain, self._given, command)

    def _context(self) -> list[str]:
        given = ", ".join(repr(e) for e in self._given) or "(no events)"
        return [f"given: {given}", f"when:  {self._command!r}"]

    def _decide(self) -> list[object]:
        domain = self._domain
        states: dict[str, object] = {}
        affects = domain.affects
        for event in self._given:  # folded as the writer folds them: the event's stream, then those it affects
            stream = domain.stream_of(event)
            states[stream] = domain.evolve(states.get(stream), event)
            for other in affects(event) if affects is not None else ():
                states[other] = domain.evolve(states.get(other), event)
        if self._command is None:
            raise ScenarioFailed("a decider scenario needs .when(command) before .then(...)")
        return list(domain.decide(states, self._command))

    def then(self, *expected: object) -> list[object]:
        """The command is accepted and emits exactly ``expected``, in order; returns them."""
        try:
            actual = self._decide()
        except Exception as exc:
            context = [*self._context(), f"expected events, but it raised {type(exc).__name__}: {exc}"]
            raise ScenarioFailed("\n".join(["the command was rejected", *context])) from exc
        if actual != list(expected):
            raise _differ("the command emitted other events", self._context(), expected, actual)
        return actual

    def then_rejected(self, match: str = "") -> Exception:
        """The command is rejected with an error the domain declares (``Domain.errors``) whose message matches."""
        try:
            actual = self._decide()
        except Exception as exc:
            if self._domain.translate(exc) is None:
                title = "the decider raised an error the domain does not declare"
                context = [*self._context(), f"raised {type(exc).__name__}: {exc}"]
                raise ScenarioFailed("\n".join([title, *context])) from exc
            if not re.search(match, str(exc)):
                context = [*self._context(), f"message: {exc}", f"pattern: {match!r}"]
                raise ScenarioFailed("\n".join(["the rejection's message does not match", *context])) from exc
            return exc
        raise _differ("the command was accepted, expected a rejection", self._context(), [], actual)


def decider(domain: Domain[Any, Any, Any, Any]) -> DeciderScenario:
    """A scenario against ``domain``'s decide/evolve: ``decider(DOMAIN).given(...).when(...).then(...)``."""
    return DeciderScenario(domain)


# -- process managers ------------------------------------------------------------------------------

_T0 = 1_700_000_000.0  # the wall-clock time at which a scenario's first event was recorded


@final
class ProcessScenario:
    """``given(*events)`` committed in order, ``at(seconds)`` later: which steps does the process want?"""

    def __init__(
        self,
        manager: ProcessManager[Any],
        given: Sequence[object] = (),
        after: float = 0.0,
        stream_of: Callable[[object], str] | None = None,
    ) -> None:
        self._manager = manager
        self._given = tuple(given)
        self._after = after
        self._stream_of = stream_of

    def given(self, *events: object) -> ProcessScenario:
        """Events committed one per second from a fixed time (positions 1, 2, ...)."""
        return ProcessScenario(self._manager, (*self._given, *events), self._after, self._stream_of)

    def at(self, seconds: float) -> ProcessScenario:
        """Look ``seconds`` after the last given event was recorded (timers due by then fire)."""
        return ProcessScenario(self._manager, self._given, seconds, self._stream_of)

    def recorded(self) -> list[RecordedEvent]:
        """The given events as the log would hand them to the process."""
        stream_of = self._stream_of
        return [
            RecordedEvent(
                position=i,
                stream=stream_of(event) if stream_of is not None else "",
                version=0,
                type=type(event).__name__,
                data=event,
                recorded_at=_T0 + i,
            )
            for i, event in enumerate(self._given, start=1)
        ]

    def state(self) -> object:
        """The process's state after folding the given events."""
        manager = self._manager
        state = manager.initial()
        for event in self.recorded():
            state = manager.evolve(state, event)
        return state

    def steps(self) -> list[Step]:
        now = _T0 + len(self._given) + self._after
        return self._manager.wanted(self.state(), now)

    def _context(self) -> list[str]:
        given = ", ".join(repr(e) for e in self._given) or "(no events)"
        return [f"given: {given}", f"at:    {self._after:g}s after the last event"]

    def then_commands(self, *expected: object) -> list[object]:
        """The process wants exactly these commands issued (calls to outside systems are not compared)."""
        actual = [s.command for s in self.steps() if isinstance(s, Issue)]
        if actual != list(expected):
            raise _differ("the process wants other commands", self._context(), expected, actual)
        return actual

    def then_keys(self, *expected: str) -> list[str]:
        """The process wants exactly the steps with these keys (commands and calls), in order."""
        actual = [s.key for s in self.steps()]
        if actual != list(expected):
            raise _differ("the process wants other steps", self._context(), expected, actual)
        return actual

    async def then_call(self, key: str) -> object:
        """Run the wanted call ``key`` (against whatever outside system the manager holds); the command it returns."""
        for step in self.steps():
            if isinstance(step, Call) and step.key == key:
                return await step.call(key)
        raise _differ(f"the process wants no call {key!r}", self._context(), [key], [s.key for s in self.steps()])


def process(manager: ProcessManager[Any], *, stream_of: Callable[[object], str] | None = None) -> ProcessScenario:
    """A scenario against a process manager: ``process(M).given(...).at(s).then_commands(...)``."""
    return ProcessScenario(manager, stream_of=stream_of)


# -- integration -----------------------------------------------------------------------------------


@asynccontextmanager
async def open_app(
    domain: Domain[Any, Any, Any, Any], path: str | os.PathLike[str], **options: Any
) -> AsyncIterator[App]:
    """A real App on the SQLite log ``path`` (one replica unless ``replicas=`` says otherwise)."""
    options.setdefault("replicas", 1)
    async with App(domain, path, **options) as app:
        yield app


@asynccontextmanager
async def serve(app: App, **options: Any) -> AsyncIterator[Client]:
    """A server for ``app`` on a free port of 127.0.0.1 and a client connected to it (``client.address``)."""
    async with anyio.create_task_group() as tg:
        server: Server = await tg.start(Server(app, host="127.0.0.1", port=0, **options).serve)
        try:
            async with Client.connect("127.0.0.1", server.port) as client:
                yield client
        finally:
            tg.cancel_scope.cancel()
