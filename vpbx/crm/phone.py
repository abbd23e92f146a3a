"""The shared phone normaliser (amocrm.md §2.4, autoinformer.md §3.2, integration-api.md ``request_number``).

In order: strip spaces, ``-``, ``(``, ``)``, ``.`` and one leading ``+``; 11 digits starting with ``8`` become
``7…`` (the Russian trunk prefix); 10 digits get ``7`` in front; country code ``7`` then needs exactly 11
digits, any other code 11–15. What remains must be ASCII digits only; the digits are what is stored (E.164
without ``+``). A result is either those digits or the rejection reason of autoinformer.md §3.2
(``empty_phone``, ``invalid_format``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RUSSIA = "7"
RU_DIGITS = 11  # 7 + 10 national digits
MIN_DIGITS, MAX_DIGITS = 11, 15  # E.164 allows at most 15 digits; shorter ones are not callable from outside
MAX_INPUT_CHARS = 64  # what people type around a number (spaces, dashes, brackets) stays well below this
NATIONAL_DIGITS = 10  # the amoCRM match key of a +7 number (amocrm.md §2.4)

_PUNCTUATION = str.maketrans("", "", " \t\u00a0-().")

Reason = Literal["empty_phone", "invalid_format"]


@dataclass(frozen=True, slots=True)
class Normalised:
    """``digits`` of a valid number (E.164 without ``+``), or the ``reason`` it was rejected."""

    digits: str = ""
    reason: Reason | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


EMPTY = Normalised(reason="empty_phone")
INVALID = Normalised(reason="invalid_format")


def normalise(raw: str | None) -> Normalised:
    """``8 (916) 123-45-67``, ``+7 916 123-45-67``, ``916.123.45.67`` → ``79161234567``."""
    if raw is None:
        return EMPTY
    text = raw.strip()
    if not text:
        return EMPTY
    if len(text) > MAX_INPUT_CHARS:
        return INVALID
    text = text.translate(_PUNCTUATION).removeprefix("+")
    if not text:
        return INVALID
    if not text.isascii() or not text.isdigit():
        return INVALID
    if len(text) == RU_DIGITS and text.startswith("8"):
        text = RUSSIA + text[1:]
    elif len(text) == NATIONAL_DIGITS:
        text = RUSSIA + text
    if text.startswith("0"):
        return INVALID  # no country code starts with 0
    if text.startswith(RUSSIA):
        return Normalised(text) if len(text) == RU_DIGITS else INVALID
    return Normalised(text) if MIN_DIGITS <= len(text) <= MAX_DIGITS else INVALID


def normalised_digits(raw: str | None) -> str | None:
    """The digits of a valid number, else None."""
    n = normalise(raw)
    return n.digits if n.ok else None


def match_key(raw: str | None) -> str | None:
    """The key two spellings of one number share: the 10 national digits of a ``7`` number (so ``+7…``,
    ``8…`` and ``7…`` match, amocrm.md §2.4), else all the digits; None for an invalid number."""
    digits = normalised_digits(raw)
    if digits is None:
        return None
    return digits[1:] if digits.startswith(RUSSIA) else digits
