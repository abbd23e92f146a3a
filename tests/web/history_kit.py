"""Call records for the journal tests, written as rows the way the engine's history writer leaves them."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from vpbx.pbx.bus import new_session_id
from vpbx.store.models import CallRecord

START = dt.datetime(2026, 3, 2, 9, 30, 0, tzinfo=dt.UTC)  # 12:30:00 in Moscow, the domains' time zone


def call_record(domain_id: uuid.UUID, *, started_at: dt.datetime = START, **kw: Any) -> CallRecord:
    """A finished call; ``talk_s`` > 0 makes it answered (by ``answering_pin``, if given)."""
    talk_s: int = kw.pop("talk_s", 0)
    ring_s: int = kw.pop("ring_s", 5)
    answered = talk_s > 0 or kw.pop("answered", False)
    answered_at = started_at + dt.timedelta(seconds=ring_s) if answered else None
    ended_at = (answered_at or started_at) + dt.timedelta(seconds=talk_s if answered else ring_s)
    party = kw.get("answering_pin") or kw.get("callee_pin") or kw.get("callee_number", "")
    log: list[list[Any]] = [[0, "ct", party]]
    if answered:
        log += [[ring_s, "cc", party], [ring_s + talk_s, "cd", party]]
    fields: dict[str, Any] = {
        "session_id": new_session_id(),
        "domain_id": domain_id,
        "call_type": "internal",
        "started_at": started_at,
        "answered_at": answered_at,
        "ended_at": ended_at,
        "end_reason": "normal",
        "duration_s": talk_s,
        "status_code": 200 if answered else 487,
        "status_text": "OK" if answered else "Request Terminated",
        "session_log": log,
    }
    fields.update(kw)
    return CallRecord(**fields)


async def add_calls(sessions: async_sessionmaker[AsyncSession], *records: CallRecord) -> list[CallRecord]:
    async with sessions() as s:
        s.add_all(records)
        await s.commit()
    return list(records)
