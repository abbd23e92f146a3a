"""The widget API's queries on PostgreSQL (amocrm.md §3.4): the tests of ``test_widget_api`` that write
scenarios, lines and mappings and check the tenants, on a fresh, migrated database each."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.amocrm.widget.test_widget_api import (  # noqa: F401 - collected here again, on PostgreSQL
    test_account_b_never_sees_a,
    test_call_is_scoped_by_the_tokens_account,
    test_mapping_extension_not_unique,
    test_mapping_round_trip,
    test_put_full_document,
    test_put_refuses_a_line_of_another_active_scenario,
    test_scenario_lifecycle,
)
from tests.conftest import postgres_database
from vpbx.settings import Settings

pytestmark = pytest.mark.postgres


@pytest.fixture
async def settings(settings: Settings) -> AsyncIterator[Settings]:
    """The app on a fresh, migrated PostgreSQL database."""
    async with postgres_database() as url:
        yield settings.model_copy(update={"database_url": url})
