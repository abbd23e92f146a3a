"""A binding's options (``CrmBinding.options``; amocrm.md §2.5, §3.6, §5.3, F9; all ours), with defaults, so
an empty JSON object is a valid set."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class BindingOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    lookup_timeout_ms: int = Field(default=1500, ge=300, le=3000)  # the ИМК's realtime budget (§5.3)
    smart_ring_timeout_s: int = Field(default=20, ge=5, le=120)  # then the PBX rules (F9.5)
    call_log_mode: Literal["notes", "calls_api"] = "notes"  # E13 (default) or E15
    popup_server_fallback: bool = True  # E16 when the manager has no open widget stream (§3.6)
    use_complex_create: bool = False  # E10 for contact + deal in one request


def options_of(raw: dict[str, Any] | None) -> BindingOptions:
    return BindingOptions.model_validate(raw or {})
