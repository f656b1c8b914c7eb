"""Run every benchmark as ``make bench`` does: each as a script (``python benchmarks/<name>.py``), in turn.

A progress bar (tqdm, from the ``bench`` extra) counts the benchmarks; each benchmark shows its own
steps and prints its tables. ``--quick`` passes each one's short mode (about a minute each). Then
``benchmarks/report.py`` turns ``benchmarks/results/*.json`` into the Markdown table and plots.
The PostgreSQL benchmarks run only when a server answers on 127.0.0.1:5432, the JetStream one only where
``nats-server`` is installed (each says so otherwise).

    python benchmarks/run_all.py [--quick] [--only NAME ...] [--no-report]
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# name -> the arguments of its quick mode (bench_postgres has no --quick flag: a short run instead)
BENCHMARKS: dict[str, tuple[str, ...]] = {
    "bench_command_throughput": ("--quick",),
    "bench_queries": ("--quick",),
    "bench_socket": ("--quick",),
    "bench_workloads": ("--quick",),
    "bench_metrics_overhead": ("--quick",),
    "bench_failover": ("--quick",),
    "bench_postgres": ("--runs", "1", "--seconds", "0.5", "--read-events", "10000"),
    "bench_overload": ("--quick",),
    "bench_rebuild": ("--quick",),
    "bench_checkout": ("--quick",),
    "bench_jetstream": ("--quick",),
}


def command(name: str, *, quick: bool) -> list[str]:
    """The command line that runs benchmark ``name`` (the same one the tests run)."""
    return [sys.executable, str(HERE / f"{name}.py"), *(BENCHMARKS[name] if quick else ())]


def nats_server_installed() -> bool:
    return shutil.which("nats-server") is not None or Path("/usr/sbin/nats-server").exists()


def missing(name: str) -> str | None:
    """Why benchmark ``name`` cannot run on this machine, or None."""
    if name in ("bench_postgres", "bench_failover") and not postgres_answers():
        return "no PostgreSQL on 127.0.0.1:5432"
    if name == "bench_jetstream" and not nats_server_installed():
        return "no nats-server installed"
    return None


def postgres_answers(host: str = "127.0.0.1", port: int = 5432) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="every benchmark's short mode")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=None)
    parser.add_argument("--no-report", action="store_true", help="do not run report.py afterwards")
    args = parser.parse_args()
    names = args.only or list(BENCHMARKS)
    try:  # imported by name: tqdm ships no type stubs and the tests type-check this module
        tqdm = importlib.import_module("tqdm").tqdm
        bar = tqdm(total=len(names), desc="benchmarks", unit="bench", file=sys.stderr, position=0)
    except ImportError:  # without the bench extra: no bar, same runs
        bar = None
    failed: list[str] = []
    for name in names:
        if bar is not None:
            bar.set_description(name)
        reason = missing(name)
        if reason is not None:
            print(f"\n== {name}: skipped, {reason}", flush=True)
        else:
            print(f"\n== {name} {'(quick)' if args.quick else ''}", flush=True)
            started = time.perf_counter()
            code = subprocess.call(command(name, quick=args.quick))
            print(f"== {name}: exit {code} after {time.perf_counter() - started:.0f} s", flush=True)
            if code != 0:
                failed.append(name)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if not args.no_report:
        subprocess.call([sys.executable, str(HERE / "report.py")])
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
