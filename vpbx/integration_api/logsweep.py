"""The log's retention in ``vpbx serve`` (integration-api.md §6.4): every hour, every domain's «Лог
запросов/ответов» keeps its last 7 days and at most 10 000 rows (``core.sweep_log``). Writing a row does not
sweep, so a busy domain may briefly hold more until the next round."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from vpbx.background import BackgroundLoop
from vpbx.clock import Clock
from vpbx.integration_api.core import sweep_log
from vpbx.logs import get_logger
from vpbx.store.models import ApiLog

log = get_logger("vpbx.integration_api.logsweep")

SWEEP_INTERVAL_S = 3600.0  # hourly, like the recordings' retention


class LogSweep(BackgroundLoop):
    """Sweeps the Integration API log of every domain every ``interval_s``; ``sweep`` is one round."""

    name = "api-log-retention"
    failure_event = "api.log_sweep_failed"

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        interval_s: float = SWEEP_INTERVAL_S,
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        self.interval_s = interval_s

    async def run_once(self) -> float | None:
        await self.sweep()
        return None

    async def sweep(self) -> int:
        """One round over the domains that have log rows; how many rows went."""
        now = self.clock.now()
        async with self.sessions() as s:
            domains = [d for d in await s.scalars(select(ApiLog.domain_id).distinct()) if d is not None]
        total = 0
        for domain_id in domains:
            async with self.sessions() as s, s.begin():
                total += await sweep_log(s, domain_id, now)
        if total:
            log.info("api.log_swept", rows=total, domains=len(domains))
        return total
