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
import collections
import datetime as dt
import functools
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Protocol, cast

import httpx
from sqlalchemy import Table, and_, bindparam, func, insert, select, union_all, update

from vpbx.background import BackgroundLoop
from vpbx.billing import INTEGRATION_API
from vpbx.billing.service import service
from vpbx.integration_api.core import moscow, sign, sign_key, write_log
from vpbx.integration_api.events import EventPump
from vpbx.integration_api.notify import (
    Exchange,
    Target,
    crm_url,
    keepalive_client,
    log_row,
    post,
    verdict_of,
)
from vpbx.logs import get_logger
from vpbx.store.models import ApiDelivery, ApiLog, ApiSettings, ApiTrustedCert, Domain, DomainService, User

log = get_logger("vpbx.integration_api.dispatcher")

RETRY_DELAYS_S = (1.0, 5.0, 30.0)
PARALLEL = 128  # attempts in flight (a POST, or its outcome being committed)
PER_DOMAIN = 16  # POSTs in flight to one domain's CRM: its keep-alive connections, and fairness
_COUNTED = service(INTEGRATION_API).counted
CLIENT_IDLE_S = 120.0  # a domain's keep-alive client unused this long is closed
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
    """A delivery to attempt, with what the attempt needs (read in the pass that found it due)."""

    id: uuid.UUID
    domain_id: uuid.UUID
    session_id: str | None
    method: str
    body: str
    test: bool
    attempts: int
    target: Target


@dataclass(slots=True)
class _Outcome:
    """One attempt's result for the outbox row and its log row, committed with others (``_Outcomes``)."""

    id: uuid.UUID
    attempts: int
    status: str
    last_error: str
    at: dt.datetime  # next_at while pending, else done_at
    log_row: dict[str, Any]
    done: asyncio.Future[None]


_DELIVERIES = cast(Table, ApiDelivery.__table__)
_RETRY_LATER = (
    update(_DELIVERIES)
    .where(_DELIVERIES.c.id == bindparam("b_id"))
    .values(
        attempts=bindparam("b_attempts"),
        status=bindparam("b_status"),
        last_error=bindparam("b_last_error"),
        next_at=bindparam("b_at"),
    )
)
_FINISHED = (
    update(_DELIVERIES)
    .where(_DELIVERIES.c.id == bindparam("b_id"))
    .values(
        attempts=bindparam("b_attempts"),
        status=bindparam("b_status"),
        last_error=bindparam("b_last_error"),
        done_at=bindparam("b_at"),
    )
)
_INSERT_LOG = insert(cast(Table, ApiLog.__table__))


class _Outcomes:
    """Group commit of the attempts' outcomes: the delivery's new state and its log row in one transaction
    with those of the other attempts that finished meanwhile; each attempt waits for its commit (a call's
    next notification leaves only after that, so a restart finds the outbox as the CRM saw it)."""

    def __init__(self, core: Any, max_batch: int = 500) -> None:
        self.core = core
        self.max_batch = max_batch
        self._queue: list[_Outcome] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="api-delivery-outcomes")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for o in self._queue:  # never written: the delivery stays pending and is attempted again
            o.done.cancel()
        self._queue.clear()

    async def commit(self, outcome: _Outcome) -> None:
        if self._task is None or self._task.done():  # not running (a single pass in a test): inline
            await self._write([outcome])
            return
        self._queue.append(outcome)
        self._wake.set()
        await outcome.done

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                self._queue[:0] = batch
                raise
            except Exception as exc:
                for o in batch:
                    if not o.done.done():
                        o.done.set_exception(exc)
            else:
                for o in batch:
                    if not o.done.done():
                        o.done.set_result(None)

    async def _write(self, outcomes: list[_Outcome]) -> None:
        def params(o: _Outcome) -> dict[str, Any]:
            return {
                "b_id": o.id,
                "b_attempts": o.attempts,
                "b_status": o.status,
                "b_last_error": o.last_error,
                "b_at": o.at,
            }

        later = [params(o) for o in outcomes if o.status == "pending"]
        finished = [params(o) for o in outcomes if o.status != "pending"]
        async with self.core.sessions() as s, s.begin():
            if later:
                await s.execute(_RETRY_LATER, later)
            if finished:
                await s.execute(_FINISHED, finished)
            await s.execute(_INSERT_LOG, [o.log_row for o in outcomes])


class Dispatcher(BackgroundLoop):
    """Sends the pending deliveries (``dispatch_once`` is one pass); forever with ``run`` (a
    ``BackgroundLoop``: the database away is logged and backed off), woken by the pump and by every attempt
    that ends."""

    name = "api-dispatcher"
    failure_event = "api.dispatch_failed"

    def __init__(
        self,
        core: Any,
        *,
        lease: Lease | None = None,
        parallel: int = PARALLEL,
        per_domain: int = PER_DOMAIN,
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
        self.per_domain = per_domain
        self.retry_delays_s = retry_delays_s
        self.suspend_after = suspend_after
        self.retention = retention
        self.interval_s = interval_s
        self._last_expiry = -1e9  # loop time of the last expiry pass
        self._busy: set[str | uuid.UUID] = set()  # sessions (or lone deliveries) with an attempt in flight
        self._tasks: set[asyncio.Task[None]] = set()
        self._sending: collections.Counter[uuid.UUID] = collections.Counter()  # POSTs in flight per domain
        self._busy_by_domain: collections.Counter[uuid.UUID] = collections.Counter()  # attempts per domain
        self._failing_since: dict[uuid.UUID, dt.datetime] = {}  # first failure since the last success
        self._keys: dict[str, str] = {}  # sealed signing key -> the key (a regenerated key is a new entry)
        # idle keep-alive clients per domain (and its trusted certificates), with when each was last used
        self._clients: dict[tuple[uuid.UUID, tuple[str, ...]], list[tuple[httpx.AsyncClient, float]]] = {}
        self._outcomes = _Outcomes(core)

    def _now(self) -> dt.datetime:
        now: dt.datetime = self.clock.now()
        return now

    # --- one pass ---
    async def _targets(self, s: Any, domains: set[uuid.UUID]) -> dict[uuid.UUID, Target]:
        """Where and how each of these domains' CRM is reached, for those with the service on and sending
        not suspended: two queries for all of them."""
        if not domains:
            return {}
        rows = (
            await s.execute(
                select(ApiSettings, DomainService.enabled, DomainService.counter)
                .outerjoin(
                    DomainService,
                    and_(
                        DomainService.domain_id == ApiSettings.domain_id,
                        DomainService.code == INTEGRATION_API,
                    ),
                )
                .where(ApiSettings.domain_id.in_(domains), ApiSettings.suspended_at.is_(None))
            )
        ).all()
        pems: dict[uuid.UUID, list[str]] = {}
        for domain_id, pem in await s.execute(
            select(ApiTrustedCert.domain_id, ApiTrustedCert.pem)
            .where(ApiTrustedCert.domain_id.in_(domains))
            .order_by(ApiTrustedCert.id)
        ):
            pems.setdefault(domain_id, []).append(pem)
        out: dict[uuid.UUID, Target] = {}
        for settings, enabled, counter in rows:
            if not ((counter or 0) > 0 if _COUNTED else enabled):  # as billing.is_enabled reads the row
                continue
            sealed = settings.sign_key_enc
            key = self._keys.get(sealed)
            if key is None:
                if len(self._keys) > 10_000:
                    self._keys.clear()
                key = self._keys[sealed] = sign_key(settings, self.core.box)
            out[settings.domain_id] = Target(
                client_id=settings.client_id,
                key=key,
                base_url=settings.crm_url,
                timeout_s=settings.timeout_s,
                tls_required=settings.tls_required,
                pems=tuple(pems.get(settings.domain_id, ())),
            )
        return out

    async def _due(self, limit: int) -> list[_Due]:
        """The head of each call's queue (its lowest pending seq) when due, and due lone deliveries, of
        domains not suspended and with a CRM address, at most ``per_domain`` sending per domain."""
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
        columns = (
            ApiDelivery.id,
            ApiDelivery.domain_id,
            ApiDelivery.session_id,
            ApiDelivery.method,
            ApiDelivery.body,
            ApiDelivery.test,
            ApiDelivery.attempts,
            ApiDelivery.next_at,
        )
        due_now = and_(
            ApiDelivery.status == "pending", ApiDelivery.next_at <= now, ApiDelivery.domain_id.in_(live)
        )
        due = union_all(
            select(*columns)
            .join(heads, and_(ApiDelivery.session_id == heads.c.session_id, ApiDelivery.seq == heads.c.seq))
            .where(due_now),
            select(*columns).where(due_now, ApiDelivery.session_id.is_(None)),
        ).subquery()
        # per domain fairness: each domain's earliest first, then each one's second, …; a domain gets at most
        # as many rows as it could start, so one with a long queue never hides the others' due deliveries
        rank = func.row_number().over(partition_by=due.c.domain_id, order_by=due.c.next_at).label("rank")
        ranked = select(*due.c, rank).subquery()
        # a call with an attempt in flight when the reading starts may finish during it: what was read of it
        # can be older than its outcome, so it waits for the next pass (its end wakes one)
        busy = set(self._busy)
        window = self.per_domain + max(self._busy_by_domain.values(), default=0)
        async with self.core.sessions() as s:
            rows = [
                r[:7]
                for r in await s.execute(
                    select(*ranked.c)
                    .where(ranked.c.rank <= window)
                    .order_by(ranked.c.rank, ranked.c.next_at)
                    .limit(limit + len(busy))
                )
            ]
            targets = await self._targets(s, {r[1] for r in rows})
            sending = collections.Counter(self._sending)
            out: list[_Due] = []
            for id_, domain_id, session_id, method, body, test, attempts in rows:
                key = session_id or id_
                if key in busy or key in self._busy or sending[domain_id] >= self.per_domain:
                    continue
                tgt = targets.get(domain_id)
                if tgt is None:  # the service off, or suspended meanwhile
                    continue
                out.append(_Due(id_, domain_id, session_id, method, body, test, attempts, tgt))
                sending[domain_id] += 1
                if len(out) >= limit:
                    break
            return out

    async def dispatch_once(self) -> int:
        """Start attempts for what is due (within the parallel bounds); the number started."""
        if not self.lease.held():
            return 0
        free = self.parallel - len(self._tasks)
        if free <= 0:
            return 0
        due = await self._due(free)
        for d in due:
            key: str | uuid.UUID = d.session_id or d.id
            self._busy.add(key)
            self._busy_by_domain[d.domain_id] += 1
            self._sending[d.domain_id] += 1
            task = asyncio.create_task(self._attempt(d))
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._done, key=key, domain_id=d.domain_id))
        return len(due)

    def _done(self, task: asyncio.Task[None], key: str | uuid.UUID, domain_id: uuid.UUID) -> None:
        self._tasks.discard(task)
        self._busy.discard(key)
        self._busy_by_domain[domain_id] -= 1
        if self._busy_by_domain[domain_id] <= 0:
            del self._busy_by_domain[domain_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("api.delivery_failed", error=repr(task.exception()))
        self.wake()

    def _client(self, due: _Due) -> httpx.AsyncClient:
        """An idle keep-alive client of the domain (one connection each, at most ``per_domain`` of them): a
        pool of single-connection clients, as httpx scans every connection of a pool on each request."""
        idle = self._clients.get((due.domain_id, due.target.pems))
        if idle:
            return idle.pop()[0]
        return keepalive_client(due.target.pems, 1)

    def _release(self, due: _Due, client: httpx.AsyncClient) -> None:
        idle = self._clients.setdefault((due.domain_id, due.target.pems), [])
        idle.append((client, asyncio.get_running_loop().time()))

    async def _close_idle_clients(self, idle_s: float = CLIENT_IDLE_S) -> None:
        horizon = asyncio.get_running_loop().time() - idle_s
        for key, idle in list(self._clients.items()):
            old = [c for c, used in idle if used < horizon]
            idle[:] = [(c, used) for c, used in idle if used >= horizon]
            if not idle:
                del self._clients[key]
            for client in old:
                await client.aclose()

    async def _attempt(self, due: _Due) -> None:
        tgt, raw, attempt = due.target, due.body.encode(), due.attempts + 1
        client = self._client(due)
        try:
            ex = await post(
                crm_url(tgt.base_url, due.method),
                due.method,
                raw,
                client_id=tgt.client_id,
                signature=sign(tgt.client_id, raw, tgt.key),
                timeout_s=tgt.timeout_s,
                tls_required=tgt.tls_required,
                pems=tgt.pems,
                client=client,
            )
        finally:
            self._release(due, client)
            self._sending[due.domain_id] -= 1
            if self._sending[due.domain_id] <= 0:
                del self._sending[due.domain_id]
        now = self._now()
        retry = ex.retryable and attempt <= len(self.retry_delays_s)
        if ex.delivered:
            status, verdict, at = "delivered", verdict_of(ex), now
        elif retry:
            delay = self.retry_delays_s[attempt - 1]
            status, verdict = "pending", f"{verdict_of(ex)}; повтор через {delay:g} с"
            at = now + dt.timedelta(seconds=delay)
        else:
            status, verdict, at = "failed", verdict_of(ex), now
        row = log_row(self.core, due.domain_id, ex, test=due.test, verdict=verdict, attempt=attempt)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._outcomes.commit(_Outcome(due.id, attempt, status, ex.error[:500], at, row, done))
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
    async def run_once(self) -> float | None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_expiry > 60:
            self._last_expiry = loop.time()
            await self.expire_once()
            await self._close_idle_clients()
        await self.dispatch_once()
        return None

    async def run(self) -> None:
        self._outcomes.start()
        try:
            await super().run()
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._outcomes.stop()
            self._sending.clear()
            self._busy.clear()
            self._busy_by_domain.clear()
            clients, self._clients = self._clients, {}
            for idle in clients.values():
                for client, _used in idle:
                    await client.aclose()


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

        self.dispatcher = Dispatcher(core, lease=lease, mailer=mailer, mail_from=mail_from)
        self.pump = EventPump(core, on_made=self.dispatcher.wake)

    def wake(self) -> None:
        """New call events were committed in this process (the journal calls it): the pump runs now; its
        poll stays for events other nodes commit."""
        self.pump.wake()

    async def start(self) -> None:
        await self.pump.start()
        await self.dispatcher.start()

    async def stop(self) -> None:
        await self.pump.stop()
        await self.dispatcher.stop()
