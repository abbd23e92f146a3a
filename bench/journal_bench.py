"""The call journal's queries over a year of calls: how long the cabinet's pages wait for the database.

    python bench/journal_bench.py                      # 100,000 calls on SQLite
    python bench/journal_bench.py --calls 300000 --url postgresql+asyncpg://vpbx:vpbx@127.0.0.1/vpbx_bench

The database is created (SQLite: a temporary file; PostgreSQL: the URL's database must exist and be empty),
migrated, and filled with one domain's calls spread over 366 days plus as many of another domain's. Each
measure runs ``--repeats`` times; the median is printed and appended as a JSON line to
``results/journal-latest.jsonl``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from vpbx import store
from vpbx.pbx import journal
from vpbx.store.models import CallRecord, Domain
from vpbx.store.paging import paginate

RESULTS = Path(__file__).parent / "results" / "journal-latest.jsonl"
TZ = "Europe/Moscow"
TODAY = dt.date(2026, 3, 2)
BATCH = 5_000


def fake_calls(domain_id: uuid.UUID, n: int, rng: random.Random) -> list[dict[str, Any]]:
    end = dt.datetime(2026, 3, 2, 21, 0, tzinfo=dt.UTC)
    rows = []
    for _ in range(n):
        started = end - dt.timedelta(seconds=rng.randrange(366 * 86400))
        answered = rng.random() < 0.7
        talk = rng.randrange(5, 600) if answered else 0
        pin = str(100 + rng.randrange(50))
        kind = rng.choice(("incoming", "outbound", "internal"))
        rows.append(
            {
                "id": uuid.uuid4(),
                "session_id": str(uuid.uuid4()),
                "domain_id": domain_id,
                "call_type": kind,
                "started_at": started,
                "answered_at": started + dt.timedelta(seconds=5) if answered else None,
                "ended_at": started + dt.timedelta(seconds=5 + talk),
                "duration_s": talk,
                "caller_number": f"+7916{rng.randrange(10**7):07d}" if kind == "incoming" else pin,
                "caller_pin": None if kind == "incoming" else pin,
                "callee_number": f"+7495{rng.randrange(10**7):07d}" if kind == "outbound" else pin,
                "answering_pin": pin if answered and kind != "outbound" else None,
                "session_log": [[0, "ct", pin], [5, "cc", pin], [5 + talk, "cd", pin]] if answered else [],
            }
        )
    return rows


async def timed(fn: Callable[[], Awaitable[object]], repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        await fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


async def main(args: argparse.Namespace) -> None:
    url = args.url or f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp()) / 'journal.sqlite3'}"
    await store.upgrade_async(url)
    engine = store.create_engine(url)
    sessions = store.session_factory(engine)
    rng = random.Random(6)
    async with sessions() as s:
        ours, theirs = (
            Domain(name="bench.vpbx.test", timezone=TZ),
            Domain(name="other.vpbx.test", timezone=TZ),
        )
        s.add_all([ours, theirs])
        await s.commit()
    fill_started = time.perf_counter()
    for domain in (ours, theirs):
        left = args.calls
        while left:
            n = min(BATCH, left)
            async with sessions() as s:
                await s.execute(insert(CallRecord), fake_calls(domain.id, n, rng))
                await s.commit()
            left -= n
    fill_s = time.perf_counter() - fill_started

    month = journal.parse_filter({}, TODAY)
    year = journal.parse_filter({"from": "2025-03-02", "to": "2026-03-02"}, TODAY)
    searched = journal.parse_filter({"number": "916123", "state": "missed"}, TODAY)

    async def page(f: journal.JournalFilter, page_no: int = 1, own_pin: str | None = None) -> None:
        async with sessions() as s:
            await paginate(s, journal.journal_query(ours.id, f, TZ, own_pin=own_pin), page_no, 25)

    async def stats(f: journal.JournalFilter) -> None:
        async with sessions() as s:
            await journal.period_stats(s, ours.id, f, TZ)

    async def export(f: journal.JournalFilter) -> None:
        async with sessions() as s:
            stream = await s.stream_scalars(
                journal.journal_query(ours.id, f, TZ).execution_options(yield_per=500)
            )
            async for _batch in stream.partitions(500):
                pass

    measures: dict[str, Callable[[], Awaitable[object]]] = {
        "journal_first_page_30d": lambda: page(month),
        "journal_page_40_of_year": lambda: page(year, 40),
        "journal_number_search_30d": lambda: page(searched),
        "journal_user_own_calls_30d": lambda: page(month, own_pin="120"),
        "stats_30d": lambda: stats(month),
        "stats_366d": lambda: stats(year),
        "export_rows_30d": lambda: export(month),
    }
    backend = "postgresql" if url.startswith("postgresql") else "sqlite"
    RESULTS.parent.mkdir(exist_ok=True)
    sys.stdout.write(f"{backend}: {args.calls} calls per domain × 2 filled in {fill_s:.1f} s\n")
    with RESULTS.open("a") as out:
        for name, fn in measures.items():
            median_s = await timed(fn, args.repeats)
            sys.stdout.write(f"{name:32s} {median_s * 1000:9.1f} ms\n")
            out.write(
                json.dumps(
                    {
                        "measure": name,
                        "backend": backend,
                        "calls": args.calls,
                        "median_ms": round(median_s * 1000, 2),
                        "repeats": args.repeats,
                        "machine": platform.node(),
                        "python": platform.python_version(),
                        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    }
                )
                + "\n"
            )
    await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000, help="calls per domain (two domains)")
    parser.add_argument("--url", default="", help="database URL; default a temporary SQLite file")
    parser.add_argument("--repeats", type=int, default=5)
    asyncio.run(main(parser.parse_args()))
