"""Tests on a real PostgreSQL (the ``postgres_dsn`` fixture of tests/conftest.py), and the one admin helper."""

from __future__ import annotations

import asyncpg


async def admin(server: str, sql: str) -> None:
    """Run one statement on ``server``'s ``postgres`` database (CREATE / DROP DATABASE)."""
    conn = await asyncpg.connect(f"{server}/postgres", timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
