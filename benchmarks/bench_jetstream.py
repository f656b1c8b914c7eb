"""What does fanning the log out through NATS JetStream cost the writer, and what does it buy the read side?

Real processes on 127.0.0.1, each on a fresh SQLite file in a temporary directory, and a nats-server of its
own (``-js``, a temporary store, a free port):

1. **The publisher's cost** (issue 12's target: at most 10% of the writer's commands/s). In each run, two
   fresh writers one after the other (shop, seeded, ``--log-level warning``): ``soloist serve`` and
   ``soloist serve --nats URL --nats-stream bench-<run>``, each loaded with durable ``PlaceOrder`` commands by
   request/response callers (shape (b) of bench_socket.py: ``--callers-conns`` x ``--callers``). Besides
   commands/s: the writer process's CPU per command (utime + stime from /proc) and nats-server's CPU share
   meanwhile, which separate the publisher's own cost from that of a broker sharing the same 2 cores.
2. **Total queries/s with 0, 1, 2 and 3 JetStream replica processes** beside one writer that publishes:
   ``soloist replica --nats URL --upstream WRITER`` processes are started one by one; once a replica has
   caught up (a session query at the writer's head), every server (writer and replicas) is loaded at the
   same time by its own load process with ``--conns`` connections x ``--conn-depth`` pipelined eventual
   ``GetProduct`` queries (shape (c)); the table shows the sum and each server's share.
3. **Replica lag at half the writer's saturation**: ``--lag-replicas`` (1) replicas are kept, the others
   stopped; after 10.5 s idle (so the replicas' 10 s lag window holds nothing of their start-up catch-up) a
   paced load process sends ``PlaceOrder`` commands at half the commands/s measured in 1 (with the publisher)
   for 2 x ``--seconds``, ``--lag-runs`` (3) times, 10.5 s apart; after each, each replica's ``stats`` gives its
   lag over the last 10 s (the table shows each window and the medians): p50/p99 in ms
   (the message's ``Soloist-Committed-At`` header, the writer's commit time stamped by the publisher, to the
   replica's local commit of that message, wall clocks of one machine; a message the publisher read back
   from the log carries none, and its last event's ``recorded_at`` stands in) and in events (the writer's
   head stamped on the message, minus the replica's position after applying it).

This machine has 2 cores shared by the writer, nats-server, the replicas and the load processes: more replica
processes do not add cores, so the queries/s table shows where the ceiling is, not a scaling curve.

    .venv/bin/python benchmarks/bench_jetstream.py [--quick] [--runs 3] [--seconds 3]

Prints the tables and writes benchmarks/results/bench_jetstream.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import uvloop  # noqa: E402

from benchmarks._common import environment, median, print_table, write_json  # noqa: E402
from benchmarks.bench_socket import (  # noqa: E402
    BENCH_SKUS,
    CUSTOMER,
    HOST,
    NL,
    ServerProcess,
    _cpu_seconds,
    add_bench_products,
    free_port,
    request,
    run_load,
)

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
PACKAGES = ("soloist", "nats-py", "orjson", "uvloop", "msgspec")


# -- the paced command load (runs in a worker process) ------------------------------------------------


async def _paced(port: int, rate: float, seconds: float, tag: str) -> dict[str, Any]:
    """Send ``PlaceOrder`` at ``rate`` per second (pipelined, 1 ms ticks) for ``seconds``; count answers."""
    reader, writer = await asyncio.open_connection(HOST, port)
    sent = received = errors = 0
    done = asyncio.Event()

    async def read() -> None:
        nonlocal received, errors
        while True:
            line = await reader.readline()
            if not line:
                return
            received += 1
            if b'"ok":true' not in line:
                errors += 1
            if done.is_set() and received >= sent:
                return

    reading = asyncio.ensure_future(read())
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        due = int(elapsed * rate)
        lines = []
        while sent < due:
            data = {
                "order_id": f"{tag}-{sent}",
                "customer_id": CUSTOMER,
                "lines": [{"sku": BENCH_SKUS[0], "quantity": 1}],
            }
            lines.append(orjson.dumps({"id": sent, "op": "command", "type": "PlaceOrder", "data": data}, option=NL))
            sent += 1
        if lines:
            writer.write(b"".join(lines))
        await asyncio.sleep(0.001)
    done.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reading, 30)
    writer.close()
    return {"sent": sent, "received": received, "errors": errors, "rate": sent / seconds}


def run_paced(port: int, rate: float, seconds: float, tag: str) -> dict[str, Any]:
    return uvloop.run(_paced(port, rate, seconds, tag))


# -- processes ----------------------------------------------------------------------------------------


def start_nats(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = tmp / "nats.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [NATS_SERVER, "-a", HOST, "-p", str(port), "-js", "-sd", str(tmp / "nats-store")],
            stdout=sink,
            stderr=sink,
        )
    deadline = time.monotonic() + 15
    while b"Server is ready" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"nats-server did not start: {log.read_text()}")
        time.sleep(0.02)
    return proc, f"nats://{HOST}:{port}"


def soloist(tmp: Path, name: str, *args: str) -> ServerProcess:
    port = free_port()
    argv = [sys.executable, "-m", "soloist.cli", *args, "--port", str(port), "--log-level", "warning"]
    server = ServerProcess(name, port, argv, tmp / f"{name}.log")
    server.start()
    server.wait_ready()
    return server


def writer(tmp: Path, name: str, nats: str | None, stream: str) -> ServerProcess:
    extra = ["--nats", nats, "--nats-stream", stream] if nats else []
    server = soloist(tmp, name, "serve", "--db", str(tmp / f"{name}.db"), *extra)
    add_bench_products(server)
    return server


def position_of(port: int) -> int:
    return int(request(port, {"op": "ping"})["position"])


def caught_up(replica: ServerProcess, position: int) -> None:
    """A session query at ``position``: returns once the replica has applied it (bounded by the timeout)."""
    answer = request(
        replica.port,
        {"op": "query", "type": "GetProduct", "data": {"sku": "BK-001"}, "consistency": "session"}
        | {"min_position": position, "timeout_ms": 60_000},
        timeout=70,
    )
    if answer.get("ok") is not True:
        raise RuntimeError(f"{replica.name} did not reach {position}: {answer}")


def spec(
    shape: str, server: ServerProcess, args: argparse.Namespace, tag: str, conns: int, depth: int
) -> dict[str, Any]:
    return {
        "shape": shape,
        "port": server.port,
        "pid": server.pid,
        "conns": conns,
        "depth": depth,
        "warmup": args.warmup,
        "seconds": args.seconds,
        "tag": tag,
    }


# -- the measurements ---------------------------------------------------------------------------------


def measure(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"commands": [], "queries": {}, "lag": []}
    ctx = multiprocessing.get_context("spawn")
    with (
        tempfile.TemporaryDirectory(prefix="bench-jetstream-") as tmp_name,
        ProcessPoolExecutor(max_workers=5, mp_context=ctx) as pool,
    ):
        tmp = Path(tmp_name)
        nats_proc, url = start_nats(tmp)
        try:
            # 1. the publisher's cost, interleaved per run
            for run in range(args.runs):
                row: dict[str, float] = {}
                for label, nats in (("without", None), ("with", url)):
                    w = writer(tmp, f"w{run}-{label}", nats, f"bench-{run}")
                    try:
                        shape_b = spec("b", w, args, f"r{run}{label}", args.callers_conns, args.callers)
                        nats_cpu, started = sum(_cpu_seconds(nats_proc.pid)), time.perf_counter()
                        measured = pool.submit(run_load, shape_b).result()
                        nats_cpu = (sum(_cpu_seconds(nats_proc.pid)) - nats_cpu) / (time.perf_counter() - started)
                        row[label] = measured["per_s"]
                        row[f"{label}_writer_us"] = measured["server_us_per_req"]  # the writer's CPU per command
                        row[f"{label}_nats_cpu"] = nats_cpu  # nats-server's share of a core meanwhile
                    finally:
                        w.stop()
                results["commands"].append(row)
                print(
                    f"run {run}: commands/s without the publisher {row['without']:,.0f} "
                    f"({row['without_writer_us']:.0f} us CPU each), with {row['with']:,.0f} "
                    f"({row['with_writer_us']:.0f} us; nats-server {row['with_nats_cpu']:.0%} of a core)"
                )
            saturation = median([r["with"] for r in results["commands"]])

            # 2. queries/s with 0..3 JetStream replicas beside a publishing writer
            w = writer(tmp, "w-read", url, "bench-read")
            replicas: list[ServerProcess] = []
            try:
                for count in range(args.max_replicas + 1):
                    if count:
                        name = f"r{count}"
                        replicas.append(
                            soloist(
                                tmp,
                                name,
                                "replica",
                                "--db",
                                str(tmp / f"{name}.db"),
                                "--nats",
                                url,
                                "--nats-stream",
                                "bench-read",
                                "--upstream",
                                f"{HOST}:{w.port}",
                            )
                        )
                        caught_up(replicas[-1], position_of(w.port))
                    servers = [w, *replicas]
                    futures = [
                        pool.submit(run_load, spec("c", s, args, "q", args.conns, args.conn_depth)) for s in servers
                    ]
                    per_server = [f.result()["per_s"] for f in futures]
                    results["queries"][count] = per_server
                    parts = " + ".join(f"{q:,.0f}" for q in per_server)
                    print(f"{count} replicas: queries/s {sum(per_server):,.0f} = {parts}")

                # 3. lag at half saturation, with one replica (the others stopped: 2 cores), once its lag window
                # (10 s) holds no sample of the catch-up it did when it started
                for r in replicas[args.lag_replicas :]:
                    r.stop()
                replicas = replicas[: args.lag_replicas]
                rate = saturation / 2
                for run in range(args.lag_runs):  # each window apart: the replicas' lag window (10 s) forgets
                    time.sleep(10.5)
                    paced = pool.submit(run_paced, w.port, rate, args.seconds * 2, f"lag{run}").result()
                    head = position_of(w.port)
                    for r in replicas:
                        caught_up(r, head)
                        link = request(r.port, {"op": "stats"})["result"]["upstream"]
                        lag_row: dict[str, Any] = {
                            "replica": r.name,
                            "run": run,
                            "rate": paced["rate"],
                            "errors": paced["errors"],
                            **link,
                        }
                        results["lag"].append(lag_row)
            finally:
                for s in [*replicas, w]:
                    s.stop()
        finally:
            nats_proc.terminate()
            nats_proc.wait(timeout=15)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="about a minute: 1 run, 2 s windows")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--callers-conns", type=int, default=8)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--conns", type=int, default=4)
    parser.add_argument("--conn-depth", type=int, default=100)
    parser.add_argument("--max-replicas", type=int, default=3)
    parser.add_argument("--lag-replicas", type=int, default=1, help="replicas kept for the lag measurement")
    parser.add_argument("--lag-runs", type=int, default=3, help="lag windows, 10.5 s apart (table: each, median)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.seconds, args.warmup, args.lag_runs = 1, 2.0, 0.5, 1
    results = measure(args)

    commands = results["commands"]
    without, with_ = median([r["without"] for r in commands]), median([r["with"] for r in commands])
    cost = median([1 - r["with"] / r["without"] for r in commands])
    us_without = median([r["without_writer_us"] for r in commands])
    us_with = median([r["with_writer_us"] for r in commands])
    nats_cpu = median([r["with_nats_cpu"] for r in commands])
    print_table(
        "The writer's durable commands/s (shape b), with and without the JetStream publisher (medians over runs)",
        ["without", "with publisher", "cost", "writer us/cmd without", "with", "nats-server cpu"],
        [[without, with_, f"{cost:.1%}", us_without, us_with, f"{nats_cpu:.0%}"]],
    )
    print_table(
        "Total eventual queries/s with N JetStream replica processes beside the writer (2 cores in all)",
        ["replicas", "total q/s", "writer", "replicas each"],
        [
            [int(n), sum(q), q[0], " ".join(f"{x:,.0f}" for x in q[1:]) or "-"]
            for n, q in sorted(results["queries"].items())
        ],
    )
    figures = ("rate", "lag_ms_p50", "lag_ms_p99", "lag_events_p50", "lag_events_p99", "lag_samples")
    lag_rows = [
        [f"{lag['replica']} #{lag['run'] + 1}", *(float(lag[k] or 0) for k in figures)] for lag in results["lag"]
    ]
    medians = {k: median([float(lag[k] or 0) for lag in results["lag"]]) for k in figures}
    results["lag_median"] = medians
    print_table(
        f"Replica lag at half the writer's saturation ({args.lag_runs} windows of {args.seconds * 2:g} s; "
        "each replica's stats over its last 10 s)",
        ["replica #window", "cmds/s", "p50 ms", "p99 ms", "p50 events", "p99 events", "messages"],
        [*lag_rows, ["median", *medians.values()]],
    )
    write_json("bench_jetstream", {"args": vars(args), "environment": environment(*PACKAGES), "results": results})


if __name__ == "__main__":
    main()
