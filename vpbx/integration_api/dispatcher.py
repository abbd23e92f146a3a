"""The PBX → CRM dispatcher (integration-api.md §5.1): sends the ``ApiDelivery`` outbox.

- Due deliveries go out; one call's (``session_id``) strictly in ``seq`` order, the next only once the
  previous was delivered or given up; different calls in parallel, at most ``parallel`` at once.
- Any ``2xx`` is delivered. A network error, timeout, ``5xx`` or ``429`` is retried after 1 s, 5 s and
  30 s, then given up («не доставлено», status ``failed``); other ``4xx``/``3xx`` are given up at once.
  Every attempt is a log row with its number.
- A domain whose every attempt failed for 30 minutes is suspended (``ApiSettings.suspended_at``): nothing
  is sent for it, new notifications accumulate until ``resume``. A domain with the service off, or with no
  CRM address, sends nothing. A delivery still pending after the retention (7 days) expires with a log row.
- One dispatcher per platform: it sends only while its ``Lease`` is held (always, in v1).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Protocol

from sqlalchemy import and_, func, select, update

from vpbx.billing import INTEGRATION_API, is_enabled
from vpbx.integration_api.core import api_settings, moscow, sign, write_log
from vpbx.integration_api.events import EventPump, backoff
from vpbx.integration_api.notify import Exchange, crm_url, log_exchange, post, target, verdict_of
from vpbx.logs import get_logger
from vpbx.store.models import ApiDelivery, ApiSettings, Domain, User

log = get_logger("vpbx.integration_api.dispatcher")

RETRY_DELAYS_S = (1.0, 5.0, 30.0)
SUSPEND_AFTER = dt.timedelta(minutes=30)
RETENTION = dt.timedelta(days=7)
EXPIRED = "не доставлено: истёк срок хранения в очереди"
SUSPENDED = "не отправлено (приостановлено)"


class Lease(Protocol):
    """The right to be the one dispatcher; v1 runs one node, so it is always held."""

    def held(self) -> bool: ...


class Mailer(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


class AlwaysHeld:
    def held(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class _Due:
    id: uuid.UUID
    domain_id: uuid.UUID
    session_id: str | None


class Dispatcher:
    def __init__(
        self,
        core: Any,
        *,
        lease: Lease | None = None,
        parallel: int = 8,
        retry_delays_s: tuple[float, ...] = RETRY_DELAYS_S,
        suspend_after: dt.timedelta = SUSPEND_AFTER,
        retention: dt.timedelta = RETENTION,
        interval_s: float = 0.25,
        clock: Any = None,
        mailer: Mailer | None = None,
        mail_from: str = "",
    ) -> None:
        self.core = core
        self.clock = clock or core.clock
        self.mailer = mailer
        self.mail_from = mail_from
        self.lease = lease or AlwaysHeld()
        self.parallel = parallel
        self.retry_delays_s = retry_delays_s
        self.suspend_after = suspend_after
        self.retention = retention
        self.interval_s = interval_s
        self.wake = asyncio.Event()
        self._busy: set[str | uuid.UUID] = set()  # sessions (or lone deliveries) with an attempt in flight
        self._tasks: set[asyncio.Task[None]] = set()
        self._failing_since: dict[uuid.UUID, dt.datetime] = {}  # first failure since the last success

    def _now(self) -> dt.datetime:
        now: dt.datetime = self.clock.now()
        return now

    # --- one pass ---
    async def _due(self, limit: int) -> list[_Due]:
        """The head of each call's queue (its lowest pending seq) when due, and due lone deliveries, of
        domains not suspended and with a CRM address."""
        now = self._now()
        live = (
            select(ApiSettings.domain_id)
            .where(ApiSettings.suspended_at.is_(None), ApiSettings.crm_url != "")
            .scalar_subquery()
        )
        heads = (
            select(ApiDelivery.session_id, func.min(ApiDelivery.seq).label("seq"))
            .where(ApiDelivery.status == "pending", ApiDelivery.session_id.is_not(None))
            .group_by(ApiDelivery.session_id)
            .subquery()
        )
        columns = (ApiDelivery.id, ApiDelivery.domain_id, ApiDelivery.session_id)
        due_now = and_(
            ApiDelivery.status == "pending", ApiDelivery.next_at <= now, ApiDelivery.domain_id.in_(live)
        )
        async with self.core.sessions() as s:
            rows = [
                *(
                    await s.execute(
                        select(*columns)
                        .join(
                            heads,
                            and_(
                                ApiDelivery.session_id == heads.c.session_id, ApiDelivery.seq == heads.c.seq
                            ),
                        )
                        .where(due_now)
                        .order_by(ApiDelivery.next_at)
                        .limit(limit + len(self._busy))
                    )
                ).all(),
                *(
                    await s.execute(
                        select(*columns)
                        .where(due_now, ApiDelivery.session_id.is_(None))
                        .order_by(ApiDelivery.next_at)
                        .limit(limit + len(self._busy))
                    )
                ).all(),
            ]
            enabled: dict[uuid.UUID, bool] = {}
            out: list[_Due] = []
            for id_, domain_id, session_id in rows:
                if (session_id or id_) in self._busy:
                    continue
                if domain_id not in enabled:
                    enabled[domain_id] = await is_enabled(s, domain_id, INTEGRATION_API)
                if not enabled[domain_id]:
                    continue
                out.append(_Due(id_, domain_id, session_id))
                if len(out) >= limit:
                    break
            return out

    async def dispatch_once(self) -> int:
        """Start attempts for what is due (within the parallel bound); the number started."""
        if not self.lease.held():
            return 0
        free = self.parallel - len(self._tasks)
        if free <= 0:
            return 0
        due = await self._due(free)
        for d in due:
            key: str | uuid.UUID = d.session_id or d.id
            self._busy.add(key)
            task = asyncio.create_task(self._attempt(d))
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._done, key=key))
        return len(due)

    def _done(self, task: asyncio.Task[None], key: str | uuid.UUID) -> None:
        self._tasks.discard(task)
        self._busy.discard(key)
        if not task.cancelled() and task.exception() is not None:
            log.error("api.delivery_failed", error=repr(task.exception()))
        self.wake.set()

    async def _attempt(self, due: _Due) -> None:
        async with self.core.sessions() as s:
            row = await s.get(ApiDelivery, due.id)
            settings = await api_settings(s, due.domain_id)
            if (
                row is None
                or row.status != "pending"
                or settings is None
                or settings.suspended_at is not None
            ):
                return
            tgt = await target(self.core, s, settings)
            method, raw, test, attempt = row.method, row.body.encode(), row.test, row.attempts + 1
        ex = await post(
            crm_url(tgt.base_url, method),
            method,
            raw,
            client_id=tgt.client_id,
            signature=sign(tgt.client_id, raw, tgt.key),
            timeout_s=tgt.timeout_s,
            tls_required=tgt.tls_required,
            pems=tgt.pems,
        )
        now = self._now()
        retry = ex.retryable and attempt <= len(self.retry_delays_s)
        if ex.delivered:
            status, verdict = "delivered", verdict_of(ex)
        elif retry:
            delay = self.retry_delays_s[attempt - 1]
            status, verdict = "pending", f"{verdict_of(ex)}; повтор через {delay:g} с"
        else:
            status, verdict = "failed", verdict_of(ex)
        await log_exchange(self.core, due.domain_id, ex, test=test, verdict=verdict, attempt=attempt)
        async with self.core.sessions() as s:
            row = await s.get(ApiDelivery, due.id)
            if row is None:
                return
            row.attempts = attempt
            row.status = status
            row.last_error = ex.error[:500]
            if status == "pending":
                row.next_at = now + dt.timedelta(seconds=self.retry_delays_s[attempt - 1])
            else:
                row.done_at = now
            await s.commit()
        await self._health(due.domain_id, ex, now)

    async def _health(self, domain_id: uuid.UUID, ex: Exchange, now: dt.datetime) -> None:
        """Sustained failure (§5.1): every attempt to the domain's CRM failed for ``suspend_after``."""
        if ex.delivered or (ex.status is not None and not ex.retryable):
            self._failing_since.pop(domain_id, None)  # the CRM answers: it is not down
            return
        since = self._failing_since.setdefault(domain_id, now)
        if now - since < self.suspend_after:
            return
        async with self.core.sessions() as s:
            settings = await s.get(ApiSettings, domain_id)
            if settings is not None and settings.suspended_at is None:
                settings.suspended_at = now
                await s.commit()
                log.warning(
                    "api.sending_suspended", domain_id=str(domain_id), failing_since=since.isoformat()
                )
                await write_log(
                    self.core.sessions,
                    domain_id=domain_id,
                    at=now,
                    direction="out",
                    method=ex.method,
                    url=ex.url[:1000],
                    verdict=f"Отправка приостановлена: все попытки не удались с {since:%Y-%m-%d %H:%M} UTC",
                )
                await self._tell_admins(domain_id, since)
        self._failing_since.pop(domain_id, None)

    async def _tell_admins(self, domain_id: uuid.UUID, since: dt.datetime) -> None:
        """The domain's admins get an e-mail that sending was suspended (§5.1); a failure is only logged."""
        if self.mailer is None:
            return
        async with self.core.sessions() as s:
            domain = await s.get(Domain, domain_id)
            emails = [
                e
                for e in await s.scalars(
                    select(User.email).where(User.domain_id == domain_id, User.role == "admin")
                )
                if e
            ]
        if domain is None or not emails:
            return
        message = EmailMessage()
        message["From"] = self.mail_from or f"vpbx@{domain.name}"
        message["To"] = ", ".join(emails)
        message["Subject"] = f"Интеграционный API: отправка уведомлений в CRM приостановлена ({domain.name})"
        message.set_content(
            f"Все попытки отправить уведомления в CRM домена {domain.name} не удавались "
            f"с {moscow(since, millis=False)} (МСК), поэтому отправка приостановлена.\n"
            "Новые уведомления сохраняются и будут отправлены после возобновления.\n"
            "Возобновить отправку: «Интеграционный API» → «Настройка параметров» → «Возобновить отправку».\n"
        )
        try:
            await self.mailer.send(message)
        except Exception as exc:
            log.warning("api.suspension_mail_failed", domain_id=str(domain_id), error=repr(exc)[:300])

    async def expire_once(self) -> int:
        """Deliveries pending past the retention expire, each with a log row (never silently)."""
        now = self._now()
        async with self.core.sessions() as s:
            rows = list(
                await s.scalars(
                    select(ApiDelivery)
                    .where(ApiDelivery.status == "pending", ApiDelivery.created_at < now - self.retention)
                    .limit(500)
                )
            )
            for row in rows:
                row.status = "expired"
                row.done_at = now
            await s.commit()
            expired = [(r.domain_id, r.method, r.body, r.test, r.attempts) for r in rows]
        for domain_id, method, body, test, attempts in expired:
            await write_log(
                self.core.sessions,
                domain_id=domain_id,
                at=now,
                direction="out",
                method=method,
                request_body=body[:16384],
                attempt=attempts or None,
                verdict=EXPIRED,
                test=test,
            )
        return len(expired)

    # --- the loop ---
    async def run(self) -> None:
        last_expiry = -1e9
        loop = asyncio.get_running_loop()
        failures = 0
        try:
            while True:
                try:
                    if loop.time() - last_expiry > 60:
                        last_expiry = loop.time()
                        await self.expire_once()
                    await self.dispatch_once()
                except Exception as exc:  # the database away: one line per outage, and back off
                    if not failures:
                        log.warning("api.dispatch_failed", error=repr(exc)[:300])
                    failures += 1
                else:
                    if failures:
                        log.info("api.dispatch_recovered", failures=failures)
                    failures = 0
                self.wake.clear()
                try:
                    async with asyncio.timeout(backoff(self.interval_s, failures)):
                        await self.wake.wait()
                except TimeoutError:
                    pass
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)


async def resume(core: Any, domain_id: uuid.UUID, *, newer_than: dt.datetime | None = None) -> int:
    """«Возобновить отправку» (§5.1): sending resumes; with ``newer_than``, notifications made before it are
    given up (logged) and only the newer ones are sent. Returns how many were given up."""
    now: dt.datetime = core.clock.now()
    async with core.sessions() as s:
        settings = await s.get(ApiSettings, domain_id)
        if settings is None:
            return 0
        settings.suspended_at = None
        skipped = 0
        if newer_than is not None:
            result = await s.execute(
                update(ApiDelivery)
                .where(
                    ApiDelivery.domain_id == domain_id,
                    ApiDelivery.status == "pending",
                    ApiDelivery.created_at < newer_than,
                )
                .values(status="failed", done_at=now, last_error="пропущено при возобновлении отправки")
            )
            skipped = int(getattr(result, "rowcount", 0) or 0)
        await s.commit()
    if skipped:
        await write_log(
            core.sessions,
            domain_id=domain_id,
            at=now,
            direction="out",
            method="call_events",
            verdict=f"{SUSPENDED}: при возобновлении пропущено уведомлений: {skipped}",
        )
    log.info("api.sending_resumed", domain_id=str(domain_id), skipped=skipped)
    return skipped


class Notifications:
    """What ``vpbx serve`` runs for PBX → CRM notifications: the ``call_events`` pump and the dispatcher."""

    def __init__(
        self, core: Any, *, lease: Lease | None = None, mailer: Mailer | None = None, mail_from: str = ""
    ) -> None:

        self.pump = EventPump(core)
        self.dispatcher = Dispatcher(core, lease=lease, mailer=mailer, mail_from=mail_from)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.pump.run(on_made=self.dispatcher.wake.set), name="api-event-pump"),
            asyncio.create_task(self.dispatcher.run(), name="api-dispatcher"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
