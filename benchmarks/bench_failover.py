"""Durable commands/s with the log on PostgreSQL, beside SQLite and one transaction per command; takeover time.

Measured in one run, on this machine's PostgreSQL 15 (127.0.0.1:5432, fsync=on, synchronous_commit=on):

1. soloist on PostgreSQL: the shop's ``Restock`` (one event, an idempotency key each) through
   ``App.execute`` with 1, 10 and 100 concurrent submitters, on a fresh database per run: commands/s and
   latency p50/p99 (submit -> durable acknowledgement).
2. soloist on SQLite (WAL, synchronous=FULL), same commands, same submitters, a fresh file per run.
3. one transaction per command on the same PostgreSQL: what a service without a single writer does. Each
   submitter, on its own connection from a pool (up to 20), runs one transaction per command: read the
   stream's version, insert the event (``UNIQUE(stream, version)``) and its idempotency key, commit.
   Positions come from a ``bigserial``, the usual way (which is not gap-free: see docs/postgres.md).
4. takeover: a ``soloist serve --db postgresql://... --lease-ttl T`` writer and a ``--standby`` beside it,
   both real processes; the writer is ``kill -9``ed and the time until the standby acknowledges a command
   is measured (``--takeovers`` times, default 5; median, min, max).

Each command configuration runs ``--runs`` times (default 3) for ``--seconds`` each; the tables show medians
and ratios computed from the medians of this run.

    python benchmarks/bench_failover.py [--quick] [--runs 3] [--seconds 3] [--takeovers 5] [--lease-ttl 5]
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import asyncpg
import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine, median, percentile, print_table, write_json
from benchmarks.bench_postgres import admin
from soloist import App, ConnectionLost, NotWriter, configure_logging
from soloist.net import Client
from soloist_shop.commands import AddProduct, Restock
from soloist_shop.wiring import DOMAIN

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

ROOT = Path(__file__).resolve().parents[1]
PRODUCTS = 100
SUBMITTERS = (1, 10, 100)


@asynccontextmanager
async def database(server: str) -> AsyncIterator[str]:
    """A new, empty database on ``server``, dropped after."""
    name = f"soloist_bench_{secrets.token_hex(4)}"
    await admin(server, f"CREATE DATABASE {name}")
    try:
        yield f"{server}/{name}"
    finally:
        await admin(server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def submit_for(seconds: float, submitters: int, run: Callable[[int, int], Awaitable[None]]) -> dict[str, float]:
    """``submitters`` tasks each awaiting ``run(n, i)`` in a loop until the deadline: commands/s, p50, p99."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def submitter(n: int) -> None:
        clock, record, i = time.perf_counter, latencies.append, 0
        while (t0 := clock()) < deadline:
            await run(n, i)
            record(clock() - t0)
            i += 1

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for n in range(submitters):
            tg.start_soon(submitter, n)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "commands_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "commands": len(latencies),
    }


async def soloist_commands(target: str | Path, submitters: int, seconds: float) -> dict[str, float]:
    """The shop's Restock through App.execute, each with its own idempotency key."""
    async with App(DOMAIN, target) as app:
        for p in range(PRODUCTS):
            await app.execute(AddProduct(sku=f"sku-{p}", name=f"Item {p}", category="bench", price_cents=100, stock=0))
        start = app.position

        async def execute(n: int, i: int) -> None:
            await app.execute(Restock(sku=f"sku-{n % PRODUCTS}", quantity=1), idempotency_key=f"{n}-{i}")

        result = await submit_for(seconds, submitters, execute)
        if app.position - start != result["commands"]:
            raise AssertionError(f"{app.position - start} events for {result['commands']} acknowledged commands")
        result["mean_batch"] = app.writer.statistics().batch_size_mean
        return result


async def soloist_on_postgres(server: str, submitters: int, seconds: float) -> dict[str, float]:
    async with database(server) as dsn:
        return await soloist_commands(dsn, submitters, seconds)


async def soloist_on_sqlite(submitters: int, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        return await soloist_commands(Path(tmp) / "shop.db", submitters, seconds)


_SCHEMA = """
CREATE TABLE events (
    position bigserial PRIMARY KEY, stream text NOT NULL, version bigint NOT NULL, type text NOT NULL,
    data bytea NOT NULL, idempotency_key text, recorded_at double precision NOT NULL, UNIQUE (stream, version));
CREATE TABLE keys (key text PRIMARY KEY, position bigint NOT NULL);
"""


async def per_command_on_postgres(server: str, submitters: int, seconds: float) -> dict[str, float]:
    """One transaction per command, the way a service without a single writer does it."""
    async with database(server) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(_SCHEMA)
        finally:
            await conn.close()
        async with asyncpg.create_pool(dsn, min_size=min(submitters, 20), max_size=min(submitters, 20)) as pool:

            async def execute(n: int, i: int) -> None:
                stream = f"product-sku-{n % PRODUCTS}"
                data = orjson.dumps({"sku": f"sku-{n % PRODUCTS}", "quantity": 1})
                while True:
                    async with pool.acquire() as conn, conn.transaction():
                        if await conn.fetchval("SELECT position FROM keys WHERE key = $1", f"{n}-{i}") is not None:
                            return
                        version = await conn.fetchval(
                            "SELECT coalesce(max(version), 0) FROM events WHERE stream = $1", stream
                        )
                        try:
                            position = await conn.fetchval(
                                "INSERT INTO events (stream, version, type, data, idempotency_key, recorded_at) "
                                "VALUES ($1, $2, 'ProductRestocked', $3, $4, $5) RETURNING position",
                                stream,
                                version + 1,
                                data,
                                f"{n}-{i}",
                                time.time(),
                            )
                        except asyncpg.UniqueViolationError:
                            continue  # another submitter took that version: retry, as a real service would
                        await conn.execute("INSERT INTO keys VALUES ($1, $2)", f"{n}-{i}", position)
                        return

            return await submit_for(seconds, submitters, execute)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start(dsn: str, port: int, ttl: float, *extra: str) -> anyio.abc.Process:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, "-m", "soloist.cli", "serve", "--db", dsn, "--port", str(port)]
    command += ["--lease-ttl", str(ttl), "--log-level", "warning", *extra]
    return await anyio.open_process(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env, cwd=ROOT)


async def until_acknowledged(port: int, key: str, within: float) -> None:
    with anyio.fail_after(within):
        while True:
            try:
                async with Client.connect(port=port, connect_timeout=1) as client:
                    await client.command("Restock", {"sku": "BK-001", "quantity": 1}, idempotency_key=key)
                    return
            except (NotWriter, ConnectionLost, OSError):
                await anyio.sleep(0.01)  # not up yet, or still a standby


async def until_position(port: int, position: int, within: float) -> None:
    """Ping (polling another process, bounded) until the server at ``port`` has reached ``position``."""
    with anyio.fail_after(within):
        while True:
            try:
                async with Client.connect(port=port, connect_timeout=1) as client:
                    if await client.ping() >= position:
                        return
            except (ConnectionLost, OSError):
                pass  # not listening yet
            await anyio.sleep(0.01)


async def takeover(server: str, ttl: float) -> float:
    """Seconds from ``kill -9`` of the writer to the standby's first acknowledged command."""
    async with database(server) as dsn:
        writer_port, standby_port = free_port(), free_port()
        writer = await start(dsn, writer_port, ttl)
        standby = None
        try:
            await until_acknowledged(writer_port, "before", 60)  # the writer seeds the shop: BK-001 exists
            standby = await start(dsn, standby_port, ttl, "--standby")  # after: it must not take the lease first
            await until_position(standby_port, 2, 60)  # the standby is up and has followed the writer
            killed = time.perf_counter()
            writer.send_signal(signal.SIGKILL)
            await until_acknowledged(standby_port, "after", ttl + 30)
            return time.perf_counter() - killed
        finally:
            for process in (writer, standby):
                if process is not None and process.returncode is None:
                    process.kill()
                if process is not None:
                    await process.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 run of 1 s, 2 takeovers")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--takeovers", type=int, default=5)
    parser.add_argument("--lease-ttl", type=float, default=5.0, help="the lease of the takeover runs (serve's default)")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432", help="server DSN, no database")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.seconds, args.takeovers = 1, 1.0, 2
    configure_logging("warning")
    server = args.dsn.rstrip("/")

    configs = {
        "soloist on postgresql": lambda n: soloist_on_postgres(server, n, args.seconds),
        "soloist on sqlite": lambda n: soloist_on_sqlite(n, args.seconds),
        "postgresql, one transaction per command": lambda n: per_command_on_postgres(server, n, args.seconds),
    }
    samples: dict[tuple[str, int], list[dict[str, float]]] = {}
    for run in range(args.runs):
        for submitters in SUBMITTERS:
            for label, measure in configs.items():
                result = await measure(submitters)
                samples.setdefault((label, submitters), []).append(result)
                print(
                    f"run {run + 1}/{args.runs}: {label}, {submitters} submitters: "
                    f"{result['commands_per_s']:,.0f} commands/s",
                    flush=True,
                )

    def med(label: str, n: int, key: str) -> float:
        return median([s[key] for s in samples[(label, n)]])

    rows, results = [], []
    for submitters in SUBMITTERS:
        one_tx = med("postgresql, one transaction per command", submitters, "commands_per_s")
        for label in configs:
            rate = med(label, submitters, "commands_per_s")
            rows.append(
                [
                    label,
                    submitters,
                    rate,
                    med(label, submitters, "p50_ms"),
                    med(label, submitters, "p99_ms"),
                    rate / one_tx,
                ]
            )
            results.append(
                {
                    "what": label,
                    "submitters": submitters,
                    "commands_per_s": rate,
                    "p50_ms": med(label, submitters, "p50_ms"),
                    "p99_ms": med(label, submitters, "p99_ms"),
                    "x_one_tx_per_command_pg": rate / one_tx,
                    "runs_commands_per_s": [s["commands_per_s"] for s in samples[(label, submitters)]],
                }
            )
    print_table(
        f"durable Restock commands (idempotency key each), medians of {args.runs} runs of {args.seconds:g} s",
        ["what", "submitters", "commands/s", "p50 ms", "p99 ms", "x pg 1 tx/command"],
        rows,
    )

    times = []
    for i in range(args.takeovers):
        times.append(await takeover(server, args.lease_ttl))
        print(f"takeover {i + 1}/{args.takeovers}: {times[-1]:.2f} s (lease {args.lease_ttl:g} s)", flush=True)
    print_table(
        f"takeover after kill -9 of the writer, lease {args.lease_ttl:g} s, {args.takeovers} runs",
        ["median s", "min s", "max s", "target s (lease + 2)"],
        [[median(times), min(times), max(times), args.lease_ttl + 2]],
    )
    path = write_json(
        "bench_failover",
        {
            "machine": machine(),
            "runs": args.runs,
            "seconds": args.seconds,
            "results": results,
            "takeover": {"lease_ttl": args.lease_ttl, "seconds": times, "median_s": median(times)},
        },
    )
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    uvloop.run(main())
