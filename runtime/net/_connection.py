"""One client connection: an ``asyncio.Protocol`` that parses request lines and writes answer lines.

See :mod:`soloist.net._server` for how requests are answered (synchronously, by callback, or by the
subscription task) and for the backpressure rules. Everything here runs in the event loop's thread.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, Final, cast, final

import anyio
import orjson
import structlog

from .._errors import ActorStopped, BadRequest, ConsistencyTimeout, CQRSError, InternalError
from ._errors import CommandTimeout, TooLarge, Unauthorized, UnknownOp, UpstreamUnavailable
from ._framing import DUMPS_OPTIONS, LineSplitter, encode_error, encode_ok

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._broadcast import Subscription
    from .._messages import Receipt, RecordedEvent
    from ._server import Server

__all__ = ["Connection"]

_log = structlog.get_logger("soloist.server")
_loads: Final = orjson.loads
_dumps: Final = orjson.dumps

_OPS: Final = ("auth", "command", "ping", "query", "stats", "subscribe")
_FIELDS: Final[dict[str, frozenset[str]]] = {
    "ping": frozenset({"id", "op"}),
    "stats": frozenset({"id", "op"}),
    "auth": frozenset({"id", "op", "token"}),
    "command": frozenset({"id", "op", "type", "data", "idempotency_key", "timeout_ms"}),
    "query": frozenset({"id", "op", "type", "data", "consistency", "min_position", "timeout_ms"}),
    "subscribe": frozenset({"id", "op", "from_position"}),
}


def _describe(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _timeout_of(request: dict[str, Any]) -> float | None:
    value = request.get("timeout_ms")
    if value is None:
        return None
    if (type(value) is int or type(value) is float) and value >= 0:
        return float(value) / 1000.0
    raise BadRequest(f"expected a non-negative number of milliseconds, got {value!r}", field="timeout_ms")


@final
class _Pending:
    """One request waiting for a callback: answered exactly once (by its future or its timer)."""

    __slots__ = ("done", "request_id", "timer")

    def __init__(self, request_id: object) -> None:
        self.request_id = request_id
        self.done = False
        self.timer: asyncio.TimerHandle | None = None

    def finish(self) -> bool:
        """Mark answered; False if it already was."""
        if self.done:
            return False
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        return True


@final
class Connection(asyncio.Protocol):
    """One client connection. All methods run in the event loop's thread, mostly as callbacks."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._app = server.app
        self._router = server.app.router
        self._decode_query = server.app.queries.decode
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._splitter = LineSplitter(server.max_line)
        self._backlog: deque[bytes] = deque()  # parsed-later lines (held back by the in-flight cap)
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.in_flight = 0
        self._cap = server.max_in_flight
        self._authed = not server.needs_auth
        self.subscribed = False
        self.read_paused = False
        self._write_paused = False
        self._writable: asyncio.Future[None] | None = None
        self._draining = False  # close once nothing is in flight (too_large, bad auth, server stop)
        self._closed = False
        self._pump_scope: anyio.CancelScope | None = None
        self._last = self._loop.time()
        self._idle: asyncio.TimerHandle | None = None
        self._waits: set[asyncio.Future[None]] = set()  # queries waiting for a replica to reach a position
        self._ops: dict[object, Callable[[object, dict[str, Any]], None]] = {
            "ping": self._op_ping,
            "command": self._op_command,
            "query": self._op_query,
            "subscribe": self._op_subscribe,
            "stats": self._op_stats,
            "auth": self._op_auth,
        }

    # -- asyncio.Protocol -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)
        if not self._server._register(self):
            self._closed = True
            transport.close()
            return
        self._idle = self._loop.call_at(self._last + self._server.idle_timeout, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._backlog.clear()
        self._out.clear()
        self._cancel_waits()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._pump_scope is not None:
            self._pump_scope.cancel()
        self._wake_writer()
        self._server._unregister(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        if self._closed or self._draining:
            return
        self._last = self._loop.time()
        lines, too_long = self._splitter.feed(data)
        try:
            if self._backlog:
                self._backlog.extend(lines)
                self._drain_backlog()
            else:
                self._handle_lines(lines)
            if too_long:
                max_line = self._server.max_line
                error = TooLarge(f"a request line is longer than {max_line} bytes; the connection is closed")
                self._error(None, error)
                self._drain_then_close()
        except Exception as exc:  # pragma: no cover - _handle catches per request; this is the last net
            _log.error("connection_crashed", exc_info=exc)
            self.abort()
            return
        self._flush()

    def eof_received(self) -> bool:
        if self.subscribed:
            # The client is gone (a half-closed subscriber cannot be told from a closed one): stop.
            if self._pump_scope is not None:
                self._pump_scope.cancel()
            return False  # the transport closes itself
        self._drain_then_close()  # answer what is in flight, then close
        return True

    # -- reading and backpressure ---------------------------------------------------------------------

    def _handle_lines(self, lines: list[bytes]) -> None:
        cap = self._cap
        handle = self._handle
        for i, line in enumerate(lines):
            if self._draining:
                return
            if self.in_flight >= cap:
                self._backlog.extend(lines[i:])
                self._update_reading()
                return
            handle(line)

    def _drain_backlog(self) -> None:
        backlog = self._backlog
        cap = self._cap
        while backlog and self.in_flight < cap and not self._draining:
            self._handle(backlog.popleft())
        self._update_reading()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._closed:
            return
        pause = self._draining or self._write_paused or self.in_flight >= self._cap or bool(self._backlog)
        if pause != self.read_paused:
            self.read_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _check_idle(self) -> None:
        self._idle = None
        if self._closed:
            return
        timeout = self._server.idle_timeout
        now = self._loop.time()
        if self.in_flight or self.subscribed:
            self._last = now
        elif now - self._last >= timeout * 0.999:
            _log.info("connection_idle_closed", idle_s=round(now - self._last, 3))
            self._drain_then_close()
            return
        self._idle = self._loop.call_at(self._last + timeout, self._check_idle)

    def stop(self) -> None:
        """The server is stopping: take no new request, answer those in flight, then close.

        Commands in flight get their receipts (the writer is still running); queries waiting for a
        position that may never come are answered at once with an error.
        """
        self._draining = True
        self._cancel_waits()
        self._drain_then_close()  # a subscription ends at once (its pump is cancelled)

    def _cancel_waits(self) -> None:
        waits, self._waits = self._waits, set()
        for future in waits:
            future.cancel()

    def abort(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.abort()

    def _drain_then_close(self) -> None:
        self._draining = True
        self._backlog.clear()
        self._update_reading()
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self._draining and not self.in_flight and not self._closed:
            if self._pump_scope is not None:
                self._pump_scope.cancel()  # a subscribed connection that sent a too-large line, say
            self._flush()
            if self._transport is not None:
                self._transport.close()  # flushes what is buffered, then closes

    # -- writing --------------------------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if out and not self._closed and self._transport is not None:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self._transport.write(data)

    def _ok(self, request_id: object, result: object, position: int | None) -> None:
        try:
            line = encode_ok(request_id, result, position)
        except (orjson.JSONEncodeError, TypeError) as exc:
            _log.error("answer_not_serialisable", result_type=type(result).__name__, error=str(exc))
            line = encode_error(request_id, "internal", f"the result could not be encoded as JSON: {exc}")
            self._server.errors += 1
        self._out.append(line)

    def _error(self, request_id: object, error: CQRSError) -> None:
        self._server.errors += 1
        try:
            line = encode_error(request_id, error.code, str(error))
        except (orjson.JSONEncodeError, TypeError):
            line = encode_error(request_id, error.code, repr(str(error)))
        self._out.append(line)

    def _wake_writer(self) -> None:
        waiter = self._writable
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- requests -------------------------------------------------------------------------------------

    def _handle(self, line: bytes) -> None:
        """Answer one line now, or arrange for a callback to. Never raises."""
        if not line or line.isspace():
            return
        server = self._server
        server.requests += 1
        request_id: object = None
        try:
            try:
                request = _loads(line)
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"the line is not JSON ({exc})") from None
            if type(request) is not dict:
                raise BadRequest(f"a request must be a JSON object, got {_describe(request)}")
            request_id = request.get("id")
            if request_id is not None and type(request_id) is not int and type(request_id) is not str:
                bad = request_id
                request_id = None
                raise BadRequest(f"expected an integer or a string, got {_describe(bad)}", field="id")
            op: object = request.get("op")
            if not self._authed and op != "auth":
                raise Unauthorized('this server needs a token: send {"op": "auth", "token": ...} first')
            handler = self._ops.get(op) if type(op) is str else None
            if handler is None:
                if op is None:
                    raise BadRequest("required field is missing", field="op")
                raise UnknownOp(f"unknown op {op!r}; ops are {list(_OPS)}")
            if self.subscribed:
                raise BadRequest(
                    "this connection is dedicated to its subscription; open another connection for requests"
                )
            allowed = _FIELDS[cast("str", op)]
            if not request.keys() <= allowed:
                extra = sorted(k for k in request if k not in allowed)
                raise BadRequest(f"unknown field for op {op!r}; its fields are {sorted(allowed)}", field=extra[0])
            handler(request_id, request)
        except CQRSError as exc:
            self._error(request_id, exc)
        except Exception as exc:
            _log.error("request_crashed", request_id=request_id, exc_info=exc)
            self._error(request_id, _internal(exc))

    def _op_ping(self, request_id: object, request: dict[str, Any]) -> None:
        self._out.append(encode_ok(request_id, "pong", self._app.position))

    def _op_stats(self, request_id: object, request: dict[str, Any]) -> None:
        self._ok(request_id, self._server.stats_payload(), self._app.position)

    def _op_auth(self, request_id: object, request: dict[str, Any]) -> None:
        token = request.get("token")
        if type(token) is not str:
            raise BadRequest(f"expected a string, got {_describe(token)}", field="token")
        if not self._server.token_matches(token):
            self._error(request_id, Unauthorized("wrong token; the connection is closed"))
            _log.warning("auth_failed")
            self._drain_then_close()
            return
        self._authed = True
        self._out.append(encode_ok(request_id, True, self._app.position))

    # -- command --------------------------------------------------------------------------------------

    def _op_command(self, request_id: object, request: dict[str, Any]) -> None:
        key = request.get("idempotency_key")
        if key is not None and type(key) is not str:
            raise BadRequest(f"expected a string, got {_describe(key)}", field="idempotency_key")
        timeout = _timeout_of(request)
        command = self._app.commands.decode(_type_of(request), request.get("data", {}))
        future = self._app.submit_nowait(command, idempotency_key=key)
        pending = _Pending(request_id)
        self.in_flight += 1
        if timeout is not None:
            pending.timer = self._loop.call_later(timeout, self._command_timed_out, pending, timeout)
        future.add_done_callback(lambda f: self._command_done(pending, f))

    def _command_done(self, pending: _Pending, future: asyncio.Future[Receipt]) -> None:
        exc = None if future.cancelled() else future.exception()  # retrieved even if already answered
        if not pending.finish():
            return
        rid = pending.request_id
        if future.cancelled():
            self._error(rid, ActorStopped("the command was dropped: the writer stopped"))
        else:
            if exc is None:
                r = future.result()
                result = {"position": r.position, "command_id": r.command_id, "duplicate": r.duplicate}
                self._ok(rid, result, r.position)
            else:
                self._error(rid, exc if isinstance(exc, CQRSError) else _internal(exc))
        self._answered()

    def _command_timed_out(self, pending: _Pending, timeout: float) -> None:
        pending.timer = None
        if not pending.finish():
            return
        self._error(
            pending.request_id,
            CommandTimeout(
                f"no receipt within {timeout * 1000:g} ms; the command is queued and may still commit: "
                "resend it with the same idempotency_key to learn its outcome"
            ),
        )
        self._answered()

    def _answered(self) -> None:
        """A callback produced an answer: schedule the flush, release the in-flight slot."""
        self.in_flight -= 1
        if self._closed:
            self._out.clear()
            return
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        if self._backlog:
            self._drain_backlog()
        elif self.read_paused:
            self._update_reading()
        if self._draining:
            self._maybe_close()

    # -- query ----------------------------------------------------------------------------------------

    def _op_query(self, request_id: object, request: dict[str, Any]) -> None:
        app = self._app
        query = self._decode_query(_type_of(request), request.get("data", _NO_DATA))
        consistency = request.get("consistency", "eventual")
        if consistency == "eventual" and "min_position" not in request:
            # The hot path: any ready replica answers now, in this callback (no hop, no timer).
            router = self._router
            replica = router.pick(0) or router.most_advanced()
            result, position = replica.query_nowait(query)
            self._ok(request_id, result, position)
            return
        min_position = request.get("min_position")
        timeout = _timeout_of(request)
        router = app.router
        if timeout is None:
            timeout = router.timeout
        upstream = self._server.upstream
        if consistency == "strong" and upstream is not None:
            # A replica process: strong means the *writer's* position at the time of the query.
            deadline = self._loop.time() + timeout
            pending = _Pending(request_id)
            self.in_flight += 1
            pending.timer = self._loop.call_later(timeout, self._head_timed_out, pending, upstream.address, timeout)
            head = upstream.head_future()
            head.add_done_callback(lambda f: self._upstream_head(pending, query, f, deadline))
            return
        target = router.target(consistency, min_position)
        self._query_at(request_id, query, target, timeout, None)

    def _head_timed_out(self, pending: _Pending, address: str, timeout: float) -> None:
        pending.timer = None
        if pending.finish():
            error = UpstreamUnavailable(
                f"the writer at {address} did not tell its position within {timeout:g} s; strong queries "
                "need the writer: retry, or use session/eventual consistency"
            )
            self._error(pending.request_id, error)
            self._answered()

    def _upstream_head(self, pending: _Pending, query: object, head: asyncio.Future[int], deadline: float) -> None:
        try:
            target = head.result()  # also retrieves the probe's error, answered or not
        except (Exception, asyncio.CancelledError) as exc:
            self._fail_pending(pending, exc)
            return
        if pending.done:
            return
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None
        try:
            self._query_at(pending.request_id, query, target, max(0.0, deadline - self._loop.time()), pending)
        except Exception as exc:
            self._fail_pending(pending, exc)

    def _fail_pending(self, pending: _Pending, exc: BaseException) -> None:
        if pending.finish():
            self._error(pending.request_id, exc if isinstance(exc, CQRSError) else _internal(exc))
            self._answered()

    def _query_at(
        self, request_id: object, query: object, target: int, timeout: float, pending: _Pending | None
    ) -> None:
        """Answer ``query`` from a replica at ``target`` or beyond; wait (by callback) if none is there yet.

        ``pending`` is set when the request already holds an in-flight slot (a replica's strong query);
        errors raised here are answered by the caller.
        """
        router = self._app.router
        replica = router.pick(target)
        if replica is not None or target == 0:
            answer = replica.query_nowait(query) if replica is not None else router.query_nowait(query)
            self._ok(request_id, answer.result, answer.position)
            if pending is not None:
                pending.finish()
                self._answered()
            return
        future = router.wait_future(target)  # fails with ActorStopped if no live replica is left
        if pending is None:
            pending = _Pending(request_id)
            self.in_flight += 1
        waiting = pending
        waiting.timer = self._loop.call_later(timeout, self._query_timed_out, waiting, future, target, timeout)
        self._waits.add(future)
        future.add_done_callback(lambda f: self._query_ready(waiting, query, target, f))

    def _query_ready(self, pending: _Pending, query: object, target: int, future: asyncio.Future[None]) -> None:
        self._waits.discard(future)
        error = None if future.cancelled() else future.exception()  # retrieve it even if already answered
        if not pending.finish():
            return
        rid = pending.request_id
        if future.cancelled():
            why = "the server is stopping" if self._draining else "the replicas stopped"
            self._error(rid, ActorStopped(f"{why} while the query waited for position {target}; retry"))
        elif error is not None:
            self._error(rid, error if isinstance(error, CQRSError) else _internal(error))
        else:
            router = self._app.router
            try:
                answer = (router.pick(target) or router.most_advanced()).query_nowait(query)
            except CQRSError as exc:
                self._error(rid, exc)
            except Exception as exc:
                _log.error("request_crashed", request_id=rid, exc_info=exc)
                self._error(rid, _internal(exc))
            else:
                self._ok(rid, answer.result, answer.position)
        self._answered()

    def _query_timed_out(self, pending: _Pending, future: asyncio.Future[None], target: int, timeout: float) -> None:
        pending.timer = None
        if not pending.finish():
            return
        future.cancel()
        reached = self._app.router.most_advanced().position
        self._error(pending.request_id, ConsistencyTimeout(target, reached, timeout))
        self._answered()

    # -- subscribe ------------------------------------------------------------------------------------

    def _op_subscribe(self, request_id: object, request: dict[str, Any]) -> None:
        after = request.get("from_position", 0)
        if type(after) is not int or after < 0:
            raise BadRequest(
                f"expected a non-negative integer (the last position you have; 0 for all), got {after!r}",
                field="from_position",
            )
        subscription = self._app.subscribe(after)
        try:
            self._server._start_task(lambda: self._pump(request_id, subscription))
        except BaseException:
            subscription.close()
            raise
        self.subscribed = True
        self._ok(request_id, {"from_position": after, "log_id": self._app.log_id}, self._app.position)

    async def _pump(self, request_id: object, subscription: Subscription) -> None:
        """Send every event of the subscription, in order, respecting the transport's write buffer."""
        if self._closed:
            subscription.close()
            return
        with anyio.CancelScope() as scope:
            self._pump_scope = scope
            try:
                async with subscription:
                    while True:
                        batch = subscription.receive_nowait()
                        if batch is None:
                            batch = await subscription.receive()
                        self._send_events(batch.events)
                        while self._write_paused and not self._closed:
                            self._writable = self._loop.create_future()
                            try:
                                await self._writable
                            finally:
                                self._writable = None
            except CQRSError as exc:
                self._end_subscription(request_id, exc)
            except Exception as exc:
                _log.error("subscription_crashed", exc_info=exc)
                self._end_subscription(request_id, _internal(exc))

    def _send_events(self, events: tuple[RecordedEvent, ...]) -> None:
        if self._closed or self._draining or self._transport is None:
            return
        dumps = _dumps
        lines = [dumps({"event": e.to_wire()}, option=DUMPS_OPTIONS) for e in events]
        self._flush()  # anything answered before (the subscribe ack) goes first
        self._transport.write(b"".join(lines))

    def _end_subscription(self, request_id: object, error: CQRSError) -> None:
        if self._closed:
            return
        self._error(request_id, error)
        self._flush()
        self.subscribed = False
        self._drain_then_close()


_NO_DATA: dict[str, Any] = {}  # never mutated: decoders only read it


def _type_of(request: dict[str, Any]) -> object:
    type_name = request.get("type")
    if type_name is None:
        raise BadRequest("required field is missing", field="type")
    return type_name


def _internal(exc: BaseException) -> CQRSError:
    return InternalError(f"the server failed on this request: {type(exc).__name__}: {exc}")
