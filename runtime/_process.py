"""Process managers: pure code that reacts to committed events by issuing commands, run as a reader of the log.

A :class:`ProcessManager` is declared like a decider, as pure functions:

- ``evolve(state, event) -> state`` folds one committed :class:`RecordedEvent` into the process's state
  (it may mutate and return the same object); ``events``, if given, names the classes it reads, and only
  those are handed to it. The state *is* a projection of the log: after a restart,
  or a ``kill -9``, the runner folds the log again from position 0 and arrives at the same state.
- ``steps(state, now) -> [Issue | Call]`` says what the process wants done *now*: commands to issue and
  calls to outside systems. Level-triggered: a step is wanted as long as the state says so, and it stops
  being wanted when the events it caused (or others) have been folded in. Timers are part of the state
  (a deadline = the causing event's ``recorded_at`` + a delay) and ``steps`` compares them with ``now``,
  so a restart recomputes every timer and loses none.
- ``wake_at(state) -> float | None`` is the earliest wall-clock time at which ``steps`` could change
  without a new event (the next deadline), so the runner sleeps until then.

Many instances: a process whose state holds many independent instances (the shop's checkout: one per open
order) declares them with :class:`Instances` instead of ``steps``/``wake_at``: ``of(event)`` names the instance an
event concerns, ``keys(state)`` lists them, and ``steps``/``wake_at`` answer for one instance. The runner then asks
only the instances a committed batch touched (and those whose timer fell due) what they want, so a batch costs
the same with ten open instances or ten thousand. A manager with one ``steps(state, now)`` is run as one
instance: every batch that folds one of its events asks the whole state (measured on the checkout declared so:
4,000 open orders took 75% of the loop, and the backlog grew faster than it drained).

Effects exactly once: every step carries a key derived from what caused it (``"checkout:o-1:cancel"``).
A command is executed with that key as its idempotency key, so re-issuing it after a crash is a duplicate
the writer recognises; a :class:`Call` hands the key to the outside system (which must be idempotent by
it) and the command that records the call's outcome is executed under the same key.

Failures are visible in :meth:`ProcessRunner.statistics`: an event on which ``evolve`` raises is parked
(the others keep flowing), a step whose command fails for a reason that retrying cannot fix (a bad
command, a persistence failure) is parked, a command the domain rejects is counted and not re-issued,
transient failures (an overloaded writer, an outside call that fails or times out) are retried with
exponential backoff while the step is wanted. An operator retries or skips a parked item by its key.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, NoReturn, TypeAlias, TypeVar, final

import anyio
import msgspec
import structlog

from ._errors import ActorStopped, ConcurrencyError, CQRSError, DomainError, NotFound, Overloaded
from ._messages import encode

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence

    from anyio.abc import TaskGroup, TaskStatus

    from ._broadcast import Subscription
    from ._messages import Receipt, RecordedEvent

__all__ = [
    "Call",
    "Instances",
    "Issue",
    "Parked",
    "ProcessManager",
    "ProcessRunner",
    "ProcessStatistics",
    "Step",
]

_log = structlog.get_logger("soloist.process")

P = TypeVar("P")


class Issue(NamedTuple):
    """Execute ``command`` with idempotency key ``key``."""

    key: str
    command: object


class Call(NamedTuple):
    """Call an outside system: ``call(key)`` returns the command that records the outcome (run under ``key``).

    The outside system must be idempotent by ``key``: a call repeated after a crash or a timeout must not
    have a second effect. A call that raises or takes longer than the manager's ``attempt_timeout`` is
    retried with backoff for as long as ``steps`` still wants it; giving up is the process's own decision
    (a deadline in its state after which it wants a compensating step instead).
    """

    key: str
    call: Callable[[str], Awaitable[object]]


Step: TypeAlias = Issue | Call


def _never(state: object) -> float | None:
    return None


def _never_for(state: object, instance: str) -> float | None:
    return None


def _the_whole(event: object) -> str:
    return ""  # a manager with steps over the whole state is one instance, named ""


def _only_the_whole(state: object) -> tuple[str]:
    return ("",)


@dataclass(frozen=True, slots=True, kw_only=True)
class Instances(Generic[P]):
    """The independent instances a process's state holds (see the module docstring), each asked on its own."""

    of: Callable[[RecordedEvent], str]  # the instance a (folded) event concerns
    keys: Callable[[P], Iterable[str]]  # every instance in the state
    steps: Callable[[P, str, float], Sequence[Step]]  # what one instance wants at wall-clock time ``now``
    wake_at: Callable[[P, str], float | None] = _never_for  # when one instance's steps could change by themselves


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessManager(Generic[P]):
    """A process manager: pure functions over its state (see the module docstring) and its retry policy.

    Give ``steps`` (and ``wake_at``) over the whole state, or ``instances``: exactly one.
    """

    name: str
    initial: Callable[[], P]
    evolve: Callable[[P, RecordedEvent], P]
    steps: Callable[[P, float], Sequence[Step]] | None = None
    wake_at: Callable[[P], float | None] = _never
    instances: Instances[P] | None = None
    attempt_timeout: float = 2.0  # seconds one outside call may take before it is retried
    backoff: tuple[float, float] = (0.05, 2.0)  # first and longest delay between attempts
    max_in_flight: int = 64  # steps running at once; the others wait for a free slot
    # The event classes ``evolve`` reads (None: every event). The others are not handed to it, they only
    # advance the process's position: a process that follows a few kinds of events costs nothing per other
    # event (measured: the shop's checkout folding every order was 4% of the writer process's loop).
    events: frozenset[type] | None = None
    # The state's class (a msgspec Struct or a dataclass, all the way down), for checkpoints: with a snapshot
    # directory the App then stores the state with its position beside the read models' checkpoints, and a
    # start folds only what came after it (None: folded from position 0 at every start). ``state_version``
    # is in each checkpoint: raise it when the state's meaning changes with its shape unchanged.
    state_type: type[P] | None = None
    state_version: int = 1

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.instances is None):
            raise ValueError(
                f"process manager {self.name!r}: give steps(state, now) or instances=Instances(...), exactly one"
            )
        if self.instances is not None and self.wake_at is not _never:
            raise ValueError(f"process manager {self.name!r}: with instances, wake_at belongs to Instances")

    def per_instance(self) -> Instances[P]:
        """The manager as instances: its own, or its whole state as one instance (``steps``/``wake_at``)."""
        if self.instances is not None:
            return self.instances
        steps, wake_at = self.steps, self.wake_at
        assert steps is not None  # checked at construction
        return Instances(
            of=_the_whole,
            keys=_only_the_whole,
            steps=lambda state, _instance, now: steps(state, now),
            wake_at=lambda state, _instance: wake_at(state),
        )

    def wanted(self, state: P, now: float) -> list[Step]:
        """Every step the process wants at ``now``, instance by instance (the test kit asks this)."""
        instances = self.per_instance()
        return [step for key in instances.keys(state) for step in instances.steps(state, key, now)]

    def next_wake(self, state: P) -> float | None:
        """The earliest time at which :meth:`wanted` could change without a new event (None: never)."""
        instances = self.per_instance()
        times = [t for key in instances.keys(state) if (t := instances.wake_at(state, key)) is not None]
        return min(times, default=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Parked:
    """An event the process could not fold, or a step it could not complete; waits for an operator."""

    key: str  # "event:<position>" or the step's key
    kind: str  # "event" | "step"
    position: int  # the event's position, or the process's position when the step was parked
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessStatistics:
    name: str
    position: int  # the last event folded
    in_flight: int
    issued: int  # commands executed (including recognised duplicates)
    duplicates: int  # ... of which the writer recognised as already done (a replay after a restart)
    rejected: int  # commands the domain refused (not re-issued)
    retries: int  # failed attempts that were retried
    parked: tuple[Parked, ...]
    last_error: str | None
    next_wake_in_s: float | None


_FOREVER = math.inf


@final
class ProcessRunner(Generic[P]):
    """Runs one :class:`ProcessManager` against the log: folds committed events in order, runs its steps.

    ``subscribe(after)`` gives the committed events after a position (catch-up then live), ``execute(command,
    key)`` runs a command with an idempotency key. Start it with ``await tg.start(runner.run)``.
    """

    def __init__(
        self,
        manager: ProcessManager[P],
        *,
        subscribe: Callable[[int], Subscription],
        execute: Callable[[object, str], Awaitable[Receipt]],
        head: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.manager = manager
        self.state: P = manager.initial()
        self.position = 0
        self._subscribe = subscribe
        self._execute = execute
        self._head = head
        self._clock = clock
        self._in_flight: dict[str, anyio.CancelScope] = {}
        self._done: dict[str, float] = {}  # key -> position until which a still-wanted step is not run again
        self._parked: dict[str, Parked] = {}
        self._parked_events: dict[str, RecordedEvent] = {}
        self._follows = manager.events
        # the instances to ask at the next pass, and what each wanted at its last (steps over the whole state:
        # one instance)
        self._instances = manager.per_instance()
        self._dirty: set[str] = set()  # touched by a folded event, or a step of theirs ended
        self._all_dirty = True  # ask every instance: at the first pass, and after an operator's retry
        self._timers: list[tuple[float, str]] = []  # (wake_at, instance), a heap; stale entries are skipped
        self._wake_of: dict[str, float] = {}  # each instance's live timer (what makes a heap entry not stale)
        self._wanted_of: dict[str, set[str]] = {}  # instance -> the keys of the steps it wanted
        self._blocked: dict[str, None] = {}  # instances with a wanted step that found no free slot, oldest first
        self._step_instance: dict[str, str] = {}  # a running step's key -> its instance
        self._kick = anyio.Event()
        self._waiters: list[tuple[int, anyio.Event]] = []
        self._tg: TaskGroup | None = None
        self._issued = 0
        self._duplicates = 0
        self._rejected = 0
        self._retries = 0
        self._last_error: str | None = None
        # a checkpoint holds the state as the log made it: never once an event was parked (skipped, or
        # folded out of order by a retry), which a restart must meet again
        self._regular = manager.state_type is not None

    @property
    def name(self) -> str:
        return self.manager.name

    # -- checkpoints -----------------------------------------------------------------------------------

    def checkpoint(self) -> tuple[int, bytes] | None:
        """``(position, the state as JSON)`` now, or None (no ``state_type``, nothing folded, or an event was
        parked in this run). Synchronous: the state and its position are taken together."""
        if not self._regular or self.position == 0:
            return None
        return self.position, encode(self.state)

    def restore(self, position: int, body: bytes) -> bool:
        """Start from a checkpoint (before :meth:`replay` and :meth:`run`); False if it no longer decodes."""
        state_type = self.manager.state_type
        if state_type is None:
            return False
        try:
            state = msgspec.json.decode(body, type=state_type)
        except msgspec.MsgspecError as exc:
            _log.warning("process_checkpoint_rejected", process=self.name, position=position, reason=str(exc))
            return False
        self.state, self.position = state, position
        return True

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> NoReturn:
        """Fold the log from :attr:`position` (0, or where :meth:`replay` left it) and run the wanted steps,
        forever (until cancelled).

        No step runs before the fold has caught up with the head the log had at start: a state folded only
        part of the way would want steps that later events already made moot (a capture for an order that
        was cancelled further on).
        """
        caught_up = self._head() if self._head is not None else 0
        subscription = self._subscribe(self.position)  # an App folds the log up to its head first (replay)
        async with subscription, anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._fold_batches, subscription)
            task_status.started()
            while True:
                self._kick = anyio.Event()
                if self.position < caught_up:
                    await self._kick.wait()  # still replaying the log
                    continue
                now = self._clock()
                self._schedule(tg, now)
                wake = self._next_timer()
                # a wake time already reached is in this pass's steps: only a later one is waited for
                delay = _FOREVER if wake is None or wake <= now else wake - self._clock()
                with anyio.move_on_after(delay):
                    await self._kick.wait()
        raise AssertionError("unreachable")  # pragma: no cover  (the loop above never ends)

    # -- folding ---------------------------------------------------------------------------------------

    def replay(self, events: Sequence[RecordedEvent]) -> None:
        """Fold committed events (after :attr:`position`, in order) before :meth:`run`: the App's one pass at
        start feeds every reader of the log from the same decoded chunks."""
        position = self.position
        follows = self._follows
        for event in events:
            if event.position > position and (follows is None or type(event.data) in follows):
                self._fold(event)
        if events and events[-1].position > position:
            self.position = events[-1].position

    async def _fold_batches(self, subscription: Subscription) -> None:
        follows = self._follows
        async for batch in subscription:
            for event in batch.events:
                if follows is None or type(event.data) in follows:
                    self._fold(event)
            self.position = batch.events[-1].position
            if self._waiters:
                still = []
                for position, reached in self._waiters:
                    if position <= self.position:
                        reached.set()
                    else:
                        still.append((position, reached))
                self._waiters = still
            self._kick.set()

    def _fold(self, event: RecordedEvent) -> None:
        try:
            instance = self._instances.of(event)
            self.state = self.manager.evolve(self.state, event)
            self._dirty.add(instance)
        except Exception as exc:  # a poison event: park it, keep folding the others
            self._regular = False
            key = f"event:{event.position}"
            error = f"{type(exc).__name__}: {exc}"
            self._parked[key] = Parked(key=key, kind="event", position=event.position, error=error)
            self._parked_events[key] = event
            self._last_error = f"{key}: {error}"
            _log.error(
                "process_event_parked", process=self.name, position=event.position, type=event.type, exc_info=exc
            )

    async def wait_for(self, position: int) -> None:
        """Return once the process has folded every event up to ``position``."""
        if self.position >= position:
            return
        reached = anyio.Event()
        self._waiters.append((position, reached))
        await reached.wait()

    # -- steps -----------------------------------------------------------------------------------------

    def _schedule(self, tg: TaskGroup, now: float) -> None:
        """One pass over the instances touched since the last one, due, or waiting for a free slot: start what
        they want, stop what they no longer want."""
        instances, state, limit = self._instances, self.state, self.manager.max_in_flight
        in_flight, done, parked = self._in_flight, self._done, self._parked
        wanted_of, timers, wake_of = self._wanted_of, self._timers, self._wake_of
        if self._all_dirty:
            self._all_dirty = False
            todo = {*instances.keys(state), *wanted_of}  # and those gone since: their steps are stopped
            timers.clear()
            wake_of.clear()
        else:
            todo = self._dirty
        self._dirty = set()
        while timers and timers[0][0] <= now:
            at, name = heapq.heappop(timers)
            if wake_of.get(name) == at:  # else stale: the instance was asked since, or is gone
                del wake_of[name]
                todo.add(name)
        first: list[str] = []  # those that waited for a slot: as many as are free, oldest first, before the rest
        free = limit - len(in_flight)
        if self._blocked and free > 0:
            blocked = self._blocked
            first = list(itertools.islice(blocked, free))
            for name in first:
                del blocked[name]
            todo.difference_update(first)
        for name in itertools.chain(first, todo):
            steps = instances.steps(state, name, now)
            keys = {step.key for step in steps}
            before = wanted_of.pop(name, None)
            if keys:
                wanted_of[name] = keys
            if before:
                for key in before - keys:  # no longer wanted: stop retrying it, forget when it last ran
                    scope = in_flight.get(key)
                    if scope is not None:
                        scope.cancel()
                    if done.get(key, _FOREVER) != _FOREVER:
                        del done[key]
            for step in steps:
                key = step.key
                if key in in_flight or key in parked or done.get(key, -1) >= self.position:
                    continue
                if len(in_flight) >= limit:
                    self._blocked[name] = None
                    break
                self._start(tg, step, name)
            wake = instances.wake_at(state, name)
            if wake is not None and wake > now:
                if wake_of.get(name) != wake:
                    wake_of[name] = wake
                    heapq.heappush(timers, (wake, name))
            else:
                wake_of.pop(name, None)
        if len(timers) > 2 * len(wake_of) + 64:  # mostly stale (closed instances, long timers): keep the live ones
            timers[:] = [(at, name) for name, at in wake_of.items()]
            heapq.heapify(timers)

    def _next_timer(self) -> float | None:
        """The earliest live per-instance timer (stale entries on top of the heap are dropped)."""
        timers, wake_of = self._timers, self._wake_of
        while timers and wake_of.get(timers[0][1]) != timers[0][0]:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def _start(self, tg: TaskGroup, step: Step, instance: str) -> None:
        scope = anyio.CancelScope()
        self._in_flight[step.key] = scope
        self._step_instance[step.key] = instance
        tg.start_soon(self._run_step, step, scope)

    async def _run_step(self, step: Step, scope: anyio.CancelScope) -> None:
        key = step.key
        try:
            with scope:
                command = await self._call(step) if isinstance(step, Call) else step.command
                receipt = await self._issue(key, command)
                self._issued += 1
                self._duplicates += receipt.duplicate
                self._done[key] = receipt.position
        except (DomainError, ConcurrencyError, NotFound) as exc:
            # Refused or already decided otherwise (an idempotency conflict: another outcome won). A normal
            # race between a process and its users: counted, and not issued again.
            self._rejected += 1
            self._done[key] = _FOREVER
            self._last_error = f"{key}: {type(exc).__name__}: {exc}"
            _log.warning("process_step_rejected", process=self.name, key=key, error=str(exc))
        except ActorStopped:
            pass  # the app is closing; a restart replays and runs the step again
        except CQRSError as exc:  # retrying cannot fix it (a bad command, a broken log): an operator must look
            self._park_step(key, exc)
        finally:
            self._in_flight.pop(key, None)
            instance = self._step_instance.pop(key, None)
            if instance is not None:  # asked again: a duplicate's old receipt may let the step run again
                self._dirty.add(instance)
            self._kick.set()

    def _park_step(self, key: str, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        self._parked[key] = Parked(key=key, kind="step", position=self.position, error=error)
        self._last_error = f"{key}: {error}"
        _log.error("process_step_parked", process=self.name, key=key, error=error)

    async def _call(self, step: Call) -> object:
        first, longest = self.manager.backoff
        delay = first
        while True:
            try:
                with anyio.fail_after(self.manager.attempt_timeout):
                    return await step.call(step.key)
            except Exception as exc:  # an outside system failed or did not answer: retry (while wanted)
                self._retries += 1
                self._last_error = f"{step.key}: {type(exc).__name__}: {exc}"
                _log.warning("process_call_failed", process=self.name, key=step.key, error=repr(exc), retry_in_s=delay)
            await anyio.sleep(delay)  # a real backoff
            delay = min(delay * 2, longest)

    async def _issue(self, key: str, command: object) -> Receipt:
        first, longest = self.manager.backoff
        delay = first
        while True:
            try:
                return await self._execute(command, key)
            except Overloaded as exc:
                self._retries += 1
                self._last_error = f"{key}: {exc}"
            await anyio.sleep(delay)  # a real backoff: the writer's queue was full
            delay = min(delay * 2, longest)

    # -- operators -------------------------------------------------------------------------------------

    @property
    def parked(self) -> tuple[Parked, ...]:
        return tuple(self._parked.values())

    def retry(self, key: str) -> None:
        """Try a parked item again: a step is run again if still wanted; an event is folded into the current state.

        (A parked event is folded out of order, after the events that followed it; after fixing the process's
        code, a restart folds the whole log again in order.)
        """
        parked = self._require_parked(key)
        del self._parked[key]
        if parked.kind == "event":
            self._fold(self._parked_events.pop(key))
        self._done.pop(key, None)
        self._all_dirty = True  # which instance the item was of is not kept: all are asked (an operator's act)
        self._kick.set()

    def skip(self, key: str) -> None:
        """Drop a parked item: the event stays unfolded, the step is not run again (until a restart)."""
        parked = self._require_parked(key)
        del self._parked[key]
        self._parked_events.pop(key, None)
        if parked.kind == "step":
            self._done[key] = _FOREVER
        _log.warning("process_item_skipped", process=self.name, key=key)

    def _require_parked(self, key: str) -> Parked:
        parked = self._parked.get(key)
        if parked is None:
            raise NotFound(
                f"process {self.name!r} has no parked item {key!r}; parked: {sorted(self._parked) or 'none'} "
                "(see `stats` -> processes[].parked)"
            )
        return parked

    def statistics(self) -> ProcessStatistics:
        # once every instance was asked: the runner's own timers, no walk over the whole state
        wake = self.manager.next_wake(self.state) if self._all_dirty else self._next_timer()
        return ProcessStatistics(
            name=self.name,
            position=self.position,
            in_flight=len(self._in_flight),
            issued=self._issued,
            duplicates=self._duplicates,
            rejected=self._rejected,
            retries=self._retries,
            parked=self.parked,
            last_error=self._last_error,
            next_wake_in_s=None if wake is None else round(max(0.0, wake - self._clock()), 3),
        )


def processes_of(domain_processes: Sequence[ProcessManager[Any]]) -> tuple[ProcessManager[Any], ...]:
    """The process managers of a domain, checked: names must be unique."""
    names = [p.name for p in domain_processes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"process manager names must be unique; {duplicates} appear more than once")
    return tuple(domain_processes)
