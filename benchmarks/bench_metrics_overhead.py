"""What does recording metrics cost the writer? Commands/s with metrics off and on, in the same run.

``App(replicas=4)`` of the shop on a fresh SQLite file (``--synchronous``, default NORMAL: less fsync wait, so
the writer is more CPU-bound and a recording cost shows more, not less), ``--submitters`` concurrent tasks
each doing ``await app.execute(Restock(...))`` for ``--seconds``. "on" attaches :class:`soloist._metrics.Metrics`
(the writer's per-batch hook feeds the batch-size, commit and submit-to-ack histograms) and renders the
Prometheus text once a second, as a scraper would. Off and on alternate, ``--runs`` times each, each run
on a fresh copy of the same prefilled log; the table shows medians and the on/off ratio (target: >= 0.95).
This machine is shared and noisy, so the hook's own cost is also timed directly (CPU time of
``Metrics.observe_batch`` per command, batches of 100), next to the writer's CPU time per command.

    python benchmarks/bench_metrics_overhead.py [--quick] [--runs 5] [--seconds 3] [--submitters 100]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script (as `make bench` does): `benchmarks._common` from the repo root
    sys.path.insert(0, str(ROOT))

from benchmarks._common import SEED, median, print_table, progress, write_json  # noqa: E402
from soloist import App, configure_logging  # noqa: E402
from soloist._metrics import Metrics  # noqa: E402
from soloist_shop.commands import AddProduct, Restock  # noqa: E402
from soloist_shop.wiring import DOMAIN  # noqa: E402

if TYPE_CHECKING:
    from soloist._log import Synchronous

PRODUCTS = 100


async def prefill(path: Path) -> None:
    async with App(DOMAIN, path, replicas=1) as app:
        for i in range(PRODUCTS):
            await app.execute(AddProduct(sku=f"SKU-{i}", name=f"p{i}", category="c", price_cents=100, stock=0))


async def one_run(
    path: Path, *, metrics_on: bool, submitters: int, seconds: float, seed: int, synchronous: Synchronous
) -> dict[str, float]:
    async with App(DOMAIN, path, replicas=4, synchronous=synchronous) as app:
        metrics = Metrics(app) if metrics_on else None
        done = 0
        deadline = time.perf_counter() + seconds
        rng = random.Random(seed)
        skus = [f"SKU-{rng.randrange(PRODUCTS)}" for _ in range(4096)]

        async def submitter(k: int) -> None:
            nonlocal done
            i = k
            while time.perf_counter() < deadline:
                await app.execute(Restock(sku=skus[i % 4096], quantity=1))
                done += 1
                i += submitters

        async def scraper() -> None:
            while True:
                await anyio.sleep(1.0)
                assert metrics is not None
                metrics.render()

        started = time.perf_counter()
        cpu = time.process_time()
        async with anyio.create_task_group() as tg:
            if metrics is not None:
                tg.start_soon(scraper)
            async with anyio.create_task_group() as work:
                for k in range(submitters):
                    work.start_soon(submitter, k)
            tg.cancel_scope.cancel()
        elapsed = time.perf_counter() - started
        cpu_us = (time.process_time() - cpu) * 1e6 / max(done, 1)
        writer = app.statistics().writer
        mean_batch = writer.batch_size_mean if writer is not None else 0.0
        return {"commands_per_s": done / elapsed, "batch_mean": mean_batch, "cpu_us_per_command": cpu_us}


def hook_cost_us(app_less_metrics: Metrics, batch: int = 100, rounds: int = 20000) -> float:
    """CPU microseconds per command spent in the writer's metrics hook (``observe_batch``), batches of ``batch``."""
    now = time.perf_counter()
    submitted = [now - 0.001 * i for i in range(batch)]
    observe = app_less_metrics.observe_batch
    started = time.process_time()
    for _ in range(rounds):
        observe(0.002, submitted, now)
    return (time.process_time() - started) * 1e6 / (rounds * batch)


async def measure(args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:  # off, on, hook
    directory = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    try:
        base = directory / "base.db"
        await prefill(base)
        out: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
        steps = [(run, mode) for run in range(args.runs) for mode in (("off", "on") if run % 2 == 0 else ("on", "off"))]
        for n, (run, mode) in enumerate(progress(steps, "bench_metrics_overhead", total=len(steps))):
            path = directory / f"run-{n}.db"
            shutil.copy(base, path)
            figures = await one_run(
                path,
                metrics_on=mode == "on",
                submitters=args.submitters,
                seconds=args.seconds,
                seed=SEED + run,
                synchronous=args.synchronous,
            )
            out[mode].append(figures)
        async with App(DOMAIN, base, replicas=1) as app:
            out["hook_us_per_command"] = [{"us": hook_cost_us(Metrics(app))}]
        return out
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="2 runs of 1.5 s each way: well under a minute")
    parser.add_argument("--runs", type=int, default=None, help="runs each way, alternating (default 5)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per run (default 3)")
    parser.add_argument("--submitters", type=int, default=100)
    parser.add_argument("--synchronous", default="NORMAL", choices=["OFF", "NORMAL", "FULL"])
    args = parser.parse_args()
    args.runs = args.runs or (2 if args.quick else 5)
    args.seconds = args.seconds or (1.5 if args.quick else 3.0)
    configure_logging("warning")
    result = anyio.run(measure, args, backend_options={"use_uvloop": True})
    off = median([r["commands_per_s"] for r in result["off"]])
    on = median([r["commands_per_s"] for r in result["on"]])
    rows = [
        [
            mode,
            median([r["commands_per_s"] for r in result[mode]]),
            median([r["batch_mean"] for r in result[mode]]),
            median([r["cpu_us_per_command"] for r in result[mode]]),
        ]
        for mode in ("off", "on")
    ]
    print_table(
        f"Writer commands/s, metrics off and on ({args.submitters} submitters, synchronous={args.synchronous}, "
        f"medians of {args.runs})",
        ["metrics", "commands/s", "mean batch", "CPU us/command"],
        rows,
    )
    hook = result["hook_us_per_command"][0]["us"]
    print(f"\non/off = {on / off:.3f} (target >= 0.95); the hook itself: {hook:.3f} us CPU per command")
    path = write_json(
        "metrics_overhead",
        {
            "quick": args.quick,
            "settings": {"runs": args.runs, "seconds": args.seconds, "submitters": args.submitters, "seed": SEED},
            "off": result["off"],
            "on": result["on"],
            "median_off": off,
            "median_on": on,
            "ratio_on_off": on / off,
            "hook_us_per_command": hook,
            "synchronous": args.synchronous,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
