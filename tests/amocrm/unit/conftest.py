from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.amocrm.unit.jobs_kit import START, World, make_world
from vpbx.app import build_core
from vpbx.clock import FakeClock
from vpbx.settings import Settings


@pytest.fixture
async def world(settings: Settings) -> AsyncIterator[World]:
    clock = FakeClock(START)
    core = build_core(settings, clock)
    try:
        yield await make_world(core, clock)
    finally:
        await core.engine.dispose()
