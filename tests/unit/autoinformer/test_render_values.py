"""Variables in a TTS text (autoinformer.md §3.1): ``{name}``, ``{name:format}`` and ``{phone}``, spoken as
Russian words for numbers, money, dates and digits."""

from __future__ import annotations

import pytest

from vpbx.autoinformer.render import (
    RenderError,
    render_key,
    sample_values,
    say_date,
    say_digits,
    say_money,
    say_number,
    substitute,
)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("1 234,50", "одна тысяча двести тридцать четыре рубля, пятьдесят копеек"),
        ("1234.5", "одна тысяча двести тридцать четыре рубля, пятьдесят копеек"),
        ("1000", "одна тысяча рублей"),
        ("21", "двадцать один рубль"),
        ("2,01", "два рубля, одна копейка"),
        ("0.99", "ноль рублей, девяносто девять копеек"),
        ("долг", "долг"),  # not a number: spoken as written
    ],
)
def test_money(value: str, words: str) -> None:
    assert say_money(value) == words


def test_number_date_digits() -> None:
    assert say_number("21") == "двадцать один"
    assert say_number("1 000 000") == "один миллион"
    assert say_number("1,5") == "одна целая пять десятых"
    assert say_number("x1") == "x1"
    assert say_date("20.06.2025") == "двадцатое июня две тысячи двадцать пятого года"
    assert say_date("01.01.2000") == "первое января двухтысячного года"
    assert say_date("03.03.2026", "g") == "третьего марта две тысячи двадцать шестого года"
    assert say_date("31.02.2025") == "31.02.2025"  # no such day: as written
    assert say_digits("+7 (916) 12") == "семь девять один шесть один два"
    assert say_digits("A1") == "A один"


def test_substitute_with_formats_and_the_phone() -> None:
    text = "{name}, ваш долг {sum:money}. Оплатите до {due:date}. Ваш номер {phone:digits}, код {code}."
    values = {"name": "Иван", "sum": "100", "due": "20.06.2025", "code": "42"}
    assert substitute(text, values, phone="79161234567") == (
        "Иван, ваш долг сто рублей. Оплатите до двадцатого июня две тысячи двадцать пятого года. "
        "Ваш номер семь девять один шесть один два три четыре пять шесть семь, код 42."
    )
    assert substitute("К {d:date}", {"d": "01.09.2025"}, phone="") == (
        "К первому сентября две тысячи двадцать пятого года"
    )
    assert substitute("{Name} {x:unknown}", {}, phone="") == "{Name} {x:unknown}"  # not variables


@pytest.mark.parametrize("values", [{}, {"name": " "}, {"name": "x" * 201}])
def test_a_missing_or_long_value_is_an_error(values: dict[str, str]) -> None:
    with pytest.raises(RenderError) as e:
        substitute("Здравствуйте, {name}", values, phone="79161234567")
    assert e.value.details["variable"] == "name"


def test_sample_values_fit_their_formats() -> None:
    values = sample_values("{name} {sum:money} {due:date} {n:number} {c:digits} {phone}")
    assert values["name"] == "name" and values["sum"] == "1234.50" and values["n"] == "1234"
    text = substitute("{sum:money} {due:date}", values, phone="")
    assert "рубл" in text and "года" in text


def test_render_key_changes_with_every_input() -> None:
    base = [("tts", "Привет", "ru+f3", 1.0), ("file", "a" * 32, "", 1.0)]
    keys = {
        render_key(base),
        render_key([("tts", "Привет!", "ru+f3", 1.0), base[1]]),
        render_key([("tts", "Привет", "ru", 1.0), base[1]]),
        render_key([("tts", "Привет", "ru+f3", 1.5), base[1]]),
        render_key([base[0], ("file", "b" * 32, "", 1.0)]),
        render_key(list(reversed(base))),
    }
    assert len(keys) == 6
