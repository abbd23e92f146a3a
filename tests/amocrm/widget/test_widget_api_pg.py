"""The widget API's queries on PostgreSQL (amocrm.md §3.4): the tests of ``test_widget_api`` that write
scenarios, lines and mappings and check the tenants, on a fresh, migrated database each."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from tests.amocrm.widget.test_widget_api import (  # noqa: F401 - collected here again, on PostgreSQL
    test_account_b_never_sees_a,
    test_call_is_scoped_by_the_tokens_account,
    test_mapping_extension_not_unique,
    test_mapping_round_trip,
    test_put_full_document,
    test_put_refuses_a_line_of_another_active_scenario,
    test_scenario_lifecycle,
)
from tests.conftest import postgres_url
from vpbx import store
from vpbx.settings import Settings

pytestmark = pytest.mark.postgres
CREATE_ATTEMPTS = 3


@pytest.fixture
async def settings(settings: Settings) -> AsyncIterator[Settings]:
    """The app on a fresh, migrated PostgreSQL database."""
    server = postgres_url()
    if not server:
        pytest.skip("VPBX_TEST_POSTGRES_URL is not set")
    name = f"vpbx_test_{uuid.uuid4().hex[:16]}"
    admin = create_async_engine(server, isolation_level="AUTOCOMMIT")
    try:
        for attempt in range(CREATE_ATTEMPTS):  # template1 may be busy with another suite's CREATE DATABASE
            try:
                async with admin.connect() as conn:
                    await conn.execute(text(f'CREATE DATABASE "{name}"'))
                break
            except DBAPIError:
                if attempt == CREATE_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.5)
        url = make_url(server).set(database=name).render_as_string(hide_password=False)
        await store.upgrade_async(url)
        try:
            yield settings.model_copy(update={"database_url": url})
        finally:
            for attempt in range(CREATE_ATTEMPTS):  # a shared server's FORCE may meet another role's backend
                try:
                    async with admin.connect() as conn:
                        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                    break
                except DBAPIError:
                    if attempt == CREATE_ATTEMPTS - 1:
                        raise
                    await asyncio.sleep(0.5)
    finally:
        await admin.dispose()
