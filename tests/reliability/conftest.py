"""Fixtures of the fault-injection suite."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import create_async_engine


@pytest.fixture
async def pg_url(pg_database: str) -> AsyncIterator[str]:
    """The session's PostgreSQL database, emptied: the store the scenarios run on
    unless they are about SQLite."""
    from shipcast.store import metadata

    engine = create_async_engine(pg_database)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
    await engine.dispose()
    yield pg_database
