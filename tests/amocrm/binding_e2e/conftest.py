"""Debian's Chromium for the amoCRM connect flow: the cabinet e2e suite's fixtures."""

from __future__ import annotations

from tests.e2e.conftest import browser, page  # noqa: F401 - fixtures, used by name
