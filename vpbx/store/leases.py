"""Database leases by compare-and-swap (one UPDATE, so SQLite and PostgreSQL alike).

A lease names an owner and an expiry; the owner renews it well before the expiry, and anybody may take it
once it has expired (its owner died: ``kill -9``). The UPDATE's WHERE is the compare: of two racing takers
exactly one row count is 1. The autoinformer's per-campaign dispatcher lease (vpbx/autoinformer/dispatcher.py)
is the same pattern written inline; amoCRM's per-account lease (vpbx/amocrm/lease.py) uses this helper.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ColumnElement, or_, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute


async def take_lease(
    s: AsyncSession,
    model: type[Any],
    where: ColumnElement[bool],
    *,
    owner_col: InstrumentedAttribute[str],
    until_col: InstrumentedAttribute[dt.datetime | None],
    owner: str,
    now: dt.datetime,
    lease_for: dt.timedelta,
) -> bool:
    """Take or renew the lease of the row(s) ``where`` selects for ``owner``: true when this call holds it
    until ``now + lease_for``. The caller commits."""
    result = await s.execute(
        update(model)
        .where(where, or_(owner_col == owner, until_col.is_(None), until_col < now))
        .values({owner_col.key: owner, until_col.key: now + lease_for})
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0) == 1


async def release_lease(
    s: AsyncSession,
    model: type[Any],
    where: ColumnElement[bool],
    *,
    owner_col: InstrumentedAttribute[str],
    until_col: InstrumentedAttribute[dt.datetime | None],
    owner: str,
) -> int:
    """Give up ``owner``'s lease(s) among the rows ``where`` selects (a clean stop: others need not wait for
    the expiry); the number released. The caller commits."""
    result = await s.execute(
        update(model)
        .where(where, owner_col == owner)
        .values({until_col.key: None})
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)
