"""The journal's queries and statistics give the same answers on SQLite and PostgreSQL.

The statistics count calls per UTC quarter hour with a per-dialect "seconds since the epoch" expression; these
calls sit on the edges of quarters and of local days, in a time zone half an hour off UTC.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.web.history_kit import add_calls, call_record
from vpbx import store
from vpbx.pbx import journal
from vpbx.store.models import Domain

TZ = "Asia/Kolkata"  # UTC+5:30: a local hour straddles two UTC hours


def utc(h: int, m: int, s: float = 0) -> dt.datetime:
    whole = int(s)
    return dt.datetime(2026, 3, 1, h, m, whole, int((s - whole) * 1_000_000), tzinfo=dt.UTC)


async def test_stats_and_journal_agree_on_both_databases(engine: AsyncEngine) -> None:
    sessions = store.session_factory(engine)
    async with sessions() as s:
        d, other = Domain(name="acme.vpbx.test", timezone=TZ), Domain(name="other.vpbx.test", timezone=TZ)
        s.add_all([d, other])
        await s.commit()
    await add_calls(
        sessions,
        call_record(d.id, started_at=utc(18, 29, 59.9), answering_pin="101", talk_s=30),  # 23:59:59.9 local
        call_record(d.id, started_at=utc(18, 30), caller_pin="101", callee_number="200"),  # 00:00 next day
        call_record(d.id, started_at=utc(3, 29, 59.6), call_type="outbound", caller_pin="102", talk_s=90),
        call_record(d.id, started_at=utc(3, 45), answering_pin="101", talk_s=15),  # 09:15 local
        call_record(other.id, started_at=utc(3, 45), answering_pin="101", talk_s=500),
    )
    f = journal.JournalFilter(date_from=dt.date(2026, 3, 1), date_to=dt.date(2026, 3, 2))
    async with sessions() as s:
        stats = await journal.period_stats(s, d.id, f, TZ)
        found = (await s.scalars(journal.journal_query(d.id, f, TZ))).all()
        user = (await s.scalars(journal.journal_query(d.id, f, TZ, own_pin="102"))).all()
        first_day = journal.JournalFilter(date_from=dt.date(2026, 3, 1), date_to=dt.date(2026, 3, 1))
        day_one = await journal.period_stats(s, d.id, first_day, TZ)
        # the CSV export streams the journal in batches (a server-side cursor on PostgreSQL)
        stream = await s.stream_scalars(journal.journal_query(d.id, f, TZ).execution_options(yield_per=3))
        batches = [[c.session_id for c in batch] async for batch in stream.partitions(3)]

    assert (stats.total.total, stats.total.answered) == (4, 3)
    by_hour = {h: (t.total, t.answered) for h, t in enumerate(stats.hours) if t.total}
    # 03:29:59.6 UTC is 08:59:59 local (rounded, it would be 09:00); 18:29:59.9 UTC is 23:59:59 local
    assert by_hour == {8: (1, 1), 9: (1, 1), 23: (1, 1), 0: (1, 0)}
    assert [(day, t.total, t.answered) for day, t in stats.days] == [
        (dt.date(2026, 3, 1), 3, 3),
        (dt.date(2026, 3, 2), 1, 0),
    ]
    assert [(u.pin, u.answered, u.talk_s) for u in stats.users] == [("101", 2, 45), ("102", 1, 90)]
    assert (day_one.total.total, day_one.total.answered) == (3, 3)
    assert [c.started_at for c in found] == sorted((c.started_at for c in found), reverse=True)
    assert len(found) == 4 and [c.caller_pin for c in user] == ["102"]
    assert [len(b) for b in batches] == [3, 1] and [x for b in batches for x in b] == [
        c.session_id for c in found
    ]
