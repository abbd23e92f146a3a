"""Region names as the regulator spells them map to the right IANA zone (autoinformer.md §3.3)."""

from __future__ import annotations

import zoneinfo

import pytest

from vpbx.autoinformer.tz import (
    REGION_ZONES,
    NumberingFileError,
    parse_numbering,
    phonenumbers_zone,
    region_zone,
)


@pytest.mark.parametrize(
    ("region", "zone"),
    [
        ("г. Москва и Московская область", "Europe/Moscow"),
        ("г. Санкт-Петербург и Ленинградская область", "Europe/Moscow"),
        ("Новосибирская обл.", "Asia/Novosibirsk"),
        ("Республика Саха /Якутия/", "Asia/Yakutsk"),
        ("Приморский край", "Asia/Vladivostok"),
        ("Калининградская обл.", "Europe/Kaliningrad"),
        ("Самарская обл.", "Europe/Samara"),
        ("Удмуртская Республика", "Europe/Samara"),
        ("Ульяновская обл.", "Europe/Ulyanovsk"),
        ("Саратовская обл.", "Europe/Saratov"),
        ("Астраханская обл.", "Europe/Astrakhan"),
        ("Волгоградская обл.", "Europe/Volgograd"),
        ("Кировская обл.", "Europe/Kirov"),
        ("Республика Крым", "Europe/Simferopol"),
        ("г. Севастополь", "Europe/Simferopol"),
        ("Свердловская обл.", "Asia/Yekaterinburg"),
        ("Ханты - Мансийский - Югра АО", "Asia/Yekaterinburg"),
        ("Ямало-Ненецкий АО", "Asia/Yekaterinburg"),
        ("Ненецкий АО", "Europe/Moscow"),
        ("Пермский край", "Asia/Yekaterinburg"),
        ("Республика Башкортостан", "Asia/Yekaterinburg"),
        ("Омская обл.", "Asia/Omsk"),
        ("Томская обл.", "Asia/Tomsk"),
        ("Кемеровская область - Кузбасс", "Asia/Novokuznetsk"),
        ("Алтайский край", "Asia/Barnaul"),
        ("Республика Алтай", "Asia/Barnaul"),
        ("Красноярский край", "Asia/Krasnoyarsk"),
        ("Республика Тыва", "Asia/Krasnoyarsk"),
        ("Республика Хакасия", "Asia/Krasnoyarsk"),
        ("Иркутская обл.", "Asia/Irkutsk"),
        ("Республика Бурятия", "Asia/Irkutsk"),
        ("Забайкальский край", "Asia/Chita"),
        ("Амурская обл.", "Asia/Yakutsk"),
        ("Хабаровский край", "Asia/Vladivostok"),
        ("Еврейская автономная обл.", "Asia/Vladivostok"),
        ("Магаданская обл.", "Asia/Magadan"),
        ("Сахалинская обл.", "Asia/Sakhalin"),
        ("Камчатский край", "Asia/Kamchatka"),
        ("Чукотский АО", "Asia/Anadyr"),
        ("Краснодарский край", "Europe/Moscow"),
        ("Республика Татарстан", "Europe/Moscow"),
        ("Чувашская Республика - Чувашия", "Europe/Moscow"),
        ("Республика Северная Осетия - Алания", "Europe/Moscow"),
        ("Кабардино-Балкарская Республика", "Europe/Moscow"),
        ("Нижегородская обл.", "Europe/Moscow"),
        ("Новгородская обл.", "Europe/Moscow"),
        ("Курская обл.", "Europe/Moscow"),
        ("Курганская обл.", "Asia/Yekaterinburg"),
        ("Тульская обл.", "Europe/Moscow"),
        ("Оренбургская обл.", "Asia/Yekaterinburg"),
        ("Республика Коми", "Europe/Moscow"),
        ("Московская обл.|г.о. Подольск", "Europe/Moscow"),
        ("Неведомая земля", None),
    ],
)
def test_region_names(region: str, zone: str | None) -> None:
    assert region_zone(region) == zone


def test_every_mapped_zone_exists() -> None:
    for _, zone in REGION_ZONES:
        zoneinfo.ZoneInfo(zone)


def test_phonenumbers_zone_only_when_there_is_one() -> None:
    assert phonenumbers_zone("74951234567") == "Europe/Moscow"
    assert phonenumbers_zone("79161234567") is None  # a mobile code: every Russian zone
    assert phonenumbers_zone("999") is None


def test_bad_numbering_lines_are_named() -> None:
    with pytest.raises(NumberingFileError, match="line 2, column 2"):
        parse_numbering("АВС/ DEF;От;До;Емкость;Оператор;Регион\n913;abc;1;1;X;Y\n".encode())
    with pytest.raises(NumberingFileError, match="line 2: expected 6 columns"):
        parse_numbering(b"ABC;x\n913;1\n")
    with pytest.raises(NumberingFileError, match="no ranges"):
        parse_numbering(b"header only\n")
