"""Storage fixtures: every test runs once on SQLite and once on a fresh PostgreSQL database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import postgres_database
from vpbx import store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty database: a new SQLite file, or a uniquely named PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'store.sqlite3'}"
        return
    async with postgres_database(migrate=False) as url:
        yield url


@pytest.fixture
async def migrated_url(empty_url: str) -> str:
    await store.upgrade_async(empty_url)
    return empty_url


@pytest.fixture
async def engine(migrated_url: str) -> AsyncIterator[AsyncEngine]:
    eng = store.create_engine(migrated_url)
    yield eng
    await eng.dispose()
