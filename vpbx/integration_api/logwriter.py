"""The gateway's request/response log rows (integration-api.md §6.4), written in batches off the request path.

A signed request used to pay for its own log transaction before its answer left; under load that commit was
the largest single cost of a request (bench/README.md, "Integration API"). ``ApiLogWriter`` queues the rows
and one writer task commits whatever is queued in one multi-row ``INSERT`` at most ``linger_s`` after the
first of them (group commit), so the answer never waits for the log.

Durability: the rows live in memory until their batch commits, so a crash (``kill -9``, power loss) may lose
the log rows of about the last ``linger_s`` plus one commit (well under a second); a clean stop writes them.
A batch the database refuses is dropped with one warning line, as a single failed row was before (a failure
to log never fails an exchange). While the writer is not running (tests that drive the app without its
lifespan, a stopped app) every row is written inline, as before. Readers that must see every row written so
far (the cabinet's log page, «Очистить лог») call ``flush`` first.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from vpbx.integration_api.core import write_log
from vpbx.logs import get_logger
from vpbx.store.models import ApiLog

log = get_logger("vpbx.integration_api.logwriter")

LINGER_S = 0.1  # the longest a row waits for its batch; what a crash may lose is about this much
MAX_BATCH = 1000  # rows per transaction
MAX_PENDING = 50_000  # rows queued; beyond, the writer's callers wait for a flush (never dropped)
_INSERT = insert(cast(Table, ApiLog.__table__))


class ApiLogWriter:
    """Group commit of ``ApiLog`` rows; ``write`` never waits for the database while the writer runs."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        linger_s: float = LINGER_S,
        max_batch: int = MAX_BATCH,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.sessions = sessions
        self.linger_s = linger_s
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.batches = 0  # transactions committed
        self._rows: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set while nothing is queued or being written
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if not self.running:
            self._task = asyncio.create_task(self._run(), name="api-log-writer")

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (within ``timeout_s``), then stop the writer."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.flush()
        except TimeoutError:
            log.warning("api.log_stop_timeout", rows=len(self._rows))
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def write(self, **row: Any) -> None:
        """One ``ApiLog`` row (its fields as keywords): queued while the writer runs, else written now."""
        if not self.running:
            await write_log(self.sessions, **row)
            return
        if len(self._rows) >= self.max_pending:  # the database is far behind: the callers wait for it
            await self.flush()
        row.setdefault("id", uuid.uuid4())
        self._rows.append(row)
        self._idle.clear()
        self._wake.set()

    async def flush(self) -> None:
        """Return once every row queued before the call is committed (or dropped with a warning)."""
        if self.running:
            await self._idle.wait()

    async def _run(self) -> None:
        while True:
            if not self._rows:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                await asyncio.sleep(self.linger_s)  # let a batch gather
            batch, self._rows = self._rows[: self.max_batch], self._rows[self.max_batch :]
            try:
                await self._insert(batch)
            except asyncio.CancelledError:
                self._rows[:0] = batch
                raise
            except Exception as exc:
                log.warning("api.log_failed", rows=len(batch), error=repr(exc)[:300])

    async def _insert(self, rows: list[dict[str, Any]]) -> None:
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in rows:  # one executemany per set of fields (the missing ones take their defaults)
            groups.setdefault(tuple(sorted(row)), []).append(row)
        async with self.sessions() as s, s.begin():
            for group in groups.values():
                await s.execute(_INSERT, group)
        self.batches += 1


async def flush_of(state: Any) -> None:
    """Flush the app's writer (``app.state.api_log``), if it has one."""
    writer = getattr(state, "api_log", None)
    if isinstance(writer, ApiLogWriter):
        await writer.flush()
