"""The job engine's world on SQLite and on a fresh PostgreSQL database (skipped without
``VPBX_TEST_POSTGRES_URL``): its SQL (insert-or-ignore, upserts, the lease's compare-and-set, the
consumer's join) must behave the same on both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.amocrm.unit.jobs_kit import START, World, make_world
from tests.conftest import postgres_database
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
    async with postgres_database() as url:
        yield settings.model_copy(update={"database_url": url})


@pytest.fixture
async def world(world_settings: Settings) -> AsyncIterator[World]:
    clock = FakeClock(START)
    core = build_core(world_settings, clock)
    try:
        yield await make_world(core, clock)
    finally:
        await core.engine.dispose()
