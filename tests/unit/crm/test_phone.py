"""The shared phone normaliser (amocrm.md §2.4, autoinformer.md §3.2) on a table of spellings."""

from __future__ import annotations

import pytest

from vpbx.crm.phone import match_key, normalise, normalised_digits
from vpbx.pbx.numbering import dialled_digits


@pytest.mark.parametrize(
    ("raw", "digits"),
    [
        ("8 (916) 123-45-67", "79161234567"),  # autoinformer.md §12
        ("+7 916 123-45-67", "79161234567"),  # §12: the same number, a duplicate there
        ("79161234567", "79161234567"),
        ("9161234567", "79161234567"),  # 10 digits get 7 in front
        ("916.123.45.67", "79161234567"),
        ("  +7(495)123-45-67 ", "74951234567"),
        ("8-800-555-35-35", "78005553535"),
        ("+44 20 7123 4567", "442071234567"),
        ("+1 415 555 2671", "14155552671"),
        ("+380 44 123 4567", "380441234567"),
        ("123456789012345", "123456789012345"),  # 15 digits: the E.164 maximum
    ],
)
def test_valid_spellings(raw: str, digits: str) -> None:
    n = normalise(raw)
    assert n.ok and n.digits == digits and n.reason is None
    assert normalised_digits(raw) == digits


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty_phone"),
        ("   ", "empty_phone"),
        (None, "empty_phone"),
        ("12345", "invalid_format"),  # §12
        ("abc", "invalid_format"),
        ("8916abc4567", "invalid_format"),
        ("+7 916 123-45-678", "invalid_format"),  # code 7 needs exactly 11 digits
        ("1234567890123456", "invalid_format"),  # 16 digits
        ("++79161234567", "invalid_format"),  # one leading + only
        ("7916123456٧", "invalid_format"),  # ASCII digits only
        ("0079161234567", "invalid_format"),  # no country code starts with 0
        ("+", "invalid_format"),
        ("()-.", "invalid_format"),
        ("1" * 100, "invalid_format"),
    ],
)
def test_rejected_spellings(raw: str | None, reason: str) -> None:
    n = normalise(raw)
    assert not n.ok and n.reason == reason and n.digits == ""


def test_ten_digits_are_always_a_national_number() -> None:
    assert normalise("7916123456").digits == "77916123456"  # not "7916123456" with a missing digit


def test_match_key_is_the_national_number_for_code_7() -> None:
    assert match_key("+79161234567") == match_key("89161234567") == match_key("9161234567") == "9161234567"
    assert match_key("+442071234567") == "442071234567"
    assert match_key("12") is None


def test_numbering_dialled_digits_uses_the_shared_rule() -> None:
    for raw in ("+7 (916) 123-45-67", "89161234567", "9161234567", "916.123.45.67"):
        assert dialled_digits(raw) == "79161234567"
    assert dialled_digits("+79161234567890") is None  # code 7 with 14 digits
