"""What CRM integrations share: the phone normaliser (amocrm.md §2.4)."""

from __future__ import annotations

from vpbx.crm.phone import Normalised, match_key, normalise, normalised_digits

__all__ = ["Normalised", "match_key", "normalise", "normalised_digits"]
