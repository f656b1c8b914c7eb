"""The crash suite in the default run: a few SIGKILL rounds of a real writer; nothing lost, nothing doubled."""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING

import pytest

from tests.e2e.crash_suite import CrashSuite, Request

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.uvloop_only


class TestCrashSuite:
    async def test_rounds_of_sigkill_lose_and_duplicate_nothing(self, tmp_path: Path) -> None:
        """Three rounds of load, kill -9, restart, resend: every invariant of the history holds."""
        seed = int(os.environ.get("SOLOIST_CRASH_SEED", random.randrange(1 << 32)))
        print(f"crash suite seed {seed} (rerun with SOLOIST_CRASH_SEED={seed})")
        figures = await CrashSuite(tmp_path, seed=seed).run(3, max_kill_after=80)
        print(figures.line())
        assert (figures.lost, figures.duplicated) == (0, 0)
        assert figures.acknowledged > 3 * 5
        assert figures.retried > 0  # at least one request was in flight at some kill

    async def test_rounds_of_sigkill_with_a_standby_on_postgres(self, tmp_path: Path, postgres_dsn: str) -> None:
        """On PostgreSQL: the writer killed, its standby takes over, a new standby starts; every invariant holds."""
        seed = int(os.environ.get("SOLOIST_CRASH_SEED", random.randrange(1 << 32)))
        print(f"crash suite seed {seed} (rerun with SOLOIST_CRASH_SEED={seed})")
        figures = await CrashSuite(tmp_path, seed=seed, dsn=postgres_dsn).run(2, max_kill_after=80)
        print(figures.line())
        assert (figures.lost, figures.duplicated) == (0, 0)
        assert figures.acknowledged > 2 * 5

    async def test_the_figures_count_a_lost_and_a_duplicated_acknowledgement(self, tmp_path: Path) -> None:
        """The suite is not blind: an acknowledgement absent from the log is lost, one with two receipts doubled."""
        suite = CrashSuite(tmp_path, seed=7)
        await suite.run(1, max_kill_after=10)
        lost = Request(key="never-sent", type="Restock", data={}, answer="ok", positions={1})
        doubled = next(r for r in suite.requests if r.answer == "ok")
        doubled.positions.add(10**9)
        suite.requests.append(lost)
        figures = await suite.figures(1, 0.0)
        assert (figures.lost, figures.duplicated) == (1, 1)
