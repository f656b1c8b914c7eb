"""Real NATS servers for the JetStream tests: each test starts its own ``nats-server -js`` on a free port."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sqlite3
import subprocess
from typing import TYPE_CHECKING

import anyio
import pytest

if TYPE_CHECKING:
    from pathlib import Path

    from anyio.abc import Process

__all__ = ["NATS_SERVER", "NatsServer", "log_rows", "need_nats_server", "wait_log_line"]

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def need_nats_server() -> None:
    """Skip (visibly) without a nats-server binary; under CI=true that is a failure."""
    if os.path.exists(NATS_SERVER):
        return
    reason = f"no nats-server binary at {NATS_SERVER} (apt-get install nats-server)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NatsServer:
    """One ``nats-server -js`` with its own store directory; kill it and start it again on the same port."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.port = _free_port()
        self.process: Process | None = None
        self.log = store.parent / f"nats-{self.port}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self, within: float = 15.0) -> None:
        """Start the server and wait (bounded) until its ``Server is ready`` line."""
        self.store.mkdir(parents=True, exist_ok=True)
        self.log.write_bytes(b"")
        with self.log.open("ab") as sink:
            self.process = await anyio.open_process(
                [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
            )
        with anyio.fail_after(within):
            while b"Server is ready" not in self.log.read_bytes():
                if self.process.returncode is not None:
                    raise AssertionError(f"nats-server exited: {self.log.read_text()}")
                await anyio.sleep(0.02)  # polling a log file, bounded by fail_after

    async def kill(self) -> None:
        """SIGKILL: the broker dies without a goodbye."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            with anyio.move_on_after(10, shield=True):
                await process.wait()
            await process.aclose()


def log_rows(path: Path) -> list[tuple[object, ...]]:
    """Every event of a SQLite log, position by position (what must be identical on writer and replicas)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return conn.execute(
            "SELECT position, stream, version, type, schema, CAST(data AS TEXT), recorded_at FROM events "
            "ORDER BY position"
        ).fetchall()


def _holds(log: Path, needle: bytes) -> bool:
    return needle in log.read_bytes()  # a small log file: a blocking read is fine


async def wait_log_line(log: Path, needle: bytes, within: float) -> None:
    """Poll a process's log file (bounded) until it holds ``needle``."""
    with anyio.fail_after(within):
        while True:
            if _holds(log, needle):
                return
            await anyio.sleep(0.05)  # polling a file another process writes, bounded by fail_after
