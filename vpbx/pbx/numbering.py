"""Phone numbers: parse what people type (Russian formats such as 8XXXXXXXXXX, +7…) into E.164."""

from __future__ import annotations

import phonenumbers

from vpbx.crm.phone import normalised_digits

DEFAULT_REGION = "RU"


def to_e164(raw: str, region: str = DEFAULT_REGION) -> str | None:
    """``+79161234567`` for any valid spelling of a number, ``None`` when it is not a valid number."""
    text = raw.strip()
    if not text or len(text) > 32:
        return None
    if text.startswith("8") and region == "RU" and len(_digits(text)) == 11:
        text = "+7" + _digits(text)[1:]  # the Russian trunk prefix 8 → country code 7
    try:
        num = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(num):
        return None
    return str(phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164))


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def display(e164: str) -> str:
    """International spelling for pages: ``+7 916 123-45-67``."""
    try:
        num = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return e164
    return str(phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.INTERNATIONAL))


def dialled_digits(raw: str) -> str | None:
    """A number to call as a CRM spells it (``+7 (916) 123-45-67``, ``8916…``, ``916…``) as its E.164 digits
    without ``+``; None unless the shared normaliser (amocrm.md §2.4, ``vpbx.crm.phone``) accepts it."""
    return normalised_digits(raw)
