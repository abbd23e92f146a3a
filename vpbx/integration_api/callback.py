"""Integration API methods: callback (filled in by its issue's work)."""

from __future__ import annotations

from vpbx.integration_api.core import ApiMethod

METHODS: tuple[ApiMethod, ...] = ()
