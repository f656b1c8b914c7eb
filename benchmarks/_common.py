"""Small helpers shared by the benchmarks: percentiles, a plain-text table, JSON results with machine info.

Not a benchmark itself (no ``bench_`` prefix) and not collected by pytest (``testpaths = ["tests"]``).
Results go to ``benchmarks/results/<name>.json``; every file carries :func:`machine` so numbers from
different machines are never compared by accident. This machine is noisy: quote medians.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

__all__ = [
    "PACKAGES",
    "RESULTS_DIR",
    "SEED",
    "cpu_model",
    "environment",
    "machine",
    "median",
    "percentile",
    "print_table",
    "progress",
    "write_json",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SEED = 20260101  # every benchmark's random choices come from random.Random(SEED): runs are comparable
PACKAGES = ("soloist", "anyio", "uvloop", "msgspec", "orjson", "aiosqlite", "structlog", "prometheus-client")
T = TypeVar("T")


def progress(items: Iterable[T], description: str, *, total: int | None = None) -> Iterator[T]:
    """``items`` with a progress bar on stderr (tqdm, from the ``bench`` extra); plain iteration without it."""
    try:
        from tqdm import tqdm
    except ImportError:
        yield from items
        return
    yield from tqdm(items, desc=description, total=total, unit="step", leave=False, file=sys.stderr)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of already sorted values, linearly interpolated; NaN if empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within 0..100, got {q}")
    n = len(sorted_values)
    if n == 0:
        return float("nan")
    rank = (n - 1) * q / 100
    low = int(rank)
    high = min(low + 1, n - 1)
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low))


def median(values: Sequence[float]) -> float:
    """The median of values in any order, NaNs (runs with nothing to measure) left out; NaN if none is left."""
    return percentile(sorted(v for v in values if v == v), 50)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if value else "0"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a title and an aligned table (text left, numbers right; floats rounded for reading)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    numeric = [all(isinstance(row[i], int | float) for row in rows) if rows else False for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    print(f"\n{title}")
    print(line(list(headers)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(line(row))
    sys.stdout.flush()


def machine() -> dict[str, object]:
    """Where and when the numbers were taken."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,  # noise hint
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(*packages: str) -> dict[str, object]:
    """CPU model, cores, Python, SQLite and the installed versions of ``packages`` (None if not installed)."""
    import importlib.metadata
    import sqlite3

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "packages": {name: version(name) for name in packages},
    }


def write_json(name: str, payload: dict[str, object]) -> Path:
    """Write ``{"benchmark", "machine", "environment", **payload}`` to ``results/<name>.json`` (atomically).

    ``environment`` (CPU, Python, SQLite and package versions) is added unless the payload brings its own.
    ``$SOLOIST_BENCH_RESULTS`` redirects the directory (the tests' quick runs write to a temporary one).
    """
    directory = Path(os.environ.get("SOLOIST_BENCH_RESULTS") or RESULTS_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    document = {"benchmark": name, "machine": machine(), "environment": environment(*PACKAGES), **payload}
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path
