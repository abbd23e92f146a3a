"""Call history benchmark: events/s through ``SqlCallJournal`` with group commit (telephony.md §3.7).

    python bench/history_bench.py                          # SQLite and PostgreSQL, 50 and 200 calls
    python bench/history_bench.py --backend sqlite --calls 500
    python bench/history_bench.py --no-write               # tables on stdout only

M concurrent calls each append a call's five events one after the other (``new``, ``calling``, ``connected``,
``disconnected``, ``end``), as ``CallEvents.publish`` does: every append waits for the commit of its batch.
Each point runs twice: with group commit (``max_batch`` 256, the default) and with one event per transaction
(``max_batch`` 1), the cost the engine would pay without it. Reported: events/s, transactions, events per
transaction, the append latency a call waits for (p50, p99, max) and this process's CPU per event (the event
loop and the database driver's thread; PostgreSQL's own work is not in it). The database is a fresh migrated
SQLite file (WAL, ``synchronous=NORMAL``, as ``vpbx serve`` runs it) or a fresh PostgreSQL database on the
server of ``--pg-url`` (default ``$VPBX_TEST_POSTGRES_URL``).

Results: the tables on stdout, also written to ``bench/results/history-latest.txt``. Every run is bounded by
``--timeout`` seconds per point.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from vpbx import store  # noqa: E402
from vpbx.pbx import domains  # noqa: E402
from vpbx.pbx.bus import CallEvent, CallState, SessionId  # noqa: E402
from vpbx.pbx.history import SPOOL_FILE, SqlCallJournal  # noqa: E402

STATES: tuple[CallState, ...] = ("new", "calling", "connected", "disconnected", "end")
DEFAULT_PG = "postgresql+asyncpg://vpbx:vpbx@127.0.0.1:5432/postgres"
RESULTS = REPO / "bench" / "results" / "history-latest.txt"


@dataclass(frozen=True, slots=True)
class Figure:
    backend: str
    mode: str
    calls: int
    events: int
    wall_s: float
    batches: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_us: float  # this process's CPU (all threads: the loop and the database driver's) per event

    @property
    def rate(self) -> float:
        return self.events / self.wall_s if self.wall_s else 0.0

    def row(self) -> str:
        per_batch = self.events / self.batches if self.batches else 0.0
        return (
            f"{self.backend:<9}{self.mode:<13}{self.calls:>6}{self.events:>8}{self.rate:>11.0f}"
            f"{self.batches:>9}{per_batch:>9.1f}{self.p50_ms:>9.2f}{self.p99_ms:>9.2f}{self.max_ms:>9.2f}"
            f"{self.cpu_us:>9.0f}"
        )


HEADER = (
    f"{'backend':<9}{'mode':<13}{'calls':>6}{'events':>8}{'events/s':>11}"
    f"{'commits':>9}{'ev/comm':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'CPU µs':>9}"
)


@contextlib.asynccontextmanager
async def fresh_database(backend: str, pg_url: str, tmp: Path) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp / f'journal-{uuid.uuid4().hex[:8]}.sqlite3'}"
        return
    name = f"vpbx_bench_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
        finally:
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


def call_events(domain_id: uuid.UUID, session: SessionId, start: dt.datetime) -> list[CallEvent]:
    return [
        CallEvent(
            session_id=session,
            seq=i + 1,
            state=state,
            type="internal",
            domain_id=domain_id,
            domain="bench.vpbx.test",
            timestamp=start + dt.timedelta(seconds=i),
            from_number="user101@bench.vpbx.test",
            from_pin="101",
            from_uri="sip:101@bench.vpbx.test",
            request_number="user102@bench.vpbx.test",
            request_pin="102",
            request_uri="sip:102@bench.vpbx.test",
            disconnect_reason="5" if state == "disconnected" else None,
            is_record=False if state == "end" else None,
            extra={"end_reason": "normal"} if state == "end" else {},
        )
        for i, state in enumerate(STATES)
    ]


async def point(backend: str, url: str, calls: int, max_batch: int, tmp: Path, timeout_s: float) -> Figure:
    await store.upgrade_async(url)
    engine = store.create_engine(url)
    sessions = store.session_factory(engine)
    try:
        async with sessions() as s:
            d = await domains.create_domain(s, domains.DomainInput(name="bench.vpbx.test"))
            await s.commit()
        journal = SqlCallJournal(
            sessions,
            node_id="bench",
            spool_path=tmp / f"{uuid.uuid4().hex}-{SPOOL_FILE}",
            max_batch=max_batch,
        )
        await journal.start()
        latencies: list[float] = []
        start = dt.datetime.now(dt.UTC)

        async def one_call() -> None:
            for event in call_events(d.id, SessionId(str(uuid.uuid4())), start):
                t0 = time.perf_counter()
                await journal.append(event)
                latencies.append(time.perf_counter() - t0)

        t0, cpu0 = time.perf_counter(), time.process_time()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(one_call() for _ in range(calls)))
        finally:
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            await journal.stop()
        if journal.spooled:
            raise RuntimeError(f"{journal.spooled} events were spooled: the database failed under the load")
        latencies.sort()
        ms = [x * 1000 for x in latencies]
        return Figure(
            backend=backend,
            mode="group commit" if max_batch > 1 else "one per tx",
            calls=calls,
            events=len(latencies),
            wall_s=wall,
            batches=journal.batches,
            p50_ms=statistics.median(ms),
            p99_ms=ms[min(len(ms) - 1, int(len(ms) * 0.99))],
            max_ms=ms[-1],
            cpu_us=cpu / len(ms) * 1e6,
        )
    finally:
        await engine.dispose()


async def main_async(args: argparse.Namespace) -> list[Figure]:
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="journal-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for backend in args.backend.split(","):
            for calls in (int(c) for c in args.calls.split(",")):
                for max_batch in (256, 1):
                    async with fresh_database(backend, args.pg_url, tmp) as url:
                        fig = await point(backend, url, calls, max_batch, tmp, args.timeout)
                    print(fig.row(), flush=True)  # noqa: T201
                    figures.append(fig)
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/history_bench.py", description=__doc__.split("\n", 1)[0])
    p.add_argument("--backend", default="sqlite,postgres", help="sqlite, postgres or both (comma-separated)")
    p.add_argument("--calls", default="50,200", help="concurrent calls per point (comma-separated)")
    p.add_argument("--pg-url", default=os.environ.get("VPBX_TEST_POSTGRES_URL") or DEFAULT_PG)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per point at most")
    p.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.relative_to(REPO)}")
    args = p.parse_args(argv)
    print(HEADER, flush=True)  # noqa: T201
    figures = asyncio.run(main_async(args))
    if not args.no_write:
        when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        cpus = len(os.sched_getaffinity(0))
        lines = [
            f"# bench/history_bench.py --backend {args.backend} --calls {args.calls}",
            f"# {when}, {platform.python_implementation()} {platform.python_version()}, {cpus} CPUs (shared)",
            "# each call appends 5 events in turn and waits for each commit; latency = one append",
            HEADER,
            *(f.row() for f in figures),
        ]
        RESULTS.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
