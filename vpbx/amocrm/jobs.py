"""The CRM job runner (amocrm.md §5.6–5.7): works off the durable outbox ``CrmJob``.

A due job (``pending``, or ``held`` past its re-probe time, or ``running`` with an expired lease: its worker
died) is claimed with a compare-and-set on its state and lease, so two workers never run one job; the lease
is renewed while the job runs and simply expires after a ``kill -9``. Jobs of one binding run at most
``per_binding`` at a time (the account's limiter in the client paces the requests themselves), all jobs at
most ``parallel``.

With several processes on one database (vpbx/amocrm/lease.py) a runner claims only the jobs of the accounts
whose lease its process holds.

Outcomes (§5.7):

| the handler | the job |
| --- | --- |
| returns | ``done`` |
| 429 (``AmoRateLimited``), ``AmoSkipped`` | back to ``pending`` after the pause; the attempt is not counted |
| 5xx, unknown outcome, transport error, anything else | retried after 10 s, 30 s, 2 min, 10 min, 30 min, |
| | then hourly; ``dead`` once 24 h old |
| ``AmoReauthRequired``, 401 after the client's refresh | ``held``, re-probed hourly, ``dead`` after 7 days |
| 402 | ``held``, re-probed hourly |
| 403 | ``held`` for the 10 min circuit |
| the binding is not active | ``dropped`` |
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from prometheus_client import Counter
from sqlalchemy import Table, and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from vpbx.amocrm.errors import (
    AmoAuthError,
    AmoForbidden,
    AmoPaymentRequired,
    AmoRateLimited,
    AmoReauthRequired,
    AmoSkipped,
)
from vpbx.amocrm.lease import AccountLeases
from vpbx.background import BackgroundLoop
from vpbx.logs import get_logger
from vpbx.store.models import CrmBinding, CrmJob

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from vpbx.amocrm.api import AmoClients
    from vpbx.app import Core

log = get_logger("vpbx.amocrm.jobs")

RETRY_SCHEDULE_S: tuple[float, ...] = (10, 30, 120, 600, 1800)  # then hourly (§5.7)
HOURLY_S = 3600.0
GIVE_UP_AFTER = dt.timedelta(hours=24)
HOLD_FOR = dt.timedelta(days=7)  # needs_reauth: jobs wait this long for a new authorisation
REPROBE_S = 3600.0  # 402 / needs_reauth: the next try
CIRCUIT_S = 600.0  # 403: the client's circuit stays open this long
RATE_PAUSE_S = 1.0  # 429 without Retry-After (the client's limiter paces the account besides)
SKIPPED_PAUSE_S = 5.0
LEASE_S = 120.0
RENEW_S = 30.0
PARALLEL = 32
PER_BINDING = 4
POLL_S = 1.0

_JOBS = cast(Table, CrmJob.__table__)
JOBS_SETTLED = Counter(
    "vpbx_amocrm_jobs_total", "amoCRM jobs run, by how the run ended", ["kind", "outcome"]
)  # outcome: done, retry, requeued, held, dead, dropped


# what runs one job kind: ``await handler(runner, job, binding)``; it raises to retry or hold (above)
HandlerFn = Callable[["JobRunner", CrmJob, CrmBinding], Awaitable[None]]


async def enqueue(
    s: AsyncSession,
    *,
    binding_id: uuid.UUID,
    kind: str,
    key: str,
    payload: dict[str, Any] | None = None,
    run_after: dt.datetime,
) -> None:
    """Insert the job unless (binding, kind, key) exists: a duplicate enqueue is a no-op (§5.6)."""
    row = {
        "id": uuid.uuid4(),
        "binding_id": binding_id,
        "kind": kind,
        "key": key,
        "payload": payload or {},
        "state": "pending",
        "attempts": 0,
        "run_after": run_after,
        "created_at": run_after,
        "lease_owner": "",
        "last_error": "",
    }
    stmt = (pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert)(_JOBS)
    await s.execute(stmt.values(row).on_conflict_do_nothing())


def retry_delay_s(attempts: int, schedule: Sequence[float] = RETRY_SCHEDULE_S) -> float:
    """The wait after the ``attempts``-th failed attempt (1-based)."""
    if attempts <= len(schedule):
        return float(schedule[max(attempts, 1) - 1])
    return HOURLY_S


@dataclass(frozen=True, slots=True)
class _Claimed:
    id: uuid.UUID
    binding_id: uuid.UUID


class JobRunner(BackgroundLoop):
    """Runs due ``CrmJob`` rows with the handler of their ``kind``: one pass with ``run_due``, forever with
    ``start`` (a ``BackgroundLoop`` polling every ``poll_s``, woken by ``wake``)."""

    name = "amo-jobs"
    failure_event = "amo.jobs_pass_failed"
    max_backoff_s = 10.0

    def __init__(
        self,
        core: Core,
        clients: AmoClients,
        handlers: dict[str, HandlerFn],
        *,
        owner: str | None = None,
        parallel: int = PARALLEL,
        per_binding: int = PER_BINDING,
        lease_s: float = LEASE_S,
        schedule: Sequence[float] = RETRY_SCHEDULE_S,
        hourly_s: float = HOURLY_S,
        poll_s: float = POLL_S,
    ) -> None:
        self.core = core
        self.clients = clients
        self.handlers = handlers
        self.owner = owner or f"{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.parallel = parallel
        self.per_binding = per_binding
        self.lease = dt.timedelta(seconds=lease_s)
        self.schedule = tuple(schedule)
        self.hourly_s = hourly_s
        self.poll_s = self.interval_s = poll_s
        self._running: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._per_binding: dict[uuid.UUID, int] = {}
        self.state: dict[str, Any] = {}  # shared by the handlers of this runner (phone locks, settings)

    def now(self) -> dt.datetime:
        return self.core.clock.now()

    # --- claiming ----------------------------------------------------------------------------------------

    async def _due(self, limit: int) -> list[_Claimed]:
        now = self.now()
        due = or_(
            and_(CrmJob.state.in_(("pending", "held")), CrmJob.run_after <= now),
            and_(CrmJob.state == "running", CrmJob.lease_until < now),
        )
        query = select(CrmJob.id, CrmJob.binding_id).where(due)
        leases = getattr(self.clients, "leases", None)
        if isinstance(leases, AccountLeases):  # several processes: only the accounts this one holds
            query = query.join(CrmBinding, CrmBinding.id == CrmJob.binding_id).where(
                CrmBinding.external_account_id.in_(sorted(leases.owned()))
            )
        async with self.core.sessions() as s:
            rows = (
                await s.execute(query.order_by(CrmJob.run_after).limit(limit + len(self._running) + 64))
            ).all()
        return [_Claimed(r.id, r.binding_id) for r in rows if r.id not in self._running]

    async def _claim(self, job_id: uuid.UUID) -> bool:
        now = self.now()
        async with self.core.sessions() as s, s.begin():
            result = await s.execute(
                update(CrmJob)
                .where(
                    CrmJob.id == job_id,
                    or_(
                        and_(CrmJob.state.in_(("pending", "held")), CrmJob.run_after <= now),
                        and_(CrmJob.state == "running", CrmJob.lease_until < now),
                    ),
                )
                .values(state="running", lease_owner=self.owner, lease_until=now + self.lease)
                .execution_options(synchronize_session=False)
            )
        return bool(getattr(result, "rowcount", 0))

    async def run_due(self) -> int:
        """Claim and start what is due and fits; the number of jobs started."""
        free = self.parallel - len(self._running)
        if free <= 0:
            return 0
        started = 0
        for due in await self._due(free):
            if len(self._running) >= self.parallel:
                break
            if self._per_binding.get(due.binding_id, 0) >= self.per_binding:
                continue
            if not await self._claim(due.id):
                continue
            self._per_binding[due.binding_id] = self._per_binding.get(due.binding_id, 0) + 1
            task = asyncio.create_task(self._execute(due), name=f"crm-job:{due.id}")
            self._running[due.id] = task
            started += 1
        return started

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Wait for the jobs started so far (tests)."""
        tasks = list(self._running.values())
        if tasks:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*tasks, return_exceptions=True)

    async def run_until_idle(self, timeout_s: float = 30.0) -> None:
        """Start and finish jobs until none is due (tests)."""
        async with asyncio.timeout(timeout_s):
            while await self.run_due():
                await self.drain(timeout_s)

    # --- one job -----------------------------------------------------------------------------------------

    async def _renew(self, job_id: uuid.UUID) -> None:
        while True:
            await asyncio.sleep(min(RENEW_S, self.lease.total_seconds() / 3))
            async with self.core.sessions() as s, s.begin():
                await s.execute(
                    update(CrmJob)
                    .where(CrmJob.id == job_id, CrmJob.lease_owner == self.owner, CrmJob.state == "running")
                    .values(lease_until=self.now() + self.lease)
                )

    async def _execute(self, due: _Claimed) -> None:
        renew = asyncio.create_task(self._renew(due.id), name=f"crm-job-lease:{due.id}")
        try:
            await self._run_job(due.id)
        except Exception:  # the runner's own failure (the database away): the lease expires, retried later
            log.exception("amo.job_runner_failed", job_id=str(due.id))
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew
            self._running.pop(due.id, None)
            left = self._per_binding.get(due.binding_id, 1) - 1
            if left > 0:
                self._per_binding[due.binding_id] = left
            else:
                self._per_binding.pop(due.binding_id, None)
            self.wake()  # a slot is free

    async def _settle(self, job_id: uuid.UUID, *, kind: str = "", outcome: str = "", **values: Any) -> None:
        if kind and outcome:
            JOBS_SETTLED.labels(kind, outcome).inc()
        async with self.core.sessions() as s, s.begin():
            await s.execute(
                update(CrmJob)
                .where(CrmJob.id == job_id, CrmJob.lease_owner == self.owner)
                .values(lease_until=None, lease_owner="", **values)
            )

    async def _run_job(self, job_id: uuid.UUID) -> None:
        async with self.core.sessions() as s:
            job = await s.get(CrmJob, job_id)
            binding = await s.get(CrmBinding, job.binding_id) if job is not None else None
        if job is None:
            return
        now = self.now()
        if binding is None or binding.status != "active":
            await self._settle(
                job_id,
                kind=job.kind,
                outcome="dropped",
                state="dropped",
                last_error="binding disabled",
                done_at=now,
            )
            log.info("amo.job_dropped", job_id=str(job_id), kind=job.kind, key=job.key)
            return
        handler = self.handlers.get(job.kind)
        if handler is None:
            await self._settle(
                job_id, kind=job.kind, outcome="dead", state="dead", last_error="no handler", done_at=now
            )
            return
        try:
            await handler(self, job, binding)
        except AmoRateLimited as e:
            pause = e.retry_after_s if e.retry_after_s is not None else RATE_PAUSE_S
            await self._settle(
                job_id,
                kind=job.kind,
                outcome="requeued",
                state="pending",
                run_after=self.now() + _s(pause),
                last_error="429",
            )
        except AmoSkipped:
            await self._settle(
                job_id,
                kind=job.kind,
                outcome="requeued",
                state="pending",
                run_after=self.now() + _s(SKIPPED_PAUSE_S),
                last_error="skipped",
            )
        except (AmoReauthRequired, AmoAuthError, AmoPaymentRequired, AmoForbidden) as e:
            await self._hold(job, e)
        except Exception as e:
            await self._retry(job, e)
        else:
            await self._settle(
                job_id, kind=job.kind, outcome="done", state="done", last_error="", done_at=self.now()
            )
            log.info("amo.job_done", job_id=str(job_id), kind=job.kind, key=job.key)

    async def _hold(self, job: CrmJob, e: Exception) -> None:
        now = self.now()
        if now - job.created_at > HOLD_FOR:
            await self._settle(
                job.id,
                kind=job.kind,
                outcome="dead",
                state="dead",
                last_error=f"held too long: {type(e).__name__}",
                done_at=now,
            )
            log.warning(
                "amo.job_dead", job_id=str(job.id), kind=job.kind, key=job.key, error=type(e).__name__
            )
            return
        wait = CIRCUIT_S if isinstance(e, AmoForbidden) else REPROBE_S
        await self._settle(
            job.id,
            kind=job.kind,
            outcome="held",
            state="held",
            run_after=now + _s(wait),
            last_error=type(e).__name__,
        )
        log.warning("amo.job_held", job_id=str(job.id), kind=job.kind, key=job.key, error=type(e).__name__)

    async def _retry(self, job: CrmJob, e: Exception) -> None:
        now = self.now()
        attempts = job.attempts + 1
        delay = retry_delay_s(attempts, self.schedule) if attempts <= len(self.schedule) else self.hourly_s
        error = f"{type(e).__name__}: {e}"[:480]
        if now + _s(delay) - job.created_at > GIVE_UP_AFTER:
            await self._settle(
                job.id,
                kind=job.kind,
                outcome="dead",
                state="dead",
                attempts=attempts,
                last_error=error,
                done_at=now,
            )
            log.warning("amo.job_dead", job_id=str(job.id), kind=job.kind, key=job.key, error=error)
            return
        await self._settle(
            job.id,
            kind=job.kind,
            outcome="retry",
            state="pending",
            attempts=attempts,
            run_after=now + _s(delay),
            last_error=error,
        )
        log.info(
            "amo.job_retry", job_id=str(job.id), kind=job.kind, attempts=attempts, delay_s=delay, error=error
        )

    # --- the loop ----------------------------------------------------------------------------------------

    async def run_once(self) -> float | None:
        await self.run_due()
        return None

    async def stop(self) -> None:
        await super().stop()
        tasks = list(self._running.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # their leases expire; others take them


def _s(seconds: float) -> dt.timedelta:
    return dt.timedelta(seconds=seconds)


async def retry_dead(s: AsyncSession, binding_id: uuid.UUID, job_id: uuid.UUID, now: dt.datetime) -> bool:
    """«Повторить» (§5.7): a dead job of this binding runs again, with a fresh 24 h."""
    result = await s.execute(
        update(CrmJob)
        .where(CrmJob.id == job_id, CrmJob.binding_id == binding_id, CrmJob.state == "dead")
        .values(state="pending", attempts=0, run_after=now, created_at=now, done_at=None, last_error="")
    )
    return bool(getattr(result, "rowcount", 0))


async def drop_binding_jobs(s: AsyncSession, binding_id: uuid.UUID, now: dt.datetime) -> int:
    """F15: the binding's queued jobs are dropped (a running one is dropped when it next settles)."""
    result = await s.execute(
        update(CrmJob)
        .where(CrmJob.binding_id == binding_id, CrmJob.state.in_(("pending", "held")))
        .values(state="dropped", done_at=now, last_error="binding disabled")
    )
    count = int(getattr(result, "rowcount", 0) or 0)
    if count:
        log.info("amo.jobs_dropped", binding_id=str(binding_id), count=count)
    return count


async def queue_health(s: AsyncSession, binding_id: uuid.UUID) -> dict[str, Any]:
    """The job queue for the health panel (§5.8): jobs per state still of interest and the oldest waiting
    job's creation time (ISO 8601, or None)."""
    rows = (
        await s.execute(
            select(CrmJob.state, func.count(), func.min(CrmJob.created_at))
            .where(CrmJob.binding_id == binding_id, CrmJob.state.in_(("pending", "running", "held", "dead")))
            .group_by(CrmJob.state)
        )
    ).all()
    counts = dict.fromkeys(("pending", "running", "held", "dead"), 0)
    oldest: dt.datetime | None = None
    for state, count, first in rows:
        counts[state] = int(count)
        if state != "dead" and first is not None:
            oldest = first if oldest is None else min(oldest, first)
    return {**counts, "oldest_waiting_at": oldest.isoformat() if oldest is not None else None}


async def release_held(s: AsyncSession, binding_id: uuid.UUID, now: dt.datetime) -> int:
    """The binding's held jobs are due now (after a new authorisation or payment; otherwise they wait for
    their hourly re-probe); the number released."""
    result = await s.execute(
        update(CrmJob)
        .where(CrmJob.binding_id == binding_id, CrmJob.state == "held")
        .values(state="pending", run_after=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)
