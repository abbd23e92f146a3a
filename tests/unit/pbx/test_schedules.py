"""Schedules: parsing the weekday fields and holidays, work time in a time zone, storage per domain."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from tests.helpers import Tenant
from vpbx.app import Core
from vpbx.errors import NotFound, ValidationFailed
from vpbx.pbx import schedules as svc
from vpbx.pbx.schedules import ScheduleInput, Span, is_work_time, parse_day, parse_holidays
from vpbx.pbx.validation import Check
from vpbx.store.models import (
    IncomingNumber,
    RoutingRule,
    Schedule,
    ScheduleHoliday,
    ScheduleInterval,
)

UTC = dt.UTC
WEEK = ["09:00-18:00"] * 5 + ["", ""]


def _fields(e: ValidationFailed) -> dict[str, list[str]]:
    return {k: [x.msgid for x in v] for k, v in e.by_field().items()}


def _day(text: str, weekday: int = 0) -> tuple[list[tuple[int, int]], list[tuple[str, dict[str, object]]]]:
    c = Check()
    spans = parse_day(c, weekday, text)
    return [(sp.start_min, sp.end_min) for sp in spans], [(e.msgid, e.params) for e in c.errors]


def _schedule(intervals: list[tuple[int, str]], holidays: tuple[dt.date, ...] = ()) -> Schedule:
    """A transient schedule: (weekday, "HH:MM-HH:MM") pairs and holiday dates."""
    c = Check()
    spans: list[Span] = []
    for wd, text in intervals:
        spans += parse_day(c, wd, text)
    assert not c.errors
    return Schedule(
        name="t",
        intervals=[
            ScheduleInterval(weekday=x.weekday, start_min=x.start_min, end_min=x.end_min) for x in spans
        ],
        holidays=[ScheduleHoliday(day=d, name="") for d in holidays],
    )


# --- parsing a weekday ------------------------------------------------------------------------------------


def test_day_with_two_intervals_any_spacing_and_dashes() -> None:
    assert _day(" 14:00 – 18:00 ,9:00-13:00; ") == ([(540, 780), (840, 1080)], [])


def test_empty_day_is_a_day_off() -> None:
    assert _day("   ") == ([], [])


def test_end_of_day_is_24_00_and_touching_intervals_are_fine() -> None:
    assert _day("00:00-12:00, 12:00-24:00") == ([(0, 720), (720, 1440)], [])


@pytest.mark.parametrize(
    "text", ["9-18", "09:00", "24:00-24:30", "08:60-09:00", "25:00-26:00", "abc", "9:00-18"]
)
def test_bad_time_syntax(text: str) -> None:
    spans, errors = _day(text)
    assert spans == []
    assert errors == [("Not a time interval: {value}; write it as 09:00-18:00", {"value": text})]


@pytest.mark.parametrize(("text", "shown"), [("18:00-09:00", "18:00-09:00"), ("10:00-10:00", "10:00-10:00")])
def test_start_must_be_before_end(text: str, shown: str) -> None:
    assert _day(text)[1] == [("The interval {value} must start before it ends", {"value": shown})]


def test_overlap_names_the_day_and_both_intervals() -> None:
    _, errors = _day("09:00-13:00, 12:00-18:00", weekday=2)
    assert errors == [("Wednesday: intervals {a} and {b} overlap", {"a": "09:00-13:00", "b": "12:00-18:00"})]


def test_overlap_with_an_earlier_longer_interval_is_found() -> None:
    _, errors = _day("09:00-17:00, 10:00-11:00, 16:00-18:00", weekday=6)
    assert [p for _, p in errors] == [
        {"a": "09:00-17:00", "b": "10:00-11:00"},
        {"a": "09:00-17:00", "b": "16:00-18:00"},
    ]
    assert errors[0][0].startswith("Sunday:")


# --- parsing holidays -------------------------------------------------------------------------------------


def test_holidays_in_both_spellings_with_optional_names() -> None:
    c = Check()
    out = parse_holidays(c, "2026-01-07 Рождество\n\n01.01.2026   Новый год  \n2026-03-09")
    assert not c.errors
    assert [(h.day.isoformat(), h.name) for h in out] == [
        ("2026-01-01", "Новый год"),
        ("2026-01-07", "Рождество"),
        ("2026-03-09", ""),
    ]


def test_bad_and_duplicate_holidays_are_reported_by_line() -> None:
    c = Check()
    parse_holidays(
        c, "2026-02-30 Нет такого дня\n2026-01-01\n01.01.2026 Снова\nзавтра\n2026-05-01 " + "x" * 129
    )
    assert [(e.field, e.msgid, e.params) for e in c.errors] == [
        (
            "holidays",
            "Line {line}: not a date: {value}; write it as 2026-01-01 or 01.01.2026",
            {"line": 1, "value": "2026-02-30"},
        ),
        ("holidays", "Line {line}: the date {date} is listed twice", {"line": 3, "date": "2026-01-01"}),
        (
            "holidays",
            "Line {line}: not a date: {value}; write it as 2026-01-01 or 01.01.2026",
            {"line": 4, "value": "завтра"},
        ),
        ("holidays", "Line {line}: the name is longer than {max} characters", {"line": 5, "max": 128}),
    ]


# --- work time --------------------------------------------------------------------------------------------


def test_moscow_office_hours_are_half_open() -> None:
    office = _schedule([(d, "09:00-18:00") for d in range(5)])
    thu = dt.date(2026, 1, 15)  # Moscow is UTC+3 all year
    at = lambda h, m, s=0: dt.datetime(thu.year, thu.month, thu.day, h, m, s, tzinfo=UTC)  # noqa: E731
    assert not is_work_time(office, at(5, 59, 59), "Europe/Moscow")
    assert is_work_time(office, at(6, 0), "Europe/Moscow")
    assert is_work_time(office, at(14, 59, 59), "Europe/Moscow")
    assert not is_work_time(office, at(15, 0), "Europe/Moscow")
    # Saturday 12:00 local
    assert not is_work_time(office, dt.datetime(2026, 1, 17, 9, 0, tzinfo=UTC), "Europe/Moscow")


def test_holiday_is_the_local_date() -> None:
    night = _schedule([(4, "22:00-24:00"), (5, "00:00-02:00")], holidays=(dt.date(2026, 1, 3),))
    # Friday 2 Jan 23:59 in Moscow is still Friday's interval
    assert is_work_time(night, dt.datetime(2026, 1, 2, 20, 59, tzinfo=UTC), "Europe/Moscow")
    # 00:30 on Saturday 3 Jan in Moscow, though still 2 Jan in UTC: a holiday
    assert not is_work_time(night, dt.datetime(2026, 1, 2, 21, 30, tzinfo=UTC), "Europe/Moscow")
    # the following Saturday, no holiday: 00:00 sharp belongs to Saturday's interval
    assert is_work_time(night, dt.datetime(2026, 1, 9, 21, 0, tzinfo=UTC), "Europe/Moscow")
    # Sunday 00:00 has no interval
    assert not is_work_time(night, dt.datetime(2026, 1, 10, 21, 0, tzinfo=UTC), "Europe/Moscow")


def test_berlin_follows_daylight_saving_time() -> None:
    monday = _schedule([(0, "09:00-18:00")])
    winter, summer = dt.date(2026, 3, 23), dt.date(2026, 3, 30)  # DST starts on 29 March 2026
    at = lambda d, h, m: dt.datetime(d.year, d.month, d.day, h, m, tzinfo=UTC)  # noqa: E731
    assert not is_work_time(monday, at(winter, 7, 30), "Europe/Berlin")  # 08:30 CET
    assert is_work_time(monday, at(winter, 8, 0), "Europe/Berlin")  # 09:00 CET
    assert is_work_time(monday, at(summer, 7, 30), "Europe/Berlin")  # 09:30 CEST
    assert not is_work_time(monday, at(summer, 6, 59), "Europe/Berlin")  # 08:59 CEST
    assert is_work_time(monday, at(summer, 15, 59), "Europe/Berlin")  # 17:59 CEST
    assert not is_work_time(monday, at(summer, 16, 0), "Europe/Berlin")  # 18:00 CEST
    assert is_work_time(monday, at(winter, 16, 30), "Europe/Berlin")  # 17:30 CET
    assert not is_work_time(monday, at(winter, 17, 0), "Europe/Berlin")  # 18:00 CET


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        is_work_time(_schedule([]), dt.datetime(2026, 1, 1, 12, 0), "Europe/Moscow")  # noqa: DTZ001


# --- storage ----------------------------------------------------------------------------------------------


async def _count(core: Core, model: type[Schedule | ScheduleInterval | ScheduleHoliday]) -> int:
    async with core.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def _create(core: Core, t: Tenant, name: str = "Офис", **kw: object) -> Schedule:
    async with core.sessions() as s:
        data = ScheduleInput(name=name, days=list(WEEK), holidays="2026-01-01 Новый год")
        for k, v in kw.items():
            setattr(data, k, v)
        sch = await svc.create_schedule(s, t.id, data)
        await s.commit()
        return sch


async def test_create_and_read_back(core: Core, t1: Tenant) -> None:
    sch = await _create(core, t1)
    async with core.sessions() as s:
        got = await svc.get_schedule(s, t1.id, sch.id)
        form = svc.input_of(got)
        assert form.days == WEEK
        assert form.holidays == "2026-01-01 Новый год"
        assert svc.week_summary(got) == [(0, 4, "09:00-18:00")]


async def test_errors_save_nothing(core: Core, t1: Tenant) -> None:
    days = ["09:00-13:00, 12:00-18:00", "bad", "", "", "", "", ""]
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await svc.create_schedule(s, t1.id, ScheduleInput(name="", days=days, holidays="2026-13-01"))
    assert set(_fields(e.value)) == {"name", "day_0", "day_1", "holidays"}
    assert await _count(core, Schedule) == 0
    assert await _count(core, ScheduleInterval) == 0


async def test_name_is_unique_in_the_domain_only(core: Core, t1: Tenant, t2: Tenant) -> None:
    await _create(core, t1)
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await svc.create_schedule(s, t1.id, ScheduleInput(name=" Офис "))
    assert _fields(e.value) == {"name": ["A schedule with this name already exists"]}
    await _create(core, t2)  # another domain may use the same name
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await svc.create_schedule(s, t1.id, ScheduleInput(name="x" * 65))
    assert _fields(e.value) == {"name": ["At most {max} characters"]}


async def test_update_replaces_hours_and_keeps_a_repeated_holiday(core: Core, t1: Tenant) -> None:
    sch = await _create(core, t1)
    async with core.sessions() as s:
        await svc.update_schedule(
            s,
            t1.id,
            sch.id,
            ScheduleInput(name="Офис", days=["10:00-12:00"], holidays="2026-01-01 Новый год!\n2026-01-02"),
        )
        await s.commit()
    async with core.sessions() as s:
        got = await svc.get_schedule(s, t1.id, sch.id)
        assert [(i.weekday, i.start_min, i.end_min) for i in got.intervals] == [(0, 600, 720)]
        assert [(h.day, h.name) for h in got.holidays] == [
            (dt.date(2026, 1, 1), "Новый год!"),
            (dt.date(2026, 1, 2), ""),
        ]
    assert await _count(core, ScheduleInterval) == 1


async def test_other_domain_cannot_read_change_or_delete(core: Core, t1: Tenant, t2: Tenant) -> None:
    sch = await _create(core, t1)
    async with core.sessions() as s:
        with pytest.raises(NotFound):
            await svc.get_schedule(s, t2.id, sch.id)
        with pytest.raises(NotFound):
            await svc.update_schedule(s, t2.id, sch.id, ScheduleInput(name="hijack"))
        with pytest.raises(NotFound):
            await svc.delete_schedule(s, t2.id, sch.id)
        await s.commit()
        assert (await svc.list_schedules(s, t2.id)).total == 0
    async with core.sessions() as s:
        assert (await svc.get_schedule(s, t1.id, sch.id)).name == "Офис"


async def test_schedule_used_by_a_rule_cannot_be_deleted(core: Core, t1: Tenant) -> None:
    sch = await _create(core, t1)
    async with core.sessions() as s:
        n = IncomingNumber(domain_id=t1.id, number="+74951234567")
        s.add(n)
        await s.flush()
        s.add(
            RoutingRule(
                domain_id=t1.id,
                number_id=n.id,
                position=0,
                condition="work",
                schedule_id=sch.id,
                action="reject",
            )
        )
        await s.commit()
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await svc.delete_schedule(s, t1.id, sch.id)
    assert _fields(e.value) == {"id": ["The schedule is used by routing rules; change them first"]}
    assert await _count(core, Schedule) == 1


async def test_delete_and_search(core: Core, t1: Tenant) -> None:
    a = await _create(core, t1, "Офис")
    await _create(core, t1, "Склад")
    async with core.sessions() as s:
        assert [x.name for x in (await svc.list_schedules(s, t1.id, "Скл")).items] == ["Склад"]
        await svc.delete_schedule(s, t1.id, a.id)
        await s.commit()
    assert await _count(core, Schedule) == 1
    assert await _count(core, ScheduleHoliday) == 1
