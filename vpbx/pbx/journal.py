"""The call journal: the cabinet's filters over ``CallRecord``, and the statistics of a period.

Every query is built from a tenant id and, for a plain user, their extension: a user sees only calls they took
part in (as the caller, the callee or the one who answered). Periods are whole days of the domain's time
zone, turned into UTC bounds here, so the database only ever compares instants.

Statistics are SQL aggregates on both SQLite and PostgreSQL: calls are counted per quarter hour of UTC (every
time zone's offset is a multiple of 15 minutes) with one portable expression for "seconds since the epoch",
and the quarters are folded into the domain's hours and days in Python, where the time zone rules live.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import ColumnElement, Integer, Select, case, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from vpbx.errors import FieldError, ValidationFailed
from vpbx.pbx.validation import N_
from vpbx.store.models import CallRecord, User
from vpbx.store.paging import like_pattern

MAX_PERIOD_DAYS = 366  # a journal, an export or a chart covers at most a year (a leap one included)
DEFAULT_PERIOD_DAYS = 30  # without dates: the last 30 days, today included
BUCKET_S = 900  # statistics are counted per quarter hour of UTC, then folded into local hours
MAX_NUMBER_FILTER = 64
DIRECTIONS = ("incoming", "outbound", "internal")
STATES = ("answered", "missed")
PRESETS = ("today", "yesterday", "7d", "30d")
DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
NUMBER_FORMATTING = re.compile(r"[\s().\-]")


@dataclass(frozen=True, slots=True)
class JournalFilter:
    """What the journal shows; ``date_from`` and ``date_to`` are days of the domain's calendar, inclusive."""

    date_from: dt.date
    date_to: dt.date
    direction: str = ""  # "" or one of DIRECTIONS
    state: str = ""  # "" or one of STATES
    number: str = ""  # a substring of the caller's, callee's or line's number
    pin: str = ""  # a user's extension: calls they made, were called on, or answered
    page: int = 1

    def query(self, **changes: Any) -> dict[str, str]:
        """The filter as URL query parameters (only those set), so a filtered view can be shared."""
        f = replace(self, **changes) if changes else self
        params = {
            "from": f.date_from.isoformat(),
            "to": f.date_to.isoformat(),
            "direction": f.direction,
            "state": f.state,
            "number": f.number,
            "user": f.pin,
            "page": str(f.page) if f.page > 1 else "",
        }
        return {k: v for k, v in params.items() if v}


def period_of(preset: str, today: dt.date) -> tuple[dt.date, dt.date]:
    """The days a preset names, in the domain's calendar."""
    if preset == "yesterday":
        day = today - dt.timedelta(days=1)
        return day, day
    if preset == "7d":
        return today - dt.timedelta(days=6), today
    if preset == "30d":
        return today - dt.timedelta(days=29), today
    return today, today


def _date(params: Mapping[str, str], name: str, errors: list[FieldError]) -> dt.date | None:
    """A day as ``YYYY-MM-DD``, what ``<input type=date>`` sends; not even ISO's ``YYYYMMDD``."""
    raw = (params.get(name) or "").strip()
    if not raw:
        return None
    if DATE_RE.fullmatch(raw):
        try:
            return dt.date.fromisoformat(raw)
        except ValueError:
            pass
    errors.append(FieldError(name, N_("Enter a date as YYYY-MM-DD")))
    return None


def number_fragment(raw: str) -> str:
    """What to look for in the stored numbers: a number as people write it (``916 123-45``, ``(495)``)
    loses its spaces, dashes and brackets, since numbers are stored without them; other text stays."""
    text = raw.strip()[:MAX_NUMBER_FILTER]
    bare = NUMBER_FORMATTING.sub("", text)
    return bare if bare and bare.lstrip("+").isdigit() else text


def parse_filter(params: Mapping[str, str], today: dt.date) -> JournalFilter:
    """The journal's filter from URL query parameters; a malformed period raises ``ValidationFailed``.

    Without dates the period is the last ``DEFAULT_PERIOD_DAYS`` days; with only one, the other end is today
    (or the default span before the given end). Unknown directions and states mean "all".
    """
    errors: list[FieldError] = []
    preset = params.get("period", "")
    if preset in PRESETS:
        start, end = period_of(preset, today)
    else:
        start_in, end_in = _date(params, "from", errors), _date(params, "to", errors)
        end = end_in or today
        start = start_in or end - dt.timedelta(days=DEFAULT_PERIOD_DAYS - 1)
    if not errors and start > end:
        errors.append(FieldError("from", N_("The period starts after it ends")))
    elif not errors and (end - start).days + 1 > MAX_PERIOD_DAYS:
        errors.append(FieldError("to", N_("The period is longer than {n} days"), {"n": MAX_PERIOD_DAYS}))
    if errors:
        raise ValidationFailed(errors)
    direction = params.get("direction", "")
    state = params.get("state", "")
    try:
        page = max(1, min(int(params.get("page") or 1), 100_000))
    except ValueError:
        page = 1
    return JournalFilter(
        date_from=start,
        date_to=end,
        direction=direction if direction in DIRECTIONS else "",
        state=state if state in STATES else "",
        number=number_fragment(params.get("number") or ""),
        pin=(params.get("user") or "").strip()[:6],
        page=page,
    )


def utc_bounds(f: JournalFilter, timezone: str) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) in UTC: from the first day's local midnight to the midnight after the last day."""
    zone = zoneinfo.ZoneInfo(timezone)
    start = dt.datetime.combine(f.date_from, dt.time(0), tzinfo=zone)
    end = dt.datetime.combine(f.date_to + dt.timedelta(days=1), dt.time(0), tzinfo=zone)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


def _party(pin: str) -> ColumnElement[bool]:
    return or_(CallRecord.caller_pin == pin, CallRecord.callee_pin == pin, CallRecord.answering_pin == pin)


def conditions(
    tenant: uuid.UUID, f: JournalFilter, timezone: str, *, own_pin: str | None = None
) -> list[ColumnElement[bool]]:
    """The WHERE of every journal query: the tenant first, the viewer's own calls for a plain user."""
    start, end = utc_bounds(f, timezone)
    where: list[ColumnElement[bool]] = [
        CallRecord.domain_id == tenant,
        CallRecord.started_at >= start,
        CallRecord.started_at < end,
    ]
    if own_pin is not None:
        where.append(_party(own_pin) if own_pin else false())
    if f.direction:
        where.append(CallRecord.call_type == f.direction)
    if f.state == "answered":
        where.append(CallRecord.answered_at.is_not(None))
    elif f.state == "missed":
        where.append(CallRecord.answered_at.is_(None))
    if f.number:
        pattern = like_pattern(f.number)
        where.append(
            or_(
                CallRecord.caller_number.like(pattern, escape="\\"),
                CallRecord.callee_number.like(pattern, escape="\\"),
                CallRecord.line.like(pattern, escape="\\"),
            )
        )
    if f.pin:
        where.append(_party(f.pin))
    return where


def journal_query(
    tenant: uuid.UUID, f: JournalFilter, timezone: str, *, own_pin: str | None = None
) -> Select[CallRecord]:
    """The journal's rows, newest first (ties by id, so pages never overlap)."""
    return (
        select(CallRecord)
        .where(*conditions(tenant, f, timezone, own_pin=own_pin))
        .order_by(CallRecord.started_at.desc(), CallRecord.id.desc())
    )


async def get_record(
    s: AsyncSession, tenant: uuid.UUID, session_id: str, *, own_pin: str | None = None
) -> CallRecord | None:
    """One call of the tenant (and of the user, for a plain user); anything else is ``None``."""
    where = [CallRecord.domain_id == tenant, CallRecord.session_id == session_id[:64]]
    if own_pin is not None:
        where.append(_party(own_pin) if own_pin else false())
    rec: CallRecord | None = await s.scalar(select(CallRecord).where(*where))
    return rec


async def user_names(s: AsyncSession, tenant: uuid.UUID, pins: Iterable[str | None]) -> dict[str, str]:
    """Display names of the tenant's users with these extensions."""
    wanted = {p for p in pins if p}
    if not wanted:
        return {}
    rows = await s.execute(
        select(User.pin, User.display_name).where(User.domain_id == tenant, User.pin.in_(wanted))
    )
    return dict(rows.all())


async def user_choices(s: AsyncSession, tenant: uuid.UUID) -> list[tuple[str, str]]:
    """(extension, name) of the tenant's users, for the journal's user filter."""
    rows = await s.execute(
        select(User.pin, User.display_name).where(User.domain_id == tenant).order_by(User.pin)
    )
    return [(pin, name) for pin, name in rows.all()]


# --- statistics ---------------------------------------------------------------------------------------------


class epoch_seconds(FunctionElement[int]):  # lower case, as SQL functions are named
    """Whole seconds since 1970 of a UTC timestamp column, on SQLite and PostgreSQL alike."""

    type = Integer()
    inherit_cache = True
    name = "epoch_seconds"


@compiles(epoch_seconds, "sqlite")
def _epoch_sqlite(element: epoch_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite keeps the UTC wall clock as text ("2026-03-02 09:30:00.000000"); strftime reads it as UTC
    return f"CAST(strftime('%s', {compiler.process(element.clauses, **kw)}) AS INTEGER)"


@compiles(epoch_seconds, "postgresql")
def _epoch_postgresql(element: epoch_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    # FLOOR, not a plain cast: the cast rounds, and 09:44:59.6 belongs to the quarter before 09:45
    return f"CAST(FLOOR(EXTRACT(EPOCH FROM {compiler.process(element.clauses, **kw)})) AS BIGINT)"


@dataclass(slots=True)
class Tally:
    total: int = 0
    answered: int = 0

    @property
    def missed(self) -> int:
        return self.total - self.answered


@dataclass(frozen=True, slots=True)
class UserTally:
    pin: str
    name: str
    answered: int
    talk_s: int


@dataclass(slots=True)
class Stats:
    """A period's calls: per local hour of day (0–23), per local day, in total, and per user."""

    days: list[tuple[dt.date, Tally]]
    hours: list[Tally] = field(default_factory=lambda: [Tally() for _ in range(24)])
    total: Tally = field(default_factory=Tally)
    users: list[UserTally] = field(default_factory=list)


async def period_stats(
    s: AsyncSession, tenant: uuid.UUID, f: JournalFilter, timezone: str, *, own_pin: str | None = None
) -> Stats:
    where = conditions(tenant, f, timezone, own_pin=own_pin)
    epoch = epoch_seconds(CallRecord.started_at)
    bucket = (epoch - epoch % BUCKET_S).label("bucket")
    answered = func.sum(case((CallRecord.answered_at.is_not(None), 1), else_=0))
    rows = await s.execute(select(bucket, func.count(), answered).where(*where).group_by(bucket))
    zone = zoneinfo.ZoneInfo(timezone)
    n_days = (f.date_to - f.date_from).days + 1
    stats = Stats(days=[(f.date_from + dt.timedelta(days=i), Tally()) for i in range(n_days)])
    for start_s, total, took in rows.all():
        local = dt.datetime.fromtimestamp(int(start_s), zone)
        took = int(took or 0)
        for tally in (stats.hours[local.hour], stats.total):
            tally.total += total
            tally.answered += took
        index = (local.date() - f.date_from).days
        if 0 <= index < n_days:
            stats.days[index][1].total += total
            stats.days[index][1].answered += took

    # a user's answered calls: those they answered, and the outbound ones they made
    who = func.coalesce(CallRecord.answering_pin, CallRecord.caller_pin).label("who")
    per_user = await s.execute(
        select(who, func.count(), func.coalesce(func.sum(CallRecord.duration_s), 0))
        .where(*where, CallRecord.answered_at.is_not(None), who.is_not(None))
        .group_by(who)
    )
    counted = [(str(pin), int(n), int(talk)) for pin, n, talk in per_user.all() if pin]
    names = await user_names(s, tenant, [pin for pin, _, _ in counted])
    stats.users = sorted(
        (UserTally(pin=pin, name=names.get(pin, ""), answered=n, talk_s=talk) for pin, n, talk in counted),
        key=lambda u: (-u.answered, -u.talk_s, u.pin),
    )
    return stats
