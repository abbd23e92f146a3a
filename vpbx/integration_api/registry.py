"""Every CRM → PBX method the gateway serves, by name (integration-api.md §4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vpbx.autoinformer import api as autoinformer_api
from vpbx.integration_api import callback, read, records
from vpbx.integration_api.core import ApiMethod

if TYPE_CHECKING:
    from starlette.types import ASGIApp


def all_methods() -> dict[str, ApiMethod]:
    """``read``: users_info, call_info and the extension methods; ``records``: get_record and the call history
    export; ``callback``: call_back; ``autoinformer_api``: the ``autoinformer_*`` extension (autoinformer.md
    §9)."""
    table: dict[str, ApiMethod] = {}
    for method in (*read.METHODS, *records.METHODS, *callback.METHODS, *autoinformer_api.METHODS):
        if method.name in table:
            raise ValueError(f"Integration API method {method.name} defined twice")
        table[method.name] = method
    return table


def raw_routes() -> tuple[tuple[str, ASGIApp], ...]:
    """Routes under ``{API}`` outside the method table and its R1–R11 (e.g. the one-time recording download
    ``records_new_scheme/record/download/…``, §4.2): ``(path prefix, ASGI app)`` pairs that ``records`` may
    declare as ``RAW_ROUTES``. Such an app finds the Core at ``scope["app"].state.core`` and the source IP
    with ``gateway.client_ip``."""
    return tuple(getattr(records, "RAW_ROUTES", ()))
