"""The job engine's world on SQLite and on a fresh PostgreSQL database (skipped without
``VPBX_TEST_POSTGRES_URL``): its SQL (insert-or-ignore, upserts, the lease's compare-and-set, the
consumer's join) must behave the same on both."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.amocrm.unit.jobs_kit import START, World, make_world
from vpbx.app import build_core
from vpbx.clock import FakeClock
from vpbx.settings import Settings


@pytest.fixture
def world_settings(settings: Settings, database_url: str) -> Settings:
    """The app's settings on SQLite and on PostgreSQL."""
    return settings.model_copy(update={"database_url": database_url})


@pytest.fixture
async def world(world_settings: Settings) -> AsyncIterator[World]:
    clock = FakeClock(START)
    core = build_core(world_settings, clock)
    try:
        yield await make_world(core, clock)
    finally:
        await core.engine.dispose()
