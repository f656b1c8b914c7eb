"""kill -9 a real writer process during concurrent idempotent load; every acknowledged command survives once."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def start_worker(db: Path, first: int, last: int, concurrency: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.runtime.crash_worker", str(db), str(first), str(last), str(concurrency)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def keyed_events(db: Path) -> list[tuple[int, str | None]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT position, idempotency_key FROM events ORDER BY position"))


def check_log(db: Path, acked: dict[str, int]) -> None:
    """Gap-free positions, each key at most once, every acknowledged key present at its acknowledged position."""
    rows = keyed_events(db)
    assert [p for p, _ in rows] == list(range(1, len(rows) + 1)), "positions have a gap"
    keys = [k for _, k in rows]
    assert len(keys) == len(set(keys)), "a command was appended twice"
    where = {k: p for p, k in rows}
    missing = {k for k in acked if k not in where}
    assert not missing, f"acknowledged but not in the log: {sorted(missing)[:5]}"
    assert all(where[k] == p for k, p in acked.items()), "an acknowledgement names another position"


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_during_load_loses_no_acknowledged_command(tmp_path: Path, seed: int) -> None:
    """SIGKILL at random moments: acknowledged commands are in the log exactly once; a retry of all converges."""
    rng = random.Random(seed)
    db = tmp_path / "crash.db"
    total = 3000
    acked: dict[str, int] = {}
    for _round in range(3):
        kill_after = rng.randint(20, 1500)
        with start_worker(db, 0, total, concurrency=rng.choice([8, 64, 200])) as worker:
            assert worker.stdout is not None
            seen = 0
            for line in worker.stdout:
                if line.startswith("ack "):
                    _, key, position = line.split()
                    acked.setdefault(key, int(position))
                    seen += 1
                    if seen >= kill_after:
                        break
                elif line.startswith("done"):
                    break
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
        check_log(db, acked)
    # restart and retry every command (acknowledged or not): the keys make the retry exactly-once
    with start_worker(db, 0, total, concurrency=50) as worker:
        out, _ = worker.communicate(timeout=120)
    assert worker.returncode == 0
    done = [line for line in out.splitlines() if line.startswith("done")]
    assert done, out[-500:]
    _, balance, position = done[0].split()
    assert int(balance) == total  # every deposit applied once, as the replicas rebuilt it
    for line in out.splitlines():
        if line.startswith("ack "):
            _, key, pos = line.split()
            assert acked.setdefault(key, int(pos)) == int(pos), f"{key} re-executed at a new position"
    check_log(db, acked)
    assert len(keyed_events(db)) == total + 1
    assert int(position) == total + 1
