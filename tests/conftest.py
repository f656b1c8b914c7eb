"""Shared test configuration: every async test runs on both asyncio and uvloop; a fresh PostgreSQL database."""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import pytest
import uvloop

from tests.postgres import admin

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator, Mapping

T = TypeVar("T")

POSTGRES_ADDRESS = "127.0.0.1:5432"


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]] | None:
    """Run each async test on the stock asyncio loop and on uvloop (the production loop)."""
    if item.get_closest_marker("uvloop_only") is not None:
        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers", "uvloop_only: run this async test on uvloop only (real-process tests, once is enough)"
    )


def _on_own_loop(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a fresh loop in another thread (fixtures run outside the test's loop)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


@pytest.fixture(scope="session", name="postgres_server")
def _postgres_server() -> str:
    """The DSN (without database) of the PostgreSQL on 127.0.0.1:5432; skips without one, fails under CI=true."""
    failures: list[str] = []
    for user in ("postgres", "root"):
        server = f"postgresql://{user}@{POSTGRES_ADDRESS}"
        try:
            _on_own_loop(functools.partial(admin, server, "SELECT 1"))
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            failures.append(f"as {user}: {exc!r}")
            continue
        return server
    reason = (
        f"no PostgreSQL answers on {POSTGRES_ADDRESS} ({'; '.join(failures)}); start it with "
        "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(name="postgres_dsn")
def _postgres_dsn(postgres_server: str) -> Iterator[str]:
    """A DSN to a new, empty database (soloist_test_<random>), dropped after the test."""
    name = f"soloist_test_{secrets.token_hex(6)}"
    _on_own_loop(lambda: admin(postgres_server, f"CREATE DATABASE {name}"))
    try:
        yield f"{postgres_server}/{name}"
    finally:
        _on_own_loop(lambda: admin(postgres_server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
