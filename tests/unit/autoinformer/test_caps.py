"""Collections frequency caps (autoinformer.md §3.3): per recipient-local day, week (Mon–Sun) and month."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from vpbx.autoinformer.caps import Caps, next_allowed

MSK = zoneinfo.ZoneInfo("Europe/Moscow")
VLAT = zoneinfo.ZoneInfo("Asia/Vladivostok")


def at(zone: zoneinfo.ZoneInfo, *args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=zone).astimezone(dt.UTC)  # type: ignore[misc]


def test_nothing_answered_is_allowed() -> None:
    assert next_allowed([], Caps(), zone=MSK, now=at(MSK, 2026, 6, 17, 12, 0)) is None


def test_answered_once_today_waits_for_the_next_local_day() -> None:
    now = at(MSK, 2026, 6, 17, 15, 0)
    assert next_allowed([at(MSK, 2026, 6, 17, 10, 5)], Caps(), zone=MSK, now=now) == at(
        MSK, 2026, 6, 18, 0, 0
    )
    # yesterday's answer does not block today (day cap 1, week cap 2)
    assert next_allowed([at(MSK, 2026, 6, 16, 10, 5)], Caps(), zone=MSK, now=now) is None


def test_the_day_is_the_recipients_local_day() -> None:
    # 23:30 Moscow on the 16th is 06:30 on the 17th in Vladivostok: an answer at 11:00 there on the 16th is
    # "yesterday" for that recipient, but "today" when read in Moscow time
    answered = [at(MSK, 2026, 6, 16, 4, 0)]  # 11:00 in Vladivostok on the 16th
    now = at(MSK, 2026, 6, 16, 23, 30)
    assert next_allowed(answered, Caps(), zone=VLAT, now=now) is None
    assert next_allowed(answered, Caps(), zone=MSK, now=now) == at(MSK, 2026, 6, 17, 0, 0)


def test_week_cap_waits_for_monday() -> None:
    answered = [at(MSK, 2026, 6, 15, 11, 0), at(MSK, 2026, 6, 16, 11, 0)]  # Monday and Tuesday
    assert next_allowed(answered, Caps(), zone=MSK, now=at(MSK, 2026, 6, 17, 11, 0)) == at(
        MSK, 2026, 6, 22, 0, 0
    )


def test_month_cap_waits_for_the_first_of_the_next_month() -> None:
    answered = [at(MSK, 2026, 6, d, 11, 0) for d in (1, 2, 8, 9, 15, 16, 22, 23)]
    now = at(MSK, 2026, 6, 29, 11, 0)  # a new week, eight answers this month
    assert next_allowed(answered, Caps(), zone=MSK, now=now) == at(MSK, 2026, 7, 1, 0, 0)
    assert next_allowed(answered, Caps(month=9), zone=MSK, now=now) is None


def test_caps_chain_until_every_one_allows() -> None:
    # week cap 2 hit on Sunday evening, day cap on the same day: Monday 00:00 frees both
    answered = [at(MSK, 2026, 6, 27, 11, 0), at(MSK, 2026, 6, 28, 11, 0)]
    assert next_allowed(answered, Caps(), zone=MSK, now=at(MSK, 2026, 6, 28, 19, 0)) == at(
        MSK, 2026, 6, 29, 0, 0
    )
    # a month cap crossing: 30 June with the month full and a day cap too → 1 July
    full = [at(MSK, 2026, 6, d, 11, 0) for d in range(1, 31, 4)]
    caps = Caps(day=1, week=7, month=len(full))
    assert next_allowed(full, caps, zone=MSK, now=at(MSK, 2026, 6, 29, 18, 0)) == at(MSK, 2026, 7, 1, 0, 0)


def test_operator_caps() -> None:
    assert Caps.from_json({"day": 2, "week": 5}) == Caps(day=2, week=5, month=8)
    assert Caps.from_json(None) == Caps(1, 2, 8)
    with pytest.raises(ValueError):
        Caps.from_json({"day": 0})
    two = Caps.from_json({"day": 2})
    now = at(MSK, 2026, 6, 17, 15, 0)
    assert next_allowed([at(MSK, 2026, 6, 17, 10, 0)], two, zone=MSK, now=now) is None
