"""The CLI's in-process parts: loading a domain, tuning its own process, mapping failures to exit codes."""

from __future__ import annotations

import gc
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from structlog.testing import capture_logs

from soloist import Domain, NotFound
from soloist._gc import DEFAULT_SWITCH_INTERVAL
from soloist.cli import UsageError, _exit_code, _tune, load_domain

if TYPE_CHECKING:
    from pathlib import Path


class TestLoadDomain:
    def test_loads_the_shop(self) -> None:
        """The default spec names the shop's Domain."""
        domain = load_domain("soloist_shop.wiring:DOMAIN")
        assert isinstance(domain, Domain)
        assert domain.name == "shop"

    @pytest.mark.parametrize(
        ("spec", "says"),
        [
            ("soloist_shop.wiring", "must look like module:ATTR"),
            ("no_such_module_here:DOMAIN", "cannot import 'no_such_module_here'"),
            ("soloist_shop.wiring:ShopReplicaModels", "is type, not a soloist.Domain"),
        ],
    )
    def test_bad_specs_are_usage_errors(self, spec: str, says: str) -> None:
        """A spec that does not name a Domain is a usage error that says why."""
        with pytest.raises(UsageError, match=says):
            load_domain(spec)


class TestTune:
    def test_the_cli_tunes_its_own_process(self) -> None:
        """_tune (called by serve and replica once the App is up) sets the switch interval and freezes the GC."""
        before = sys.getswitchinterval()
        try:
            with capture_logs() as logs:
                _tune()
            assert sys.getswitchinterval() == pytest.approx(DEFAULT_SWITCH_INTERVAL)
            assert gc.get_freeze_count() > 0
            (line,) = [e for e in logs if e["event"] == "process_tuned"]
            assert line["switch_interval"] == pytest.approx(DEFAULT_SWITCH_INTERVAL)
            assert isinstance(line["gc_frozen"], int)
            assert line["gc_frozen"] > 0
        finally:
            sys.setswitchinterval(before)
            gc.unfreeze()


class TestExitCodes:
    def test_usage_error_is_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A usage error prints one line to stderr and exits 2."""
        assert _exit_code("serve", UsageError("bad --domain")) == 2
        assert capsys.readouterr().err == "soloist serve: bad --domain\n"

    def test_negative_key_ttl_is_a_usage_error(self, tmp_path: Path) -> None:
        """``--key-ttl`` takes seconds, 0 or more (0 keeps keys forever); a negative one exits 2, no log made."""
        db = tmp_path / "log.db"
        argv = [sys.executable, "-m", "soloist.cli", "serve", "--db", str(db), "--port", "0", "--key-ttl", "-1"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2, done.stderr
        assert "--key-ttl is in seconds" in done.stderr
        assert not db.exists()

    def test_runtime_errors_are_1(self) -> None:
        """Runtime and OS errors (also alone in a task group) exit 1; anything else is re-raised."""
        assert _exit_code("send", ExceptionGroup("g", [NotFound("x")])) == 1
        assert _exit_code("serve", PermissionError("no")) == 1
        with pytest.raises(ZeroDivisionError):
            _exit_code("serve", ZeroDivisionError("bug"))
