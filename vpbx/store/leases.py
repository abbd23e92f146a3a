"""Database leases by compare-and-swap (one UPDATE, so SQLite and PostgreSQL alike).

A lease names an owner and an expiry; the owner renews it well before the expiry, and anybody may take it
once it has expired (its owner died: ``kill -9``). The UPDATE's WHERE is the compare: of two racing takers
only one gets the row back. The autoinformer's per-campaign dispatcher lease
(vpbx/autoinformer/dispatcher.py) and amoCRM's per-account lease (vpbx/amocrm/lease.py) use these helpers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, or_, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute


def lease_free(
    owner_col: InstrumentedAttribute[Any], until_col: InstrumentedAttribute[Any], owner: str, now: dt.datetime
) -> ColumnElement[bool]:
    """The rows ``owner`` may take: its own, never leased, released or expired."""
    return or_(owner_col == owner, owner_col.is_(None), until_col.is_(None), until_col < now)


async def take_leases(
    s: AsyncSession,
    model: type[Any],
    key_col: InstrumentedAttribute[Any],
    keys: Sequence[Any],
    *,
    owner_col: InstrumentedAttribute[str | None] | InstrumentedAttribute[str],
    until_col: InstrumentedAttribute[dt.datetime | None],
    owner: str,
    now: dt.datetime,
    lease_for: dt.timedelta,
) -> set[Any]:
    """Take or renew ``owner``'s lease on the rows of ``keys`` whose lease is free, expired or already its
    own, in one UPDATE … RETURNING (PostgreSQL, SQLite ≥ 3.35): the keys whose lease ``owner`` holds until
    ``now + lease_for``. The caller commits."""
    if not keys:
        return set()
    result = await s.execute(
        update(model)
        .where(key_col.in_(list(keys)), lease_free(owner_col, until_col, owner, now))
        .values({owner_col.key: owner, until_col.key: now + lease_for})
        .returning(key_col)
        .execution_options(synchronize_session=False)
    )
    return set(result.scalars())


async def release_lease(
    s: AsyncSession,
    model: type[Any],
    where: ColumnElement[bool],
    *,
    owner_col: InstrumentedAttribute[str | None] | InstrumentedAttribute[str],
    until_col: InstrumentedAttribute[dt.datetime | None],
    owner: str,
    clear_owner: bool = False,
) -> int:
    """Give up ``owner``'s lease(s) among the rows ``where`` selects (a clean stop: others need not wait for
    the expiry); the number released. ``clear_owner`` also empties a nullable owner column.
    The caller commits."""
    result = await s.execute(
        update(model)
        .where(where, owner_col == owner)
        .values({until_col.key: None, **({owner_col.key: None} if clear_owner else {})})
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)
