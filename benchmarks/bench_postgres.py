"""How many durable appends/s does the PostgreSQL event store take, against the naive way and against SQLite?

Measured in one run, on this machine's PostgreSQL 15 (127.0.0.1:5432, fsync=on, synchronous_commit=on) and
on a SQLite file (WAL, synchronous=FULL) in a temporary directory:

1. ``PostgresStore.append`` with batches of 1, 10 and 100 events: one statement per batch that renews the
   lease, checks the head and inserts events (and one idempotency key per batch) from ``unnest`` arrays.
2. the naive way on the same server: one ``INSERT`` per event, each its own (autocommit) transaction, into a
   table of the same shape (no lease, no key): what a one-transaction-per-command writer would get.
3. the SQLite adapter (``SQLiteStore``, today's ``EventLog`` behind the port) with the same batches.
4. catch-up reads: ``read(after, 2000)`` over a log of ``--read-events`` events (appended in batches of
   1,000 first), events/s including the decoder (an empty ``TypeRegistry``: plain JSON values), for
   both adapters.

Each configuration appends for ``--seconds`` on a fresh log (a new database / file per run) and runs
``--runs`` times (default 3); the table shows medians of events/s and commits/s. Events are ~40 bytes of
JSON spread over 100 streams, like the shop's ``ProductRestocked``.

    python benchmarks/bench_postgres.py [--runs 3] [--seconds 2] [--read-events 100000] [--dsn ...]
"""

from __future__ import annotations

import argparse
import functools
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import median, print_table, write_json
from soloist._messages import TypeRegistry
from soloist._postgres import PostgresStore
from soloist._sqlitestore import SQLiteStore

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from soloist._store import EventRow, EventStore, KeyRow

STREAMS = 100
PLAIN = TypeRegistry("event")  # no classes: the events come back as plain JSON values
BATCHES = (1, 10, 100)


class Rows:
    """Makes consecutive event rows over ``STREAMS`` streams, tracking each stream's version."""

    def __init__(self) -> None:
        self.position = 0
        self.versions = [0] * STREAMS

    def batch(self, size: int) -> tuple[list[EventRow], list[KeyRow]]:
        out: list[EventRow] = []
        now = time.time()
        for _ in range(size):
            self.position += 1
            s = self.position % STREAMS
            self.versions[s] += 1
            data = orjson.dumps({"sku": f"SKU-{s:03d}", "quantity": 1})
            out.append((self.position, f"product-{s}", self.versions[s], "ProductRestocked", 1, data, "c", None, now))
        key: KeyRow = (f"k-{self.position}", "f" * 32, self.position, "c")
        return out, [key]


async def timed(seconds: float, step: Callable[[], Awaitable[int]]) -> tuple[float, float]:
    """Call ``step`` (which returns how many events it appended) for ``seconds``: (events/s, commits/s)."""
    events = commits = 0
    start = time.perf_counter()
    deadline = start + seconds
    while (now := time.perf_counter()) < deadline:
        events += await step()
        commits += 1
    elapsed = now - start
    return events / elapsed, commits / elapsed


async def admin(server: str, sql: str) -> None:
    conn = await asyncpg.connect(f"{server}/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def read_rate(store: EventStore, events: int) -> tuple[float, float]:
    """Fill ``store`` with ``events`` events, then read them all back in chunks: (events/s, chunks/s)."""
    rows = Rows()
    while rows.position < events:
        await store.append(*rows.batch(min(1000, events - rows.position)))
    count = chunks = after = 0
    start = time.perf_counter()
    while chunk := await store.read(after, 2000):
        count += len(chunk)
        chunks += 1
        after = chunk[-1].position
    elapsed = time.perf_counter() - start
    assert count == events
    return count / elapsed, chunks / elapsed


async def postgres_reads(server: str, events: int) -> tuple[float, float]:
    name = f"soloist_bench_{secrets.token_hex(4)}"
    await admin(server, f"CREATE DATABASE {name}")
    try:
        async with PostgresStore(f"{server}/{name}", PLAIN) as store:
            await store.acquire_lease("bench", 60)
            return await read_rate(store, events)
    finally:
        await admin(server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def sqlite_reads(events: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        async with SQLiteStore(Path(tmp) / "log.db", PLAIN) as store:
            return await read_rate(store, events)


async def postgres_store(server: str, size: int, seconds: float) -> tuple[float, float]:
    name = f"soloist_bench_{secrets.token_hex(4)}"
    await admin(server, f"CREATE DATABASE {name}")
    try:
        async with PostgresStore(f"{server}/{name}", PLAIN) as store:
            await store.acquire_lease("bench", 60)
            rows = Rows()

            async def step() -> int:
                batch, keys = rows.batch(size)
                await store.append(batch, keys)
                return size

            result = await timed(seconds, step)
            assert await store.head() == rows.position
            return result
    finally:
        await admin(server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def postgres_naive(server: str, seconds: float) -> tuple[float, float]:
    name = f"soloist_bench_{secrets.token_hex(4)}"
    await admin(server, f"CREATE DATABASE {name}")
    try:
        conn = await asyncpg.connect(f"{server}/{name}")
        try:
            await conn.execute(
                "CREATE TABLE events (position bigint PRIMARY KEY, stream text NOT NULL, version bigint NOT NULL, "
                "type text NOT NULL, schema integer NOT NULL, data bytea NOT NULL, command_id text NOT NULL, "
                "idempotency_key text, recorded_at double precision NOT NULL, UNIQUE (stream, version))"
            )
            insert = "INSERT INTO events VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            rows = Rows()

            async def step() -> int:
                batch, _ = rows.batch(1)
                await conn.execute(insert, *batch[0])  # autocommit: one transaction per event
                return 1

            return await timed(seconds, step)
        finally:
            await conn.close()
    finally:
        await admin(server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def sqlite_store(size: int, seconds: float) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        async with SQLiteStore(Path(tmp) / "log.db", PLAIN) as store:
            rows = Rows()

            async def step() -> int:
                batch, keys = rows.batch(size)
                await store.append(batch, keys)
                return size

            return await timed(seconds, step)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--read-events", type=int, default=100_000)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432", help="server DSN, no database")
    args = parser.parse_args()
    server = args.dsn.rstrip("/")
    seconds = float(args.seconds)

    configs: list[tuple[str, int, Callable[[], Awaitable[tuple[float, float]]]]] = []
    for size in BATCHES:
        store = functools.partial(postgres_store, server, size, seconds)
        configs.append(("postgres, PostgresStore.append", size, store))
    configs.append(("postgres, one transaction per event", 1, functools.partial(postgres_naive, server, seconds)))
    for size in BATCHES:
        configs.append(("sqlite, SQLiteStore.append", size, functools.partial(sqlite_store, size, seconds)))

    reads: list[tuple[str, Callable[[], Awaitable[tuple[float, float]]]]] = [
        ("postgres, PostgresStore.read", functools.partial(postgres_reads, server, args.read_events)),
        ("sqlite, SQLiteStore.read", functools.partial(sqlite_reads, args.read_events)),
    ]

    samples: dict[int, list[tuple[float, float]]] = {i: [] for i in range(len(configs))}
    read_samples: dict[str, list[float]] = {label: [] for label, _ in reads}
    for run in range(args.runs):
        for i, (label, size, measure) in enumerate(configs):
            samples[i].append(await measure())
            print(f"run {run + 1}/{args.runs}: {label}, batch {size}: {samples[i][-1][0]:,.0f} events/s", flush=True)
        for label, measure_read in reads:
            read_samples[label].append((await measure_read())[0])
            print(f"run {run + 1}/{args.runs}: {label}: {read_samples[label][-1]:,.0f} events/s", flush=True)

    naive = median([s[0] for s in samples[len(BATCHES)]])
    table = []
    results = []
    for i, (label, size, _) in enumerate(configs):
        events = median([s[0] for s in samples[i]])
        commits = median([s[1] for s in samples[i]])
        table.append([label, size, events, commits, events / naive])
        results.append(
            {
                "what": label,
                "batch": size,
                "events_per_s": events,
                "commits_per_s": commits,
                "x_one_tx_per_event_pg": events / naive,
                "runs_events_per_s": [s[0] for s in samples[i]],
            }
        )
    print_table(
        f"durable appends, medians of {args.runs} runs of {args.seconds:g} s each, fresh log per run",
        ["what", "batch", "events/s", "commits/s", "x pg 1 tx/event"],
        table,
    )
    read_results = [
        {"what": label, "events": args.read_events, "chunk": 2000, "events_per_s": median(v), "runs_events_per_s": v}
        for label, v in read_samples.items()
    ]
    print_table(
        f"catch-up reads of {args.read_events:,} events in chunks of 2,000, decoded, medians of {args.runs} runs",
        ["what", "events/s"],
        [[r["what"], r["events_per_s"]] for r in read_results],
    )
    path = write_json(
        "bench_postgres",
        {"runs": args.runs, "seconds": args.seconds, "results": results, "reads": read_results},
    )
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    uvloop.run(main())
