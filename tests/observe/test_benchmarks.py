"""The benchmark tooling: every benchmark starts the way `make bench` runs it, and report.py on a small fixture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run_all import BENCHMARKS, command, missing

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "benchmarks" / "report.py"


def run(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A script run from outside the repository, without PYTHONPATH: as a new user's `make bench` does."""
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | (env or {})
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd="/", env=clean, check=False)


def fixture() -> dict[str, object]:
    """A small workloads.json as bench_workloads.py writes it (two workloads, two client counts, two loads)."""

    def figures(ops: float, p50: float, p99: float) -> dict[str, float]:
        return {"ops_per_s": ops, "p50_ms": p50, "p99_ms": p99, "errors": 0.0}

    def load(rate: float, p50: float, p99: float) -> dict[str, float]:
        return {"offered_per_s": rate, "achieved_per_s": rate, "p50_ms": p50, "p90_ms": p50, "p99_ms": p99}

    return {
        "benchmark": "workloads",
        "machine": {"cpu_count": 2, "python": "3.11.7", "platform": "Linux-test", "date": "2026-12-01T00:00:00+00:00"},
        "environment": {
            "cpu_model": "Test CPU 9000",
            "cores": 2,
            "python": "3.11.7",
            "sqlite": "3.40.1",
            "packages": {},
        },
        "quick": True,
        "settings": {"runs": 1, "seconds": 1.0, "clients": 32, "seed": 1},
        "workloads": {
            "write-heavy": {"soloist": figures(6000, 4.0, 10.0), "baseline": figures(2000, 15.0, 50.0)},
            "read-heavy": {"soloist": figures(45000, 0.01, 15.0), "baseline": figures(9000, 3.0, 40.0)},
        },
        "throughput_vs_clients": {
            "1": {"soloist": figures(1600, 0.5, 1.0), "baseline": figures(1900, 0.5, 1.0)},
            "16": {"soloist": figures(4000, 3.0, 9.0), "baseline": figures(1600, 9.0, 40.0)},
        },
        "latency_vs_load": {
            "soloist": [load(500, 1.5, 12.0), load(2000, 13.0, 90.0)],
            "baseline": [load(500, 1.3, 70.0), load(2000, 85.0, 2900.0)],
        },
        "replica_lag": [{"t_s": 0.02 * i, "lag_events": float(i % 7), "lag_ms": 0.5 * (i % 5)} for i in range(50)],
    }


class TestReport:
    def test_table_and_plots_from_a_small_fixture(self, tmp_path: Path) -> None:
        """report.py writes a Markdown table with the ratios, the machine, and three PNG plots."""
        pytest.importorskip("matplotlib", reason="the plots need matplotlib: pip install -e '.[dev]'")
        results = tmp_path / "results"
        results.mkdir()
        (results / "workloads.json").write_text(json.dumps(fixture()))
        (results / "metrics_overhead.json").write_text(
            json.dumps(
                {"benchmark": "metrics_overhead", "median_off": 1000.0, "median_on": 990.0, "ratio_on_off": 0.99}
            )
        )
        (results / "broken.json").write_text("{not json")
        out = tmp_path / "out"
        done = run([sys.executable, str(REPORT), "--results", str(results), "--out", str(out)])
        assert done.returncode == 0, done.stderr
        assert "skipping broken.json" in done.stderr
        report = (out / "REPORT.md").read_text()
        assert "Test CPU 9000, 2 cores" in report
        assert "| write-heavy | 6,000 | 2,000 | 3.00x |" in report
        assert "| read-heavy | 45,000 | 9,000 | 5.00x |" in report
        assert "| 16 | 4,000 | 1,600 | 2.50x |" in report
        assert "| 2,000 | 13.0 | 90.0 | 85.0 | 2,900 |" in report
        assert "on/off = 0.990" in report
        for name in ("throughput_vs_clients.png", "latency_vs_load.png", "replica_lag.png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"![{name}]({name})" in report

    def test_no_results_is_an_error_that_says_what_to_do(self, tmp_path: Path) -> None:
        """Without any JSON the report exits 1 and says to run `make bench`."""
        done = run([sys.executable, str(REPORT), "--results", str(tmp_path)])
        assert done.returncode == 1
        assert "make bench" in done.stderr


class TestBenchmarksStart:
    @pytest.mark.parametrize("name", sorted(BENCHMARKS))
    def test_runs_as_a_script(self, name: str) -> None:
        """Each benchmark imports and parses its arguments when run as `make bench` runs it (no PYTHONPATH)."""
        done = run([*command(name, quick=False), "--help"])
        assert done.returncode == 0, done.stderr[-2000:]
        assert "usage:" in done.stdout


@pytest.mark.slow
class TestQuickModes:
    @pytest.mark.parametrize("name", sorted(BENCHMARKS))
    def test_quick_mode_writes_its_json(self, name: str, tmp_path: Path) -> None:
        """Each benchmark's quick mode (as `make bench QUICK=1` runs it) ends 0 and writes JSON with the versions."""
        reason = missing(name)
        if reason is not None:
            if os.environ.get("CI") == "true":
                pytest.fail(f"CI=true and {reason}", pytrace=False)
            pytest.skip(reason)
        done = run(command(name, quick=True), env={"SOLOIST_BENCH_RESULTS": str(tmp_path)}, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        written = list(tmp_path.glob("*.json"))
        assert written, done.stdout[-2000:]
        document = json.loads(written[0].read_text())
        assert document["environment"]["sqlite"]
        assert document["machine"]["python"]
