"""The collections profile's frequency caps (autoinformer.md §3.3): answered attempts of one number across all
of the domain's campaigns, per recipient-local day, week (Mon–Sun) and month.

The platform operator sets them (``PlatformSetting`` ``autoinformer.collections_caps``
``{"day": 1, "week": 2, "month": 8}``, the shipped defaults); a due attempt that a cap blocks waits until the
period that blocks it ends.
"""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.store.models import AiAttempt

CAPS_KEY = "autoinformer.collections_caps"
LOOKBACK = dt.timedelta(days=32)  # the longest period (a month) seen from any moment in it


@dataclass(frozen=True, slots=True)
class Caps:
    day: int = 1
    week: int = 2
    month: int = 8

    @classmethod
    def from_json(cls, value: Any) -> Caps:
        default = cls()
        if not isinstance(value, Mapping):
            return default

        def cap(name: str, fallback: int) -> int:
            raw = value.get(name)
            if raw is None:
                return fallback
            n = int(raw)
            if n < 1:
                raise ValueError(f"{CAPS_KEY}.{name} must be ≥ 1")
            return n

        return cls(
            day=cap("day", default.day), week=cap("week", default.week), month=cap("month", default.month)
        )


def _periods(local: dt.datetime) -> tuple[tuple[dt.datetime, dt.datetime], ...]:
    """(start, end) of the local day, week (Mon–Sun) and month containing ``local`` (aware, local zone)."""
    zone = local.tzinfo
    day = local.date()
    day_start = dt.datetime.combine(day, dt.time(), tzinfo=zone)
    monday = day - dt.timedelta(days=day.weekday())
    first = day.replace(day=1)
    following = (first + dt.timedelta(days=32)).replace(day=1)
    return (
        (day_start, dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=zone)),
        (
            dt.datetime.combine(monday, dt.time(), tzinfo=zone),
            dt.datetime.combine(monday + dt.timedelta(days=7), dt.time(), tzinfo=zone),
        ),
        (
            dt.datetime.combine(first, dt.time(), tzinfo=zone),
            dt.datetime.combine(following, dt.time(), tzinfo=zone),
        ),
    )


def next_allowed(
    answered: Sequence[dt.datetime], caps: Caps, *, zone: zoneinfo.ZoneInfo, now: dt.datetime
) -> dt.datetime | None:
    """None when the number may be dialled at ``now``; else the first moment (UTC) no cap blocks it.

    ``answered``: the answer times of the number's earlier attempts (any order, at most ``now``)."""
    limits = (caps.day, caps.week, caps.month)
    at = now
    for _ in range(64):  # each step moves past a whole period; a few steps always settle it
        blocked_until: dt.datetime | None = None
        for (start, end), limit in zip(_periods(at.astimezone(zone)), limits, strict=True):
            if sum(1 for t in answered if start <= t < end) >= limit:
                end_utc = end.astimezone(dt.UTC)
                blocked_until = end_utc if blocked_until is None else max(blocked_until, end_utc)
        if blocked_until is None:
            return None if at == now else at
        at = blocked_until
    return at


async def answered_times(
    s: AsyncSession, domain_id: uuid.UUID, phone: str, *, now: dt.datetime
) -> list[dt.datetime]:
    """Answer times of the number's attempts in every campaign of the domain over the last month or so."""
    rows = await s.scalars(
        select(AiAttempt.answered_at).where(
            AiAttempt.domain_id == domain_id,
            AiAttempt.phone == phone,
            AiAttempt.answered_at.is_not(None),
            AiAttempt.answered_at >= now - LOOKBACK,
        )
    )
    return [t for t in rows.all() if t is not None]
