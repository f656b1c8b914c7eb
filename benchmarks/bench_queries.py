"""How fast does the read side answer, how far behind the writer does it run, and how fast does it come back?

Measured, in one process on the shop domain (``soloist_shop.wiring.DOMAIN``), on a fresh SQLite file:

1. **Queries/s with 1, 2, 4 and 8 replicas under a steady command load.** A background task submits
   ``Restock`` commands at a fixed rate (``--load-rate``, default 2,000/s, ``submit_nowait`` bursts every
   10 ms, paced against the clock) while the foreground runs ``app.query_nowait(GetProduct(...))`` in
   a tight loop, yielding to the event loop every 1,000 queries so the writer and replicas run.
   "queries/s" is wall-clock throughput (the yields, i.e. the writer's and replicas' turns, included);
   "query-only/s" counts only the time spent inside the query loop. The 1,000 query objects are built
   once, so this measures the runtime and read model, not dataclass construction. Extra rows at 4
   replicas: ``await app.query(q)`` (eventual) and ``await app.query(q, consistency="session",
   min_position=<last receipt>)`` (read-your-writes: waits when no replica has that position yet).
   Median of ``--runs`` runs of ``--duration`` seconds each (modes interleaved). Alongside: the
   commands/s the writer acknowledged meanwhile (median and worst run) and submit -> receipt latency
   (p50/p99 over all runs), which show whether the writer kept up while the loop was busy querying.
2. **Replica lag under load.** The writer's saturation rate for ``Restock`` (100 submitters each
   awaiting ``app.execute``, synchronous=FULL, 4 replicas), then a paced load at half that rate. Every
   replica records one sample per applied batch (``Replica.lag_samples``): ms from the commit to the
   end of that batch's apply, and events from the batch's first event to the head at that moment (the
   batch itself included). p50/p99 over all samples of the 4 replicas; once with only the command load,
   then with a ``query_nowait`` loop in the foreground yielding every 1,000 and every 100 queries (a
   replica applies only when the loop gets a turn, so the yield interval bounds the lag from below).
3. **Rebuild of N (default 1,000,000) events.** The log is written directly with sqlite3 in
   runtime/_log.py's schema (realistic shop events: products, customers, orders with 1-3 lines, stock
   reservations, restocks, cancellations, shipments; valid per-stream versions), not through the writer.
   Timed: the writer's recovery (``Writer.recover``: decode + evolve of every event), the read models'
   replay (``LogReader.read`` in chunks of 2,000 + ``ReadModels.apply``; also decode-only, and once with
   the cyclic GC disabled to show its share), the whole ``App(replicas=1)`` start (writer recovery +
   replica catch-up), a checkpoint, loading that checkpoint (``SnapshotStore.load`` + ``orjson.loads`` +
   ``restore``: the state of N events, up) and ``App(replicas=1)`` start with that checkpoint present.
   Each rebuild runs once (seconds each); snapshot loads are the median of 3. Wall and process CPU
   seconds are both shown: CPU seconds are what other processes on a shared machine cannot inflate.

Targets (2-core machine): >= 300k simple queries/s in process; lag p99 < 5 ms at half saturation;
replay >= 200k events/s; from a snapshot, 1M events' worth of state up in < 1 s.

Run: ``python benchmarks/bench_queries.py [--quick] [--events N]``; prints one table per
section and a summary, and writes benchmarks/results/queries.json. The machine is noisy: quote medians.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import msgspec
import orjson
import uvloop

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # run as a script (as `make bench` does): the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import median, percentile, print_table, write_json
from soloist import App, Overloaded, Receipt, configure_logging
from soloist._broadcast import Broadcast
from soloist._log import EventLog, LogReader
from soloist._messages import TypeRegistry
from soloist._replica import Replica
from soloist._snapshot import SnapshotStore
from soloist._sqlitestore import SQLiteStore
from soloist._writer import Writer
from soloist_shop.commands import AddProduct, RegisterCustomer, Restock
from soloist_shop.events import (
    CustomerRegistered,
    OrderCancelled,
    OrderLine,
    OrderPlaced,
    OrderShipped,
    ProductAdded,
    ProductRestocked,
    StockReleased,
    StockReserved,
)
from soloist_shop.queries import GetProduct
from soloist_shop.wiring import DOMAIN

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Iterator, Sequence

CATEGORIES = ("books", "kitchen", "garden", "electronics", "toys", "sports", "office", "music")
WORDS = (
    "steel", "wooden", "compact", "classic", "wireless", "organic", "portable", "deluxe", "heavy", "light",
    "rust", "proof", "quiet", "fast", "ceramic", "cotton", "leather", "glass", "bamboo", "premium", "travel",
    "outdoor", "indoor", "vintage", "modern", "smart", "eco",
)  # fmt: skip
QUERIES_PER_YIELD = 1000

Row = dict[str, Any]  # a JSON result row; Any keeps the report code free of casts (benchmarks are not in mypy's files)


# -- shop setup ---------------------------------------------------------------------------------------


def product_name(rng: random.Random, i: int) -> tuple[str, str]:
    name = f"{rng.choice(WORDS).title()} {rng.choice(WORDS).title()} {i}"
    description = " ".join(rng.choices(WORDS, k=8))
    return name, description


async def seed(app: App, products: int, customers: int) -> list[str]:
    """Add a catalogue and customers through the writer; wait until every replica has them."""
    rng = random.Random(7)
    skus = [f"SKU-{i:05d}" for i in range(products)]
    commands: list[object] = []
    for i, sku in enumerate(skus):
        name, description = product_name(rng, i)
        commands.append(
            AddProduct(
                sku=sku,
                name=name,
                category=CATEGORIES[i % len(CATEGORIES)],
                price_cents=rng.randrange(100, 50_000),
                stock=rng.randrange(0, 500),
                description=description,
            )
        )
    commands.extend(
        RegisterCustomer(customer_id=f"c-{i:05d}", name=f"Customer {i}", email=f"c{i}@example.com")
        for i in range(customers)
    )
    futures = [app.submit_nowait(command) for command in commands]
    for future in futures:
        await future
    for replica in app.router.replicas:
        await replica.wait_for(app.position, timeout=30)
    return skus


@dataclass(eq=False)
class PacedLoad:
    """Submits ``Restock`` commands at ``rate``/s in bursts every ``tick`` s, paced against the clock.

    ``latencies_ms`` holds submit -> receipt (as the submitter's callback sees it) per acknowledged command.
    """

    app: App
    skus: Sequence[str]
    rate: float
    tick: float = 0.01
    running: bool = True
    sent: int = 0
    acked: int = 0
    failed: int = 0
    overloaded: int = 0
    last_position: int = 0
    settled: anyio.Event = field(default_factory=anyio.Event)
    latencies_ms: list[float] = field(default_factory=list)

    def _done(self, submitted: float, future: asyncio.Future[Receipt]) -> None:
        if future.cancelled() or future.exception() is not None:
            self.failed += 1
        else:
            self.acked += 1
            self.latencies_ms.append((time.perf_counter() - submitted) * 1000)
            position = future.result().position
            if position > self.last_position:
                self.last_position = position
        self._check_settled()

    def _check_settled(self) -> None:
        if not self.running and self.acked + self.failed + self.overloaded >= self.sent:
            self.settled.set()

    async def run(self) -> None:
        app, skus, n = self.app, self.skus, len(self.skus)
        started = time.perf_counter()
        due = 0
        while self.running:
            await anyio.sleep(self.tick)
            now = time.perf_counter()
            due = int((now - started) * self.rate)
            done = functools.partial(self._done, now)
            while self.sent < due:
                try:
                    future = app.submit_nowait(Restock(sku=skus[self.sent % n], quantity=1))
                except Overloaded:
                    self.overloaded += due - self.sent
                    self.sent = due  # drop the rest of this burst; keep the pace
                    break
                future.add_done_callback(done)
                self.sent += 1

    async def stop(self) -> None:
        """Stop submitting and wait (bounded) until every submitted command is acknowledged."""
        self.running = False
        self._check_settled()
        with anyio.fail_after(30):
            await self.settled.wait()


# -- 1. queries/s -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryRun:
    queries: int
    seconds: float
    query_seconds: float
    commands: int
    command_ms: list[float]  # submit -> receipt of the commands acknowledged during the run, sorted

    @property
    def qps(self) -> float:
        return self.queries / self.seconds

    @property
    def query_only_qps(self) -> float:
        return self.queries / self.query_seconds

    @property
    def cps(self) -> float:
        return self.commands / self.seconds

    def summary(self) -> dict[str, float]:
        return {
            "queries": self.queries,
            "seconds": self.seconds,
            "query_seconds": self.query_seconds,
            "qps": self.qps,
            "commands": self.commands,
            "command_ms_p50": percentile(self.command_ms, 50),
            "command_ms_p99": percentile(self.command_ms, 99),
        }


async def query_loop(app: App, queries: Sequence[GetProduct], load: PacedLoad, mode: str, duration: float) -> QueryRun:
    """Query for ``duration`` s; yield to the loop after every ``len(queries)`` queries."""
    query_nowait, query = app.query_nowait, app.query
    checkpoint = anyio.lowlevel.checkpoint
    clock = time.perf_counter
    acked_before = load.acked
    latencies_before = len(load.latencies_ms)
    count = 0
    in_queries = 0.0
    started = clock()
    deadline = started + duration
    while True:
        t0 = clock()
        if mode == "query_nowait":
            for q in queries:
                query_nowait(q)
        elif mode == "await query":
            for q in queries:
                await query(q)
        else:  # session: read-your-writes on the load's last acknowledged command
            for q in queries:
                await query(q, consistency="session", min_position=load.last_position)
        t1 = clock()
        in_queries += t1 - t0
        count += len(queries)
        await checkpoint()
        if t1 >= deadline:
            break
    ended = clock()
    return QueryRun(
        queries=count,
        seconds=ended - started,
        query_seconds=in_queries,
        commands=load.acked - acked_before,
        command_ms=sorted(load.latencies_ms[latencies_before:]),
    )


async def bench_query_rates(
    workdir: Path, replica_counts: Sequence[int], *, runs: int, duration: float, load_rate: float
) -> list[Row]:
    results: list[Row] = []
    for replicas in replica_counts:
        modes = ["query_nowait"] + (["await query", "session"] if replicas == 4 else [])
        path = workdir / f"queries-{replicas}.db"
        async with App(DOMAIN, path, replicas=replicas) as app:
            skus = await seed(app, products=1000, customers=200)
            queries = [GetProduct(sku=sku) for sku in skus]
            load = PacedLoad(app, skus, load_rate)
            measured: dict[str, list[QueryRun]] = {mode: [] for mode in modes}
            async with anyio.create_task_group() as tg:
                tg.start_soon(load.run)
                await query_loop(app, queries, load, "query_nowait", min(0.3, duration))  # warm-up
                for _ in range(runs):
                    for mode in modes:  # interleaved, so that a noisy moment does not hit one mode only
                        measured[mode].append(await query_loop(app, queries, load, mode, duration))
                await load.stop()
            overflows = sum(r.overflows for r in app.statistics().replicas)
            for mode, mode_runs in measured.items():
                pooled = sorted(ms for run in mode_runs for ms in run.command_ms)
                results.append(
                    {
                        "replicas": replicas,
                        "mode": mode,
                        "qps_median": median([run.qps for run in mode_runs]),
                        "query_only_qps_median": median([run.query_only_qps for run in mode_runs]),
                        "commands_per_s_median": median([run.cps for run in mode_runs]),
                        "commands_per_s_min": min(run.cps for run in mode_runs),
                        "command_ms_p50": percentile(pooled, 50),  # over every run's commands
                        "command_ms_p99": percentile(pooled, 99),
                        "overloaded": load.overloaded,
                        "replica_overflows": overflows,
                        "runs": [run.summary() for run in mode_runs],
                    }
                )
        path.unlink(missing_ok=True)
    return results


# -- 2. lag -------------------------------------------------------------------------------------------


async def saturation(app: App, skus: Sequence[str], *, submitters: int, duration: float) -> dict[str, float]:
    """Commands/s with ``submitters`` tasks each awaiting ``app.execute`` back to back."""
    n = len(skus)
    count = 0
    measuring = False
    stop = False

    async def submitter(offset: int) -> None:
        nonlocal count
        i = offset
        while not stop:
            await app.execute(Restock(sku=skus[i % n], quantity=1))
            i += submitters
            if measuring:
                count += 1

    async with anyio.create_task_group() as tg:
        for k in range(submitters):
            tg.start_soon(submitter, k)
        await anyio.sleep(min(0.3, duration / 4))  # warm-up
        measuring = True
        batches_before = app.writer.statistics().batches
        started = time.perf_counter()
        await anyio.sleep(duration)
        measuring = False
        seconds = time.perf_counter() - started
        measured, batches = count, app.writer.statistics().batches - batches_before
        stop = True
    writer = app.writer.statistics()
    return {
        "commands_per_s": measured / seconds,
        "seconds": seconds,
        "commands": measured,
        "mean_batch": measured / batches if batches else 0.0,
        "commit_ms_last": writer.commit_ms_last,
    }


def lag_summary(samples: Sequence[tuple[float, int]]) -> dict[str, float]:
    ms = sorted(s[0] for s in samples)
    events = sorted(float(s[1]) for s in samples)
    return {
        "samples": len(samples),
        "ms_p50": percentile(ms, 50),
        "ms_p99": percentile(ms, 99),
        "ms_max": ms[-1] if ms else float("nan"),
        "events_p50": percentile(events, 50),
        "events_p99": percentile(events, 99),
        "events_max": events[-1] if events else float("nan"),
    }


async def bench_lag(workdir: Path, *, duration: float, submitters: int, tick: float) -> Row:
    path = workdir / "lag.db"
    result: Row = {}
    async with App(DOMAIN, path, replicas=4) as app:
        skus = await seed(app, products=1000, customers=200)
        queries = [GetProduct(sku=sku) for sku in skus]
        sat = await saturation(app, skus, submitters=submitters, duration=duration)
        result["saturation"] = sat
        rate = sat["commands_per_s"] / 2
        result["rate"] = rate
        rows: list[Row] = []
        for per_yield in (0, QUERIES_PER_YIELD, QUERIES_PER_YIELD // 10):
            load = PacedLoad(app, skus, rate, tick=tick)
            run: QueryRun | None = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(load.run)
                await anyio.sleep(0.3)  # warm-up
                for replica in app.router.replicas:
                    replica.lag_samples.clear()
                acked_before = load.acked
                latencies_before = len(load.latencies_ms)
                started = time.perf_counter()
                if per_yield:
                    run = await query_loop(app, queries[:per_yield], load, "query_nowait", duration)
                else:
                    await anyio.sleep(duration)
                seconds = time.perf_counter() - started
                acked = load.acked - acked_before
                command_ms = sorted(load.latencies_ms[latencies_before:])
                samples = [s for replica in app.router.replicas for s in replica.lag_samples]
                await load.stop()
            row: Row = {
                "load": f"commands + queries, yield / {per_yield}" if per_yield else "commands only",
                "commands_per_s": acked / seconds,
                "overloaded": load.overloaded,
                "command_ms_p50": percentile(command_ms, 50),
                "command_ms_p99": percentile(command_ms, 99),
                **lag_summary(samples),
            }
            if run is not None:
                row["qps"] = run.qps
            rows.append(row)
        result["runs"] = rows
        result["replica_overflows"] = sum(r.overflows for r in app.statistics().replicas)
    path.unlink(missing_ok=True)
    return result


# -- 3. rebuild ---------------------------------------------------------------------------------------


def shop_events(rng: random.Random, *, products: int, customers: int) -> Iterator[tuple[str, object, str]]:
    """An endless, valid shop history: (stream, event, command id).

    Per-stream order follows decide's rules (stock never goes negative), so the writer's evolve and
    the read models accept every event.
    """
    skus = [f"SKU-{i:05d}" for i in range(products)]
    names: dict[str, str] = {}
    prices: dict[str, int] = {}
    stock: dict[str, int] = {}
    for i, sku in enumerate(skus):
        name, description = product_name(rng, i)
        names[sku], prices[sku], stock[sku] = name, rng.randrange(100, 50_000), 100
        event = ProductAdded(
            sku=sku,
            name=name,
            category=CATEGORIES[i % len(CATEGORIES)],
            price_cents=prices[sku],
            stock=100,
            description=description,
        )
        yield f"product-{sku}", event, f"add-{i}"
    customer_names = [f"Customer {i}" for i in range(customers)]
    for i, name in enumerate(customer_names):
        yield (
            f"customer-c-{i:05d}",
            CustomerRegistered(customer_id=f"c-{i:05d}", name=name, email=f"c{i}@x.org"),
            f"reg-{i}",
        )
    pending: deque[tuple[str, tuple[OrderLine, ...]]] = deque()
    order_no = 0
    while True:
        order_no += 1
        order_id = f"o-{order_no:07d}"
        command_id = f"order-{order_no}"
        customer = rng.randrange(customers)
        lines = tuple(
            OrderLine(sku=sku, name=names[sku], quantity=rng.randint(1, 3), unit_price_cents=prices[sku])
            for sku in rng.sample(skus, rng.randint(1, 3))
        )
        for line in lines:  # keep stock >= every order: restock first when low (a separate command)
            if stock[line.sku] < 20:
                stock[line.sku] += 100
                yield f"product-{line.sku}", ProductRestocked(sku=line.sku, quantity=100), f"restock-{order_no}"
        placed = OrderPlaced(
            order_id=order_id, customer_id=f"c-{customer:05d}", customer_name=customer_names[customer], lines=lines
        )
        yield f"order-{order_id}", placed, command_id
        for line in lines:
            stock[line.sku] -= line.quantity
            yield (
                f"product-{line.sku}",
                StockReserved(sku=line.sku, order_id=order_id, quantity=line.quantity),
                command_id,
            )
        pending.append((order_id, lines))
        if len(pending) > 100:  # settle the oldest open order: mostly shipped, some cancelled
            old_id, old_lines = pending.popleft()
            if rng.random() < 0.15:
                yield f"order-{old_id}", OrderCancelled(order_id=old_id), f"cancel-{old_id}"
                for line in old_lines:
                    stock[line.sku] += line.quantity
                    released = StockReleased(sku=line.sku, order_id=old_id, quantity=line.quantity)
                    yield f"product-{line.sku}", released, f"cancel-{old_id}"
            else:
                yield f"order-{old_id}", OrderShipped(order_id=old_id), f"ship-{old_id}"


async def build_log(path: Path, events: int) -> Row:
    """Write ``events`` shop events straight into a fresh log (the writer's schema), fast."""
    started = time.perf_counter()
    async with EventLog(path):  # creates the schema (and WAL mode) exactly as the runtime does
        pass
    result = write_events(path, events)
    result["seconds"] = time.perf_counter() - started
    return result


def write_events(path: Path, events: int, *, chunk: int = 50_000) -> Row:
    """Bulk-insert events with sqlite3: synchronous=OFF, one transaction per ``chunk`` rows."""
    registry = TypeRegistry("event", DOMAIN.events)
    name_of, schema_of, dumps = registry.name_of, registry.schema_of, msgspec.json.encode
    versions: dict[str, int] = {}
    by_type: dict[str, int] = {}
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous = OFF")
    history = shop_events(random.Random(42), products=2000, customers=1000)
    recorded_at = time.time() - 86_400
    rows: list[tuple[int, str, int, str, int, bytes, str, None, float]] = []
    insert = (
        "INSERT INTO events (position, stream, version, type, schema, data, command_id, idempotency_key, "
        "recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    for position in range(1, events + 1):
        stream, event, command_id = next(history)
        version = versions.get(stream, 0) + 1
        versions[stream] = version
        type_name = name_of(event)
        by_type[type_name] = by_type.get(type_name, 0) + 1
        rows.append(
            (
                position,
                stream,
                version,
                type_name,
                schema_of(event),
                dumps(event).decode(),
                command_id,
                None,
                recorded_at,
            )
        )
        if len(rows) == chunk or position == events:
            with conn:  # one transaction per chunk
                conn.executemany(insert, rows)
            rows.clear()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return {
        "streams": len(versions),
        "mb": path.stat().st_size / 1e6,
        "events_by_type": by_type,
    }


class Timer:
    """Wall-clock and process CPU seconds (all threads) of a block; CPU time shrugs off other processes' load."""

    seconds = cpu_seconds = 0.0
    _stopped = False

    def __enter__(self) -> Timer:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def stop(self) -> None:
        """Stop early (e.g. once an ``async with App`` has started, before it stops)."""
        if not self._stopped:
            self.seconds = time.perf_counter() - self._wall
            self.cpu_seconds = time.process_time() - self._cpu
            self._stopped = True

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def row(self, events: int, **extra: object) -> Row:
        return {"seconds": self.seconds, "cpu_seconds": self.cpu_seconds, "events": events, **extra}


async def replica_catch_up(path: Path, head: int) -> int:
    """A runtime Replica catching up from position 0 through Broadcast + LogReader (read-ahead), as at start."""
    registry = TypeRegistry("event", DOMAIN.events)
    async with LogReader(path, registry) as reader:
        broadcast = Broadcast(reader)
        broadcast.head = head
        replica = Replica("bench", DOMAIN, broadcast)
        async with anyio.create_task_group() as tg:
            await tg.start(replica.run)
            await replica.wait_for(head, timeout=3600)
            tg.cancel_scope.cancel()
    return replica.position


class GcOff:
    """The cyclic GC off for the block, as App does around each chunk of its start (gc_paused)."""

    def __enter__(self) -> None:
        gc.disable()

    def __exit__(self, *exc_info: object) -> None:
        gc.enable()


async def recover_writer(path: Path) -> int:
    events = TypeRegistry("event", DOMAIN.events)
    commands = TypeRegistry("command", DOMAIN.commands)
    async with SQLiteStore(path, events) as store:
        writer = Writer(DOMAIN, store, commands=commands, events=events, publish=lambda batch: None)
        # what App does at start for its writer (without replicas): replay the log, then load the keys
        async for chunk in store.replay(writer.restore(None), await store.head()):
            writer.replay(chunk)
        await writer.load_keys()
        return writer.position


def load_snapshot(directory: Path, head: int) -> dict[str, float]:
    """SnapshotStore.load + orjson.loads + restore into fresh read models, timed step by step."""
    t0 = time.perf_counter()
    snapshot = SnapshotStore(directory, domain=DOMAIN.name).load(max_position=head)
    if snapshot is None:
        raise RuntimeError(f"no snapshot in {directory}")
    t1 = time.perf_counter()
    state = orjson.loads(snapshot.body)
    t2 = time.perf_counter()
    models = DOMAIN.read_models()
    models.restore(state)
    t3 = time.perf_counter()
    return {
        "position": snapshot.position,
        "read_verify_s": t1 - t0,
        "decode_s": t2 - t1,
        "restore_s": t3 - t2,
        "total_s": t3 - t0,
    }


async def bench_rebuild(workdir: Path, events: int) -> Row:
    """Each step once (seconds each), with a full collection in between so no step pays for another's garbage."""
    path = workdir / "rebuild.db"
    snapshots = workdir / "snapshots"
    steps: dict[str, Row] = {}
    result: Row = {"events": events, "steps": steps}
    with Timer() as t:
        build = await build_log(path, events)
    steps["build"] = t.row(events, **build)
    gc.collect()

    with GcOff(), Timer() as t:
        count = await recover_writer(path)
    steps["writer_recover"] = t.row(count)
    gc.collect()

    with GcOff(), Timer() as t:
        count = await replica_catch_up(path, events)
    steps["replica_replay"] = t.row(count)
    gc.collect()

    with Timer() as t:  # diagnostic: the same with the cyclic GC running
        count = await replica_catch_up(path, events)
    steps["replica_replay_gc_on"] = t.row(count)
    gc.collect()

    with Timer() as t:
        async with App(DOMAIN, path, replicas=1, snapshot_dir=snapshots) as app:
            t.stop()
            head = app.position
            with Timer() as t_checkpoint:
                written = await app.checkpoint()
    if written is None:
        raise RuntimeError("the checkpoint was not written")
    steps["app_start_from_log"] = t.row(head)
    steps["checkpoint"] = t_checkpoint.row(head, mb=written.stat().st_size / 1e6)
    gc.collect()

    loads = [load_snapshot(snapshots, head) for _ in range(3)]
    result["snapshot_load_runs"] = loads
    result["snapshot_load"] = {key: median([run[key] for run in loads]) for key in loads[0]}
    gc.collect()

    with Timer() as t:
        async with App(DOMAIN, path, replicas=1, snapshot_dir=snapshots) as app:
            t.stop()
            replayed = app.statistics().replicas[0].applied  # 0 if the replica came up from the snapshot
    steps["app_start_with_snapshot"] = t.row(head, replica_replayed=replayed)
    gc.collect()

    # Read models alone from the log, through the start path: the write model comes from its checkpoint
    # (nothing to replay), the read models' checkpoints are removed.
    for read_models_checkpoint in snapshots.glob(f"{DOMAIN.name}-*.snapshot"):
        read_models_checkpoint.unlink()
    with Timer() as t:
        async with App(DOMAIN, path, replicas=1, snapshot_dir=snapshots) as app:
            t.stop()
            replayed = app.statistics().replicas[0].applied
    steps["app_start_read_models_from_log"] = t.row(head, replica_replayed=replayed)
    return result


# -- report -------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(args: argparse.Namespace, rates: list[Row], lag: Row, rebuild: Row) -> None:
    print_table(
        f"1. Queries/s under a steady Restock load ({args.load_rate:,.0f} commands/s asked), "
        f"median of {args.runs} x {args.duration:g} s",
        ["replicas", "mode", "queries/s", "query-only/s", "commands/s", "worst run", "cmd ms p50", "cmd ms p99"],
        [
            [
                r["replicas"],
                r["mode"],
                r["qps_median"],
                r["query_only_qps_median"],
                r["commands_per_s_median"],
                r["commands_per_s_min"],
                r["command_ms_p50"],
                r["command_ms_p99"],
            ]
            for r in rates
        ],
    )
    sat = lag["saturation"]
    print_table(
        f"2. Replica lag, 4 replicas: writer saturation {sat['commands_per_s']:,.0f} commands/s "
        f"({args.submitters} submitters, mean batch {sat['mean_batch']:.0f}); paced load at half that",
        ["load", "commands/s", "command ms p99", "samples", "ms p50", "ms p99", "ms max", "events p50", "events p99"],
        [
            [
                r["load"],
                r["commands_per_s"],
                r["command_ms_p99"],
                r["samples"],
                r["ms_p50"],
                r["ms_p99"],
                r["ms_max"],
                r["events_p50"],
                r["events_p99"],
            ]
            for r in lag["runs"]
        ],
    )
    n = rebuild["events"]
    steps = rebuild["steps"]
    rows: list[list[object]] = []
    for key, label in (
        ("build", "build the log (sqlite3; setup, no target)"),
        ("writer_recover", "writer recovery alone (reader thread), GC off"),
        ("replica_replay", "replica catch-up while serving (reader thread), GC off"),
        ("replica_replay_gc_on", "replica catch-up while serving, GC running (diagnostic)"),
        ("app_start_from_log", "App(replicas=1) start from the log (one pass)"),
        ("app_start_read_models_from_log", "App start: read models from the log, writer from checkpoint"),
        ("checkpoint", "App.checkpoint() (everything it writes)"),
        ("app_start_with_snapshot", "App(replicas=1) start from the checkpoint"),
    ):
        step = steps[key]
        rows.append([label, step["seconds"], step["cpu_seconds"], n / step["seconds"], n / step["cpu_seconds"]])
    load = rebuild["snapshot_load"]
    nan = float("nan")
    rows.append(["snapshot load: read + sha256", load["read_verify_s"], nan, nan, nan])
    rows.append(["snapshot load: orjson.loads", load["decode_s"], nan, nan, nan])
    rows.append(["snapshot load: restore", load["restore_s"], nan, nan, nan])
    rows.append(["read models from snapshot (median of 3)", load["total_s"], nan, n / load["total_s"], nan])
    build = steps["build"]
    print_table(
        f"3. Rebuild of {n:,} events (log {build['mb']:.0f} MB, {build['events_by_type'].get('OrderPlaced', 0):,} "
        f"orders; snapshot {steps['checkpoint']['mb']:.1f} MB); each step once",
        ["step", "seconds", "cpu s", "events/s", "events/cpu s"],
        rows,
    )


def summary(rates: list[Row], lag: Row, rebuild: Row) -> list[list[object]]:
    worst = min((r for r in rates if r["mode"] == "query_nowait"), key=lambda r: float(r["qps_median"]))
    lag_p99 = float(lag["runs"][0]["ms_p99"])
    n = rebuild["events"]
    steps = rebuild["steps"]
    replay = n / steps["app_start_read_models_from_log"]["seconds"]
    app_start = n / steps["app_start_from_log"]["seconds"]
    scale = 1_000_000 / n  # to 1M events' worth
    snap = rebuild["snapshot_load"]["total_s"] * scale
    app_snap = steps["app_start_with_snapshot"]["seconds"] * scale
    scaled = "" if n == 1_000_000 else f" (scaled from {n:,})"
    return [
        [
            f"simple queries/s in process (worst of 1-8 replicas: {worst['replicas']})",
            ">= 300,000",
            f"{worst['qps_median']:,.0f}",
            verdict(worst["qps_median"] >= 300_000),
        ],
        ["replica lag p99 at half saturation (commands only)", "< 5 ms", f"{lag_p99:.2f} ms", verdict(lag_p99 < 5)],
        [
            "replay from the log: read models, App start (events/s)",
            ">= 200,000",
            f"{replay:,.0f}",
            verdict(replay >= 200_000),
        ],
        [
            "replay from the log: App start = writer + replica (events/s)",
            ">= 200,000",
            f"{app_start:,.0f}",
            verdict(app_start >= 200_000),
        ],
        ["read models of 1M events up from a snapshot" + scaled, "< 1 s", f"{snap:.2f} s", verdict(snap < 1)],
        ["App start from its checkpoint, 1M events" + scaled, "< 1 s", f"{app_snap:.2f} s", verdict(app_snap < 1)],
    ]


async def main(args: argparse.Namespace) -> None:
    configure_logging("warning")
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    load_before = os.getloadavg()[0]
    print(
        f"bench_queries: {args.events:,} events, replicas {args.replicas}; load average before start "
        f"{load_before:.2f} on {os.cpu_count()} CPUs (other processes share them: quote medians)",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench-queries-", dir="/tmp"))
    started = time.perf_counter()
    try:
        rates = await bench_query_rates(
            workdir, args.replicas, runs=args.runs, duration=args.duration, load_rate=args.load_rate
        )
        lag = await bench_lag(workdir, duration=args.lag_duration, submitters=args.submitters, tick=0.001)
        rebuild = await bench_rebuild(workdir, args.events)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(args, rates, lag, rebuild)
    rows = summary(rates, lag, rebuild)
    print_table("Summary", ["what", "target", "measured", "verdict"], rows)
    path = write_json(
        "queries",
        {
            "config": {**vars(args), "switch_interval_s": sys.getswitchinterval()},
            "load_average_before": load_before,
            "seconds": time.perf_counter() - started,
            "query_rates": rates,
            "lag": lag,
            "rebuild": rebuild,
            "summary": [dict(zip(("what", "target", "measured", "verdict"), row, strict=True)) for row in rows],
        },
    )
    print(f"\nwrote {path} ({time.perf_counter() - started:.0f} s)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run: 100k events, 1 short run each")
    parser.add_argument("--events", type=int, default=None, help="events in the rebuild log (default 1,000,000)")
    parser.add_argument("--runs", type=int, default=None, help="runs per query measurement (default 3)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per query run (default 2)")
    parser.add_argument("--lag-duration", type=float, default=None, help="seconds per lag run (default 3)")
    parser.add_argument("--load-rate", type=float, default=2000.0, help="commands/s during query runs")
    parser.add_argument("--submitters", type=int, default=100, help="concurrent submitters for saturation")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument(
        "--switch-interval", type=float, default=None, help="sys.setswitchinterval (s) for a diagnostic run"
    )
    args = parser.parse_args()
    quick = args.quick
    args.events = args.events or (100_000 if quick else 1_000_000)
    args.runs = args.runs or (1 if quick else 3)
    args.duration = args.duration or (0.5 if quick else 2.0)
    args.lag_duration = args.lag_duration or (1.0 if quick else 3.0)
    return args


if __name__ == "__main__":
    uvloop.run(main(parse_args()))
