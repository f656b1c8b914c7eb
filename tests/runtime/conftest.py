"""Fixtures for runtime tests: a fresh SQLite file per test, and an App factory on the toy bank."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest

from soloist import App
from tests.toy import BANK

if TYPE_CHECKING:
    from pathlib import Path

AppFactory = Callable[..., AbstractAsyncContextManager[App]]


@pytest.fixture(name="db")
def _db(tmp_path: Path) -> Path:
    """A path for a new SQLite event log."""
    return tmp_path / "log.db"


@pytest.fixture(name="open_app")
def _open_app(db: Path) -> AppFactory:
    """Open an App (the toy bank unless ``domain=`` says otherwise): ``async with open_app(**options) as app``."""

    @asynccontextmanager
    async def factory(**options: Any) -> AsyncIterator[App]:
        options.setdefault("replicas", 2)
        async with App(options.pop("domain", BANK), options.pop("path", db), **options) as app:
            yield app

    return factory
