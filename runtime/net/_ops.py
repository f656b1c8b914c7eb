"""The op handlers: what each request does, answered now or by a callback.

One :class:`Ops` per server. A handler takes the connection and the typed request (:mod:`._requests`)
and either answers at once (``conn.ok`` / ``conn.error``) or takes an in-flight slot (a :class:`Pending`)
that a future's callback or a timer answers exactly once. Query routing is not done here: every query
goes through the App's one :class:`~soloist._queries.QueryRouter` (``answer_now`` / ``wait_future``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, final

import structlog

from .._digest import Digest, digest_of
from .._errors import BadRequest, Closed, ConsistencyTimeout, CQRSError, InternalError
from .._messages import Answer, Receipt
from ._errors import CommandTimeout, Unauthorized, UpstreamUnavailable
from ._framing import Ok
from ._requests import (
    AuthRequest,
    CommandRequest,
    DigestRequest,
    PingRequest,
    ProcessRequest,
    QueryRequest,
    RebuildRequest,
    Request,
    RequestId,
    StatsRequest,
    SubscribeRequest,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._replica import Replica
    from ._connection import Connection
    from ._server import Server

__all__ = ["Ops", "Pending", "internal"]

_log = structlog.get_logger("soloist.server")


def internal(exc: BaseException) -> CQRSError:
    """The answer for an exception no handler expected (a bug): logged by the caller, answered ``internal``."""
    return InternalError(f"the server failed on this request: {type(exc).__name__}: {exc}")


@final
class Pending:
    """One request waiting for a callback: answered exactly once (by its future or its timer)."""

    __slots__ = ("conn", "finished", "request_id", "timer")

    def __init__(self, conn: Connection, request_id: RequestId) -> None:
        self.conn = conn
        self.request_id = request_id
        self.finished = False
        self.timer: asyncio.TimerHandle | None = None
        conn.in_flight += 1

    def finish(self) -> bool:
        """Mark answered; False if it already was."""
        if self.finished:
            return False
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        return True

    def ok(self, result: object, position: int | None) -> None:
        if self.finish():
            self.conn.ok(self.request_id, result, position)
            self.conn.answered()

    def release(self) -> None:
        """Give the in-flight slot back without answering (the request raised before it was taken)."""
        if self.finish():
            self.conn.in_flight -= 1

    # -- the writer's Reply: a command's outcome, straight from the writer's task -----------------------

    def done(self) -> bool:
        return self.finished

    def set_result(self, receipt: Receipt, /) -> None:
        if self.finish():
            self.conn.receipt(self.request_id, receipt)
            self.conn.answered()

    def set_exception(self, exception: BaseException, /) -> None:
        self.fail(exception)

    def fail(self, exc: BaseException) -> None:
        if self.finish():
            self.conn.error(self.request_id, exc if isinstance(exc, CQRSError) else internal(exc))
            self.conn.answered()


@final
class Ops:
    """The handlers of one server's ops."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._app = server.app
        self._loop = asyncio.get_running_loop()
        self._query_decoders = {name: self._app.queries.decoder(name) for name in self._app.queries.names}
        self._command_decoders = {name: self._app.commands.decoder(name) for name in self._app.commands.names}
        self._handlers: dict[type, Callable[[Connection, Request], None]] = {
            QueryRequest: self._query,  # type: ignore[dict-item]
            CommandRequest: self._command,  # type: ignore[dict-item]
            PingRequest: self._ping,
            StatsRequest: self._stats,
            AuthRequest: self._auth,  # type: ignore[dict-item]
            SubscribeRequest: self._subscribe,  # type: ignore[dict-item]
            DigestRequest: self._digest,  # type: ignore[dict-item]
            RebuildRequest: self._rebuild,  # type: ignore[dict-item]
            ProcessRequest: self._process,  # type: ignore[dict-item]
        }

    def handle(self, conn: Connection, request: Request) -> None:
        """Answer ``request`` now or arrange for a callback to; raises :class:`CQRSError` to answer an error."""
        self._server.requests_by_op[request.__struct_config__.tag] += 1  # type: ignore[index]
        self._handlers[type(request)](conn, request)

    def handle_many(self, conn: Connection, requests: list[Request]) -> None:
        """Answer a chunk's requests: eventual queries and commands on the fast path, others by :meth:`handle`.

        Pipelined eventual queries are the hottest path there is. For them this loop does only what
        each must: decode its data, ask the one replica :meth:`QueryRouter.replica_for` picked for the
        whole chunk (so the chunk's answers share one position), and collect the answers, which are
        encoded together in one call. Commands go straight to their handler, their errors answered as
        :meth:`Connection.dispatch` answers them. Anything else (or any failure) goes through
        :meth:`handle`'s rules.
        """
        replica = None
        models_query = None
        position = 0
        decoders = self._query_decoders
        answers: list[Ok] = []
        commands = 0
        for request in requests:
            if type(request) is CommandRequest and not conn.subscribed:
                # straight to the op's handler: what dispatch + handle add (auth was checked for the chunk,
                # the op's counter is kept per chunk) is two calls per command (~0.15 us)
                commands += 1
                try:
                    self._command(conn, request)
                except Exception as exc:
                    conn.fail(request.id, exc)
                continue
            if type(request) is QueryRequest and request.consistency == "eventual" and request.min_position is None:
                decode = decoders.get(request.type)
                if decode is not None and not conn.subscribed:
                    query = None
                    try:
                        if replica is None:
                            replica = self._app.router.replica_for(0)
                            assert replica is not None  # target 0 never waits
                            models_query = replica.models.query
                            position = replica.position  # nothing is applied while this chunk is answered
                        query = decode(request.data)
                        answers.append(Ok(request.id, True, models_query(query), position))  # type: ignore[misc]
                    except Exception as exc:
                        self._server.requests_by_op["query"] += 1
                        conn.fail(request.id, exc if replica is None or query is None else replica.failure(query, exc))
                    continue
            conn.dispatch(request)
        if commands:
            self._server.requests_by_op["command"] += commands
        if replica is not None:
            replica.count_queries(len(answers))
            self._server.requests_by_op["query"] += len(answers)
        if answers:
            conn.ok_many(answers)

    # -- ping, stats, auth ----------------------------------------------------------------------------

    def _ping(self, conn: Connection, request: Request) -> None:
        conn.ok(request.id, "pong", self._app.position)

    def _stats(self, conn: Connection, request: Request) -> None:
        conn.ok(request.id, self._server.stats_payload(), self._app.position)

    def _auth(self, conn: Connection, request: AuthRequest) -> None:
        if not self._server.token_matches(request.token):
            conn.error(request.id, Unauthorized("wrong token; the connection is closed"))
            _log.warning("auth_failed")
            conn.drain_then_close(linger=True)
            return
        conn.authed = True
        conn.ok(request.id, True, self._app.position)

    def _process(self, conn: Connection, request: ProcessRequest) -> None:
        """retry or skip a parked item of a process manager; answers with the items still parked."""
        runner = self._app.process(request.name)
        if request.action == "retry":
            runner.retry(request.key)
        else:
            runner.skip(request.key)
        conn.ok(request.id, {"parked": [p.key for p in runner.parked]}, self._app.position)

    # -- command --------------------------------------------------------------------------------------

    def _command(self, conn: Connection, request: CommandRequest) -> None:
        app = self._app
        decode = self._command_decoders.get(request.type)
        command = app.commands.decode(request.type, request.data) if decode is None else decode(request.data)
        pending = Pending(conn, request.id)
        try:
            app.submit_reply(command, pending, idempotency_key=request.idempotency_key)  # answered by the writer
        except BaseException:
            pending.release()
            raise
        if request.timeout_ms is not None:
            timeout = request.timeout_ms / 1000.0
            pending.timer = self._loop.call_later(timeout, self._command_timed_out, pending, timeout)

    @staticmethod
    def _command_timed_out(pending: Pending, timeout: float) -> None:
        pending.timer = None
        pending.fail(
            CommandTimeout(
                f"no receipt within {timeout * 1000:g} ms; the command is queued and may still commit: "
                "resend it with the same idempotency_key to learn its outcome"
            )
        )

    # -- query ----------------------------------------------------------------------------------------

    def _query(self, conn: Connection, request: QueryRequest) -> None:
        app = self._app
        query = app.queries.decode(request.type, request.data)
        if request.consistency == "eventual" and request.min_position is None:
            answer = app.router.answer_now(query, 0)  # the hot path: answered in this callback, no hop, no timer
            assert answer is not None  # target 0 never waits
            conn.ok(request.id, answer.result, answer.position)
            return

        def ask(replica: Replica) -> Answer:
            return replica.query_nowait(query)

        self._answer(conn, request.id, ask, request.consistency, request.min_position, request.timeout_ms)

    def _answer(
        self,
        conn: Connection,
        request_id: RequestId,
        ask: Callable[[Replica], Answer],
        consistency: str,
        min_position: int | None,
        timeout_ms: float | None,
    ) -> None:
        """Answer ``ask(replica)`` from the replica the router picks at the asked consistency: now, or once one
        reaches the target (callbacks, no task), or a timeout. Queries and digests both go through here."""
        router = self._app.router
        timeout = router.timeout if timeout_ms is None else timeout_ms / 1000.0
        upstream = self._server.upstream
        if consistency == "strong" and upstream is not None:
            # A replica process: strong means the *writer's* position at the time of the request.
            deadline = self._loop.time() + timeout
            pending = Pending(conn, request_id)
            pending.timer = self._loop.call_later(timeout, self._head_timed_out, pending, upstream.address, timeout)
            head = upstream.head_future()
            head.add_done_callback(lambda f: self._upstream_head(conn, pending, ask, f, deadline))
            return
        target = router.target(consistency, min_position)  # BadRequest before taking a slot
        replica = router.replica_for(target)
        if replica is not None:
            answer = ask(replica)
            conn.ok(request_id, answer.result, answer.position)
            return
        self._wait(conn, Pending(conn, request_id), ask, target, timeout)

    def _wait(
        self, conn: Connection, pending: Pending, ask: Callable[[Replica], Answer], target: int, timeout: float
    ) -> None:
        """Answer once a replica reaches ``target``, or ``timeout`` (by callbacks: no task)."""
        future = self._app.router.wait_future(target)  # fails with Broken if no live replica is left
        pending.timer = self._loop.call_later(timeout, self._query_timed_out, pending, future, target, timeout)
        conn.waits.add(future)
        future.add_done_callback(lambda f: self._query_ready(conn, pending, ask, target, f))

    def _query_ready(
        self,
        conn: Connection,
        pending: Pending,
        ask: Callable[[Replica], Answer],
        target: int,
        future: asyncio.Future[None],
    ) -> None:
        conn.waits.discard(future)
        error = None if future.cancelled() else future.exception()  # retrieve it even if already answered
        if pending.finished:
            return
        if future.cancelled():
            # cancelled is always on purpose (a replica's death fails the future with Broken instead)
            why = "the server is stopping" if conn.draining else "the replicas were stopped"
            pending.fail(Closed(f"{why} while the query waited for position {target}; retry"))
        elif error is not None:
            pending.fail(error)
        else:
            try:
                replica = self._app.router.replica_for(target)
                answer = None if replica is None else ask(replica)
            except Exception as exc:
                if not isinstance(exc, CQRSError):
                    _log.error("request_crashed", request_id=pending.request_id, exc_info=exc)
                pending.fail(exc)
                return
            if answer is None:  # the replica that got there was replaced meanwhile: wait again
                remaining = pending.timer.when() - self._loop.time() if pending.timer is not None else 0.0
                if pending.timer is not None:
                    pending.timer.cancel()
                self._wait(conn, pending, ask, target, max(0.0, remaining))
                return
            pending.ok(answer.result, answer.position)

    def _query_timed_out(self, pending: Pending, future: asyncio.Future[None], target: int, timeout: float) -> None:
        pending.timer = None
        future.cancel()  # frees the replica's waiter at once
        pending.fail(ConsistencyTimeout(target, self._app.router.best_position(), timeout))

    @staticmethod
    def _head_timed_out(pending: Pending, address: str, timeout: float) -> None:
        pending.timer = None
        pending.fail(
            UpstreamUnavailable(
                f"the writer at {address} did not tell its position within {timeout:g} s; strong queries "
                "need the writer: retry, or use session/eventual consistency"
            )
        )

    def _upstream_head(
        self,
        conn: Connection,
        pending: Pending,
        ask: Callable[[Replica], Answer],
        head: asyncio.Future[int],
        deadline: float,
    ) -> None:
        try:
            target = head.result()  # also retrieves the probe's error, answered or not
        except (Exception, asyncio.CancelledError) as exc:
            pending.fail(exc)
            return
        if pending.finished:
            return
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None
        try:
            replica = self._app.router.replica_for(target)
            answer = None if replica is None else ask(replica)
        except Exception as exc:
            pending.fail(exc)
            return
        if answer is not None:
            pending.ok(answer.result, answer.position)
        else:
            self._wait(conn, pending, ask, target, max(0.0, deadline - self._loop.time()))

    # -- subscribe ------------------------------------------------------------------------------------

    def _subscribe(self, conn: Connection, request: SubscribeRequest) -> None:
        after = request.from_position
        head = self._app.position
        if after > head:  # refused, not waited on: the client holds events this log does not have
            raise BadRequest(
                f"from_position {after} is beyond this log's head {head}: you hold events this log does not "
                "have (was the log replaced, or is this another writer?)",
                field="from_position",
            )
        conn.start_subscription(request.id, self._app.subscribe(after))

    # -- digest, rebuild ------------------------------------------------------------------------------

    def _digest(self, conn: Connection, request: DigestRequest) -> None:
        """Answer ``{"digest", "position"}`` from the replica the router picks at the asked consistency."""
        self._answer(conn, request.id, _digest_of, request.consistency, request.min_position, request.timeout_ms)

    def _rebuild(self, conn: Connection, request: RebuildRequest) -> None:
        """Start a rebuild (answered when every fresh copy is swapped in) or cancel the running one."""
        app = self._app
        if request.cancel:
            conn.ok(request.id, {"cancelled": app.cancel_rebuild()}, app.position)
            return
        future = app.start_rebuild(request.replica)
        pending = Pending(conn, request.id)
        future.add_done_callback(lambda f: self._rebuilt(pending, f))

    def _rebuilt(self, pending: Pending, future: asyncio.Future[list[Digest]]) -> None:
        if future.cancelled():
            pending.fail(Closed("the rebuild was cancelled; the live read models kept serving"))
            return
        exc = future.exception()
        if exc is not None:
            pending.fail(exc)
            return
        digests = future.result()
        position = max(d.position for d in digests)
        pending.ok({"replicas": [d.to_wire() for d in digests], "position": position}, position)


def _digest_of(replica: Replica) -> Answer:
    """The digest of a replica's read models, at its position (one synchronous step: the models hold still)."""
    digest = Digest(digest_of(replica.models), replica.position)
    return Answer(digest.to_wire(), digest.position)
