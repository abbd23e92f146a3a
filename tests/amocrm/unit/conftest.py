"""The job engine's world on SQLite and on a fresh PostgreSQL database (skipped without
``VPBX_TEST_POSTGRES_URL``): its SQL (insert-or-ignore, upserts, the lease's compare-and-set, the
consumer's join) must behave the same on both."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from tests.amocrm.unit.jobs_kit import START, World, make_world
from tests.conftest import postgres_url
from vpbx import store
from vpbx.app import build_core
from vpbx.clock import FakeClock
from vpbx.settings import Settings


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def world_settings(
    request: pytest.FixtureRequest, settings: Settings, tmp_path: Path
) -> AsyncIterator[Settings]:
    if request.param == "sqlite":
        yield settings
        return
    server = postgres_url()
    if not server:
        pytest.skip("VPBX_TEST_POSTGRES_URL is not set")
    name = f"vpbx_test_{uuid.uuid4().hex[:16]}"
    admin = create_async_engine(server, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(server).set(database=name).render_as_string(hide_password=False)
        await store.upgrade_async(url)
        yield settings.model_copy(update={"database_url": url})
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


@pytest.fixture
async def world(world_settings: Settings) -> AsyncIterator[World]:
    clock = FakeClock(START)
    core = build_core(world_settings, clock)
    try:
        yield await make_world(core, clock)
    finally:
        await core.engine.dispose()
