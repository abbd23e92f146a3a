"""When an attempt may start (autoinformer.md §3.3): days ∩ windows ∩ quiet hours, with at least
``ring_timeout_s`` left before the open interval closes.

Pure: every function takes the time and the rules and touches no database. Windows are read in the
recipient's zone (``time_basis`` ``recipient``: ``AiContact.timezone``, None → the domain's) or the domain's
(``domain``); quiet hours are always the recipient's local time (they are the law's limits on calls to that
person). The open intervals are built in UTC from both zones and intersected, so a recipient in UTC+7 with a
10:00–13:00 window is dialled at 10:00 local (06:00 Moscow) and a domain-basis window still cannot pass the
recipient's quiet hours.

Quiet hours are platform settings (``PlatformSetting`` ``autoinformer.quiet_hours``): shipped defaults
08:00–22:00 on working days and 09:00–20:00 on weekends and public holidays. Working days come from the
``holidays`` package's Russian calendar (its transfers included) with the operator's corrections in
``autoinformer.holidays`` ``{"add": ["YYYY-MM-DD", …], "remove": […]}`` (add = a day off, remove = a
working day).
"""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import holidays

from vpbx.autoinformer.schemas import CampaignSpec

QUIET_HOURS_KEY = "autoinformer.quiet_hours"
HOLIDAYS_KEY = "autoinformer.holidays"
HORIZON_DAYS = 400  # next_open looks this far ahead at most (every day closed → None)
_SCAN_DAYS = 7  # days of intervals built per step of next_open

Interval = tuple[dt.datetime, dt.datetime]  # [start, end) in UTC


def _hhmm(text: str) -> dt.time:
    hours, minutes = text.split(":")
    return dt.time(int(hours), int(minutes))


@dataclass(frozen=True, slots=True)
class QuietHours:
    """The platform's hard calling hours in the recipient's local time (230-FZ art. 7 by default)."""

    workday: tuple[dt.time, dt.time] = (dt.time(8, 0), dt.time(22, 0))
    dayoff: tuple[dt.time, dt.time] = (dt.time(9, 0), dt.time(20, 0))

    @classmethod
    def from_json(cls, value: Any) -> QuietHours:
        """``{"workday": {"from": "08:00", "to": "22:00"}, "dayoff": {...}}``; a missing part keeps its
        default."""
        default = cls()
        if not isinstance(value, Mapping):
            return default

        def part(name: str, fallback: tuple[dt.time, dt.time]) -> tuple[dt.time, dt.time]:
            raw = value.get(name)
            if not isinstance(raw, Mapping):
                return fallback
            start, end = _hhmm(str(raw["from"])), _hhmm(str(raw["to"]))
            if start >= end:
                raise ValueError(f"{QUIET_HOURS_KEY}.{name}: 'from' must be before 'to'")
            return start, end

        return cls(workday=part("workday", default.workday), dayoff=part("dayoff", default.dayoff))


@functools.lru_cache(maxsize=1)
def _russia() -> holidays.HolidayBase:
    return holidays.country_holidays("RU")


@dataclass(frozen=True, slots=True)
class WorkCalendar:
    """Russia's production calendar: the package's working days, corrected by the operator."""

    add: frozenset[dt.date] = frozenset()  # days off the package does not know
    remove: frozenset[dt.date] = frozenset()  # days the package calls off that are working days

    @classmethod
    def from_json(cls, value: Any) -> WorkCalendar:
        if not isinstance(value, Mapping):
            return cls()

        def dates(name: str) -> frozenset[dt.date]:
            return frozenset(dt.date.fromisoformat(str(d)) for d in value.get(name) or ())

        return cls(add=dates("add"), remove=dates("remove"))

    def is_working_day(self, day: dt.date) -> bool:
        if day in self.add:
            return False
        if day in self.remove:
            return True
        return bool(_russia().is_working_day(day))


@dataclass(frozen=True, slots=True)
class PlatformRules:
    quiet: QuietHours = field(default_factory=QuietHours)
    calendar: WorkCalendar = field(default_factory=WorkCalendar)

    @classmethod
    def from_settings(cls, values: Mapping[str, Any]) -> PlatformRules:
        """From the ``PlatformSetting`` rows (key → JSON); absent keys keep the shipped defaults."""
        return cls(
            quiet=QuietHours.from_json(values.get(QUIET_HOURS_KEY)),
            calendar=WorkCalendar.from_json(values.get(HOLIDAYS_KEY)),
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """A campaign's schedule as the start rule needs it."""

    days: frozenset[int]  # ISO weekdays
    windows: tuple[tuple[dt.time, dt.time], ...]
    time_basis: str = "recipient"
    ring_timeout_s: int = 30

    @classmethod
    def of(cls, spec: CampaignSpec) -> Plan:
        sched = spec.schedule
        return cls(
            days=frozenset(sched.days),
            windows=tuple(sorted((_hhmm(w.from_), _hhmm(w.to)) for w in sched.windows)),
            time_basis=sched.time_basis,
            ring_timeout_s=spec.ring_timeout_s,
        )


def zones(
    plan: Plan, recipient_tz: str | None, domain_tz: str
) -> tuple[zoneinfo.ZoneInfo, zoneinfo.ZoneInfo]:
    """(the windows' zone, the quiet hours' zone) for one recipient."""
    recipient = zone_of(recipient_tz) or zone_of(domain_tz) or zoneinfo.ZoneInfo("Europe/Moscow")
    windows = recipient if plan.time_basis == "recipient" else (zone_of(domain_tz) or recipient)
    return windows, recipient


def zone_of(name: str | None) -> zoneinfo.ZoneInfo | None:
    if not name:
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None


def _local_span(day: dt.date, start: dt.time, end: dt.time, zone: zoneinfo.ZoneInfo) -> Interval:
    a = dt.datetime.combine(day, start, tzinfo=zone).astimezone(dt.UTC)
    b = dt.datetime.combine(day, end, tzinfo=zone).astimezone(dt.UTC)
    return a, b


def _window_spans(plan: Plan, zone: zoneinfo.ZoneInfo, days: Iterable[dt.date]) -> list[Interval]:
    return [
        _local_span(day, start, end, zone)
        for day in days
        if day.isoweekday() in plan.days
        for start, end in plan.windows
    ]


def _quiet_spans(rules: PlatformRules, zone: zoneinfo.ZoneInfo, days: Iterable[dt.date]) -> list[Interval]:
    out = []
    for day in days:
        start, end = rules.quiet.workday if rules.calendar.is_working_day(day) else rules.quiet.dayoff
        out.append(_local_span(day, start, end, zone))
    return out


def _intersect(a: list[Interval], b: list[Interval]) -> list[Interval]:
    a, b = sorted(a), sorted(b)
    out: list[Interval] = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def open_intervals(
    plan: Plan,
    rules: PlatformRules,
    *,
    recipient_tz: str | None,
    domain_tz: str,
    start: dt.datetime,
    days: int,
) -> list[Interval]:
    """The UTC intervals inside days ∩ windows ∩ quiet hours that overlap ``days`` days from ``start``."""
    window_zone, quiet_zone = zones(plan, recipient_tz, domain_tz)
    first = start.astimezone(dt.UTC).date() - dt.timedelta(days=1)  # zones up to ±14 h from UTC
    span = [first + dt.timedelta(days=k) for k in range(days + 3)]
    return _intersect(_window_spans(plan, window_zone, span), _quiet_spans(rules, quiet_zone, span))


def can_start(
    plan: Plan, rules: PlatformRules, *, recipient_tz: str | None, domain_tz: str, at: dt.datetime
) -> bool:
    """The start rule: ``at`` is inside an open interval with ≥ ``ring_timeout_s`` of it left."""
    ring = dt.timedelta(seconds=plan.ring_timeout_s)
    return any(
        a <= at and at + ring <= b
        for a, b in open_intervals(
            plan,
            rules,
            recipient_tz=recipient_tz,
            domain_tz=domain_tz,
            start=at - dt.timedelta(days=1),
            days=2,
        )
    )


def next_open(
    plan: Plan,
    rules: PlatformRules,
    *,
    recipient_tz: str | None,
    domain_tz: str,
    after: dt.datetime,
    horizon_days: int = HORIZON_DAYS,
) -> dt.datetime | None:
    """The earliest moment ≥ ``after`` at which the start rule holds (``after`` itself when it does), or None
    when nothing opens within ``horizon_days``."""
    ring = dt.timedelta(seconds=plan.ring_timeout_s)
    cursor = after - dt.timedelta(days=1)
    for _ in range(0, horizon_days + _SCAN_DAYS, _SCAN_DAYS):
        for a, b in open_intervals(
            plan, rules, recipient_tz=recipient_tz, domain_tz=domain_tz, start=cursor, days=_SCAN_DAYS
        ):
            candidate = max(a, after)
            if candidate + ring <= b:
                return candidate
        cursor += dt.timedelta(days=_SCAN_DAYS)
    return None
