"""What does the checkout process cost? PlaceOrder with a payment token (the full checkout) against without.

Measured in one process on a fresh SQLite log (synchronous=FULL), the shop with its checkout against the demo
gateway kept in memory (no file: the runtime's cost, not the fake's fsync):

1. saturation: ``--submitters`` concurrent clients send ``PlaceOrder`` for ``--seconds``, without a token and
   with one. Reported: acknowledged PlaceOrder/s, and for tokens the full checkouts/s (from the first PlaceOrder
   to the last ``PaymentCaptured``: each checkout adds a ``RecordPayment`` command through the same writer).
2. latency at half saturation: PlaceOrder with a token sent open-loop at half the measured checkout rate;
   the time from sending PlaceOrder to ``PaymentCaptured`` being committed and seen by a subscriber, p50/p99.

    python benchmarks/bench_checkout.py [--runs 3] [--seconds 3] [--submitters 100]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import tempfile
import time
from pathlib import Path

import anyio
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine, median, percentile, print_table, write_json
from soloist import App, configure_logging
from soloist_shop.commands import AddProduct, OrderLineRequest, PlaceOrder, RegisterCustomer
from soloist_shop.events import PaymentCaptured
from soloist_shop.payments import DemoGateway
from soloist_shop.wiring import DOMAIN, checkout_process

SKUS = [f"P-{i}" for i in range(50)]
_ids = itertools.count()


def _domain() -> object:
    return dataclasses.replace(DOMAIN, processes=(checkout_process(DemoGateway(None)),))


def _order(token: str | None) -> PlaceOrder:
    n = next(_ids)
    line = OrderLineRequest(sku=SKUS[n % len(SKUS)], quantity=1)
    return PlaceOrder(order_id=f"o-{n}", customer_id="c-1", lines=(line,), payment_token=token)


async def _prepare(app: App) -> None:
    await app.execute(RegisterCustomer(customer_id="c-1", name="Bench", email="b@example.com"))
    for sku in SKUS:
        await app.execute(AddProduct(sku=sku, name=sku, category="c", price_cents=100, stock=10**9))


async def saturation(path: Path, *, token: bool, seconds: float, submitters: int) -> dict[str, float]:
    """PlaceOrder/s with ``submitters`` closed-loop clients; with a token also the completed checkouts/s."""
    async with App(_domain(), path, replicas=1) as app:  # type: ignore[arg-type]
        await _prepare(app)
        first = app.position
        placed: list[str] = []
        started = time.perf_counter()
        deadline = started + seconds

        async def submit() -> None:
            while time.perf_counter() < deadline:
                command = _order("tok" if token else None)
                await app.execute(command)
                placed.append(command.order_id)

        async with anyio.create_task_group() as tg:
            for _ in range(submitters):
                tg.start_soon(submit)
        acked = time.perf_counter() - started
        result = {"placed_per_s": len(placed) / acked}
        if token:
            captured = 0
            with anyio.fail_after(120):
                async with app.subscribe(first) as events:
                    async for batch in events:
                        captured += sum(isinstance(e.data, PaymentCaptured) for e in batch.events)
                        if captured >= len(placed):
                            break
            result["checkouts_per_s"] = len(placed) / (time.perf_counter() - started)
        return result


async def latency(path: Path, *, rate: float, seconds: float) -> dict[str, float]:
    """PlaceOrder (token) -> PaymentCaptured seen by a subscriber, sent open-loop at ``rate``/s."""
    async with App(_domain(), path, replicas=1) as app:  # type: ignore[arg-type]
        await _prepare(app)
        sent: dict[str, float] = {}
        took: list[float] = []
        total = int(rate * seconds)
        done = anyio.Event()

        async def watch() -> None:
            async with app.subscribe(app.position) as events:
                async for batch in events:
                    now = time.perf_counter()
                    for event in batch.events:
                        if isinstance(event.data, PaymentCaptured):
                            took.append(now - sent.pop(event.data.order_id))
                    if len(took) >= total:
                        done.set()
                        return

        async def place(command: PlaceOrder) -> None:
            await app.execute(command)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            started = time.perf_counter()
            for i in range(total):
                due = started + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await anyio.sleep(delay)  # pacing the open loop
                command = _order("tok")
                sent[command.order_id] = time.perf_counter()
                tg.start_soon(place, command)
            with anyio.fail_after(120):
                await done.wait()
        took.sort()
        ms = [t * 1000 for t in took]
        return {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "samples": float(len(ms))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--submitters", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="about a minute: 1 run, 1 s windows")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.seconds = 1, 1.0
    configure_logging(level="warning")
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "token": [], "latency": []}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            for kind in ("plain", "token"):
                path = Path(tmp) / f"{kind}-{run}.db"
                runs[kind].append(
                    uvloop.run(
                        saturation(path, token=kind == "token", seconds=args.seconds, submitters=args.submitters)
                    )
                )
        rate = median([r["checkouts_per_s"] for r in runs["token"]]) / 2
        for run in range(args.runs):
            runs["latency"].append(
                uvloop.run(latency(Path(tmp) / f"latency-{run}.db", rate=rate, seconds=args.seconds))
            )
    plain = median([r["placed_per_s"] for r in runs["plain"]])
    token = median([r["placed_per_s"] for r in runs["token"]])
    checkouts = median([r["checkouts_per_s"] for r in runs["token"]])
    p50 = median([r["p50_ms"] for r in runs["latency"]])
    p99 = median([r["p99_ms"] for r in runs["latency"]])
    print_table(
        f"PlaceOrder, {args.submitters} submitters, {args.seconds:g} s x {args.runs} runs (medians)",
        ["what", "per s"],
        [
            ["PlaceOrder without a token (acknowledged)", plain],
            ["PlaceOrder with a token (acknowledged)", token],
            ["... full checkouts (PlaceOrder -> PaymentCaptured)", checkouts],
            ["checkouts as a share of plain PlaceOrder", checkouts / plain],
        ],
    )
    print_table(
        f"PlaceOrder -> captured at half saturation ({rate:,.0f}/s open loop)",
        ["p50 ms", "p99 ms"],
        [[p50, p99]],
    )
    write_json(
        "checkout",
        {
            "machine": machine(),
            "args": vars(args),
            "runs": runs,
            "medians": {
                "plain_per_s": plain,
                "token_per_s": token,
                "checkouts_per_s": checkouts,
                "half_saturation_rate": rate,
                "p50_ms": p50,
                "p99_ms": p99,
            },
        },
    )


if __name__ == "__main__":
    main()
