"""Real ``soloist`` processes for end-to-end tests: start, wait for ``server_listening``, stop with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import orjson

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from anyio.abc import Process

__all__ = ["ROOT", "SoloistProcess", "run_cli", "soloist", "tmpfs"]

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "tests.toy:BANK"


@contextmanager
def tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``mount`` with ``options`` (``size=2m``, ``ro,size=1m``), unmounted after.

    Needs root: skipped with the reason where it cannot be mounted, except under CI=true, where it fails.
    """
    import pytest  # only the tests that mount import it

    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs ({options}) at {mount} (root needed): {done.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("SOLOIST_TOKEN", None)
    return env


class SoloistProcess:
    """A running ``python -m soloist.cli serve|replica``; its JSON log lines go to a file."""

    def __init__(self, process: Process, log: Path) -> None:
        self.process = process
        self.log = log
        self.port = 0

    def lines(self) -> list[dict[str, object]]:
        out = []
        for raw in self.log.read_bytes().splitlines():
            try:
                out.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                out.append({"event": "unparsed", "raw": raw.decode(errors="replace")})
        return out

    async def wait_for(self, event: str, within: float = 20.0) -> dict[str, object]:
        """Poll the log (bounded) for the first line whose ``event`` is ``event``; that line."""
        with anyio.fail_after(within):
            while True:
                for line in self.lines():
                    if line.get("event") == event:
                        return line
                if self.process.returncode is not None:
                    raise AssertionError(f"soloist exited with {self.process.returncode}: {self.log.read_text()}")
                await anyio.sleep(0.02)  # another process's progress: polled, bounded

    async def wait_listening(self, within: float = 20.0) -> int:
        """Wait (bounded) for the ``server_listening`` line; the bound port."""
        port = (await self.wait_for("server_listening", within))["port"]
        assert isinstance(port, int)
        self.port = port
        return port

    async def terminate(self, within: float = 20.0) -> int:
        """SIGTERM, then wait (bounded) for the exit code."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(within):
            return await self.process.wait()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@asynccontextmanager
async def soloist(
    log: Path,
    *args: str,
    domain: str | None = DOMAIN,
    port: int | None = 0,
    listening: bool = True,
    env: dict[str, str] | None = None,
) -> AsyncIterator[SoloistProcess]:
    """Start ``soloist <args>`` and wait until it listens (unless ``listening`` is False); kill it if still running.

    ``domain``: the toy bank by default, None for the CLI's default (the shop); ``port``: appended as ``--port``
    (0: a free one), None when the caller gives its own; ``env``: the environment (default :func:`_env`).
    """
    command = [sys.executable, "-m", "soloist.cli", *args]
    if domain is not None:
        command += ["--domain", domain]
    if port is not None:
        command += ["--port", str(port)]
    with log.open("wb") as sink:
        process = await anyio.open_process(
            command, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, env=env or _env(), cwd=ROOT
        )
    running = SoloistProcess(process, log)
    try:
        if listening:
            await running.wait_listening()
        yield running
    finally:
        if process.returncode is None:
            process.kill()
            with anyio.move_on_after(10, shield=True):
                await process.wait()
        await process.aclose()


async def run_cli(*args: str, stdin: bytes | None = None) -> tuple[int, bytes]:
    """Run a one-shot ``soloist`` command (send, stats); its exit code and stdout."""
    result = await anyio.run_process(
        [sys.executable, "-m", "soloist.cli", *args], input=stdin, check=False, env=_env(), cwd=ROOT
    )
    return result.returncode, result.stdout
