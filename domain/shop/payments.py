"""A DEMO payment gateway: an in-process fake for examples and tests, not a payment system.

It behaves like an outside service that is idempotent by key: ``capture(key, ...)`` charges at most once
per key and answers a repeated key with the first outcome. By token: one starting with ``decline`` is
declined, one starting with ``timeout`` never gets an answer to ``capture`` (the call hangs until the caller
gives up), any other token is captured. ``void(key)`` answers for every token: it settles a key that has no
outcome yet as "voided" (a later capture under that key is declined, so a late capture cannot charge an
order that was cancelled) and otherwise returns the outcome the key already has ("captured" included).

With a ``path`` it keeps its charges in a JSON-lines file (one line per key, written and fsynced before it
answers) and reads it back on first use: so it stays idempotent across a restart, or a ``kill -9``, of the
server that calls it, and a test can count the charges per order. It is "outside" the server in spirit; the
file is how a test sees it. ``DemoGateway.from_env()`` takes the path from ``SOLOIST_SHOP_GATEWAY_FILE``.

A crash hook for tests: with ``SOLOIST_SHOP_GATEWAY_CRASH=1`` in the environment, a *new* charge or decline of a
token containing ``crash`` is written (and fsynced), then the process kills itself with SIGKILL: the ``kill -9``
between the outside effect and the event that records it. A repeated key answers from the file and does not crash.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Literal, final

import anyio
import orjson

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["CRASH_ENV", "GATEWAY_FILE_ENV", "DemoGateway", "Outcome", "read_charges"]

Outcome = Literal["captured", "declined", "voided"]
GATEWAY_FILE_ENV = "SOLOIST_SHOP_GATEWAY_FILE"
CRASH_ENV = "SOLOIST_SHOP_GATEWAY_CRASH"


def read_charges(path: str | os.PathLike[str]) -> list[dict[str, object]]:
    """Every record of a gateway file (captured and declined), in the order they were written."""
    file = Path(path)
    if not file.exists():
        return []
    return [orjson.loads(line) for line in file.read_bytes().splitlines() if line.strip()]


@final
class DemoGateway:
    """The demo gateway (a fake, see the module docstring). Thread-safe; one instance per process."""

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, durable: bool = True, crash_hook: bool = False
    ) -> None:
        self.path = Path(path) if path is not None else None
        self._durable = durable
        self._crash_hook = crash_hook
        self._outcomes: dict[str, Outcome] | None = None  # key -> outcome; loaded from the file on first use
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> DemoGateway:
        """A gateway that keeps its charges in ``$SOLOIST_SHOP_GATEWAY_FILE`` (in memory if unset)."""
        path = environ.get(GATEWAY_FILE_ENV) or None
        return cls(path, crash_hook=environ.get(CRASH_ENV) == "1")

    async def capture(self, key: str, *, order_id: str, amount_cents: int, token: str) -> Outcome:
        """Charge ``amount_cents`` once per ``key``: "captured" or "declined"; never returns for ``timeout*`` tokens."""
        if token.startswith("timeout"):
            await anyio.sleep_forever()
        outcome: Outcome = "declined" if token.startswith("decline") else "captured"
        record = {"key": key, "order_id": order_id, "amount_cents": amount_cents, "token": token, "outcome": outcome}
        if self.path is None:
            return self._record(key, outcome, record)
        # the file write (and fsync) runs on a worker thread; the outcome is remembered there, under the lock, so
        # a caller cancelled meanwhile cannot make a second line for the same key
        return await anyio.to_thread.run_sync(self._record, key, outcome, record)

    async def void(self, key: str, *, order_id: str) -> Outcome:
        """Settle ``key``: "voided" if it had no outcome (no charge will follow), else the outcome it has."""
        record: dict[str, object] = {"key": key, "order_id": order_id, "outcome": "voided"}
        if self.path is None:
            return self._record(key, "voided", record)
        return await anyio.to_thread.run_sync(self._record, key, "voided", record)

    def _record(self, key: str, outcome: Outcome, record: dict[str, object]) -> Outcome:
        with self._lock:
            outcomes = self._load()
            known = outcomes.get(key)
            if known is not None:
                return "declined" if known == "voided" and outcome != "voided" else known
            if self.path is not None:
                with self.path.open("ab") as file:
                    file.write(orjson.dumps(record) + b"\n")
                    file.flush()
                    if self._durable:
                        os.fsync(file.fileno())
            outcomes[key] = outcome
            if self._crash_hook and "crash" in str(record.get("token", "")):
                os.kill(os.getpid(), signal.SIGKILL)  # the test hook (see the module docstring)
            return outcome

    def _load(self) -> dict[str, Outcome]:
        if self._outcomes is None:
            outcomes: dict[str, Outcome] = {}
            if self.path is not None:
                for line in read_charges(self.path):
                    key, outcome = line.get("key"), line.get("outcome")
                    if isinstance(key, str) and outcome in ("captured", "declined", "voided"):
                        outcomes[key] = outcome
            self._outcomes = outcomes
        return self._outcomes
