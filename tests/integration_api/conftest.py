"""Fixture F (integration-api.md §4) on the test app, and a CRM's client for it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from tests.integration_api.fixture_f import FixtureF, api_client, make_fixture_f
from vpbx.app import Core


@pytest.fixture
async def f(core: Core) -> FixtureF:
    return await make_fixture_f(core)


@pytest.fixture
async def crm(app: FastAPI, f: FixtureF) -> AsyncIterator[httpx.AsyncClient]:
    """F's CRM: from 203.0.113.10 over HTTPS."""
    async with api_client(app) as client:
        yield client
