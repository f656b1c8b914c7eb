"""Under ~10x the writer's capacity for 30 s: is memory bounded, are clients told, do queries keep their latency,
and does throughput recover?

Issue 10's overload item, against a real ``python -m soloist.cli serve`` (shop, seeded, defaults: writer queue
8192, 1024 requests in flight per connection) on a fresh SQLite file, over 127.0.0.1:

1. **idle**: a prober process sends ``GetProduct`` (eventual) queries one at a time for ``--probe`` s: latency
   p50/p99 with nothing else running;
2. **capacity**: a load process keeps ``--conns`` (8) x ``--depth`` (32) ``PlaceOrder`` commands in flight (one
   more per answer; 256 in flight stays far below the queue) for ``--phase`` s: acknowledged commands/s = the
   writer's capacity C;
3. **overload**: the load process keeps ``--over-conns`` (16) x ``--over-window`` (2048) commands outstanding
   (one more per answer, as fast as answers come) for ``--seconds`` (30) s, while the prober measures query
   latency again and the main process samples the server's RSS (``VmRSS`` of ``/proc/PID/status`` every
   0.1 s, and ``VmHWM``, the kernel's peak) and its writer queue (``stats``). The offered rate is commands
   sent per second; answers are counted by kind (ok, ``overloaded``, other);
4. **drain**: until the writer's queue is empty;
5. **recovery**: the capacity load again for ``--phase`` s (acknowledged/s vs C), then the prober alone.

Every order is for a product with a stock of a billion (``BENCH-00``..``07``), so every accepted one is ``ok``.
Load and prober are separate processes (uvloop, raw ``asyncio.Protocol``), so the prober's latency is not
its own event loop's queueing behind the load. The machine has few cores: the offered rate is limited by
the load generator's CPU, and the printed ratio says how far past C it got.

    .venv/bin/python benchmarks/bench_overload.py [--quick] [--seconds 30]

Prints one table and writes benchmarks/results/overload.json (machine, Python, SQLite, package versions).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: `benchmarks._common` is imported from the repo root
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402 - after the sys.path insert, with the imports that need it
import uvloop  # noqa: E402

from benchmarks._common import environment, percentile, print_table, write_json  # noqa: E402
from benchmarks.bench_socket import (  # noqa: E402
    BENCH_SKUS,
    CUSTOMER,
    HOST,
    NL,
    ServerProcess,
    add_bench_products,
    free_port,
    request,
)

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

PACKAGES = ("soloist", "orjson", "uvloop", "aiosqlite", "anyio", "structlog")
QUERY = orjson.dumps({"id": 0, "op": "query", "type": "GetProduct", "data": {"sku": "BK-001"}}, option=NL)


# -- the load (its own process) ----------------------------------------------------------------------------


class _Orders(asyncio.Protocol):
    """Keeps ``window`` PlaceOrder commands outstanding: one more per answer, until told to stop."""

    def __init__(self, prefix: str, window: int, counts: dict[str, int], examples: dict[str, Any]) -> None:
        self.prefix, self.window, self.counts, self.examples = prefix, window, counts, examples
        self.transport: asyncio.Transport | None = None
        self.partial = b""
        self.n = 0
        self.stopping = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _orders(self, k: int) -> bytes:
        out = []
        for _ in range(k):
            n = self.n
            self.n += 1
            data = {
                "order_id": f"{self.prefix}-{n}",
                "customer_id": CUSTOMER,
                "lines": [{"sku": BENCH_SKUS[n % len(BENCH_SKUS)], "quantity": 1}],
            }
            out.append(orjson.dumps({"id": n, "op": "command", "type": "PlaceOrder", "data": data}, option=NL))
        self.counts["sent"] += k
        return b"".join(out)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self._orders(self.window))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        counts = self.counts
        for line in lines:
            if b'"ok":true' in line:
                counts["ok"] += 1
                continue
            answer = orjson.loads(line)
            code = answer["error"]["code"]
            counts[code] = counts.get(code, 0) + 1
            self.examples.setdefault(code, answer)
        if not self.stopping and self.transport is not None:
            self.transport.write(self._orders(len(lines)))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def _load_main(port: int, conns: int, window: int, seconds: float, prefix: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    counts = {"sent": 0, "ok": 0}
    examples: dict[str, Any] = {}
    clients: list[_Orders] = []
    for i in range(conns):
        _, client = await loop.create_connection(
            lambda i=i: _Orders(f"{prefix}{i}", window, counts, examples),  # type: ignore[misc]
            HOST,
            port,
        )
        clients.append(client)
    start = time.perf_counter()
    timeline: list[int] = []
    while (elapsed := time.perf_counter() - start) < seconds:
        await asyncio.sleep(min(1.0, seconds - elapsed))
        timeline.append(counts["ok"])
    for client in clients:  # stop sending; what is outstanding is still answered and counted
        client.stopping = True
    sent_in_window, ok_in_window = counts["sent"], counts["ok"]
    for _ in range(1200):  # up to 60 s for the outstanding answers
        if sum(counts.values()) - counts["sent"] >= counts["sent"]:
            break
        await asyncio.sleep(0.05)
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    answered = sum(v for k, v in counts.items() if k != "sent")
    return {
        "seconds": seconds,
        "sent_in_window": sent_in_window,
        "ok_in_window": ok_in_window,
        "counts": counts,
        "unanswered": counts["sent"] - answered,
        "examples": examples,
        "ok_per_second": [b - a for a, b in zip([0, *timeline], timeline, strict=False)],
    }


def _load(port: int, conns: int, window: int, seconds: float, prefix: str, out: Connection) -> None:
    out.send(uvloop.run(_load_main(port, conns, window, seconds, prefix)))


# -- the prober (its own process) --------------------------------------------------------------------------


class _Prober(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.answer: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\n" in self.buffer and self.answer is not None and not self.answer.done():
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.answer.set_result(line)


async def _probe_main(port: int, seconds: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    _, prober = await loop.create_connection(_Prober, HOST, port)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        prober.answer = loop.create_future()
        t0 = time.perf_counter()
        assert prober.transport is not None
        prober.transport.write(QUERY)
        line = await prober.answer
        latencies.append(time.perf_counter() - t0)
        if b'"ok":true' not in line:
            errors += 1
    assert prober.transport is not None
    prober.transport.close()
    latencies.sort()
    return {
        "queries": len(latencies),
        "errors": errors,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "max_ms": latencies[-1] * 1e3 if latencies else float("nan"),
    }


def _probe(port: int, seconds: float, out: Connection) -> None:
    out.send(uvloop.run(_probe_main(port, seconds)))


# -- the run (main process) -------------------------------------------------------------------------------


def _spawn(target: Any, *args: object) -> tuple[multiprocessing.Process, Connection]:
    receive, send = multiprocessing.Pipe(duplex=False)
    process = multiprocessing.Process(target=target, args=(*args, send), daemon=True)
    process.start()
    return process, receive


def _collect(process: multiprocessing.Process, receive: Connection, within: float) -> dict[str, Any]:
    if not receive.poll(within):
        process.kill()
        raise RuntimeError(f"{process.name} did not report within {within:g} s")
    result: dict[str, Any] = receive.recv()
    process.join(10)
    return result


def _memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB, from /proc/PID/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def _queue(port: int) -> tuple[int, int]:
    writer = request(port, {"op": "stats"}, timeout=10)["result"]["writer"]
    return int(writer["queue_depth"]), int(writer["queue_peak"])


def _phase_load(port: int, conns: int, window: int, seconds: float, prefix: str) -> dict[str, Any]:
    process, receive = _spawn(_load, port, conns, window, seconds, prefix)
    return _collect(process, receive, seconds + 90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="5 s of overload, 2 s phases")
    parser.add_argument("--seconds", type=float, default=30.0, help="overload duration (30)")
    parser.add_argument("--phase", type=float, default=5.0, help="capacity and recovery phases (5)")
    parser.add_argument("--probe", type=float, default=5.0, help="idle latency probes (5)")
    parser.add_argument("--conns", type=int, default=8)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--over-conns", type=int, default=16)
    parser.add_argument("--over-window", type=int, default=2048)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.phase, args.probe = 5.0, 2.0, 2.0
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        argv = [sys.executable, "-m", "soloist.cli", "serve", "--db", str(workdir / "soloist.db")]
        server = ServerProcess(
            "soloist", port, [*argv, "--port", str(port), "--log-level", "warning"], workdir / "server.log"
        )
        server.start()
        try:
            server.wait_ready()
            add_bench_products(server)
            rss_start = _memory_kib(server.pid)
            print("idle probe ...", file=sys.stderr)
            process, receive = _spawn(_probe, port, args.probe)
            idle = _collect(process, receive, args.probe + 30)
            print("capacity ...", file=sys.stderr)
            capacity = _phase_load(port, args.conns, args.depth, args.phase, "cap")
            rss_after_capacity = _memory_kib(server.pid)
            print(f"overload {args.seconds:g} s ...", file=sys.stderr)
            load, load_out = _spawn(_load, port, args.over_conns, args.over_window, args.seconds, "over")
            probe, probe_out = _spawn(_probe, port, args.seconds)
            samples: list[int] = []
            queue_depths: list[int] = []
            deadline = time.monotonic() + args.seconds
            next_stats = time.monotonic()
            while time.monotonic() < deadline:
                samples.append(_memory_kib(server.pid)["VmRSS"])
                if time.monotonic() >= next_stats:
                    queue_depths.append(_queue(port)[0])
                    next_stats += 1.0
                time.sleep(0.1)
            during = _collect(probe, probe_out, 60)
            overload = _collect(load, load_out, 120)
            rss_end = _memory_kib(server.pid)
            drain_start = time.monotonic()
            while _queue(port)[0] and time.monotonic() - drain_start < 60:
                time.sleep(0.05)
            drained_s = time.monotonic() - drain_start
            queue_peak = _queue(port)[1]
            print("recovery ...", file=sys.stderr)
            recovery = _phase_load(port, args.conns, args.depth, args.phase, "rec")
            process, receive = _spawn(_probe, port, args.probe)
            after = _collect(process, receive, args.probe + 30)
            alive = server.proc is not None and server.proc.poll() is None
        finally:
            server.stop()
    cap_rate = capacity["ok_in_window"] / args.phase
    offered = overload["sent_in_window"] / args.seconds
    rec_rate = recovery["ok_in_window"] / args.phase
    counts = overload["counts"]
    rows = [
        ["writer capacity C (PlaceOrder ok/s, 256 in flight)", f"{cap_rate:,.0f}"],
        ["overload: offered (commands sent/s)", f"{offered:,.0f} ({offered / cap_rate:.1f}x C)"],
        ["overload: acknowledged/s", f"{overload['ok_in_window'] / args.seconds:,.0f}"],
        [
            "overload: answers ok / overloaded / other",
            f"{counts['ok']:,} / {counts.get('overloaded', 0):,} / "
            f"{sum(v for k, v in counts.items() if k not in ('sent', 'ok', 'overloaded')):,}",
        ],
        ["overload: unanswered at the end", f"{overload['unanswered']:,}"],
        [
            "writer queue depth sampled (max) / peak / capacity",
            f"{max(queue_depths, default=0):,} / {queue_peak:,} / 8,192",
        ],
        [
            "server RSS start / after capacity / peak sample / end (MiB)",
            f"{rss_start['VmRSS'] / 1024:.0f} / {rss_after_capacity['VmRSS'] / 1024:.0f} / "
            f"{max(samples) / 1024:.0f} / {rss_end['VmRSS'] / 1024:.0f}",
        ],
        ["server peak RSS (VmHWM, whole run) (MiB)", f"{rss_end['VmHWM'] / 1024:.0f}"],
        ["query p50 / p99 idle (ms)", f"{idle['p50_ms']:.2f} / {idle['p99_ms']:.2f} ({idle['queries']:,} queries)"],
        [
            "query p50 / p99 during overload (ms)",
            f"{during['p50_ms']:.2f} / {during['p99_ms']:.2f} "
            f"({during['queries']:,} queries, max {during['max_ms']:.1f})",
        ],
        ["queue drained after the load stopped (s)", f"{drained_s:.2f}"],
        ["recovery: acknowledged/s (vs C)", f"{rec_rate:,.0f} ({rec_rate / cap_rate:.0%})"],
        ["query p50 / p99 after (ms)", f"{after['p50_ms']:.2f} / {after['p99_ms']:.2f}"],
        ["server alive and exit code", f"{alive}, {server.returncode}"],
    ]
    print_table(f"Overload: {args.seconds:g} s against soloist serve", ["measure", "figure"], rows)
    if overload["examples"]:
        print("first answer of each error code:", orjson.dumps(overload["examples"]).decode())
    write_json(
        "overload",
        {
            "environment": environment(*PACKAGES),
            "args": vars(args),
            "capacity": capacity,
            "overload": overload,
            "recovery": recovery,
            "latency": {"idle": idle, "during": during, "after": after},
            "rss_kib": {
                "start": rss_start,
                "after_capacity": rss_after_capacity,
                "end": rss_end,
                "samples_max": max(samples),
                "samples": samples,
            },
            "queue": {"sampled": queue_depths, "peak": queue_peak, "drained_s": drained_s},
            "server": {"alive": alive, "returncode": server.returncode, "notes": server.notes},
        },
    )


if __name__ == "__main__":
    main()
