"""Fixtures of the JetStream tests: a fresh nats-server per test."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.jetstream.harness import NatsServer, need_nats_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@pytest.fixture(name="nats_server")
async def _nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A running nats-server with JetStream on a free port, killed after the test."""
    need_nats_server()
    server = NatsServer(tmp_path / "nats-store")
    await server.start()
    try:
        yield server
    finally:
        await server.kill()
