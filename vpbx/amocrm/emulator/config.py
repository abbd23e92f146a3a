"""The emulator's switches (amocrm.md §4): every (amoCRM?) variant and every limit, with its default.

Switches come, later ones winning, from the defaults here, an ``emulator.toml`` (``--config``; a top-level
``[switches]`` table or bare keys), the fixture's ``"switches"`` object, and the test kit's keyword arguments.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DEMO_FIXTURE_PATH = Path(__file__).with_name("demo_fixture.json")

DAY_S = 86400


class IdBases(BaseModel):
    """Where each id counter starts (fixture ids are kept; a counter never hands out an id in use)."""

    model_config = ConfigDict(extra="forbid")

    contacts: int = 10000001
    leads: int = 20000001
    tasks: int = 30000001
    notes: int = 40000001
    calls: int = 60000001
    tags: int = 70000001
    webhooks: int = 80000001
    statuses: int = 90000001  # the automatic unsorted status of each pipeline


class Switches(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # §4.5 phone matcher
    phone_match_mode: Literal["strict", "lenient"] = "strict"
    calls_match_mode: Literal["national10", "strict"] = "national10"
    # §4.3 limits (rate limiting always runs on the real monotonic clock)
    rate_limit_rps: int = Field(default=7, ge=1)
    rate_limit_body: Literal["empty", "json", "html"] = "empty"
    retry_after_s: int | None = None  # send Retry-After with a 429 (amoCRM?: not documented)
    block_after_seconds: int = Field(default=3, ge=1)  # seconds with a 429 inside block_window_s → IP block
    block_window_s: int = 60
    block_seconds: int = 60
    # §4.4 lists
    strict_limit: bool = False  # limit > 250 → 400 instead of clamping
    next_on_full_page: bool = False  # amoCRM?: ``next`` on every full page, even the last (it leads to 204)
    # §4.2 OAuth
    access_ttl: int = DAY_S
    refresh_ttl: int = 90 * DAY_S
    code_ttl: int = 20 * 60
    revoke_access_on_refresh: bool = False  # amoCRM?: the old access token dies on refresh
    install_from_widget: bool = True  # amoCRM?: /__emu__/install adds from_widget=1
    api_domain: str = "api-b.amocrm.ru"  # the access token's ``api_domain`` claim (moved-account lookup)
    # §2.3 variants
    enum_key: Literal["enum_code", "enum"] = "enum_code"  # amoCRM?: how multitext values name their enum
    notes_echo_entity_id: bool = True  # amoCRM?: created notes echo ``entity_id``
    events_v2_status: Literal[200, 202, 204] = 200  # amoCRM?: any 2xx from /api/v2/events
    id_bases: IdBases = IdBases()


def merge_switches(*layers: dict[str, Any] | None) -> Switches:
    merged: dict[str, Any] = {}
    for layer in layers:
        if layer:
            merged.update(layer)
    return Switches.model_validate(merged)


def read_toml(path: Path) -> dict[str, Any]:
    data = tomllib.loads(path.read_text())
    switches = data.get("switches", data)
    if not isinstance(switches, dict):
        raise ValueError(f"{path}: [switches] must be a table")
    return switches


def read_fixture(path: Path | None = None) -> dict[str, Any]:
    """A fixture document (§4.1); the demo fixture without a path."""
    data = json.loads((path or DEMO_FIXTURE_PATH).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("a fixture is a JSON object")
    return data
