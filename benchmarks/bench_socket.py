"""Over the socket, how does soloist compare with a one-file server a good engineer writes in an hour?

The yardstick of issue 8. Real processes on 127.0.0.1, each on a fresh SQLite file in a temporary directory:

- **soloist**: ``python -m soloist.cli serve --db <tmp>/soloist.db --log-level warning`` (shop, seeded, defaults);
- **baseline**: ``python benchmarks/baseline_server.py --db <tmp>/baseline.db`` (one writer task, group
  commit, one dict read model, orjson; see its docstring);
- **echo**: this script with ``--serve-echo PORT``: an asyncio ``Protocol`` on uvloop with the same framing that
  answers each line with a fixed tiny answer (the wire's ceiling: for queries, and for (b) what the same
  callers get when nothing is decided or made durable);
- **floor** for durable commands: a raw ``sqlite3`` loop, one ``INSERT`` + ``commit`` per command (WAL,
  ``synchronous=FULL``), no socket, in the load generator's process (what one transaction per command gives).

Before measuring, both shop servers get 8 extra products (``BENCH-00``..``BENCH-07``) with a stock of a billion,
so every order of (b) is accepted; the harness parses every (b) answer and counts the ones that are not ``ok``.

Load shapes (one load-generator process: uvloop, raw ``asyncio.Protocol`` clients, pre-encoded requests):

- **(a)** one connection, batches of ``--batch`` (100) pipelined ``GetProduct`` queries (eventual): send 100,
  read 100 answers, repeat;
- **(b)** ``--callers-conns`` (8) connections x ``--callers`` (32) request/response callers, each waiting for its
  answer before its next request: durable ``PlaceOrder`` (unique order ids, one line of quantity 1);
- **(c)** ``--conns`` (16) connections, each with ``--conn-depth`` (100) ``GetProduct`` queries in flight (one
  more per answer).

Within each run and shape the servers are measured one after another (soloist, baseline, then the floor
and/or echo), ``--runs`` (3) runs; tables show medians over runs and ratios are medians of per-run ratios (the host is
shared and noisy: neighbouring measurements are compared). Each measurement warms up ``--warmup`` s, then counts
answers for ``--seconds`` s. The figure that explains a gap is the server's CPU time per answer: utime + stime
of the server process (all threads) from ``/proc/PID/stat``, read right before and after the timed window, in
microseconds per answer (for the floor: the generator process's CPU per commit). For (b), soloist's mean
group-commit size over each measurement (its ``stats`` op, read before and after) is printed under the table.

The replica-process capacity section of the earlier version of this script was dropped: it needed a second
writer and a replica process, which does not fit a one-minute ``--quick`` run next to the baseline.

    .venv/bin/python benchmarks/bench_socket.py [--quick] [--runs 3] [--seconds 3]

Prints one table and writes benchmarks/results/bench_socket.json (machine, Python, SQLite, package versions).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: `benchmarks._common` is imported from the repo root
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402 - after the sys.path insert, with the imports that need it
import uvloop  # noqa: E402

from benchmarks._common import environment, median, print_table, write_json  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Callable

HOST = "127.0.0.1"
NL = orjson.OPT_APPEND_NEWLINE
IDS = 4096  # distinct request ids, cycled; more than any connection ever has in flight
ID_BASE = 1_000_000  # fixed-width ids: every pre-encoded request line has the same length
QUERY: dict[str, object] = {"op": "query", "type": "GetProduct", "data": {"sku": "BK-001"}}
BENCH_SKUS = [f"BENCH-{i:02d}" for i in range(8)]
BENCH_STOCK = 1_000_000_000
CUSTOMER = "c-ada"  # seeded by both servers
ERROR_MARK = b'"ok":false'  # orjson writes no spaces; answers with this are errors
STOP_TIMEOUT = 15.0
READY_TIMEOUT = 30.0
PACKAGES = ("soloist", "orjson", "uvloop", "aiosqlite", "anyio", "structlog")


# -- the load generator (runs in the worker process) ---------------------------------------------------


def _query_block() -> tuple[bytes, int]:
    """``IDS`` pre-encoded query lines, twice over (so any run of up to ``IDS`` lines is one slice)."""
    lines = [orjson.dumps({"id": ID_BASE + i, **QUERY}, option=NL) for i in range(IDS)]
    size = len(lines[0])
    if any(len(line) != size for line in lines):
        raise AssertionError("request lines must all have the same length")
    block = b"".join(lines)
    return block + block, size


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process (all its threads), from ``/proc/PID/stat``; NaNs if unavailable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return float("nan"), float("nan")
    fields = stat[stat.rfind(b")") + 2 :].split()  # after "pid (comm) ": utime and stime are fields 14, 15 of proc(5)
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _cpu_figures(user: float, system: float, answers: int, seconds: float) -> dict[str, float]:
    """Server CPU per answer (microseconds; total, user, system) and as a share of one core."""
    per = 1e6 / answers if answers else float("nan")
    return {
        "server_us_per_req": (user + system) * per,
        "server_user_us_per_req": user * per,
        "server_sys_us_per_req": system * per,
        "server_cpu": (user + system) / seconds,
    }


class _Client(asyncio.Protocol):
    """Counts answers (``\\n``) and errors; parses the first answer as a sample. Subclasses decide what to send."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.sent = 0
        self.received = 0
        self.errors = 0
        self.running = True
        self.head = b""
        self.sample: dict[str, Any] | None = None
        self.idle: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # set when drained/lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.start()

    def start(self) -> None:
        raise NotImplementedError

    def answered(self, n: int) -> None:
        """``n`` more answers arrived (and ``self.running``): send what follows."""
        raise NotImplementedError

    def data_received(self, data: bytes) -> None:
        if self.sample is None:
            self.head += data
            line, sep, _ = self.head.partition(b"\n")
            if sep:
                self.sample, self.head = orjson.loads(line), b""
        if ERROR_MARK in data:
            self.errors += data.count(ERROR_MARK)
        n = data.count(b"\n")
        if n:
            self.received += n
            if self.running:
                self.answered(n)
            elif self.received >= self.sent and not self.idle.done():
                self.idle.set_result(None)

    def stop(self) -> None:
        self.running = False
        if self.received >= self.sent and not self.idle.done():
            self.idle.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.running = False
        if not self.idle.done():
            self.idle.set_result(None)


class _Pipelined(_Client):
    """Keeps ``depth`` queries in flight (``batch=False``: one more per answer), or sends them in batches of
    ``depth`` and waits for all their answers before the next batch (``batch=True``)."""

    def __init__(self, block: bytes, size: int, depth: int, batch: bool) -> None:
        super().__init__()
        self.block, self.size, self.depth, self.batch = block, size, depth, batch
        self.next_id = 0

    def _send(self, n: int) -> None:
        start, size = self.next_id, self.size
        self.transport.write(self.block[start * size : (start + n) * size])  # type: ignore[union-attr]
        self.next_id = (start + n) % IDS
        self.sent += n

    def start(self) -> None:
        self._send(self.depth)

    def answered(self, n: int) -> None:
        if not self.batch:
            self._send(n)
        elif self.received == self.sent:
            self._send(self.depth)


class _Callers(_Client):
    """``callers`` request/response callers on one connection: each answer frees its caller for a new order."""

    def __init__(self, prefix: str, callers: int) -> None:
        super().__init__()
        self.prefix, self.callers = prefix, callers
        self.partial = b""
        self.not_ok = 0
        self.first_error: dict[str, Any] | None = None

    def _order(self) -> bytes:
        n = self.sent
        self.sent += 1
        lines = [{"sku": BENCH_SKUS[n % len(BENCH_SKUS)], "quantity": 1}]
        data = {"order_id": f"{self.prefix}-{n}", "customer_id": CUSTOMER, "lines": lines}
        return orjson.dumps({"id": n, "op": "command", "type": "PlaceOrder", "data": data}, option=NL)

    def start(self) -> None:
        self.transport.write(b"".join(self._order() for _ in range(self.callers)))  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:  # every answer is checked: an order that is not accepted is an error
            answer = orjson.loads(line)
            if answer.get("ok") is not True:
                self.not_ok += 1
                self.first_error = self.first_error or answer
        super().data_received(data)

    def answered(self, n: int) -> None:
        self.transport.write(b"".join(self._order() for _ in range(n)))  # type: ignore[union-attr]


async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    shape, port, conns_n, depth = spec["shape"], spec["port"], spec["conns"], spec["depth"]
    block, size = _query_block()
    conns: list[_Client] = []
    for i in range(conns_n):
        factory: Callable[[], _Client]
        if shape == "b":
            factory = partial(_Callers, f"{spec['tag']}-{i}", depth)  # order ids unique per server, run, connection
        else:
            factory = partial(_Pipelined, block, size, depth, batch=shape == "a")
        conns.append((await loop.create_connection(factory, HOST, port))[1])

    def snapshot() -> tuple[float, float, int, tuple[float, float]]:
        return time.perf_counter(), time.process_time(), sum(c.received for c in conns), _cpu_seconds(spec["pid"])

    await asyncio.sleep(spec["warmup"])
    t0, c0, n0, s0 = snapshot()
    await asyncio.sleep(spec["seconds"])
    t1, c1, n1, s1 = snapshot()
    for c in conns:
        c.stop()
    drained = True
    try:
        await asyncio.wait_for(asyncio.gather(*(c.idle for c in conns)), 15.0)
    except TimeoutError:
        drained = False
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    answers, elapsed = n1 - n0, t1 - t0
    callers = [c for c in conns if isinstance(c, _Callers)]
    return {
        "per_s": answers / elapsed,
        "answers": answers,
        "seconds": elapsed,
        **_cpu_figures(s1[0] - s0[0], s1[1] - s0[1], answers, elapsed),
        "client_cpu": (c1 - c0) / elapsed,
        "errors": sum(c.not_ok if isinstance(c, _Callers) else c.errors for c in conns),
        "sent": sum(c.sent for c in conns),
        "received": sum(c.received for c in conns),
        "drained": drained,
        "sample": next((c.sample for c in conns if c.sample is not None), None),
        "first_error": next((c.first_error for c in callers if c.first_error is not None), None),
    }


def run_load(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement, in the worker process: connect, warm up, measure, drain, close."""
    return uvloop.run(_load(spec))


def run_floor(path: str, seconds: float, warmup: float) -> dict[str, Any]:
    """One transaction per command: INSERT one event row + COMMIT, in a loop (WAL, synchronous=FULL)."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS events (position INTEGER PRIMARY KEY, stream TEXT, type TEXT, data BLOB)")
    db.commit()
    lines = [{"sku": BENCH_SKUS[0], "quantity": 1}]
    data = orjson.dumps({"order_id": "r0-0-0000", "customer_id": CUSTOMER, "lines": lines})
    insert = "INSERT INTO events (stream, type, data) VALUES (?, ?, ?)"
    end_warmup = time.perf_counter() + warmup
    while time.perf_counter() < end_warmup:
        db.execute(insert, ("order-o", "OrderPlaced", data))
        db.commit()
    n = 0
    t0, c0 = time.perf_counter(), os.times()
    end = t0 + seconds
    while time.perf_counter() < end:
        db.execute(insert, ("order-o", "OrderPlaced", data))
        db.commit()
        n += 1
    t1, c1 = time.perf_counter(), os.times()
    db.close()
    return {
        "per_s": n / (t1 - t0),
        "answers": n,
        "seconds": t1 - t0,
        **_cpu_figures(c1.user - c0.user, c1.system - c0.system, n, t1 - t0),
        "client_cpu": float("nan"),
        "errors": 0,
        "drained": True,
    }


# -- the bare echo server (a subprocess: this script with --serve-echo PORT) ---------------------------


class _Echo(asyncio.Protocol):
    """The same framing as the servers, nothing else: one fixed tiny answer per line, one write per chunk."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.partial = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        lines = (self.partial + data).split(b"\n") if self.partial else data.split(b"\n")
        self.partial = lines.pop()
        loads, dumps = orjson.loads, orjson.dumps
        out = [
            dumps({"id": loads(line)["id"], "ok": True, "result": "pong", "position": 0}, option=NL)
            for line in lines
            if line
        ]
        if out:
            self.transport.write(b"".join(out))  # type: ignore[union-attr]


async def serve_echo(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    server = await loop.create_server(_Echo, HOST, port, backlog=1024)
    async with server:
        await stop


# -- server processes (driven from the main process) ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def request(port: int, body: dict[str, object], timeout: float = 5.0) -> dict[str, Any]:
    """One blocking request/answer on a fresh connection (setup only, never under measurement)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(orjson.dumps({"id": 1, **body}, option=NL))
        data = b""
        while b"\n" not in data:
            chunk = s.recv(1 << 16)
            if not chunk:
                raise ConnectionError(f"port {port} closed the connection without answering")
            data += chunk
    answer: dict[str, Any] = orjson.loads(data.partition(b"\n")[0])
    return answer


@dataclass(eq=False)
class ServerProcess:
    name: str
    port: int
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    returncode: int | None = None
    notes: list[str] = field(default_factory=list)

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Poll ``ping`` until answered ``ok`` (bounded); fail early if the process died."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                answer = request(self.port, {"op": "ping"}, timeout=1.0)
                if answer.get("ok") is True:
                    return
                last = answer
            except OSError as exc:
                last = exc
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready within {timeout:g} s (last: {last!r}):\n{self.tail()}")

    def stop(self) -> None:
        """SIGTERM, wait (bounded), kill on timeout; remember the exit code."""
        if self.proc is None or self.returncode is not None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.notes.append(f"did not stop within {STOP_TIMEOUT:g} s of SIGTERM; killed")
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        self.returncode = self.proc.returncode
        if self.returncode != 0:
            self.notes.append(f"exit code {self.returncode}")

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def add_bench_products(server: ServerProcess) -> None:
    """Products with a stock that no run exhausts, so every order of shape (b) is accepted."""
    for sku in BENCH_SKUS:
        data = {"sku": sku, "name": f"Bench item {sku}", "category": "bench", "price_cents": 100, "stock": BENCH_STOCK}
        answer = request(server.port, {"op": "command", "type": "AddProduct", "data": data})
        if answer.get("ok") is not True:
            raise RuntimeError(f"{server.name}: AddProduct {sku} was not accepted: {answer}")


def writer_batches(port: int) -> tuple[int, int]:
    """soloist's writer so far: (commands decided, group commits), from the ``stats`` op."""
    writer = request(port, {"op": "stats"})["result"]["writer"]
    return round(writer["batch_size_mean"] * writer["batches"]), int(writer["batches"])


# -- measurements ------------------------------------------------------------------------------------


@dataclass(eq=False)
class Measure:
    shape: str  # "a", "b", "c"
    server: str  # "soloist", "baseline", "echo", "floor"
    runs: list[dict[str, Any]] = field(default_factory=list)

    def med(self, key: str) -> float:
        return median([float(r[key]) for r in self.runs])

    def ratio(self, base: Measure) -> float:
        """Median over runs of this rate / ``base``'s rate in the same run (measured seconds apart)."""
        return median([a["per_s"] / b["per_s"] for a, b in zip(self.runs, base.runs, strict=True) if b["per_s"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 run of 1.5 s per measurement: about a minute")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per measurement (default 3)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds of load before measuring (default 0.5)")
    parser.add_argument("--batch", type=int, default=100, help="(a): queries per pipelined batch")
    parser.add_argument("--callers-conns", type=int, default=8, help="(b): connections")
    parser.add_argument("--callers", type=int, default=32, help="(b): request/response callers per connection")
    parser.add_argument("--conns", type=int, default=16, help="(c): connections")
    parser.add_argument("--conn-depth", type=int, default=100, help="(c): queries in flight per connection")
    parser.add_argument(
        "--shapes", default="abc", help="which load shapes to measure (default abc); a partial run writes no JSON"
    )
    parser.add_argument("--serve-echo", type=int, default=None, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo is not None:
        uvloop.run(serve_echo(args.serve_echo))
        return
    if args.quick:
        args.runs = 1
    args.seconds = args.seconds or (1.5 if args.quick else 3.0)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 0.5)
    for name in ("batch", "callers", "conn_depth"):
        if not 1 <= getattr(args, name) <= 1024:
            parser.error(f"--{name.replace('_', '-')} must be within 1..1024 (soloist's in-flight cap)")

    shapes = {
        "a": (f"(a) 1 conn, batches of {args.batch} GetProduct", 1, args.batch, ("echo",)),
        "b": (
            f"(b) {args.callers_conns} conns x {args.callers} callers, PlaceOrder",
            args.callers_conns,
            args.callers,
            ("floor", "echo"),  # echo: the wire's ceiling for this shape (a pong per line, nothing durable)
        ),
        "c": (
            f"(c) {args.conns} conns x {args.conn_depth} pipelined GetProduct",
            args.conns,
            args.conn_depth,
            ("echo",),
        ),
    }
    if not args.shapes or set(args.shapes) - set(shapes):
        parser.error(f"--shapes takes letters of {''.join(shapes)}, got {args.shapes!r}")
    shapes = {shape: spec for shape, spec in shapes.items() if shape in args.shapes}
    refs = {shape: spec[3] for shape, spec in shapes.items()}  # the references each shape is compared with
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="soloist-bench-socket-"))
    here = str(Path(__file__).resolve())
    ports = {name: free_port() for name in ("soloist", "baseline", "echo")}
    argv = {
        "soloist": ["-m", "soloist.cli", "serve", "--db", str(workdir / "soloist.db"), "--log-level", "warning"],
        "baseline": [str(ROOT / "benchmarks" / "baseline_server.py"), "--db", str(workdir / "baseline.db")],
        "echo": [here],
    }
    servers = {
        name: ServerProcess(name, port, [sys.executable, *argv[name], "--port", str(port)], workdir / f"{name}.log")
        for name, port in ports.items()
    }
    servers["echo"].argv[-2] = "--serve-echo"
    measures = {
        (shape, name): Measure(shape, name) for shape in shapes for name in ("soloist", "baseline", *refs[shape])
    }
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    try:
        for s in servers.values():
            s.start()
        for s in servers.values():
            s.wait_ready()
        for name in ("soloist", "baseline"):
            add_bench_products(servers[name])
        print(f"servers ready after {time.perf_counter() - started:.1f} s; bench products added", flush=True)
        pool.submit(os.getpid).result(timeout=60)  # start the generator process before measuring
        budget = args.warmup + args.seconds + 60
        for run in range(args.runs):
            for shape, (label, conns, depth, _) in shapes.items():
                for (shape_of, name), m in measures.items():
                    if shape_of != shape:
                        continue
                    if name == "floor":
                        future = pool.submit(run_floor, str(workdir / f"floor-{run}.db"), args.seconds, args.warmup)
                    else:
                        spec = {"shape": shape, "port": servers[name].port, "conns": conns, "depth": depth,
                                "seconds": args.seconds, "warmup": args.warmup, "pid": servers[name].pid,
                                "tag": f"r{run}"}  # fmt: skip
                        future = pool.submit(run_load, spec)
                    before = writer_batches(servers[name].port) if (shape, name) == ("b", "soloist") else None
                    result = future.result(timeout=budget)
                    if before is not None:  # soloist's mean group-commit size over the whole measurement
                        after = writer_batches(servers[name].port)
                        batches = after[1] - before[1]
                        result["writer_mean_batch"] = (after[0] - before[0]) / batches if batches else float("nan")
                    if result["errors"] or not result["drained"]:
                        print(f"  warning: {label} / {name}: errors={result['errors']} drained={result['drained']} "
                              f"first error={result.get('first_error') or result.get('sample')}")  # fmt: skip
                    m.runs.append(result)
            print(f"run {run + 1}/{args.runs} done ({time.perf_counter() - started:.0f} s)", flush=True)
        head = {name: request(servers[name].port, {"op": "ping"})["position"] for name in ("soloist", "baseline")}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for s in servers.values():
            s.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    # -- the table ---------------------------------------------------------------------------------------
    rows: list[list[object]] = []
    ratios: dict[str, dict[str, float]] = {}
    nan = float("nan")
    for shape, (label, _, _, shape_refs) in shapes.items():
        base = measures[(shape, "baseline")]
        ratios[shape] = {"soloist_vs_baseline": measures[(shape, "soloist")].ratio(base)}
        for ref in shape_refs:
            ratios[shape][f"soloist_vs_{ref}"] = measures[(shape, "soloist")].ratio(measures[(shape, ref)])
            ratios[shape][f"baseline_vs_{ref}"] = base.ratio(measures[(shape, ref)])
        for name in ("soloist", "baseline", *shape_refs):
            m = measures[(shape, name)]
            vs_base = m.ratio(base) if name == "soloist" else nan
            vs = [m.ratio(measures[(shape, r)]) if r in shape_refs and r != name else nan for r in ("floor", "echo")]
            errors = sum(int(r["errors"]) for r in m.runs)
            us = [m.med(f"server{part}_us_per_req") for part in ("", "_user", "_sys")]
            rows.append([label, name, m.med("per_s"), *us, _x(vs_base), *map(_x, vs), errors])
    title = (
        f"Over TCP, median of {args.runs} x {args.seconds:g} s (shared, noisy 2-core host: medians; ratios are "
        "medians of per-run ratios)\nserver us/req: server process CPU (user+system, all threads, /proc/PID/stat) "
        "per answer (user, sys: its split); floor: one INSERT+COMMIT per command, no socket"
    )
    headers = ["workload", "server", "per s", "server us/req", "user", "sys", "soloist/baseline", "vs floor", "vs echo"]
    headers.append("errors")
    print_table(title, headers, rows)
    notes = {s.name: s.notes for s in servers.values() if s.notes}
    mean_batch = measures[("b", "soloist")].med("writer_mean_batch") if "b" in shapes else float("nan")
    if "b" in shapes:
        print(f"soloist's writer in (b): {mean_batch:.1f} commands per group commit (median of runs, from `stats`)")
    for name, what in notes.items():
        print(f"note: {name}: {'; '.join(what)}")
    if len(shapes) < 3:
        print(f"a partial run (--shapes {args.shapes}): benchmarks/results/bench_socket.json is left as it was")
        return
    path = write_json(
        "bench_socket",
        {
            "environment": environment(*PACKAGES),
            "args": vars(args),
            "load_average_before": load_before,
            "seconds_total": time.perf_counter() - started,
            "shapes": {shape: label for shape, (label, *_) in shapes.items()},
            "medians": {
                f"{shape}/{name}": {
                    "per_s": m.med("per_s"),
                    "server_us_per_req": m.med("server_us_per_req"),
                    "server_user_us_per_req": m.med("server_user_us_per_req"),
                    "server_sys_us_per_req": m.med("server_sys_us_per_req"),
                    "server_cpu": m.med("server_cpu"),
                    "client_cpu": m.med("client_cpu"),
                    "errors": sum(int(r["errors"]) for r in m.runs),
                }
                for (shape, name), m in measures.items()
            },
            "ratios": ratios,
            "soloist_writer_mean_batch_b": mean_batch,
            "runs": {f"{shape}/{name}": m.runs for (shape, name), m in measures.items()},
            "final_positions": head,
            "server_notes": notes,
        },
    )
    print(f"wrote {path} in {time.perf_counter() - started:.0f} s")


def _x(ratio: float) -> str:
    return "" if ratio != ratio else f"{ratio:.2f}x"


if __name__ == "__main__":
    main()
