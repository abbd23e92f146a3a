"""Login throttling: failures per login name and per source address, then a lockout.

Keys exist whether or not the login does, so a locked unknown login looks exactly like a locked real one.
The table lives in the database so every cabinet node sees the same counts.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.settings import LoginPolicy
from vpbx.store.models import LoginThrottle

IP_FACTOR = 4  # a shared address (an office NAT) gets more attempts than one login


def throttle_keys(login: str, client_ip: str) -> list[tuple[str, int]]:
    """(key, factor) pairs: a key locks after ``policy.max_failures × factor`` failures in the window."""
    return [(f"login:{login.strip().lower()[:250]}", 1), (f"ip:{client_ip}", IP_FACTOR)]


async def locked_until(s: AsyncSession, keys: list[tuple[str, int]], now: dt.datetime) -> dt.datetime | None:
    rows = (await s.scalars(select(LoginThrottle).where(LoginThrottle.key.in_([k for k, _ in keys])))).all()
    until = [r.locked_until for r in rows if r.locked_until is not None and r.locked_until > now]
    return max(until) if until else None


async def record_failure(
    s: AsyncSession, keys: list[tuple[str, int]], now: dt.datetime, policy: LoginPolicy
) -> None:
    window = dt.timedelta(seconds=policy.window_s)
    for key, factor in keys:
        row = await s.get(LoginThrottle, key)
        if row is None:
            row = LoginThrottle(key=key, failures=0, window_start=now)
            s.add(row)
        if now - row.window_start > window:
            row.failures, row.window_start = 0, now
        row.failures += 1
        if row.failures >= policy.max_failures * factor:
            row.locked_until = now + dt.timedelta(seconds=policy.lockout_s)
            row.failures, row.window_start = 0, now
    await s.flush()


async def clear_login(s: AsyncSession, login: str) -> None:
    key = throttle_keys(login, "")[0][0]
    await s.execute(delete(LoginThrottle).where(LoginThrottle.key == key))
