"""What does a rebuild beside the live read models cost the writer and the queries, and what does upcasting cost?

Measured on a shop log of ``--events`` events (default 200k; ``--full`` for 1M): 1,000 ``ProductAdded``
then ``ProductRestocked`` events, written directly, synchronous=FULL afterwards.

1. decode (minimum of 25 interleaved runs of 20k calls each, the lambda's call included): ns per event of
   ``TypeRegistry.decode_stored`` for an event at the current schema (the fast path), against the bare
   msgspec decoder and against ``decode_stored`` as it was before schema versions; and for a
   ``ProductAdded`` v1 that is upcast to v2 (decode to a dict, the upcaster, ``msgspec.convert``).
2. replay (median of 3): events/s of an offline replay of the whole log (``replay_digest``: LogScanner chunks, decode,
   apply to fresh shop read models, then the digest), with every ``ProductAdded`` at v2 and with them at v1
   (upcast on read, and the ``as_current`` pass over each chunk).
3. the writer's saturation: ``Restock`` commands/s with 100 concurrent submitters for ``--seconds``.
4. half load, without and then with a rebuild: an open-loop producer submits at half the saturation
   rate; 4 query tasks each ask a ``strong`` ``GetProduct`` every millisecond (latency = from the ask to the
   answer, so loop stalls show). Phase "rebuild": ``App.rebuild(0, chunk=...)`` builds replica 0 from the
   whole log while that load runs, once per ``--chunks`` size; phase "baseline": the same load for as long
   as the longest rebuild, no rebuild. Reported: rebuild
   events/s (the log's head at the swap / the rebuild's wall time), commands/s achieved, query p50/p99/max.

    python benchmarks/bench_rebuild.py [--quick | --events 200000 | --full] [--seconds 3] [--chunks 500,4000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine, percentile, print_table, write_json
from soloist import App, configure_logging
from soloist._digest import replay_digest
from soloist._log import EventLog
from soloist._messages import TypeRegistry
from soloist_shop.commands import Restock
from soloist_shop.events import EVENTS, UPCASTERS, ProductAdded, ProductRestocked
from soloist_shop.queries import GetProduct
from soloist_shop.wiring import DOMAIN

PRODUCTS = 1000
_INSERT = (
    "INSERT INTO events (position, stream, version, type, schema, data, command_id, idempotency_key, "
    "recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def prefill(path: Path, events: int, *, product_schema: int) -> None:
    """A shop log: 1,000 ProductAdded (at ``product_schema``: v1 JSON has no currency) then restocks."""

    async def schema() -> None:
        async with EventLog(path):
            pass

    uvloop.run(schema())
    versions = [0] * PRODUCTS
    now = time.time()
    rows: list[tuple[object, ...]] = []
    for i in range(PRODUCTS):
        event = ProductAdded(
            sku=f"sku-{i}", name=f"Product {i}", category="bench", price_cents=100 + i, stock=10, description=""
        )
        data = msgspec.json.decode(msgspec.json.encode(event))
        if product_schema == 1:
            del data["currency"]
        versions[i] = 1
        rows.append(
            (
                i + 1,
                f"product-sku-{i}",
                1,
                "ProductAdded",
                product_schema,
                msgspec.json.encode(data).decode(),
                "p",
                None,
                now,
            )
        )
    for position in range(PRODUCTS + 1, events + 1):
        i = position % PRODUCTS
        versions[i] += 1
        data = msgspec.json.encode(ProductRestocked(sku=f"sku-{i}", quantity=1)).decode()
        rows.append((position, f"product-sku-{i}", versions[i], "ProductRestocked", 1, data, "p", None, now))
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA synchronous = OFF")
        conn.executemany(_INSERT, rows)
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    Path(f"{path}.lock").unlink(missing_ok=True)


def bench_decode(n: int = 20_000, rounds: int = 25) -> dict[str, float]:
    registry = TypeRegistry("event", EVENTS, upcasters=UPCASTERS)
    current = msgspec.json.encode(ProductRestocked(sku="sku-1", quantity=1))
    v2 = msgspec.json.encode(
        ProductAdded(sku="s", name="Product 1", category="bench", price_cents=1, stock=1, description="")
    )
    v1 = msgspec.json.encode({k: v for k, v in msgspec.json.decode(v2).items() if k != "currency"})
    bare = registry.decoder("ProductRestocked")
    bare_added = registry.decoder("ProductAdded")
    decode = registry.decode_stored
    by_name = registry._by_name
    plain = msgspec.json.Decoder().decode

    def before_versions(type_name: str, data: bytes) -> object:  # decode_stored as it was before this change
        entry = by_name.get(type_name)
        if entry is None:
            return plain(data)
        return entry.decoder.decode(data)

    cases = (
        ("bare_decoder_restocked", lambda: bare(current)),
        ("decode_stored_before_versions_restocked", lambda: before_versions("ProductRestocked", current)),
        ("decode_stored_restocked_current", lambda: decode("ProductRestocked", current, 1)),
        ("bare_decoder_added_v2", lambda: bare_added(v2)),
        ("decode_stored_added_v2_current", lambda: decode("ProductAdded", v2, 2)),
        ("decode_stored_added_v1_upcast", lambda: decode("ProductAdded", v1, 1)),
    )
    best: dict[str, float] = {}
    for _ in range(rounds):  # interleaved short runs; the minimum is the least disturbed (a shared, noisy machine)
        for name, call in cases:
            t0 = time.perf_counter()
            for _ in range(n):
                call()
            per = (time.perf_counter() - t0) / n * 1e9
            best[name] = min(best.get(name, per), per)
    out = best
    return out


def bench_replay(path: Path) -> dict[str, float]:
    runs = []
    position = 0
    for _ in range(3):
        t0 = time.perf_counter()
        position = replay_digest(DOMAIN, path).position
        runs.append(position / (time.perf_counter() - t0))
    return {"events_per_s": sorted(runs)[1], "events": position}


async def saturation(path: Path, seconds: float) -> float:
    async with App(DOMAIN, path, replicas=2) as app:
        start = app.position
        deadline = time.perf_counter() + seconds

        async def submitter(n: int) -> None:
            while time.perf_counter() < deadline:
                await app.execute(Restock(sku=f"sku-{n % PRODUCTS}", quantity=1))

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for n in range(100):
                tg.start_soon(submitter, n)
        return (app.position - start) / (time.perf_counter() - t0)


async def half_load(path: Path, rate: float, seconds: float | None, chunk: int = 500) -> dict[str, Any]:
    """The load (commands at ``rate``/s, strong queries) with a rebuild (``seconds`` None) or for ``seconds``."""
    latencies: list[float] = []
    async with App(DOMAIN, path, replicas=2) as app:
        start_position = app.position
        stop = anyio.Event()
        pending: set[asyncio.Future[Any]] = set()

        async def produce() -> None:
            interval = 0.005
            per_tick = max(1, round(rate * interval))
            i = 0
            while not stop.is_set():
                for _ in range(per_tick):
                    future = app.submit_nowait(Restock(sku=f"sku-{i % PRODUCTS}", quantity=1))
                    pending.add(future)
                    future.add_done_callback(pending.discard)
                    i += 1
                await anyio.sleep(interval)  # open loop: time is the behaviour here

        async def ask(n: int) -> None:
            while not stop.is_set():
                await anyio.sleep(0.001)
                t0 = time.perf_counter()
                await app.query(GetProduct(sku=f"sku-{n}"), consistency="strong", timeout=60)
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        result: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            for n in range(4):
                tg.start_soon(ask, n)
            if seconds is None:
                digests = await app.rebuild(0, chunk=chunk)
                elapsed = time.perf_counter() - t0
                result["rebuild_s"] = elapsed
                result["rebuild_events_per_s"] = digests[0].position / elapsed
            else:
                await anyio.sleep(seconds)
                elapsed = time.perf_counter() - t0
            stop.set()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        result["commands_per_s"] = (app.position - start_position) / (time.perf_counter() - t0)
    latencies.sort()
    result.update(
        seconds=elapsed,
        queries=len(latencies),
        query_p50_ms=percentile(latencies, 50) * 1000,
        query_p99_ms=percentile(latencies, 99) * 1000,
        query_max_ms=latencies[-1] * 1000 if latencies else float("nan"),
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--full", action="store_true", help="1M events")
    parser.add_argument("--quick", action="store_true", help="about a minute: 50k events, 1 s windows, one chunk size")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--chunks", default="500,4000", help="rebuild chunk sizes to compare, comma-separated (default 500,4000)"
    )
    args = parser.parse_args()
    if args.quick:
        args.events, args.seconds, args.chunks = 50_000, 1.0, "500"
    events = 1_000_000 if args.full else args.events
    configure_logging("warning")
    results: dict[str, Any] = {"machine": machine(), "events": events}
    decode = bench_decode()
    results["decode_ns"] = decode
    print_table("decode, ns per event (min of 25 interleaved runs)", ["path", "ns"], sorted(decode.items()))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        v2_log, v1_log = work / "v2.db", work / "v1.db"
        prefill(v2_log, events, product_schema=2)
        prefill(v1_log, events, product_schema=1)
        replay = {"all_current": bench_replay(v2_log), "products_v1_upcast": bench_replay(v1_log)}
        results["replay"] = replay
        print_table(
            "offline replay (replay_digest), median of 3",
            ["log", "events/s"],
            [(k, v["events_per_s"]) for k, v in replay.items()],
        )

        def copy(name: str) -> Path:
            target = work / name
            shutil.copyfile(v1_log, target)
            return target

        saturated = uvloop.run(saturation(copy("sat.db"), args.seconds))
        rate = saturated / 2
        rebuilds = {
            f"rebuild chunk={chunk}": uvloop.run(half_load(copy(f"rebuild{chunk}.db"), rate, None, int(chunk)))
            for chunk in args.chunks.split(",")
        }
        longest = max(r["seconds"] for r in rebuilds.values())
        baseline = uvloop.run(half_load(copy("base.db"), rate, max(args.seconds, longest)))
        results.update(saturation_commands_per_s=saturated, half_rate=rate, rebuilds=rebuilds, baseline=baseline)
        print_table(
            f"half load ({rate:,.0f} commands/s offered; saturation {saturated:,.0f}/s)",
            ["phase", "s", "rebuild ev/s", "cmds/s", "queries", "q p50 ms", "q p99 ms", "q max ms"],
            [
                (
                    name,
                    r["seconds"],
                    r.get("rebuild_events_per_s", float("nan")),
                    r["commands_per_s"],
                    r["queries"],
                    r["query_p50_ms"],
                    r["query_p99_ms"],
                    r["query_max_ms"],
                )
                for name, r in [*rebuilds.items(), ("baseline", baseline)]
            ],
        )
    write_json("rebuild", results)


if __name__ == "__main__":
    main()
