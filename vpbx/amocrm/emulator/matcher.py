"""The phone matcher (amocrm.md §4.5).

``strict`` (default) models amoCRM's full-text ``query``: a case-insensitive substring of the name fields and
of every custom-field value, and for phone fields the query's digits against the value's digits. So
``9161234567`` finds ``+79161234567`` and also a comment that mentions it (the false positive clients must
post-filter), while ``89161234567`` misses ``+79161234567``. ``lenient`` compares phones by their last 10
national digits.
``calls_match_mode`` (for ``/api/v4/calls`` and ``/api/v2/events``): ``national10`` compares the 10 national
digits, ``strict`` the full digit strings.
"""

from __future__ import annotations

from typing import Any

NATIONAL = 10


def digits(text: Any) -> str:
    return "".join(ch for ch in str(text) if ch.isascii() and ch.isdigit())


def national10(text: Any) -> str:
    d = digits(text)
    return d[-NATIONAL:] if len(d) >= NATIONAL else d


def _phone_values(entity: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for cf in entity.get("custom_fields_values") or []:
        if cf.get("field_code") == "PHONE":
            out.extend(str(v.get("value", "")) for v in cf.get("values") or [])
    return out


def query_matches(entity: dict[str, Any], query: str, mode: str) -> bool:
    """Whether ``GET /api/v4/contacts?query=`` finds ``entity``."""
    q = query.strip().casefold()
    if not q:
        return True
    for key in ("name", "first_name", "last_name"):
        if q in str(entity.get(key) or "").casefold():
            return True
    qd = digits(q)
    for cf in entity.get("custom_fields_values") or []:
        is_phone = cf.get("field_code") == "PHONE"
        for v in cf.get("values") or []:
            value = str(v.get("value", ""))
            if q in value.casefold():
                return True
            if is_phone and qd:
                if mode == "lenient" and len(qd) >= NATIONAL:
                    if national10(qd) == national10(value):
                        return True
                elif qd in digits(value):
                    return True
    return False


def phone_matches(entity: dict[str, Any], phone: str, mode: str) -> bool:
    """Whether a card has ``phone`` (the calls API's lookup)."""
    want = national10(phone) if mode == "national10" else digits(phone)
    if not want:
        return False
    for value in _phone_values(entity):
        have = national10(value) if mode == "national10" else digits(value)
        if have == want:
            return True
    return False
