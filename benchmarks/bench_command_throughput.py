"""How many durable commands/s does the writer sustain, and how close is that to what SQLite can do?

Measured, on a log that already holds 200k events (steady state, not a fresh file), synchronous=FULL:

1. soloist: the shop's ``Restock`` command (one event) through ``App.execute`` with 1, 10, 100 and
   1,000 concurrent submitters: commands/s and per-command latency p50/p99/p99.9 (submit -> durable ack).
2. raw ceiling: the same event rows appended with aiosqlite in batches of the size the writer formed at
   100 submitters, to a copy of the same log, two ways: ``executemany`` + ``commit``, and the writer's own
   one-statement append (``INSERT INTO append_batch`` with the batch as JSON). The faster is the ceiling.
3. one transaction per command: the same rows, ``INSERT`` + ``commit`` each, to a copy of the same log.
4. idempotency keys at 100 submitters: every command with its own key, kept forever (``key_ttl=None``) and
   with ``key_ttl=1`` s (after the first second each commit also deletes about as many expired keys as it
   stores: the steady state of a service that keys every command).

Each configuration runs ``--runs`` times (default 3) for ``--seconds`` each on a fresh copy of the
prefilled log; the table shows medians, and the ratios are computed from the medians of this one run.

    python benchmarks/bench_command_throughput.py [--quick] [--runs 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import aiosqlite
import anyio
import msgspec
import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine, median, percentile, print_table, write_json
from soloist import App, configure_logging, tune_process
from soloist._log import EventLog
from soloist_shop.commands import Restock
from soloist_shop.events import ProductAdded, ProductRestocked
from soloist_shop.wiring import DOMAIN

PRODUCTS = 1000
_INSERT_EVENT = (
    "INSERT INTO events (position, stream, version, type, schema, data, command_id, idempotency_key, "
    "recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_APPEND = "INSERT INTO append_batch (events, keys) VALUES (?, ?)"


def prefill(path: Path, events: int) -> None:
    """A log of ``events`` shop events (1,000 products, then restocks), written directly, then checkpointed."""

    async def schema() -> None:
        async with EventLog(path):
            pass

    uvloop.run(schema())
    versions = [0] * PRODUCTS
    now = time.time()
    rows = []
    for i in range(PRODUCTS):
        event = ProductAdded(
            sku=f"sku-{i}", name=f"Product {i}", category="bench", price_cents=100 + i, stock=10, description=""
        )
        versions[i] = 1
        rows.append(
            (i + 1, f"product-sku-{i}", 1, "ProductAdded", 1, msgspec.json.encode(event).decode(), "prefill", None, now)
        )
    for position in range(PRODUCTS + 1, events + 1):
        i = position % PRODUCTS
        versions[i] += 1
        event = ProductRestocked(sku=f"sku-{i}", quantity=1)
        rows.append(
            (
                position,
                f"product-sku-{i}",
                versions[i],
                "ProductRestocked",
                1,
                msgspec.json.encode(event).decode(),  # JSON text, as the writer stores it
                "prefill",
                None,
                now,
            )
        )
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA synchronous = OFF")
        conn.executemany(_INSERT_EVENT, rows)
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    path.with_name(path.name + ".lock").unlink(missing_ok=True)


def fresh_copy(template: Path, workdir: Path, name: str) -> Path:
    target = workdir / name
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(str(target) + suffix).unlink(missing_ok=True)
    shutil.copyfile(template, target)
    return target


async def run_soloist(
    path: Path, submitters: int, seconds: float, *, keyed: bool = False, key_ttl: float | None = None
) -> dict[str, float]:
    """``submitters`` tasks each awaiting ``App.execute`` in a loop until the deadline (``keyed``: each
    command with its own idempotency key)."""
    latencies: list[float] = []
    async with App(DOMAIN, path, key_ttl=key_ttl) as app:
        tuning = tune_process(freeze_gc=True)  # as `soloist serve` does once its App has started
        start_position = app.position
        deadline = time.perf_counter() + seconds

        async def submitter(n: int) -> None:
            sku = f"sku-{n % PRODUCTS}"
            clock = time.perf_counter
            execute = app.execute
            record = latencies.append
            sent = 0
            while True:
                t0 = clock()
                if t0 >= deadline:
                    return
                sent += 1
                await execute(Restock(sku=sku, quantity=1), idempotency_key=f"{n}-{sent}" if keyed else None)
                record(clock() - t0)

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for n in range(submitters):
                tg.start_soon(submitter, n)
        elapsed = time.perf_counter() - started
        stats = app.writer.statistics()
        assert app.position - start_position == len(latencies)
        tuning.undo()
    latencies.sort()
    return {
        "commands_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "p999_ms": percentile(latencies, 99.9) * 1000,
        "mean_batch": stats.batch_size_mean,
        "commands": len(latencies),
        "keys_held": stats.keys,
        "keys_forgotten": stats.keys_forgotten,
    }


def _rows(start: int, count: int, versions: list[int]) -> list[tuple[object, ...]]:
    now = time.time()
    out = []
    for position in range(start, start + count):
        i = position % PRODUCTS
        versions[i] += 1
        body = msgspec.json.encode(ProductRestocked(sku=f"sku-{i}", quantity=1)).decode()
        out.append((position, f"product-sku-{i}", versions[i], "ProductRestocked", 1, body, "raw", None, now))
    return out


async def _open_raw(path: Path, *, autocommit: bool = False) -> tuple[aiosqlite.Connection, int, list[int]]:
    conn = await aiosqlite.connect(path, isolation_level=None) if autocommit else await aiosqlite.connect(path)
    await conn.execute("PRAGMA journal_mode = WAL")
    await conn.execute("PRAGMA synchronous = FULL")
    await conn.execute("PRAGMA wal_autocheckpoint = 10000")
    await conn.execute("PRAGMA cache_size = -65536")
    head = (await (await conn.execute("SELECT MAX(position) FROM events")).fetchone())[0]  # type: ignore[index]
    versions = [0] * PRODUCTS
    async with conn.execute("SELECT stream, MAX(version) FROM events GROUP BY stream") as cursor:
        async for stream, version in cursor:
            versions[int(stream.rsplit("-", 1)[1])] = version
    return conn, int(head), versions


async def run_raw(path: Path, batch: int, seconds: float, *, how: str) -> dict[str, float]:
    """The ceiling: pre-built rows, nothing else. ``how``: "executemany" (+ commit) or "one statement"."""
    conn, head, versions = await _open_raw(path, autocommit=how == "one statement")  # as the writer's
    appended = 0
    try:
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            rows = _rows(head + appended + 1, batch, versions)
            if how == "executemany":
                await conn.executemany(_INSERT_EVENT, rows)
                await conn.commit()
            else:
                payload = orjson.dumps([(*row[:5], orjson.Fragment(row[5]), *row[6:]) for row in rows])
                await conn.execute_fetchall(_APPEND, (payload, b"[]"))
            appended += batch
        elapsed = time.perf_counter() - started
    finally:
        await conn.close()
    return {"events_per_s": appended / elapsed}


async def run_per_command(path: Path, seconds: float) -> dict[str, float]:
    """The naive service: one INSERT + commit per command (row encoding included, as a handler would)."""
    conn, head, versions = await _open_raw(path)
    appended = 0
    latencies: list[float] = []
    try:
        started = time.perf_counter()
        deadline = started + seconds
        while True:
            t0 = time.perf_counter()
            if t0 >= deadline:
                break
            (row,) = _rows(head + appended + 1, 1, versions)
            await conn.execute(_INSERT_EVENT, row)
            await conn.commit()
            appended += 1
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
    finally:
        await conn.close()
    latencies.sort()
    return {"events_per_s": appended / elapsed, "p50_ms": percentile(latencies, 50) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k-event log, 1 run of 1 s: a smoke run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--events", type=int, default=200_000, help="events in the log before measuring")
    parser.add_argument("--submitters", default="1,10,100,1000")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.seconds, args.events = 1, 1.0, 20_000
    configure_logging("warning")
    # as `soloist serve` does (docs/ARCHITECTURE.md): a 0.5 ms switch interval here, and the GC frozen once
    # each App has started (run_soloist)
    tune_process()
    levels = [int(x) for x in args.submitters.split(",")]

    workdir = Path(tempfile.mkdtemp(prefix="soloist-bench-"))
    try:
        template = workdir / "template.db"
        t0 = time.perf_counter()
        prefill(template, args.events)
        print(
            f"prefilled {args.events:,} events in {time.perf_counter() - t0:.1f} s "
            f"({template.stat().st_size >> 20} MiB)"
        )

        # The log's one-statement append (an `append_batch` view) is gone since the EventStore port: measure it
        # only where the schema still has it, so the benchmark runs against the current runtime.
        with sqlite3.connect(template) as db:
            has_view = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'append_batch'").fetchone() is not None
        ways = ("executemany", "one statement") if has_view else ("executemany",)
        soloist: dict[int, list[dict[str, float]]] = {n: [] for n in levels}
        raw: list[dict[str, float]] = []
        per_command: list[dict[str, float]] = []
        keyed: dict[str, list[dict[str, float]]] = {"kept": [], "key_ttl 1 s": []}
        for run in range(args.runs):
            for n in levels:
                path = fresh_copy(template, workdir, "run.db")
                soloist[n].append(uvloop.run(run_soloist(path, n, args.seconds)))
            batch_at_100 = round(soloist[100 if 100 in levels else levels[-1]][-1]["mean_batch"]) or 1
            for how in ways:
                path = fresh_copy(template, workdir, "run.db")
                result = uvloop.run(run_raw(path, batch_at_100, args.seconds, how=how))
                raw.append(result | {"batch": batch_at_100, "how": how})
            path = fresh_copy(template, workdir, "run.db")
            per_command.append(uvloop.run(run_per_command(path, args.seconds)))
            for label, ttl in (("kept", None), ("key_ttl 1 s", 1.0)):
                path = fresh_copy(template, workdir, "run.db")
                keyed[label].append(uvloop.run(run_soloist(path, 100, args.seconds, keyed=True, key_ttl=ttl)))
            print(f"run {run + 1}/{args.runs} done", flush=True)

        def med(results: list[dict[str, float]], key: str) -> float:
            return median([r[key] for r in results])

        rows = []
        summary: dict[str, object] = {}
        for n in levels:
            entry = {k: med(soloist[n], k) for k in ("commands_per_s", "p50_ms", "p99_ms", "p999_ms", "mean_batch")}
            summary[f"soloist_{n}"] = entry | {"runs": soloist[n]}
            rows.append(
                [
                    f"soloist, {n} submitters",
                    f"{entry['commands_per_s']:,.0f}",
                    f"{entry['p50_ms']:.2f}",
                    f"{entry['p99_ms']:.2f}",
                    f"{entry['p999_ms']:.2f}",
                    f"{entry['mean_batch']:.1f}",
                ]
            )
        for label, results in keyed.items():
            entry = {k: med(results, k) for k in ("commands_per_s", "p50_ms", "p99_ms", "p999_ms", "mean_batch")}
            entry |= {"keys_held": med(results, "keys_held"), "keys_forgotten": med(results, "keys_forgotten")}
            summary[f"soloist_100_keyed_{label.replace(' ', '_')}"] = entry | {"runs": results}
            rows.append(
                [
                    f"soloist, 100 submitters, keyed, {label} ({entry['keys_held']:,.0f} held at the end)",
                    f"{entry['commands_per_s']:,.0f}",
                    f"{entry['p50_ms']:.2f}",
                    f"{entry['p99_ms']:.2f}",
                    f"{entry['p999_ms']:.2f}",
                    f"{entry['mean_batch']:.1f}",
                ]
            )
        raw_by_how = {how: med([r for r in raw if r["how"] == how], "events_per_s") for how in {r["how"] for r in raw}}
        raw_how = max(raw_by_how, key=raw_by_how.__getitem__)
        raw_rate = raw_by_how[raw_how]
        raw_batch = raw[-1]["batch"]
        per_rate = med(per_command, "events_per_s")
        for how, rate in sorted(raw_by_how.items()):
            rows.append(
                [f"raw aiosqlite, {how}, batches of {raw_batch:.0f}", f"{rate:,.0f}", "", "", "", f"{raw_batch:.0f}"]
            )
        rows.append(
            ["one transaction per command", f"{per_rate:,.0f}", f"{med(per_command, 'p50_ms'):.2f}", "", "", "1"]
        )
        print_table(
            f"Durable commands/s on a {args.events:,}-event log, synchronous=FULL "
            f"(median of {args.runs} x {args.seconds:g} s)",
            ["configuration", "per s", "p50 ms", "p99 ms", "p99.9 ms", "batch"],
            rows,
        )
        at = 100 if 100 in levels else levels[-1]
        at_rate = summary[f"soloist_{at}"]["commands_per_s"]  # type: ignore[index]
        at_p99 = summary[f"soloist_{at}"]["p99_ms"]  # type: ignore[index]
        ratios = {
            "vs_raw_ceiling": at_rate / raw_rate,
            "vs_one_txn_per_command": at_rate / per_rate,
        }
        print_table(
            f"Targets at {at} submitters",
            ["measure", "target", "measured", "verdict"],
            [
                [
                    "share of raw ceiling",
                    ">= 50%",
                    f"{ratios['vs_raw_ceiling']:.0%}",
                    _verdict(ratios["vs_raw_ceiling"] >= 0.5),
                ],
                [
                    "speed-up vs one txn per command",
                    ">= 10x",
                    f"{ratios['vs_one_txn_per_command']:.1f}x",
                    _verdict(ratios["vs_one_txn_per_command"] >= 10),
                ],
                ["p99 latency", "< 20 ms", f"{at_p99:.2f} ms", _verdict(at_p99 < 20)],
            ],
        )
        path = write_json(
            "command_throughput",
            {
                "machine": machine(),
                "args": vars(args),
                "soloist": summary,
                "raw_ceiling": {
                    "events_per_s": raw_rate,
                    "how": raw_how,
                    "by_how": raw_by_how,
                    "batch": raw_batch,
                    "runs": raw,
                },
                "one_txn_per_command": {"events_per_s": per_rate, "runs": per_command},
                "ratios": ratios,
            },
        )
        print(f"wrote {path}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


if __name__ == "__main__":
    main()
