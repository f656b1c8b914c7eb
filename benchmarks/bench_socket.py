"""How many round trips/s does the socket server answer, and how close is that to a bare asyncio server?

Everything runs as real processes on 127.0.0.1 (free ports, a fresh temporary directory):

- the writer: ``python -m soloist.cli serve --db <tmp>/bench.db --log-level warning`` (shop domain, seeded);
- a bare echo server: this script with ``--serve-echo PORT``, an asyncio ``Protocol`` on uvloop with the
  same framing (split each chunk on ``\\n``, ``orjson.loads`` each line for its ``id``, answer each with a
  fixed tiny ``{"id", "ok", "result": "pong", "position"}`` line, one ``transport.write`` per chunk);
- for the replica section, a second writer (``<tmp>/bench2.db``, queries only) and
  ``python -m soloist.cli replica --upstream <that writer>`` (``<tmp>/replica.db``).

The load generator runs in its own process (one spawned worker, reused), so on this 2-core machine the
server and the generator each get a core. It is a minimal asyncio ``Protocol`` client on uvloop:
requests are pre-encoded (orjson, distinct fixed-width ids, cycled), answers are counted by counting
``\\n`` in received chunks, errors by counting ``"ok":false``, and only the first answer of each
connection is parsed (it must be ``ok: true``). Requests:

- ``ping``: ``{"op": "ping"}``
- ``query``: ``{"op": "query", "type": "GetProduct", "data": {"sku": "BK-001"}}`` (eventual)
- ``command``: ``{"op": "command", "type": "Restock", "data": {"sku": "BK-001", "quantity": 1}}``
  (durable: answered after the group commit, synchronous=FULL)

Modes: **1 conn, 1 at a time** (send one, wait for its answer); **1 conn, pipelined** (``--depth``,
default 100, in flight: send 100, then one more per answer, written in one batch per ``data_received``);
**N conns, pipelined** (``--conns`` connections, default 16, each pipelined with ``--conn-depth``
in flight, default 100, i.e. 1,600 in flight, all in the one generator process).

Each configuration warms up for ``--warmup`` s, then counts answers over ``--seconds`` (default 2) s,
then stops sending and waits for what is in flight. ``--runs`` (default 3) runs; within a run, each
mode's echo measurement comes right before the soloist query, ping and command of that mode. Tables
show the median (and min/max) of the runs; ratios ("vs echo", the targets) are medians of per-run
ratios of such neighbouring measurements, because the host's noise moves whole seconds at a time.
Alongside: CPU used by each server process and by the generator over the window (``/proc/<pid>/stat``,
share of one core: a server near 100% is the bottleneck; a generator near 100% means the number is
the generator's), server CPU microseconds per answer (steadier than rates, not immune: a slowed host
core shows as more microseconds), mean latency by Little's law (in flight / rate), and for commands
the writer's mean batch size over the configuration (from the ``stats`` op, before/after).

Replica capacity: total queries/s with the ``--conns`` pipelined connections split half to the second
writer and half to the replica process, versus all of them to that writer alone (and to the replica
alone). Three server-side processes and the generator share 2 cores, so this shows what a replica
adds on *this* machine, not on a machine with a core per process.

Targets (2-core machine): pipelined queries >= 50% of the bare echo ceiling (about 390k requests/s
pipelined with a minimal client, STYLE.md "Hot paths"); writer + replica process > writer alone.

Run: ``cd /work/main && PYTHONPATH=. python benchmarks/bench_socket.py [--quick] [--runs 3] [--seconds 2]``;
prints one table per section and a summary, writes benchmarks/results/socket.json. Quote medians.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import median, print_table, write_json  # noqa: E402 - after the sys.path insert

HOST = "127.0.0.1"
IDS = 4096  # distinct request ids, cycled; more than any connection ever has in flight
ID_BASE = 1_000_000  # fixed-width ids: every pre-encoded request line has the same length
REQUESTS: dict[str, dict[str, object]] = {
    "ping": {"op": "ping"},
    "query": {"op": "query", "type": "GetProduct", "data": {"sku": "BK-001"}},
    "command": {"op": "command", "type": "Restock", "data": {"sku": "BK-001", "quantity": 1}},
}
ERROR_MARK = b'"ok":false'  # orjson writes no spaces; answers with this are errors
STOP_TIMEOUT = 15.0
READY_TIMEOUT = 30.0
QUOTED_ECHO = 390_000  # the echo ceiling quoted in the issue and STYLE.md (another client)


# -- the load generator (runs in the worker process) ---------------------------------------------------


def _request_block(kind: str) -> tuple[bytes, int]:
    """``IDS`` pre-encoded request lines, twice over (so any run of up to ``IDS`` lines is one slice)."""
    lines = [orjson.dumps({"id": ID_BASE + i, **REQUESTS[kind]}, option=orjson.OPT_APPEND_NEWLINE) for i in range(IDS)]
    size = len(lines[0])
    if any(len(line) != size for line in lines):
        raise AssertionError("request lines must all have the same length")
    block = b"".join(lines)
    return block + block, size


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from ``/proc``; NaN if unavailable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return float("nan")
    fields = stat[stat.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _LoadConnection(asyncio.Protocol):
    """Keeps ``depth`` requests in flight: one more request per answer, written once per chunk received."""

    def __init__(self, block: bytes, size: int, depth: int) -> None:
        self.block = block
        self.size = size
        self.depth = depth
        self.transport: asyncio.Transport | None = None
        self.next_id = 0
        self.sent = 0
        self.received = 0
        self.errors = 0
        self.running = True
        self.head = b""  # bytes up to the first complete answer (parsed once, as a sample)
        self.sample: dict[str, Any] | None = None
        self.idle: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # set when drained/lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send(self.depth)

    def _send(self, n: int) -> None:
        start = self.next_id
        size = self.size
        self.transport.write(self.block[start * size : (start + n) * size])  # type: ignore[union-attr]
        self.next_id = (start + n) % IDS
        self.sent += n

    def data_received(self, data: bytes) -> None:
        n = data.count(b"\n")
        if self.sample is None:
            self._take_sample(data)
        if ERROR_MARK in data:
            self.errors += data.count(ERROR_MARK)
        if n:
            self.received += n
            if self.running:
                self._send(n)
            elif self.received >= self.sent and not self.idle.done():
                self.idle.set_result(None)

    def _take_sample(self, data: bytes) -> None:
        self.head += data
        line, sep, _ = self.head.partition(b"\n")
        if sep:
            self.sample = orjson.loads(line)
            self.head = b""

    def stop(self) -> None:
        self.running = False
        if self.received >= self.sent and not self.idle.done():
            self.idle.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.running = False
        if not self.idle.done():
            self.idle.set_result(None)


async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    block, size = _request_block(spec["request"])
    depth: int = spec["depth"]
    by_port: dict[int, list[_LoadConnection]] = {}
    for port, count in spec["targets"]:
        for _ in range(count):
            _, conn = await loop.create_connection(lambda: _LoadConnection(block, size, depth), HOST, port)
            by_port.setdefault(port, []).append(conn)
    conns = [c for group in by_port.values() for c in group]
    pids: list[int] = spec["pids"]

    def snapshot() -> tuple[float, float, dict[int, int], list[float]]:
        counts = {port: sum(c.received for c in group) for port, group in by_port.items()}
        return time.perf_counter(), time.process_time(), counts, [_cpu_seconds(p) for p in pids]

    await asyncio.sleep(spec["warmup"])
    t0, c0, n0, s0 = snapshot()
    await asyncio.sleep(spec["seconds"])
    t1, c1, n1, s1 = snapshot()
    for c in conns:
        c.stop()
    drained = True
    try:
        await asyncio.wait_for(asyncio.gather(*(c.idle for c in conns)), spec["drain_timeout"])
    except TimeoutError:
        drained = False
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    elapsed = t1 - t0
    per_port = {port: (n1[port] - n0[port]) / elapsed for port in by_port}
    samples = [c.sample for c in conns]
    return {
        "per_s": sum(per_port.values()),
        "per_s_by_port": per_port,
        "answers": sum(n1.values()) - sum(n0.values()),
        "seconds": elapsed,
        "client_cpu": (c1 - c0) / elapsed,
        "server_cpu": [(b - a) / elapsed for a, b in zip(s0, s1, strict=True)],
        "errors": sum(c.errors for c in conns),
        "sent": sum(c.sent for c in conns),
        "received": sum(c.received for c in conns),
        "drained": drained,
        "samples_ok": all(s is not None and s.get("ok") is True for s in samples),
        "sample": next((s for s in samples if s is not None), None),
    }


def run_load(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in the worker process: connect, warm up, measure, drain, close."""
    return uvloop.run(_load(spec))


# -- the bare echo server (a subprocess: this script with --serve-echo PORT) ---------------------------


class _Echo(asyncio.Protocol):
    """The same framing as the soloist server, nothing else: one fixed tiny answer per line, one write per chunk."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.partial = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        lines = (self.partial + data).split(b"\n") if self.partial else data.split(b"\n")
        self.partial = lines.pop()
        loads, dumps, option = orjson.loads, orjson.dumps, orjson.OPT_APPEND_NEWLINE
        out = [
            dumps({"id": loads(line)["id"], "ok": True, "result": "pong", "position": 0}, option=option)
            for line in lines
            if line
        ]
        if out:
            self.transport.write(b"".join(out))  # type: ignore[union-attr]


async def serve_echo(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))
    server = await loop.create_server(_Echo, HOST, port, backlog=1024)
    async with server:
        await stop


# -- server processes (driven from the main process) ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def request(port: int, body: dict[str, object], timeout: float = 5.0) -> dict[str, Any]:
    """One blocking request/answer on a fresh connection (setup and stats only, never under measurement)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(orjson.dumps({"id": 1, **body}, option=orjson.OPT_APPEND_NEWLINE))
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
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_answer(self, body: dict[str, object], ok: Any, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        """Poll ``body`` until ``ok(answer)`` (bounded); fail early if the process died."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                answer = request(self.port, body, timeout=1.0)
                if ok(answer):
                    return answer
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


def soloist(name: str, workdir: Path, *args: str) -> ServerProcess:
    port = free_port()
    argv = [sys.executable, "-m", "soloist.cli", *args, "--port", str(port), "--log-level", "warning"]
    return ServerProcess(name, port, argv, workdir / f"{name}.log")


def _is_ok(answer: dict[str, Any]) -> bool:
    return answer.get("ok") is True


# -- configurations ------------------------------------------------------------------------------------


@dataclass(eq=False)
class Config:
    section: str  # "soloist", "echo", "replica"
    label: str  # the mode, or the split for the replica section
    request: str
    targets: list[tuple[ServerProcess, int]]  # (server, connections)
    depth: int
    watch: list[ServerProcess]  # servers whose CPU is sampled
    runs: list[dict[str, Any]] = field(default_factory=list)
    batches: list[float] = field(default_factory=list)  # commands: writer's mean batch size per run

    @property
    def in_flight(self) -> int:
        return self.depth * sum(n for _, n in self.targets)

    def spec(self, seconds: float, warmup: float) -> dict[str, Any]:
        return {
            "request": self.request,
            "targets": [(s.port, n) for s, n in self.targets],
            "depth": self.depth,
            "seconds": seconds,
            "warmup": warmup,
            "drain_timeout": 10.0,
            "pids": [s.pid for s in self.watch],
        }

    def med(self, key: str) -> float:
        return median([r[key] for r in self.runs])

    def med_server_cpu(self, i: int) -> float:
        return median([r["server_cpu"][i] for r in self.runs])

    def med_us_per_request(self, i: int = 0) -> float:
        """Median CPU microseconds the ``i``-th watched server spent per answer (robust to a noisy host)."""
        return median([r["server_cpu"][i] / r["per_s"] * 1e6 for r in self.runs if r["per_s"]])

    def paired_ratio(self, base: Config) -> float:
        """Median over runs of this rate / ``base``'s rate in the same run (measured seconds apart)."""
        return median([a["per_s"] / b["per_s"] for a, b in zip(self.runs, base.runs, strict=True) if b["per_s"]])


def commands_done(port: int) -> tuple[int, int]:
    """The writer's (commands, batches) so far, from ``stats``."""
    writer = request(port, {"op": "stats"})["result"]["writer"]
    return round(writer["batch_size_mean"] * writer["batches"]), int(writer["batches"])


def modes(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """(label, connections, depth) for the three modes."""
    return [
        ("1 conn, 1 at a time", 1, 1),
        (f"1 conn, pipelined {args.depth}", 1, args.depth),
        (f"{args.conns} conns x {args.conn_depth} pipelined", args.conns, args.conn_depth),
    ]


def _pct(x: float) -> str:
    return "-" if x != x else f"{x:.0%}"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 run of 1 s: a smoke run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per configuration and run")
    parser.add_argument("--warmup", type=float, default=0.3, help="seconds of load before measuring")
    parser.add_argument("--depth", type=int, default=100, help="in flight on the single pipelined connection")
    parser.add_argument("--conns", type=int, default=16, help="connections in the multi-connection mode")
    parser.add_argument("--conn-depth", type=int, default=100, help="in flight per connection in that mode")
    parser.add_argument("--serve-echo", type=int, default=None, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo is not None:
        uvloop.run(serve_echo(args.serve_echo))
        return
    if args.quick:
        args.runs, args.seconds = 1, 1.0
    if args.conns % 2:
        parser.error("--conns must be even (the replica section splits it in half)")
    for name in ("depth", "conn_depth"):
        if not 1 <= getattr(args, name) <= 1024:
            parser.error(f"--{name.replace('_', '-')} must be within 1..1024 (the server's in-flight cap)")

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="soloist-bench-socket-"))
    echo_port = free_port()
    echo = ServerProcess(
        "echo", echo_port, [sys.executable, str(Path(__file__).resolve()), "--serve-echo", str(echo_port)],
        workdir / "echo.log",
    )  # fmt: skip
    writer = soloist("writer", workdir, "serve", "--db", str(workdir / "bench.db"))
    writer2 = soloist("writer2", workdir, "serve", "--db", str(workdir / "bench2.db"))
    servers = [echo, writer, writer2]
    replica: ServerProcess | None = None
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    try:
        for s in servers:
            s.start()
        t0 = time.perf_counter()
        for s in servers:
            s.wait_answer({"op": "ping"}, _is_ok)
        print(f"echo and 2 writers answering ping after {time.perf_counter() - t0:.2f} s", flush=True)
        upstream = f"{HOST}:{writer2.port}"
        replica = soloist("replica", workdir, "replica", "--upstream", upstream, "--db", str(workdir / "replica.db"))
        servers.append(replica)
        replica.start()
        head = int(writer2.wait_answer({"op": "ping"}, _is_ok)["position"])
        t0 = time.perf_counter()
        replica.wait_answer(
            {"op": "query", **REQUESTS["query"]}, lambda a: _is_ok(a) and int(a.get("position") or 0) >= head
        )
        print(f"replica answering queries at the writer's position {head} after {time.perf_counter() - t0:.2f} s")
        worker_pid = pool.submit(os.getpid).result(timeout=60)  # start the generator process before measuring

        # Order within a run: per mode, the echo ceiling right before the soloist query, ping and command
        # of that mode, so the paired ratios compare measurements taken seconds apart (the host is noisy).
        configs: list[Config] = []
        for label, conns, depth in modes(args):
            configs.append(Config("echo", label, "ping", [(echo, conns)], depth, [echo]))
            for kind in ("query", "ping", "command"):
                configs.append(Config("soloist", label, kind, [(writer, conns)], depth, [writer]))
        half = args.conns // 2
        watch = [writer2, replica]
        depth, conns = args.conn_depth, args.conns
        configs += [
            Config("replica", f"writer alone, {conns} conns", "query", [(writer2, conns)], depth, watch),
            Config("replica", f"writer {half} + replica {half} conns", "query", [(writer2, half), (replica, half)],
                   depth, watch),
            Config("replica", f"replica alone, {conns} conns", "query", [(replica, conns)], depth, watch),
        ]  # fmt: skip

        budget = args.warmup + args.seconds + 60
        for run in range(args.runs):
            for cfg in configs:
                before = commands_done(writer.port) if cfg.request == "command" else None
                result = pool.submit(run_load, cfg.spec(args.seconds, args.warmup)).result(timeout=budget)
                if before is not None:
                    after = commands_done(writer.port)
                    batches = after[1] - before[1]
                    cfg.batches.append((after[0] - before[0]) / batches if batches else float("nan"))
                if result["errors"] or not result["samples_ok"] or not result["drained"]:
                    print(
                        f"  warning: {cfg.section}/{cfg.request}/{cfg.label}: errors={result['errors']} "
                        f"samples_ok={result['samples_ok']} drained={result['drained']} sample={result['sample']}"
                    )
                cfg.runs.append(result)
            print(f"run {run + 1}/{args.runs} done ({time.perf_counter() - started:.0f} s)", flush=True)
        final_stats = {s.name: request(s.port, {"op": "stats"})["result"] for s in (writer, writer2, replica)}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for s in reversed(servers):
            s.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    # -- tables ----------------------------------------------------------------------------------------
    title = f"(median of {args.runs} x {args.seconds:g} s; CPU: share of one core over the window)"
    legend = "us/req: server CPU microseconds per answer; vs echo: median of per-run ratios to the echo, same mode"
    echo_of = {c.label: c for c in configs if c.section == "echo"}

    def row(c: Config, first: str) -> list[object]:
        rates = [r["per_s"] for r in c.runs]
        rate = median(rates)
        return [
            first,
            c.label,
            c.in_flight,
            rate,
            min(rates),
            max(rates),
            c.in_flight / rate * 1000 if rate else float("nan"),
            _pct(c.med_server_cpu(0)),
            c.med_us_per_request(),
            _pct(c.med("client_cpu")),
        ]

    headers = ["request", "mode", "in flight", "per s", "min", "max", "ms (Little)", "server CPU", "us/req"]
    headers.append("client CPU")
    rows = []
    for c in configs:
        if c.section != "soloist":
            continue
        ratio = c.paired_ratio(echo_of[c.label])
        batch = f"{median(c.batches):.1f}" if c.batches else ""
        errors = sum(r["errors"] for r in c.runs)
        rows.append([*row(c, c.request), f"{ratio:.0%}", batch, errors])
    rows.sort(key=lambda r: ("query", "ping", "command").index(str(r[0])))  # grouped by request, modes in order
    heading = f"soloist writer over TCP, round trips/s {title}\n{legend}"
    print_table(heading, [*headers, "vs echo", "batch", "errors"], rows)
    rows = [row(c, "echo (ping)") for c in configs if c.section == "echo"]
    print_table(f"Bare asyncio echo server, same framing, uvloop {title}", headers, rows)
    rep = [c for c in configs if c.section == "replica"]
    rows = []
    for c in rep:
        rates = [r["per_s"] for r in c.runs]
        by_server = []
        for server in (writer2, replica):
            if any(s is server for s, _ in c.targets):
                by_server.append(median([r["per_s_by_port"][server.port] for r in c.runs]))
            else:
                by_server.append(float("nan"))
        rows.append(
            [
                c.label,
                median(rates),
                min(rates),
                max(rates),
                *by_server,
                _pct(c.med_server_cpu(0)),
                _pct(c.med_server_cpu(1)),
                _pct(c.med("client_cpu")),
            ]
        )
    print_table(
        f"Replica capacity: eventual queries, {args.conn_depth} in flight per connection {title}",
        [
            "split",
            "total per s",
            "min",
            "max",
            "writer per s",
            "replica per s",
            "writer CPU",
            "replica CPU",
            "client CPU",
        ],
        rows,
    )

    by_key = {(c.section, c.request, c.label): c for c in configs}
    pipelined = modes(args)[1][0]
    query_cfg = by_key[("soloist", "query", pipelined)]
    query_pipe = query_cfg.med("per_s")
    echo_pipe = echo_of[pipelined].med("per_s")
    share = query_cfg.paired_ratio(echo_of[pipelined])  # paired per run: robust to the host's noise
    alone = rep[0].med("per_s")
    split = rep[1].med("per_s")
    gain = rep[1].paired_ratio(rep[0])
    print_table(
        "Targets",
        ["measure", "target", "measured", "verdict"],
        [
            ["bare echo ceiling, pipelined", "(~390k/s in STYLE.md)", f"{echo_pipe:,.0f}/s", "info"],
            ["pipelined queries vs echo ceiling", ">= 50%", f"{query_pipe:,.0f} vs {echo_pipe:,.0f}/s: {share:.0%}",
             _verdict(share >= 0.5)],
            ["pipelined queries vs the 390k/s quoted", "(info)", f"{query_pipe / QUOTED_ECHO:.0%}", "info"],
            ["writer + replica vs writer alone", "> 1.0x", f"{split:,.0f} vs {alone:,.0f}/s: {gain:.2f}x",
             _verdict(gain > 1.0)],
        ],
    )  # fmt: skip

    notes = {s.name: s.notes for s in servers if s.notes}
    for name, what in notes.items():
        print(f"note: {name}: {'; '.join(what)}")
    path = write_json(
        "socket",
        {
            "args": vars(args),
            "load_average_before": load_before,
            "seconds_total": time.perf_counter() - started,
            "generator_pid": worker_pid,
            "requests": REQUESTS,
            "configurations": [
                {
                    "section": c.section,
                    "request": c.request,
                    "mode": c.label,
                    "connections": {s.name: n for s, n in c.targets},
                    "in_flight": c.in_flight,
                    "per_s_median": c.med("per_s"),
                    "client_cpu_median": c.med("client_cpu"),
                    "server_cpu_median": {s.name: c.med_server_cpu(i) for i, s in enumerate(c.watch)},
                    "mean_batch_median": median(c.batches) if c.batches else None,
                    "runs": [
                        r | {"per_s_by_port": {s.name: r["per_s_by_port"].get(s.port) for s, _ in c.targets}}
                        for r in c.runs
                    ],
                    "mean_batch_runs": c.batches,
                }
                for c in configs
            ],
            "targets": {
                "echo_pipelined_per_s": echo_pipe,
                "query_pipelined_per_s": query_pipe,
                "query_vs_echo": share,
                "query_vs_echo_pass": share >= 0.5,
                "writer_alone_per_s": alone,
                "writer_plus_replica_per_s": split,
                "replica_gain": gain,
                "replica_gain_pass": gain > 1.0,
            },
            "final_stats": final_stats,
            "server_notes": notes,
        },
    )
    print(f"wrote {path} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
