"""What would a service written the usual way do with the same shop, and how does soloist compare?

The baseline most services would write: the shop in *normalised tables* of one SQLite database
(categories, products, customers, orders, order_lines; WAL, synchronous=FULL like soloist), one
transaction per command (``BEGIN IMMEDIATE`` .. checks .. ``UPDATE``/``INSERT`` .. ``COMMIT``, run as one
function on a single writer thread: one thread hop per command), and queries that read the tables with
joins (``GetProduct``: product + category + units sold from order_lines joined to orders; ``GetOrder``:
order + customer + lines + products) on a pool of 4 reader threads, one connection each.

soloist: the same shop (``soloist_shop``) in process, ``App(replicas=4)``: ``await app.execute(command)``
and ``await app.query(query)`` (eventual consistency).

Both run in this one process, one after the other, on fresh files, with the same operation stream
(``random.Random(SEED)``): commands are ``Restock`` and ``PlaceOrder`` (1-3 lines), queries are
``GetProduct`` and ``GetOrder``. Measured:

1. workloads, closed loop with ``--clients`` concurrent clients: write-heavy (90 % commands), mixed (50 %),
   read-heavy (95 % queries): operations/s and latency p50/p99 per system, side by side with ratios;
2. throughput against clients (1, 4, 16, 64) on the mixed workload;
3. latency percentiles against offered load (open loop, mixed workload: an operation is started every
   1/rate s whatever the answers do, latency counted from its scheduled start: no coordinated omission);
4. replica lag over time during soloist's write-heavy run (events behind the head, sampled every 20 ms).

    python benchmarks/bench_workloads.py [--quick] [--seconds 3] [--runs 3] [--clients 32]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script (as `make bench` does): `benchmarks._common` from the repo root
    sys.path.insert(0, str(ROOT))

from benchmarks._common import SEED, median, percentile, print_table, progress, write_json  # noqa: E402
from soloist import App, configure_logging  # noqa: E402
from soloist_shop.commands import AddProduct, OrderLineRequest, PlaceOrder, RegisterCustomer, Restock  # noqa: E402
from soloist_shop.queries import GetOrder, GetProduct  # noqa: E402
from soloist_shop.wiring import DOMAIN  # noqa: E402

PRODUCTS = 200
CUSTOMERS = 50
CATEGORIES = ("books", "games", "kitchen", "garden")
PRELOADED_ORDERS = 200
WORKLOADS = {"write-heavy": 0.90, "mixed": 0.50, "read-heavy": 0.05}  # share of commands

# -- the operation stream (the same for both systems) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Op:
    kind: str  # restock | place | product | order
    sku: str = ""
    quantity: int = 0
    order_id: str = ""
    customer_id: str = ""
    lines: tuple[tuple[str, int], ...] = ()


def sku(i: int) -> str:
    return f"SKU-{i:04d}"


class Stream:
    """Operations from ``random.Random(seed)``: a command with probability ``writes``, else a query."""

    def __init__(self, seed: int, writes: float, prefix: str) -> None:
        self.rng = random.Random(seed)
        self.writes = writes
        self.prefix = prefix
        self.placed = [f"pre-{i}" for i in range(PRELOADED_ORDERS)]
        self.n = 0

    def next(self) -> Op:
        rng = self.rng
        self.n += 1
        if rng.random() < self.writes:
            if rng.random() < 0.5:
                return Op("restock", sku=sku(rng.randrange(PRODUCTS)), quantity=rng.randint(1, 5))
            order_id = f"{self.prefix}-{self.n}"
            skus = rng.sample(range(PRODUCTS), rng.randint(1, 3))
            lines = tuple((sku(i), 1) for i in skus)
            return Op("place", order_id=order_id, customer_id=f"c{rng.randrange(CUSTOMERS)}", lines=lines)
        if rng.random() < 0.7:
            return Op("product", sku=sku(rng.randrange(PRODUCTS)))
        return Op("order", order_id=self.placed[rng.randrange(len(self.placed))])


def seed_ops() -> list[Op]:
    """The preloaded orders both systems start with (after the products and customers)."""
    rng = random.Random(SEED + 1)
    return [
        Op(
            "place",
            order_id=f"pre-{i}",
            customer_id=f"c{rng.randrange(CUSTOMERS)}",
            lines=tuple((sku(j), 1) for j in rng.sample(range(PRODUCTS), 2)),
        )
        for i in range(PRELOADED_ORDERS)
    ]


# -- the baseline: normalised tables, one transaction per command, joins -----------------------------------

SCHEMA = """
PRAGMA journal_mode=WAL;
CREATE TABLE categories (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE products (
    sku TEXT PRIMARY KEY, name TEXT NOT NULL, category_id INTEGER NOT NULL REFERENCES categories(id),
    description TEXT NOT NULL, price_cents INTEGER NOT NULL, stock INTEGER NOT NULL CHECK (stock >= 0));
CREATE TABLE customers (id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL);
CREATE TABLE orders (
    id TEXT PRIMARY KEY, customer_id TEXT NOT NULL REFERENCES customers(id), status TEXT NOT NULL,
    placed_at REAL NOT NULL);
CREATE TABLE order_lines (
    order_id TEXT NOT NULL REFERENCES orders(id), sku TEXT NOT NULL REFERENCES products(sku),
    quantity INTEGER NOT NULL, unit_price_cents INTEGER NOT NULL, PRIMARY KEY (order_id, sku));
CREATE INDEX order_lines_sku ON order_lines(sku);
"""
GET_PRODUCT = """
SELECT p.sku, p.name, c.name, p.description, p.price_cents, p.stock,
       (SELECT COALESCE(SUM(l.quantity), 0) FROM order_lines l JOIN orders o ON o.id = l.order_id
        WHERE l.sku = p.sku AND o.status != 'cancelled')
FROM products p JOIN categories c ON c.id = p.category_id WHERE p.sku = ?
"""
GET_ORDER = """
SELECT o.id, o.status, cu.id, cu.name, l.sku, p.name, l.quantity, l.unit_price_cents
FROM orders o JOIN customers cu ON cu.id = o.customer_id
JOIN order_lines l ON l.order_id = o.id JOIN products p ON p.sku = l.sku
WHERE o.id = ? ORDER BY l.sku
"""


class Refused(Exception):
    """A rule said no (the baseline's DomainError)."""


class Baseline:
    """The shop as most services would write it (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sql-writer")
        self._readers = ThreadPoolExecutor(4, thread_name_prefix="sql-reader")
        self._local = threading.local()
        self._write_conn: sqlite3.Connection | None = None
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            self._all.append(conn)
        return conn

    def create(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.executescript(SCHEMA)
        conn.executemany("INSERT INTO categories (name) VALUES (?)", [(c,) for c in CATEGORIES])
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO products VALUES (?, ?, ?, ?, ?, ?)",
            [(sku(i), f"product {i}", 1 + i % 4, f"description {i}", 100 + i, 1_000_000) for i in range(PRODUCTS)],
        )
        conn.executemany(
            "INSERT INTO customers VALUES (?, ?, ?)", [(f"c{i}", f"customer {i}", f"c{i}@x") for i in range(CUSTOMERS)]
        )
        conn.execute("COMMIT")
        conn.close()

    def close(self) -> None:
        self._writer.shutdown()
        self._readers.shutdown()
        for conn in self._all:
            conn.close()

    # each command: one function on the writer thread, one transaction
    def _command(self, op: Op) -> int:
        conn = self._write_conn
        if conn is None:
            conn = self._write_conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            if op.kind == "restock":
                if (
                    conn.execute("UPDATE products SET stock = stock + ? WHERE sku = ?", (op.quantity, op.sku)).rowcount
                    != 1
                ):
                    raise Refused(f"no product {op.sku}")
            else:
                if conn.execute("SELECT 1 FROM orders WHERE id = ?", (op.order_id,)).fetchone() is not None:
                    raise Refused(f"order {op.order_id} exists")
                if conn.execute("SELECT 1 FROM customers WHERE id = ?", (op.customer_id,)).fetchone() is None:
                    raise Refused(f"no customer {op.customer_id}")
                prices = []
                for line_sku, quantity in op.lines:
                    row = conn.execute("SELECT stock, price_cents FROM products WHERE sku = ?", (line_sku,)).fetchone()
                    if row is None or row[0] < quantity:
                        raise Refused(f"cannot order {quantity} of {line_sku}")
                    prices.append(row[1])
                conn.execute(
                    "INSERT INTO orders VALUES (?, ?, 'placed', ?)", (op.order_id, op.customer_id, time.time())
                )
                conn.executemany(
                    "INSERT INTO order_lines VALUES (?, ?, ?, ?)",
                    [(op.order_id, s, q, p) for (s, q), p in zip(op.lines, prices, strict=True)],
                )
                conn.executemany("UPDATE products SET stock = stock - ? WHERE sku = ?", [(q, s) for s, q in op.lines])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return 1

    def _query(self, op: Op) -> object:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        if op.kind == "product":
            row = conn.execute(GET_PRODUCT, (op.sku,)).fetchone()
            if row is None:
                raise Refused(f"no product {op.sku}")
            keys = ("sku", "name", "category", "description", "price_cents", "stock", "units_sold")
            return dict(zip(keys, row, strict=True))
        rows = conn.execute(GET_ORDER, (op.order_id,)).fetchall()
        if not rows:
            raise Refused(f"no order {op.order_id}")
        lines = [{"sku": r[4], "name": r[5], "quantity": r[6], "unit_price_cents": r[7]} for r in rows]
        return {"order_id": rows[0][0], "status": rows[0][1], "customer": rows[0][3], "lines": lines}

    async def run(self, op: Op) -> None:
        loop = asyncio.get_running_loop()
        if op.kind in ("restock", "place"):
            await loop.run_in_executor(self._writer, self._command, op)
        else:
            await loop.run_in_executor(self._readers, self._query, op)


# -- soloist ------------------------------------------------------------------------------------------------


def soloist_call(app: App) -> Callable[[Op], Awaitable[object]]:
    async def run(op: Op) -> object:
        if op.kind == "restock":
            return await app.execute(Restock(sku=op.sku, quantity=op.quantity))
        if op.kind == "place":
            lines = tuple(OrderLineRequest(sku=s, quantity=q) for s, q in op.lines)
            return await app.execute(PlaceOrder(order_id=op.order_id, customer_id=op.customer_id, lines=lines))
        if op.kind == "product":
            return await app.query(GetProduct(sku=op.sku))
        return await app.query(GetOrder(order_id=op.order_id))

    return run


async def seed_soloist(app: App) -> None:
    for i in range(PRODUCTS):
        await app.execute(
            AddProduct(
                sku=sku(i),
                name=f"product {i}",
                category=CATEGORIES[i % 4],
                price_cents=100 + i,
                stock=1_000_000,
                description=f"description {i}",
            )
        )
    for i in range(CUSTOMERS):
        await app.execute(RegisterCustomer(customer_id=f"c{i}", name=f"customer {i}", email=f"c{i}@x"))


# -- measuring ----------------------------------------------------------------------------------------------

Runner = Callable[[Op], Awaitable[object]]


async def closed_loop(run: Runner, stream: Stream, clients: int, seconds: float) -> dict[str, float]:
    """``clients`` tasks each doing one operation after another for ``seconds``: ops/s and latency (ms)."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            op = stream.next()
            started = time.perf_counter()
            try:
                await run(op)
            except Exception:
                errors += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(clients):
            tg.start_soon(client)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "ops_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "errors": float(errors),
    }


async def open_loop(run: Runner, stream: Stream, rate: float, seconds: float) -> dict[str, float]:
    """Start an operation every 1/rate s (not waiting for answers); latency from the scheduled start."""
    latencies: list[float] = []
    count = int(rate * seconds)
    begin = time.perf_counter()

    errors = 0

    async def one(op: Op, scheduled: float) -> None:
        nonlocal errors
        try:
            await run(op)
        except Exception:
            errors += 1
        latencies.append(time.perf_counter() - scheduled)

    async with anyio.create_task_group() as tg:
        for i in range(count):
            scheduled = begin + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await anyio.sleep(delay)
            tg.start_soon(one, stream.next(), scheduled)
    elapsed = time.perf_counter() - begin
    latencies.sort()
    return {
        "offered_per_s": rate,
        "achieved_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p90_ms": percentile(latencies, 90) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "errors": float(errors),
    }


async def sample_lag(app: App, into: list[dict[str, float]], begin: float) -> None:
    """Every 20 ms: the most any replica is behind the head (events) and its last commit-to-apply delay."""
    while True:
        s = app.statistics()
        into.append(
            {
                "t_s": round(time.perf_counter() - begin, 3),
                "lag_events": float(max((r.lag_events for r in s.replicas), default=0)),
                "lag_ms": max((r.lag_ms for r in s.replicas), default=0.0),
            }
        )
        await anyio.sleep(0.02)


class Systems:
    """Fresh databases per measurement; ``with_system(name, body)`` runs ``body(run)`` against one."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.n = 0

    async def soloist(self, body: Callable[[Runner, App | None], Awaitable[Any]]) -> Any:
        self.n += 1
        async with App(DOMAIN, self.directory / f"soloist-{self.n}.db", replicas=4) as app:
            await seed_soloist(app)
            run = soloist_call(app)
            for op in seed_ops():
                await run(op)
            await app.router.wait_for(app.position, timeout=60)
            return await body(run, app)

    async def baseline(self, body: Callable[[Runner, App | None], Awaitable[Any]]) -> Any:
        self.n += 1
        shop = Baseline(self.directory / f"baseline-{self.n}.db")
        shop.create()
        try:
            for op in seed_ops():
                await shop.run(op)
            return await body(shop.run, None)
        finally:
            shop.close()

    async def each(self, body: Callable[[Runner, App | None], Awaitable[Any]]) -> dict[str, Any]:
        return {"soloist": await self.soloist(body), "baseline": await self.baseline(body)}


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="bench-workloads-"))
    systems = Systems(directory)
    steps = (
        [("workload", name, run) for name in WORKLOADS for run in range(args.runs)]
        + [("clients", str(c), run) for c in args.client_sweep for run in range(args.runs)]
        + [("load", str(r), 0) for r in args.rates]
        + [("lag", "write-heavy", 0)]
    )
    workloads: dict[str, dict[str, list[dict[str, float]]]] = {}
    clients: dict[str, dict[str, list[dict[str, float]]]] = {}
    load: dict[str, list[dict[str, float]]] = {"soloist": [], "baseline": []}
    lag: list[dict[str, float]] = []
    try:
        for kind, key, run in progress(steps, "bench_workloads", total=len(steps)):
            seed = SEED + run
            if kind == "workload":

                async def body(call: Runner, _: App | None, *, key: str = key, seed: int = seed) -> dict[str, float]:
                    return await closed_loop(call, Stream(seed, WORKLOADS[key], f"w{seed}"), args.clients, args.seconds)

                result = await systems.each(body)
                for system, figures in result.items():
                    workloads.setdefault(key, {}).setdefault(system, []).append(figures)
            elif kind == "clients":

                async def body(call: Runner, _: App | None, *, key: str = key, seed: int = seed) -> dict[str, float]:
                    return await closed_loop(call, Stream(seed, WORKLOADS["mixed"], f"c{seed}"), int(key), args.seconds)

                result = await systems.each(body)
                for system, figures in result.items():
                    clients.setdefault(key, {}).setdefault(system, []).append(figures)
            elif kind == "load":

                async def body(call: Runner, _: App | None, *, key: str = key) -> dict[str, float]:
                    return await open_loop(call, Stream(SEED, WORKLOADS["mixed"], f"l{key}"), float(key), args.seconds)

                result = await systems.each(body)
                for system, figures in result.items():
                    load[system].append(figures)
            else:

                async def lagged(call: Runner, app: App | None) -> None:
                    assert app is not None
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(sample_lag, app, lag, time.perf_counter())
                        await closed_loop(
                            call, Stream(SEED, WORKLOADS["write-heavy"], "lag"), args.clients, args.seconds
                        )
                        tg.cancel_scope.cancel()

                await systems.soloist(lagged)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {"workloads": workloads, "clients": clients, "load": load, "lag": lag}


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: median([r[k] for r in runs]) for k in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 run of 1 s per measurement: about a minute")
    parser.add_argument("--runs", type=int, default=None, help="runs per closed-loop measurement (default 3)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per measurement (default 3)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients in the workload table")
    parser.add_argument("--client-sweep", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--rates", type=float, nargs="+", default=None, help="offered loads, operations/s")
    args = parser.parse_args()
    args.runs = args.runs or (1 if args.quick else 3)
    args.seconds = args.seconds or (1.0 if args.quick else 3.0)
    args.rates = args.rates or ([500.0, 2000.0] if args.quick else [250.0, 500.0, 1000.0, 2000.0, 4000.0])
    configure_logging("warning")
    result = anyio.run(measure, args, backend_options={"use_uvloop": True})
    rows = []
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name, by_system in result["workloads"].items():
        s, b = medians(by_system["soloist"]), medians(by_system["baseline"])
        table[name] = {"soloist": s, "baseline": b}
        ratio = s["ops_per_s"] / b["ops_per_s"] if b["ops_per_s"] else float("nan")
        rows.append([name, s["ops_per_s"], b["ops_per_s"], ratio, s["p50_ms"], b["p50_ms"], s["p99_ms"], b["p99_ms"]])
    headers = ["workload", "soloist ops/s", "baseline ops/s", "ratio", "p50 ms", "base p50", "p99 ms", "base p99"]
    print_table(f"Workloads, {args.clients} clients, closed loop (medians of {args.runs})", headers, rows)
    sweep = {c: {k: medians(v) for k, v in by.items()} for c, by in result["clients"].items()}
    print_table(
        "Throughput against clients (mixed), ops/s",
        ["clients", "soloist", "baseline", "ratio"],
        [
            [
                int(c),
                v["soloist"]["ops_per_s"],
                v["baseline"]["ops_per_s"],
                v["soloist"]["ops_per_s"] / v["baseline"]["ops_per_s"],
            ]
            for c, v in sweep.items()
        ],
    )
    print_table(
        "Latency against offered load (mixed, open loop), ms",
        ["offered/s", "soloist p50", "soloist p99", "baseline p50", "baseline p99"],
        [
            [s["offered_per_s"], s["p50_ms"], s["p99_ms"], b["p50_ms"], b["p99_ms"]]
            for s, b in zip(result["load"]["soloist"], result["load"]["baseline"], strict=True)
        ],
    )
    lag = result["lag"]
    if lag:
        events = sorted(x["lag_events"] for x in lag)
        print(f"\nreplica lag during soloist write-heavy: {len(lag)} samples, p99 {percentile(events, 99):.0f} events")
    path = write_json(
        "workloads",
        {
            "quick": args.quick,
            "settings": {"runs": args.runs, "seconds": args.seconds, "clients": args.clients, "seed": SEED},
            "workloads": table,
            "throughput_vs_clients": sweep,
            "latency_vs_load": result["load"],
            "replica_lag": lag,
            "raw": {"workloads": result["workloads"], "clients": result["clients"]},
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
