"""The ``soloist`` command: serve a domain, follow a writer as a replica, or send one request.

::

    soloist serve   [--db soloist.db] [--host 127.0.0.1] [--port 7420] [--unix PATH] [--replicas 1]
                    [--token T] [--domain module:ATTR] [--snapshot-dir DIR] [--no-seed] [--log-level info]
                    [--http-port N]   (GET /metrics, /api/stats and the live dashboard /; also on replica)
    soloist replica --upstream HOST:PORT [--host 127.0.0.1] [--port 7421] [--db replica.db] [--replicas 1]
                    [--domain module:ATTR] [--token T] [--upstream-token T]
    soloist serve   --db postgresql://USER@HOST:PORT/DB [--standby] [--lease-ttl 5]   (log on PostgreSQL)
    soloist serve   ... --nats nats://HOST:PORT [--nats-stream NAME]      (publish committed batches)
    soloist replica --nats nats://HOST:PORT [--nats-stream NAME] [--upstream HOST:PORT]
                    [--upstream-db postgresql://...] ...   (fed by JetStream; old history from the writer or its log)
    soloist send    ['{"op": "ping"}'] [--host] [--port] [--unix] [--token]   (JSON from argv or stdin)
    soloist stats   [--host] [--port] [--unix] [--token]
    soloist backup  --db PATH OUT      (a consistent copy of the log, safe while the server runs)
    soloist verify  [--db soloist.db] [--domain module:ATTR] [--upto P]   (offline replay digest, JSON)
    soloist rebuild [--replica N] [--cancel] [--host] [--port] [--unix] [--token]

Servers run on uvloop, log JSON lines to stderr (one ``server_listening`` line once they accept
connections) and stop cleanly on SIGINT/SIGTERM: stop listening, answer what is in flight, commit,
close, exit 0. The domain is loaded by import path, so ``runtime`` never imports ``domain`` itself.
The token may also come from the ``SOLOIST_TOKEN`` environment variable (kept out of ``ps``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, Final

import anyio
import orjson
import structlog

from ._app import App
from ._backup import backup
from ._digest import replay_digest
from ._domain import Domain
from ._errors import ConnectionLost, CQRSError
from ._gc import DEFAULT_GC_THRESHOLD, tune_process
from ._logging import configure_logging
from ._metrics import Metrics
from ._store import is_postgres_url
from ._writer import DEFAULT_KEY_TTL
from .net import Client, Follower, Server, Upstream, parse_address
from .net._http import HttpServer
from .net._jetstream import JetStreamFollower, JetStreamPublisher, default_stream_name

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from anyio.abc import TaskGroup

__all__ = ["load_domain", "main"]

DEFAULT_DOMAIN: Final = "soloist_shop.wiring:DOMAIN"
_log = structlog.get_logger("soloist.cli")


class UsageError(Exception):
    """A bad argument: printed to stderr, exit code 2."""


def load_domain(spec: str) -> Domain[Any, Any, Any, Any]:
    """Import ``module:ATTR`` and return the :class:`~soloist.Domain` it names."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--domain must look like module:ATTR (e.g. {DEFAULT_DOMAIN}), got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r} for --domain: {exc}") from exc
    domain = getattr(module, attr, None)
    if not isinstance(domain, Domain):
        raise UsageError(f"{spec} is {type(domain).__name__}, not a soloist.Domain")
    return domain


# -- servers ------------------------------------------------------------------------------------------


async def _until_signal(signals: AsyncIterator[signal.Signals]) -> None:
    async for signum in signals:
        _log.info("signal_received", signal=signal.Signals(signum).name)
        return


async def _serve(args: argparse.Namespace) -> int:
    domain = load_domain(args.domain)
    if not args.key_ttl >= 0:
        raise UsageError(f"--key-ttl is in seconds, 0 or more (0 keeps idempotency keys forever), got {args.key_ttl}")
    if args.standby and not is_postgres_url(args.db):
        raise UsageError("--standby needs a shared log: --db postgresql://... (a SQLite file has one writer)")
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with App(
            domain,
            args.db,
            replicas=args.replicas,
            snapshot_dir=args.snapshot_dir,
            snapshot_every=args.snapshot_every,
            standby=args.standby,
            lease_ttl=args.lease_ttl,
            key_ttl=args.key_ttl or None,
        ) as app:
            _tune()
            if not args.no_seed and app.role == "writer" and app.position == 0 and domain.seed is not None:
                commands = domain.seed()
                for command in commands:
                    await app.execute(command)
                _log.info("seeded", commands=len(commands), position=app.position)
            publisher = JetStreamPublisher(app, args.nats, args.nats_stream) if args.nats is not None else None
            server = _server(app, args, publisher=publisher)
            async with anyio.create_task_group() as tg:
                if publisher is not None:  # after the commit, never before: it reads what the broadcast hands out
                    await tg.start(publisher.run)
                await tg.start(server.serve)
                await _start_http(tg, app, args, server)
                await _until_signal(signals)
                tg.cancel_scope.cancel()  # the server drains first; then the App commits and closes
    return 0


def _tune() -> None:
    """This process is ours: tune it for serving once the App has rebuilt its state (see runtime/_gc.py)."""
    tuning = tune_process(freeze_gc=True, gc_threshold=DEFAULT_GC_THRESHOLD)
    _log.info(
        "process_tuned",
        switch_interval=tuning.switch_interval,
        gc_frozen=tuning.frozen,
        gc_threshold=tuning.gc_threshold,
    )


def _server(
    app: App, args: argparse.Namespace, *, upstream: Upstream | None = None, publisher: JetStreamPublisher | None = None
) -> Server:
    """The socket server with the listening and per-connection options shared by serve and replica."""
    return Server(
        app,
        host=args.host,
        port=args.port,
        unix_path=args.unix,
        token=args.token,
        max_line=args.max_line,
        max_in_flight=args.max_in_flight,
        idle_timeout=args.idle_timeout,
        upstream=upstream,
        publisher=publisher,
    )


async def _replica(args: argparse.Namespace) -> int:
    domain = load_domain(args.domain)
    if args.upstream is None and args.nats is None:
        raise UsageError("give --upstream HOST:PORT (follow the writer) or --nats URL (follow its JetStream stream)")
    if args.upstream is not None:
        try:
            parse_address(args.upstream)
        except ValueError as exc:
            raise UsageError(f"--upstream: {exc}") from None
    if args.upstream_db is not None and (args.nats is None or not is_postgres_url(args.upstream_db)):
        raise UsageError("--upstream-db takes the writer's PostgreSQL log (postgresql://...) and needs --nats")
    if args.nats is not None:
        return await _jetstream_replica(args, domain)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with App(domain, args.db, replicas=args.replicas, follower_of=args.upstream) as app:
            _tune()
            follower = Follower(app, args.upstream, token=args.upstream_token)
            server = _server(app, args, upstream=follower)
            async with anyio.create_task_group() as outer:
                await outer.start(follower.run)
                async with anyio.create_task_group() as inner:
                    await inner.start(server.serve)
                    await _start_http(inner, app, args, server)
                    await _until_signal(signals)
                    inner.cancel_scope.cancel()  # the server answers what is in flight (probes still work)
                outer.cancel_scope.cancel()
    return 0


async def _start_http(tg: TaskGroup, app: App, args: argparse.Namespace, server: Server) -> None:
    """With ``--http-port``: serve ``/metrics`` (Prometheus), ``/api/stats`` and the dashboard ``/``, with the
    figures of what the server reports in ``stats`` (its upstream link, a JetStream publisher)."""
    if args.http_port is None:
        return
    metrics = Metrics(app, server=server, follower=server.upstream, publisher=server.publisher)
    await tg.start(HttpServer(metrics, host=args.host, port=args.http_port).serve)


async def _jetstream_replica(args: argparse.Namespace, domain: Domain[Any, Any, Any, Any]) -> int:
    """A replica fed by JetStream; ``--upstream`` (optional) answers ``strong``; it or ``--upstream-db`` fills gaps."""
    stream = args.nats_stream or default_stream_name(domain.name)
    writer = args.upstream or f"the writer publishing to {stream} at {args.nats}"
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        # synchronous=NORMAL: this log is a copy that can always be fetched again (WAL keeps it consistent
        # through a kill -9; a power loss may drop its last transactions, and the follower resumes before them)
        async with App(domain, args.db, replicas=args.replicas, follower_of=writer, synchronous="NORMAL") as app:
            _tune()
            follower = JetStreamFollower(
                app,
                args.nats,
                args.nats_stream,
                upstream=args.upstream,
                token=args.upstream_token,
                upstream_db=args.upstream_db,
            )
            server = _server(app, args, upstream=follower)
            async with anyio.create_task_group() as outer:
                await outer.start(follower.run)
                async with anyio.create_task_group() as inner:
                    await inner.start(server.serve)
                    await _start_http(inner, app, args, server)
                    await _until_signal(signals)
                    inner.cancel_scope.cancel()
                outer.cancel_scope.cancel()
    return 0


# -- one-shot clients ---------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> Client:
    if args.unix is not None:
        return Client.connect_unix(args.unix, token=args.token)
    return Client.connect(args.host, args.port, token=args.token)


def _print(value: object, *, indent: bool = False) -> None:
    option = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
    sys.stdout.buffer.write(orjson.dumps(value, option=option))
    sys.stdout.buffer.flush()


async def _send(args: argparse.Namespace) -> int:
    text = args.request if args.request is not None else sys.stdin.read()
    try:
        request = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"the request is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise UsageError('the request must be a JSON object, e.g. \'{"op": "ping"}\'')
    async with _client(args) as client:
        if request.get("op") == "subscribe":
            after = request.get("from_position", 0)
            if type(after) is not int:
                raise UsageError("from_position must be an integer")
            async with client.subscribe(after) as events:
                async for event in events:
                    _print({"event": event})
            return 0  # pragma: no cover - a subscription ends only with the connection
        answer = await client.request(request)
    _print(answer)
    return 0 if answer.get("ok") is True else 1


async def _stats(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        answer = await client.request({"op": "stats"})
    _print(answer.get("result") if answer.get("ok") is True else answer, indent=True)
    return 0 if answer.get("ok") is True else 1


async def _backup(args: argparse.Namespace) -> int:
    result = await anyio.to_thread.run_sync(backup, args.db, args.out)
    _print(
        {
            "backup": str(result.target),
            "source": str(result.source),
            "position": result.position,
            "log_id": result.log_id,
            "bytes": result.bytes,
            "ms": round(result.seconds * 1000, 1),
        }
    )
    return 0


async def _verify(args: argparse.Namespace) -> int:
    """Replay the whole log offline into fresh read models; print ``{"digest", "position"}`` (as the op)."""
    domain = load_domain(args.domain)
    found = await anyio.to_thread.run_sync(lambda: replay_digest(domain, args.db, upto=args.upto))
    _print(found.to_wire())
    return 0


async def _rebuild(args: argparse.Namespace) -> int:
    request: dict[str, object] = {"id": 1, "op": "rebuild"}
    if args.replica is not None:
        request["replica"] = args.replica
    if args.cancel:
        request["cancel"] = True
    async with _client(args) as client:
        answer = await client.request(request)
    _print(answer)
    return 0 if answer.get("ok") is True else 1


# -- arguments ----------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    token = os.environ.get("SOLOIST_TOKEN")
    parser = argparse.ArgumentParser(prog="soloist", description="A single-writer CQRS runtime.")
    sub = parser.add_subparsers(dest="cmd", required=True)

    def server_options(p: argparse.ArgumentParser, port: int, db: str) -> None:
        p.add_argument(
            "--db", default=db, help=f"the event log: a SQLite file (default {db}) or a postgresql:// URL (serve)"
        )
        p.add_argument("--host", default="127.0.0.1", help="TCP address to bind (default loopback)")
        p.add_argument("--port", type=int, default=port, help=f"TCP port (default {port}; 0 picks a free one)")
        p.add_argument("--unix", default=None, metavar="PATH", help="serve on a Unix socket instead of TCP")
        p.add_argument(
            "--replicas", type=int, default=1, help="in-process read replicas (default 1: see docs/ARCHITECTURE.md)"
        )
        p.add_argument("--token", default=token, help="require auth with this token (or $SOLOIST_TOKEN)")
        p.add_argument("--domain", default=DEFAULT_DOMAIN, help=f"module:ATTR of a soloist.Domain ({DEFAULT_DOMAIN})")
        p.add_argument("--max-line", type=int, default=1 << 20, help="longest request line in bytes (1 MiB)")
        p.add_argument("--max-in-flight", type=int, default=1024, help="unanswered requests per connection")
        p.add_argument("--idle-timeout", type=float, default=300.0, help="close idle connections after (s)")
        p.add_argument(
            "--http-port", type=int, default=None, metavar="N", help="serve /metrics and the dashboard on N (0: any)"
        )
        p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    serve = sub.add_parser("serve", help="run the writer and serve it")
    server_options(serve, 7420, "soloist.db")
    serve.add_argument("--snapshot-dir", default=None, metavar="DIR", help="read-model checkpoints")
    serve.add_argument("--snapshot-every", type=int, default=0, metavar="N", help="checkpoint every N events")
    serve.add_argument("--no-seed", action="store_true", help="do not run the domain's seed on an empty log")
    serve.add_argument(
        "--standby",
        action="store_true",
        help="PostgreSQL: follow the log and answer queries; take over as the writer when its lease expires",
    )
    serve.add_argument(
        "--lease-ttl",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="PostgreSQL: the writer's lease; a dead writer is replaced within about this long (default 5)",
    )
    serve.add_argument(
        "--key-ttl",
        type=float,
        default=DEFAULT_KEY_TTL,
        metavar="SECONDS",
        help="remember each idempotency key at least this long, then delete it (default 86400, a day; 0: forever)",
    )

    def nats_options(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--nats", default=None, metavar="URL", help=f"{what} (e.g. nats://127.0.0.1:4222)")
        p.add_argument(
            "--nats-stream", default=None, metavar="NAME", help="the JetStream stream (default soloist-<domain>)"
        )

    nats_options(serve, "publish every committed batch to JetStream at this NATS server")

    replica = sub.add_parser("replica", help="follow a writer and serve queries (read-only)")
    server_options(replica, 7421, "replica.db")
    replica.add_argument("--upstream", default=None, metavar="HOST:PORT", help="the writer to follow")
    nats_options(replica, "follow the writer's JetStream stream at this NATS server instead")
    replica.add_argument("--upstream-token", default=token, help="token for the writer (or $SOLOIST_TOKEN)")
    replica.add_argument(
        "--upstream-db",
        default=None,
        metavar="postgresql://...",
        help="with --nats: the writer's PostgreSQL log (its --db), read for history the stream no longer holds",
    )

    def client_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=7420)
        p.add_argument("--unix", default=None, metavar="PATH")
        p.add_argument("--token", default=token, help="auth token (or $SOLOIST_TOKEN)")

    send = sub.add_parser("send", help="send one request (JSON from the argument or stdin); print the answer")
    send.add_argument("request", nargs="?", default=None, help='e.g. \'{"op": "ping"}\'')
    client_options(send)
    stats = sub.add_parser("stats", help="print the server's statistics")
    client_options(stats)
    copy = sub.add_parser("backup", help="copy a log consistently while its server runs (SQLite online backup)")
    copy.add_argument("--db", required=True, help="the event log to copy")
    copy.add_argument("out", help="the new file to write (must not exist)")
    verify = sub.add_parser("verify", help="replay the log offline; print the read models' digest at its head")
    verify.add_argument("--db", default="soloist.db", help="SQLite event log (default soloist.db)")
    verify.add_argument("--domain", default=DEFAULT_DOMAIN, help=f"module:ATTR of a soloist.Domain ({DEFAULT_DOMAIN})")
    verify.add_argument("--upto", type=int, default=None, metavar="P", help="stop at position P (default: the head)")
    rebuild = sub.add_parser("rebuild", help="rebuild a server's read models beside the live ones, then swap")
    rebuild.add_argument("--replica", type=int, default=None, metavar="N", help="one replica slot (default: all)")
    rebuild.add_argument("--cancel", action="store_true", help="cancel the running rebuild instead")
    client_options(rebuild)
    return parser


_COMMANDS: Final[dict[str, Callable[[argparse.Namespace], Awaitable[int]]]] = {
    "serve": _serve,
    "replica": _replica,
    "send": _send,
    "stats": _stats,
    "backup": _backup,
    "verify": _verify,
    "rebuild": _rebuild,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``soloist`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    configure_logging(args.log_level if args.cmd in ("serve", "replica") else "warning")
    command = _COMMANDS[args.cmd]

    async def run() -> int:
        return await command(args)

    try:
        return anyio.run(run, backend_options={"use_uvloop": True})
    except KeyboardInterrupt:  # a one-shot client interrupted (servers handle SIGINT themselves)
        return 130
    except Exception as exc:
        return _exit_code(args.cmd, exc)


def _exit_code(cmd: str, exc: BaseException) -> int:
    """Report a failure in one line and choose the exit code (2: usage, 1: anything else)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]  # a task group wraps what one of its tasks raised
    if isinstance(exc, UsageError):
        print(f"soloist {cmd}: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, ConnectionLost):
        print(f"soloist {cmd}: {exc}", file=sys.stderr)
        return 1
    if isinstance(exc, CQRSError):
        _log.error("failed", cmd=cmd, code=exc.code, error=str(exc))
        return 1
    if isinstance(exc, OSError):
        _log.error("failed", cmd=cmd, error=f"{type(exc).__name__}: {exc}")
        return 1
    raise exc


if __name__ == "__main__":
    sys.exit(main())
