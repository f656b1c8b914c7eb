"""Query routing across replicas, with the consistency each query asks for.

- ``eventual``: any ready replica, now (round robin); no waiting, no hop.
- ``session``: a replica that has applied ``min_position`` (read-your-writes: pass a receipt's position);
  if none has yet, wait on the most advanced one.
- ``strong``: like ``session`` with the writer's last committed position at the time of the query.
Every answer carries the position it reflects.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final, Literal, final

import anyio

from ._errors import BadRequest, Broken, ConsistencyTimeout

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._messages import Answer
    from ._replica import Replica

__all__ = ["CONSISTENCY_LEVELS", "Consistency", "QueryRouter"]

Consistency = Literal["eventual", "session", "strong"]
CONSISTENCY_LEVELS: Final = ("eventual", "session", "strong")


@final
class QueryRouter:
    """Picks a replica for each query (round robin over ready replicas) and waits when asked to."""

    def __init__(self, replicas: Sequence[Replica], head: Callable[[], int], *, timeout: float = 5.0) -> None:
        if not replicas:
            raise ValueError("a query router needs at least one replica")
        self._replicas = list(replicas)
        self._head = head
        self._next = 0
        self.timeout = timeout

    @property
    def replicas(self) -> Sequence[Replica]:
        return self._replicas

    def replace(self, index: int, replica: Replica) -> None:
        """Put a new replica in slot ``index`` (a rebuild); it is routed to once it is ready."""
        self._replicas[index] = replica

    def target(self, consistency: str, min_position: int | None) -> int:
        """The position an answer must reflect for this consistency level."""
        if consistency == "eventual":
            return 0
        if consistency == "strong":
            return self._head()
        if consistency == "session":
            if min_position is None or type(min_position) is not int or min_position < 0:
                raise BadRequest(
                    "session consistency needs a non-negative integer min_position (a receipt's position)",
                    field="min_position",
                )
            return min_position
        raise BadRequest(f"expected one of {list(CONSISTENCY_LEVELS)}, got {consistency!r}", field="consistency")

    def pick(self, target: int = 0) -> Replica | None:
        """A ready replica that has applied ``target``, round robin; None if there is none."""
        replicas = self._replicas
        n = len(replicas)
        i = self._next
        for _ in range(n):
            replica = replicas[i]
            i = i + 1 if i + 1 < n else 0
            if replica.ready and replica.position >= target:
                self._next = i
                return replica
        return None

    def most_advanced(self) -> Replica | None:
        """The live (not failed) replica with the highest position, ready ones first; None if all failed."""
        best: Replica | None = None
        for replica in self._replicas:
            if not replica.failed and (best is None or (replica.ready, replica.position) > (best.ready, best.position)):
                best = replica
        return best

    def best_position(self) -> int:
        best = self.most_advanced()
        return 0 if best is None else best.position

    def replica_for(self, target: int = 0) -> Replica | None:
        """The replica that answers a query at ``target`` now; None if the caller must wait for one.

        The one routing rule, used by :class:`~soloist.App` and by the socket server alike:

        - a ready replica at ``target`` answers (round robin);
        - for ``target == 0`` (eventual) a live replica still catching up answers too (its answer
          carries the position it reflects);
        - if every replica has failed, :class:`Broken` (failed replicas are rebuilt by the App).
        """
        replica = self.pick(target)
        if replica is None:
            replica = self.most_advanced()
            if replica is None:
                raise Broken("every replica has failed (see replica_apply_failed in the log); they are rebuilt")
            if target != 0:
                return None
        return replica

    def answer_now(self, query: object, target: int = 0) -> Answer | None:
        """Answer from the replica :meth:`replica_for` picks, now; None if the caller must wait."""
        replica = self.pick(target)  # the common case, without replica_for's frame (every eventual query)
        if replica is None:
            replica = self.replica_for(target)
            if replica is None:
                return None
        return replica.query_nowait(query)

    def query_nowait(self, query: object, target: int = 0) -> Answer:
        """Answer now from a replica at ``target`` or beyond; :class:`ConsistencyTimeout` if none is there yet."""
        answer = self.answer_now(query, target)
        if answer is None:
            raise ConsistencyTimeout(target, self.best_position(), 0)
        return answer

    async def query(
        self,
        query: object,
        *,
        consistency: Consistency = "eventual",
        min_position: int | None = None,
        timeout: float | None = None,
    ) -> Answer:
        """Answer ``query`` at the asked consistency, waiting (up to ``timeout``) for a replica to catch up."""
        target = self.target(consistency, min_position)
        while (answer := self.answer_now(query, target)) is None:
            await self.wait_for(target, timeout)
        return answer

    def wait_future(self, target: int) -> asyncio.Future[None]:
        """A future resolved once some live replica has applied ``target``.

        It waits on the most advanced replica; if that one stops (fails, is rebuilt), the wait moves
        to the next. It fails with :class:`Broken` only when no live replica is left. Cancelling
        it (a timed-out or abandoned wait) frees the replica's waiter at once.
        """
        outer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        inner: list[asyncio.Future[None]] = []

        def attach() -> None:
            best = self.most_advanced()
            if best is None:
                outer.set_exception(Broken("every replica has failed; see replica_apply_failed in the log"))
                return
            future = best.wait_future(target)
            inner[:] = [future]
            future.add_done_callback(done)

        def done(future: asyncio.Future[None]) -> None:
            failed = future.cancelled() or future.exception() is not None  # always retrieve the outcome
            if outer.done():
                return
            if failed:
                attach()
            else:
                outer.set_result(None)

        def abandoned(_: asyncio.Future[None]) -> None:
            if outer.cancelled():
                for future in inner:
                    future.cancel()

        outer.add_done_callback(abandoned)
        attach()
        return outer

    async def wait_for(self, target: int, timeout: float | None = None) -> None:
        """Wait until some replica has applied ``target``; :class:`ConsistencyTimeout` after ``timeout``."""
        if self.pick(target) is not None:
            return
        limit = self.timeout if timeout is None else timeout
        future = self.wait_future(target)
        try:
            with anyio.fail_after(limit):
                await future
        except TimeoutError:
            raise ConsistencyTimeout(target, self.best_position(), limit) from None
        finally:
            future.cancel()
