"""Shared test configuration: every async test runs on both asyncio and uvloop."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import uvloop

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import pytest


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
