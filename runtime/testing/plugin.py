"""pytest plugin of soloist (entry point ``pytest11``): factory fixtures for integration tests.

::

    async def test_order(soloist_app, soloist_client):
        async with soloist_app(DOMAIN) as app, soloist_client(app) as client:
            await client.command("PlaceOrder", {...})

``soloist_app(domain, **options)`` opens an App on a fresh log file in the test's ``tmp_path``;
``soloist_client(app)`` serves it on a free port of 127.0.0.1 and connects a client. Both are async context
managers used inside the test, so the App's task group lives in the test's own task.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import pytest

from . import open_app, serve

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractAsyncContextManager
    from pathlib import Path

    from .. import App, Domain
    from ..net import Client

__all__: list[str] = []  # fixtures only


@pytest.fixture(name="soloist_app")
def _soloist_app(tmp_path: Path) -> Callable[..., AbstractAsyncContextManager[App]]:
    """Open an App on a new log under ``tmp_path``: ``async with soloist_app(domain, **options) as app``."""
    numbers = itertools.count(1)

    def factory(domain: Domain[Any, Any, Any, Any], **options: Any) -> AbstractAsyncContextManager[App]:
        path = options.pop("path", None) or tmp_path / f"soloist-{next(numbers)}.db"
        return open_app(domain, path, **options)

    return factory


@pytest.fixture(name="soloist_client")
def _soloist_client() -> Callable[..., AbstractAsyncContextManager[Client]]:
    """Serve an App on a free port and connect a client: ``async with soloist_client(app) as client``."""

    def factory(app: App, **options: Any) -> AbstractAsyncContextManager[Client]:
        return serve(app, **options)

    return factory
