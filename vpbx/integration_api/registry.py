"""Every CRM → PBX method the gateway serves, by name (integration-api.md §4)."""

from __future__ import annotations

from vpbx.autoinformer import api as autoinformer_api
from vpbx.integration_api import callback, read, records
from vpbx.integration_api.core import ApiMethod


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
