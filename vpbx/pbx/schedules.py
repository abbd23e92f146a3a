"""Schedules («Расписания»): work intervals per weekday and holidays, read in the domain's time zone.

Intervals are half-open, ``[start, end)`` in minutes from local midnight, so 09:00-18:00 is work at 17:59:59
and not at 18:00. A holiday is a whole local date off, whatever its weekday says.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.errors import NotFound, ValidationFailed
from vpbx.pbx.validation import N_, Check
from vpbx.store.models import RoutingRule, Schedule, ScheduleHoliday, ScheduleInterval
from vpbx.store.paging import Page, like_pattern, paginate

DAY_MINUTES = 24 * 60
MAX_INTERVALS_PER_DAY = 24
MAX_HOLIDAYS = 400
MAX_HOLIDAY_NAME = 128

WEEKDAYS = (
    N_("Monday"),
    N_("Tuesday"),
    N_("Wednesday"),
    N_("Thursday"),
    N_("Friday"),
    N_("Saturday"),
    N_("Sunday"),
)
WEEKDAYS_SHORT = (N_("Mon"), N_("Tue"), N_("Wed"), N_("Thu"), N_("Fri"), N_("Sat"), N_("Sun"))
# The day is part of the sentence, so each weekday has its own message and translates with the right case.
OVERLAP = (
    N_("Monday: intervals {a} and {b} overlap"),
    N_("Tuesday: intervals {a} and {b} overlap"),
    N_("Wednesday: intervals {a} and {b} overlap"),
    N_("Thursday: intervals {a} and {b} overlap"),
    N_("Friday: intervals {a} and {b} overlap"),
    N_("Saturday: intervals {a} and {b} overlap"),
    N_("Sunday: intervals {a} and {b} overlap"),
)

_TIME = r"(\d{1,2})[:.](\d{2})"
INTERVAL_RE = re.compile(rf"{_TIME}\s*[-–—]\s*{_TIME}")
HOLIDAY_RE = re.compile(r"(\S+)(?:\s+(.*))?")


@dataclass(kw_only=True)
class ScheduleInput:
    name: str
    days: list[str] = field(default_factory=lambda: [""] * 7)  # Monday first: "09:00-13:00, 14:00-18:00"
    holidays: str = ""  # one per line: "2026-01-01 Новый год"


@dataclass(frozen=True, slots=True)
class Span:
    weekday: int
    start_min: int
    end_min: int


@dataclass(frozen=True, slots=True)
class Holiday:
    day: dt.date
    name: str


def day_field(weekday: int) -> str:
    return f"day_{weekday}"


def hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def span_text(start_min: int, end_min: int) -> str:
    return f"{hhmm(start_min)}-{hhmm(end_min)}"


def _minutes(hours: str, minutes: str, *, end: bool) -> int | None:
    h, m = int(hours), int(minutes)
    if m > 59:
        return None
    if h == 24 and m == 0 and end:
        return DAY_MINUTES
    if h > 23:
        return None
    return h * 60 + m


def parse_day(c: Check, weekday: int, text: str) -> list[Span]:
    """One weekday's intervals, ``"09:00-13:00, 14:00-18:00"``; errors go to ``day_<weekday>``."""
    name = day_field(weekday)
    if len(text) > 1000:
        c.add(name, N_("At most {max} characters"), max=1000)
        return []
    out: list[Span] = []
    for part in re.split(r"[,;\n]", text):
        part = part.strip()
        if not part:
            continue
        m = INTERVAL_RE.fullmatch(part)
        start = _minutes(m.group(1), m.group(2), end=False) if m else None
        end = _minutes(m.group(3), m.group(4), end=True) if m else None
        if start is None or end is None:
            c.add(name, N_("Not a time interval: {value}; write it as 09:00-18:00"), value=part[:32])
            continue
        if start >= end:
            c.add(name, N_("The interval {value} must start before it ends"), value=span_text(start, end))
            continue
        out.append(Span(weekday, start, end))
    if len(out) > MAX_INTERVALS_PER_DAY:
        c.add(name, N_("At most {max} intervals a day"), max=MAX_INTERVALS_PER_DAY)
        return []
    out.sort(key=lambda sp: (sp.start_min, sp.end_min))
    reach: Span | None = None  # of the intervals so far, the one that ends last
    for b in out:
        if reach is not None and b.start_min < reach.end_min:
            c.add(
                name,
                OVERLAP[weekday],
                a=span_text(reach.start_min, reach.end_min),
                b=span_text(b.start_min, b.end_min),
            )
        if reach is None or b.end_min > reach.end_min:
            reach = b
    return out


def _parse_date(text: str) -> dt.date | None:
    for fmt in ("%Y-%m-%d", "%d.%m.%Y"):
        try:
            return dt.datetime.strptime(text, fmt).date()  # noqa: DTZ007 - a calendar date, no time zone
        except ValueError:
            continue
    return None


def parse_holidays(c: Check, text: str, name: str = "holidays") -> list[Holiday]:
    """Holidays, one per line: a date (2026-01-01 or 01.01.2026) and an optional name."""
    out: list[Holiday] = []
    seen: set[dt.date] = set()
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        m = HOLIDAY_RE.fullmatch(line)
        assert m is not None  # a non-blank line always has a first word
        day = _parse_date(m.group(1))
        label = (m.group(2) or "").strip()
        if day is None:
            c.add(
                name,
                N_("Line {line}: not a date: {value}; write it as 2026-01-01 or 01.01.2026"),
                line=n,
                value=m.group(1)[:32],
            )
            continue
        if len(label) > MAX_HOLIDAY_NAME:
            c.add(
                name,
                N_("Line {line}: the name is longer than {max} characters"),
                line=n,
                max=MAX_HOLIDAY_NAME,
            )
            continue
        if day in seen:
            c.add(name, N_("Line {line}: the date {date} is listed twice"), line=n, date=day.isoformat())
            continue
        seen.add(day)
        out.append(Holiday(day, label))
    if len(out) > MAX_HOLIDAYS:
        c.add(name, N_("At most {max} holidays"), max=MAX_HOLIDAYS)
    out.sort(key=lambda h: h.day)
    return out


def format_day(intervals: Sequence[ScheduleInterval], weekday: int) -> str:
    return ", ".join(
        span_text(i.start_min, i.end_min)
        for i in sorted(intervals, key=lambda i: i.start_min)
        if i.weekday == weekday
    )


def format_holidays(holidays: Sequence[ScheduleHoliday]) -> str:
    return "\n".join(f"{h.day.isoformat()} {h.name}".rstrip() for h in sorted(holidays, key=lambda h: h.day))


def input_of(sch: Schedule) -> ScheduleInput:
    """The form's view of a stored schedule."""
    return ScheduleInput(
        name=sch.name,
        days=[format_day(sch.intervals, d) for d in range(7)],
        holidays=format_holidays(sch.holidays),
    )


def week_summary(sch: Schedule) -> list[tuple[int, int, str]]:
    """Runs of consecutive weekdays with equal hours: ``[(0, 4, "09:00-18:00"), (5, 5, "10:00-14:00")]``."""
    texts = [format_day(sch.intervals, d) for d in range(7)]
    out: list[tuple[int, int, str]] = []
    for d, t in enumerate(texts):
        if not t:
            continue
        if out and out[-1][1] == d - 1 and out[-1][2] == t:
            out[-1] = (out[-1][0], d, t)
        else:
            out.append((d, d, t))
    return out


def is_work_time(schedule: Schedule, when_utc: dt.datetime, tz: str) -> bool:
    """Work iff the local date is not a holiday and the local time falls in an interval of that weekday."""
    if when_utc.tzinfo is None:
        raise ValueError("when_utc must be an aware datetime")
    local = when_utc.astimezone(zoneinfo.ZoneInfo(tz))
    if any(h.day == local.date() for h in schedule.holidays):
        return False
    minute = local.hour * 60 + local.minute
    wd = local.weekday()
    return any(i.weekday == wd and i.start_min <= minute < i.end_min for i in schedule.intervals)


async def _validate(
    s: AsyncSession, domain_id: uuid.UUID, d: ScheduleInput, current: Schedule | None
) -> tuple[Check, list[Span], list[Holiday]]:
    c = Check()
    d.name = c.text("name", d.name, max_len=64)
    if not c.has("name"):
        taken = await s.scalar(
            select(Schedule.id).where(Schedule.domain_id == domain_id, Schedule.name == d.name)
        )
        if taken is not None and (current is None or taken != current.id):
            c.add("name", N_("A schedule with this name already exists"))
    days = (list(d.days) + [""] * 7)[:7]
    spans = [sp for wd in range(7) for sp in parse_day(c, wd, days[wd])]
    holidays = parse_holidays(c, d.holidays)
    return c, spans, holidays


async def _apply(s: AsyncSession, sch: Schedule, spans: list[Span], holidays: list[Holiday]) -> None:
    # Old rows go first: a kept holiday date would otherwise clash with (schedule_id, day) on insert.
    sch.intervals.clear()
    sch.holidays.clear()
    await s.flush()
    sch.intervals.extend(
        ScheduleInterval(weekday=x.weekday, start_min=x.start_min, end_min=x.end_min) for x in spans
    )
    sch.holidays.extend(ScheduleHoliday(day=h.day, name=h.name) for h in holidays)


async def create_schedule(s: AsyncSession, domain_id: uuid.UUID, data: ScheduleInput) -> Schedule:
    c, spans, holidays = await _validate(s, domain_id, data, None)
    c.done()
    sch = Schedule(domain_id=domain_id, name=data.name, intervals=[], holidays=[])
    s.add(sch)
    await _apply(s, sch, spans, holidays)
    await s.flush()
    return sch


async def update_schedule(
    s: AsyncSession, domain_id: uuid.UUID, schedule_id: uuid.UUID, data: ScheduleInput
) -> Schedule:
    sch = await get_schedule(s, domain_id, schedule_id)
    c, spans, holidays = await _validate(s, domain_id, data, sch)
    c.done()
    sch.name = data.name
    await _apply(s, sch, spans, holidays)
    await s.flush()
    return sch


async def delete_schedule(s: AsyncSession, domain_id: uuid.UUID, schedule_id: uuid.UUID) -> None:
    sch = await get_schedule(s, domain_id, schedule_id)
    used = await s.scalar(
        select(RoutingRule.id)
        .where(RoutingRule.domain_id == domain_id, RoutingRule.schedule_id == sch.id)
        .limit(1)
    )
    if used is not None:
        raise ValidationFailed.one("id", N_("The schedule is used by routing rules; change them first"))
    await s.delete(sch)
    await s.flush()


async def get_schedule(s: AsyncSession, domain_id: uuid.UUID, schedule_id: uuid.UUID) -> Schedule:
    sch: Schedule | None = await s.scalar(
        select(Schedule).where(Schedule.domain_id == domain_id, Schedule.id == schedule_id)
    )
    if sch is None:
        raise NotFound("schedule", schedule_id)
    return sch


async def list_schedules(s: AsyncSession, domain_id: uuid.UUID, q: str = "", page: int = 1) -> Page[Schedule]:
    stmt = select(Schedule).where(Schedule.domain_id == domain_id).order_by(Schedule.name)
    if q.strip():
        stmt = stmt.where(Schedule.name.ilike(like_pattern(q.strip()), escape="\\"))
    return await paginate(s, stmt, page)


async def all_schedules(s: AsyncSession, domain_id: uuid.UUID) -> list[Schedule]:
    rows = await s.scalars(select(Schedule).where(Schedule.domain_id == domain_id).order_by(Schedule.name))
    return list(rows.all())
