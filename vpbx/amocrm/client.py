"""The amoCRM API client (amocrm.md §2.3, §2.5): ``AmoClient`` implements ``vpbx.amocrm.api.AmoApi``.

Every request of an account goes through its ``AccountLimiter`` (token bucket, realtime before background, 429
pause, 403 circuit) and its ``TokenManager`` (proactive refresh, one refresh and one retry after a 401).
Answers map onto the error tree of ``vpbx.amocrm.errors``:

=================================  ==========================================================================
answer                             raised
=================================  ==========================================================================
204                                nothing: an empty list or None
400 ``validation-errors``          ``AmoValidationError`` (violations: request_id, code, path, detail)
400 ``Entity not found`` (calls)   ``AmoEntityNotFound``
401 twice / refresh refused        ``AmoAuthError`` / ``AmoReauthRequired``
402, 403                           ``AmoPaymentRequired``, ``AmoForbidden`` (the circuit opens)
429                                not raised: the account pauses and the request waits its turn again
5xx, 504                           ``AmoServerError``
no connection                      ``AmoUnreachable`` (nothing sent; reads are tried once more first)
sent, no answer                    writes ``AmoUnknownOutcome`` (verify before re-sending), reads unreachable
=================================  ==========================================================================

Writes are never retried after they may have reached amoCRM; paging asks ``page=N+1`` while ``_links.next``
exists and stops at a 204 (hrefs are never followed). ``AmoClientPool`` keeps one client, limiter and health
record per account, and copies the health into the active ``CrmBinding.health["client"]`` every few seconds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import httpx
from sqlalchemy import select

from vpbx.amocrm.api import Json, Lane, NoteEntity
from vpbx.amocrm.errors import (
    AmoAuthError,
    AmoEntityNotFound,
    AmoError,
    AmoForbidden,
    AmoPaymentRequired,
    AmoRateLimited,
    AmoReauthRequired,
    AmoServerError,
    AmoSkipped,
    AmoUnknownOutcome,
    AmoUnreachable,
    AmoValidationError,
    Violation,
)
from vpbx.amocrm.limiter import AccountLimiter, Sleep
from vpbx.amocrm.oauth import account_url
from vpbx.amocrm.per_core import PerCore
from vpbx.amocrm.tokens import Credentials, TokenManager
from vpbx.clock import Clock, SystemClock
from vpbx.logs import get_logger
from vpbx.settings import Settings
from vpbx.store.models import CrmBinding

if TYPE_CHECKING:
    from vpbx.amocrm.lease import AccountLeases
    from vpbx.app import Core

log = get_logger("vpbx.amocrm.client")

CRM_TIMEOUT = httpx.Timeout(connect=2.0, read=5.0, write=5.0, pool=2.0)  # amocrm.md §2.5
MAX_BATCH = 50  # items per write request (amoCRM takes 250, recommends 50)
PAGE_LIMIT = 250  # E1 users
FIELDS_PAGE_LIMIT = 50  # E3 custom fields
SEARCH_LIMIT = 50  # E4, E6
MAX_PAGES = 200  # a bound on any paged read
MAX_REQUEUES = 12  # 429 answers one background request waits out before giving up (AmoRateLimited)
HEALTH_PERSIST_S = 5.0  # CrmBinding.health is written at most this often per account
ENTITY_NOT_FOUND = "Entity not found"
Method = Literal["GET", "POST", "PATCH", "DELETE"]
Params = list[tuple[str, str | int | float | bool | None]]


RECENT_429 = dt.timedelta(minutes=15)  # the health panel warns of 429 pauses this recent (ours, §5.8)


@dataclass(slots=True)
class AccountHealth:
    """What the health panel shows about talking to one account (plus the limiter's state)."""

    last_success_at: dt.datetime | None = None
    last_failure_at: dt.datetime | None = None
    last_error: str = ""
    last_status: int | None = None
    recent_429: deque[dt.datetime] = field(default_factory=deque)  # 429 answers within ``RECENT_429``

    def success(self, now: dt.datetime) -> None:
        self.last_success_at = now

    def failure(self, now: dt.datetime, error: AmoError) -> None:
        self.last_failure_at = now
        self.last_error = type(error).__name__
        self.last_status = error.status

    def rate_limited(self, now: dt.datetime) -> None:
        """A 429 answer (the request waits its pause and goes again: not a failure)."""
        self.recent_429.append(now)
        self._forget(now)

    def _forget(self, now: dt.datetime) -> None:
        while self.recent_429 and now - self.recent_429[0] > RECENT_429:
            self.recent_429.popleft()

    def as_dict(self, limiter: dict[str, Any], now: dt.datetime | None = None) -> dict[str, Any]:
        if now is not None:
            self._forget(now)
        return {
            "last_success_at": self.last_success_at.isoformat() if self.last_success_at else None,
            "last_failure_at": self.last_failure_at.isoformat() if self.last_failure_at else None,
            "last_error": self.last_error,
            "last_status": self.last_status,
            "last_429_at": self.recent_429[-1].isoformat() if self.recent_429 else None,
            "recent_429": len(self.recent_429),
            **limiter,
        }


def _embedded(data: Any, key: str) -> list[Json]:
    if not isinstance(data, dict):
        return []
    items = (data.get("_embedded") or {}).get(key)
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _has_next(data: Any) -> bool:
    return isinstance(data, dict) and bool((data.get("_links") or {}).get("next"))


def retry_after(resp: httpx.Response) -> float | None:
    """A 429's ``Retry-After`` in seconds (a number or an HTTP date), None when absent or unreadable."""
    value = resp.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def _body(resp: httpx.Response) -> Any:
    if not resp.content:
        return None
    try:
        return resp.json()
    except ValueError:
        return None


def _violations(data: Any) -> list[Violation]:
    out: list[Violation] = []
    items = data.get("validation-errors") if isinstance(data, dict) else None
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        rid = str(item.get("request_id", ""))
        for err in item.get("errors") or []:
            if isinstance(err, dict):
                out.append(
                    Violation(
                        request_id=rid,
                        code=str(err.get("code", "")),
                        path=str(err.get("path", "")),
                        detail=str(err.get("detail", "")),
                    )
                )
    return out


def _entity_not_found(data: Any) -> bool:
    errors = data.get("errors") if isinstance(data, dict) else None
    return isinstance(errors, list) and any(
        isinstance(e, dict) and e.get("title") == ENTITY_NOT_FOUND for e in errors
    )


def error_for(resp: httpx.Response) -> AmoError:
    """The error-tree member for a non-2xx answer other than 401/429 (also used by tests)."""
    status = resp.status_code
    rid = resp.headers.get("x-request-id", "")
    data = _body(resp)
    detail = ""
    if isinstance(data, dict):
        detail = str(data.get("detail") or data.get("title") or "")
    if status == 400:
        if _entity_not_found(data):
            return AmoEntityNotFound(ENTITY_NOT_FOUND, status=400, request_id=rid)
        return AmoValidationError(_violations(data), detail=detail, request_id=rid)
    if status == 401:
        return AmoAuthError(detail or "unauthorized", status=401, request_id=rid)
    if status == 402:
        return AmoPaymentRequired(detail or "payment required", status=402, request_id=rid)
    if status == 403:
        return AmoForbidden(detail or "forbidden", status=403, request_id=rid)
    if status == 429:
        return AmoRateLimited(detail or "rate limited", retry_after_s=retry_after(resp), request_id=rid)
    if status >= 500:
        return AmoServerError(detail or f"amoCRM {status}", status=status, request_id=rid)
    return AmoError(detail or f"amoCRM {status}", status=status, request_id=rid)


def _check_batch(items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if not items:
        raise ValueError("empty batch")
    if len(items) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} items per request, got {len(items)}")
    return [dict(i) for i in items]


class AmoClient:
    """One amoCRM account over HTTP (implements ``AmoApi``)."""

    def __init__(
        self,
        account_id: int,
        *,
        http: httpx.AsyncClient,
        tokens: TokenManager,
        limiter: AccountLimiter,
        settings: Settings,
        clock: Clock | None = None,
        health: AccountHealth | None = None,
        on_health: Callable[[int], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.account_id = account_id
        self._http = http
        self._tokens = tokens
        self.limiter = limiter
        self._settings = settings
        self._clock = clock or SystemClock()
        self.health = health or AccountHealth()
        self._on_health = on_health
        self._monotonic = monotonic

    def __repr__(self) -> str:
        return f"AmoClient(account_id={self.account_id})"

    # --- metadata -------------------------------------------------------------------------------------------
    async def account(self) -> Json:
        data = await self._call(
            "GET", "/api/v4/account", [("with", "users_groups,task_types,datetime_settings")]
        )
        return data if isinstance(data, dict) else {}

    async def users(self) -> list[Json]:
        return await self._pages("/api/v4/users", [("limit", PAGE_LIMIT), ("with", "group")], "users")

    async def pipelines(self) -> list[Json]:
        return _embedded(await self._call("GET", "/api/v4/leads/pipelines"), "pipelines")

    async def custom_fields(self, entity: Literal["contacts", "leads"]) -> list[Json]:
        if entity not in ("contacts", "leads"):
            raise ValueError(f"no custom fields for {entity!r}")
        path = f"/api/v4/{entity}/custom_fields"
        return await self._pages(path, [("limit", FIELDS_PAGE_LIMIT)], "custom_fields")

    # --- reads ----------------------------------------------------------------------------------------------
    async def search_contacts(
        self, query: str, *, lane: Lane = "background", deadline: float | None = None
    ) -> list[Json]:
        params: Params = [("query", query), ("with", "leads"), ("limit", SEARCH_LIMIT)]
        data = await self._call("GET", "/api/v4/contacts", params, lane=lane, deadline=deadline)
        return _embedded(data, "contacts")

    async def get_contact(
        self, contact_id: int, *, lane: Lane = "background", deadline: float | None = None
    ) -> Json | None:
        path = f"/api/v4/contacts/{int(contact_id)}"
        data = await self._call("GET", path, [("with", "leads")], lane=lane, deadline=deadline)
        return data if isinstance(data, dict) else None

    async def get_leads(
        self, ids: Sequence[int], *, lane: Lane = "background", deadline: float | None = None
    ) -> list[Json]:
        wanted = list(dict.fromkeys(int(i) for i in ids))
        out: list[Json] = []
        for start in range(0, len(wanted), SEARCH_LIMIT):
            chunk = wanted[start : start + SEARCH_LIMIT]
            params: Params = [("filter[id][]", i) for i in chunk]
            params.append(("limit", SEARCH_LIMIT))
            out += await self._pages("/api/v4/leads", params, "leads", lane=lane, deadline=deadline)
        return out

    async def list_tasks(
        self, *, entity_type: str, entity_ids: Sequence[int], is_completed: bool | None = False
    ) -> list[Json]:
        params: Params = [("filter[entity_type]", entity_type)]
        params += [("filter[entity_id][]", int(i)) for i in entity_ids]
        if is_completed is not None:
            params.append(("filter[is_completed]", int(is_completed)))
        params.append(("limit", PAGE_LIMIT))
        return await self._pages("/api/v4/tasks", params, "tasks")

    async def list_notes(
        self, entity: NoteEntity, entity_id: int, note_types: Sequence[str] = ("call_in", "call_out")
    ) -> list[Json]:
        path = f"/api/v4/{_note_entity(entity)}/{int(entity_id)}/notes"
        params: Params = [("filter[note_type][]", t) for t in note_types]
        params.append(("limit", PAGE_LIMIT))
        return await self._pages(path, params, "notes")

    # --- writes ---------------------------------------------------------------------------------------------
    async def create_contacts(self, items: Sequence[Mapping[str, Any]]) -> list[Json]:
        return _embedded(await self._write("POST", "/api/v4/contacts", _check_batch(items)), "contacts")

    async def update_contact(self, contact_id: int, fields: Mapping[str, Any]) -> Json:
        data = await self._write("PATCH", f"/api/v4/contacts/{int(contact_id)}", dict(fields))
        return data if isinstance(data, dict) else {}

    async def update_lead(self, lead_id: int, fields: Mapping[str, Any]) -> Json:
        data = await self._write("PATCH", f"/api/v4/leads/{int(lead_id)}", dict(fields))
        return data if isinstance(data, dict) else {}

    async def create_leads(self, items: Sequence[Mapping[str, Any]]) -> list[Json]:
        return _embedded(await self._write("POST", "/api/v4/leads", _check_batch(items)), "leads")

    async def create_complex(self, items: Sequence[Mapping[str, Any]]) -> list[Json]:
        data = await self._write("POST", "/api/v4/leads/complex", _check_batch(items))
        if isinstance(data, list):
            return [i for i in data if isinstance(i, dict)]
        return _embedded(data, "leads")  # tolerate a HAL-wrapped answer

    async def add_unsorted_sip(self, items: Sequence[Mapping[str, Any]]) -> list[Json]:
        data = await self._write("POST", "/api/v4/leads/unsorted/sip", _check_batch(items))
        return _embedded(data, "unsorted")

    async def create_tasks(self, items: Sequence[Mapping[str, Any]]) -> list[Json]:
        return _embedded(await self._write("POST", "/api/v4/tasks", _check_batch(items)), "tasks")

    async def add_notes(self, entity: NoteEntity, items: Sequence[Mapping[str, Any]]) -> list[Json]:
        path = f"/api/v4/{_note_entity(entity)}/notes"
        return _embedded(await self._write("POST", path, _check_batch(items)), "notes")

    async def update_note(self, entity: NoteEntity, note_id: int, fields: Mapping[str, Any]) -> Json:
        path = f"/api/v4/{_note_entity(entity)}/notes/{int(note_id)}"
        try:
            data = await self._write("PATCH", path, dict(fields))
        except AmoError as e:
            if e.status == 404:  # the note or its card is gone
                raise AmoEntityNotFound(ENTITY_NOT_FOUND, status=404, request_id=e.request_id) from e
            raise
        return data if isinstance(data, dict) else {}

    async def add_calls(self, items: Sequence[Mapping[str, Any]]) -> list[Json]:
        data = await self._write("POST", "/api/v4/calls", _check_batch(items))
        calls = _embedded(data, "calls")
        if not calls and _entity_not_found(data):  # a 2xx that attached nothing (amoCRM?)
            raise AmoEntityNotFound(ENTITY_NOT_FOUND)
        return calls

    async def add_events_v2(self, items: Sequence[Mapping[str, Any]]) -> None:
        await self._write("POST", "/api/v2/events", {"add": _check_batch(items)})

    async def subscribe_webhook(self, destination: str, settings: Sequence[str]) -> Json:
        data = await self._write(
            "POST", "/api/v4/webhooks", {"destination": destination, "settings": list(settings)}
        )
        return data if isinstance(data, dict) else {}

    async def unsubscribe_webhook(self, destination: str) -> None:
        await self._write("DELETE", "/api/v4/webhooks", {"destination": destination})

    # --- plumbing -------------------------------------------------------------------------------------------
    async def _pages(
        self,
        path: str,
        params: Params,
        key: str,
        *,
        lane: Lane = "background",
        deadline: float | None = None,
    ) -> list[Json]:
        out: list[Json] = []
        for page in range(1, MAX_PAGES + 1):
            data = await self._call("GET", path, [*params, ("page", page)], lane=lane, deadline=deadline)
            if data is None:  # 204: past the end
                break
            out += _embedded(data, key)
            if not _has_next(data):
                break
        return out

    async def _call(
        self,
        method: Method,
        path: str,
        params: Params | None = None,
        *,
        lane: Lane = "background",
        deadline: float | None = None,
    ) -> Any:
        return await self._request(method, path, params=params, lane=lane, deadline=deadline, write=False)

    async def _write(self, method: Method, path: str, body: Any) -> Any:
        return await self._request(method, path, body=body, write=True)

    def _timeout(self, deadline: float | None) -> httpx.Timeout:
        if deadline is None:
            return CRM_TIMEOUT
        left = deadline - self._monotonic()
        if left <= 0:
            raise AmoSkipped("deadline passed before sending")
        return httpx.Timeout(
            min(left, CRM_TIMEOUT.read or left), connect=min(left, CRM_TIMEOUT.connect or left)
        )

    async def _request(
        self,
        method: Method,
        path: str,
        *,
        params: Params | None = None,
        body: Any = None,
        lane: Lane = "background",
        deadline: float | None = None,
        write: bool,
    ) -> Any:
        try:
            return await self._attempts(method, path, params, body, lane, deadline, write)
        except AmoSkipped:
            raise
        except AmoError as e:
            self.health.failure(self._clock.now(), e)
            self._health_changed()
            log.warning(
                "amocrm.request_failed",
                account_id=self.account_id,
                method=method,
                path=path,
                error=type(e).__name__,
                status=e.status,
                request_id=e.request_id,
            )
            raise

    async def _attempts(
        self,
        method: Method,
        path: str,
        params: Params | None,
        body: Any,
        lane: Lane,
        deadline: float | None,
        write: bool,
    ) -> Any:
        refreshed = False
        read_retried = False
        requeues = 0
        while True:
            creds = await self._tokens.credentials(self.account_id)
            permit = await self.limiter.acquire(lane, deadline)
            timeout = self._timeout(deadline)
            try:
                resp = await self._send(method, path, params, body, creds, timeout)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
                self.limiter.on_no_answer(permit)
                if not write and not read_retried:
                    read_retried = True
                    continue
                raise AmoUnreachable(f"{method} {path}: {type(e).__name__}") from None
            except httpx.TransportError as e:  # sent (at least partly), no answer
                self.limiter.on_no_answer(permit)
                if write:
                    raise AmoUnknownOutcome(f"{method} {path}: {type(e).__name__}") from None
                if not read_retried and not isinstance(e, httpx.TimeoutException):
                    read_retried = True
                    continue
                raise AmoUnreachable(f"{method} {path}: {type(e).__name__}") from None
            status = resp.status_code
            if status == 429:
                self.limiter.on_429(permit, retry_after(resp))
                self.health.rate_limited(self._clock.now())
                self._health_changed()
                requeues += 1
                if requeues > MAX_REQUEUES:
                    raise error_for(resp)
                continue  # not applied: wait for the pause and send again
            if status == 403:
                self.limiter.on_403()
                raise error_for(resp)
            self.limiter.on_answer(permit)
            if status == 401:
                if refreshed:
                    raise error_for(resp)
                refreshed = True
                await self._after_401(creds)
                continue
            if 200 <= status < 300:
                self.health.success(self._clock.now())
                self._health_changed()
                if status == 204:
                    return None
                data = _body(resp)
                if data is None and resp.content:
                    err = AmoServerError(f"{method} {path}: not JSON", status=status)
                    raise AmoUnknownOutcome(str(err)) if write else err
                return data
            raise error_for(resp)

    async def _after_401(self, creds: Credentials) -> None:
        try:
            await self._tokens.after_unauthorized(self.account_id, creds)
        except AmoReauthRequired:
            raise
        except AmoError as e:  # the refresh itself failed for now (network, 5xx)
            raise AmoAuthError(f"401 and the refresh failed: {type(e).__name__}", status=401) from None

    async def _send(
        self,
        method: Method,
        path: str,
        params: Params | None,
        body: Any,
        creds: Credentials,
        limit: httpx.Timeout,
    ) -> httpx.Response:
        url = account_url(self._settings.amocrm, creds.base_domain) + path
        headers = {"Authorization": f"Bearer {creds.access_token}", "Accept": "application/hal+json"}
        started = self._monotonic()
        if body is None:
            resp = await self._http.request(method, url, params=params, headers=headers, timeout=limit)
        else:
            resp = await self._http.request(
                method, url, params=params, json=body, headers=headers, timeout=limit
            )
        log.debug(
            "amocrm.request",
            account_id=self.account_id,
            method=method,
            path=path,
            status=resp.status_code,
            request_id=resp.headers.get("x-request-id", ""),
            ms=round((self._monotonic() - started) * 1000),
        )
        return resp

    def _health_changed(self) -> None:
        if self._on_health is not None:
            self._on_health(self.account_id)


def _note_entity(entity: str) -> str:
    if entity not in ("contacts", "leads"):
        raise ValueError(f"notes only on contacts or leads, not {entity!r}")
    return entity


class AmoClientPool:
    """One ``AmoClient`` (with its limiter and health) per amoCRM account, sharing one HTTP client and one
    ``TokenManager`` (implements ``AmoClients``); a given ``http`` client is shared, not closed here."""

    def __init__(
        self,
        core: Core,
        http: httpx.AsyncClient | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._core = core
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(
            timeout=CRM_TIMEOUT,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )
        self._monotonic = monotonic
        self._sleep = sleep
        self.tokens = TokenManager(core.sessions, core.box, core.settings, self._http, clock=core.clock)
        self._clients: dict[int, AmoClient] = {}
        self._persisted_at: dict[int, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.leases: AccountLeases | None = None  # several processes: each account's share and owner

    def use_leases(self, leases: AccountLeases) -> None:
        """Several processes share the accounts (vpbx/amocrm/lease.py): each limiter keeps to this process's
        share of ``amocrm.rps``, and background work asks ``leases`` whether this process owns the account."""
        self.leases = leases
        for account_id, client in self._clients.items():
            client.limiter.share = self._share_of(account_id)

    def _share_of(self, account_id: int) -> Callable[[], float] | None:
        leases = self.leases
        if leases is None:
            return None
        return lambda: leases.share(account_id)

    def for_account(self, amo_account_id: int) -> AmoClient:
        client = self._clients.get(amo_account_id)
        if client is None:
            limiter = AccountLimiter(
                amo_account_id, self._core.settings.amocrm.rps, monotonic=self._monotonic, sleep=self._sleep
            )
            limiter.share = self._share_of(amo_account_id)
            client = AmoClient(
                amo_account_id,
                http=self._http,
                tokens=self.tokens,
                limiter=limiter,
                settings=self._core.settings,
                clock=self._core.clock,
                on_health=self._health_changed,
                monotonic=self._monotonic,
            )
            self._clients[amo_account_id] = client
        return client

    def health(self, amo_account_id: int) -> dict[str, Any]:
        """The account's client health for the panel: last success/failure, last error, limiter state."""
        client = self.for_account(amo_account_id)
        snap = client.limiter.snapshot()
        now = self._core.clock.now()
        for key, until in (("paused_for_s", "paused_until"), ("circuit_open_for_s", "circuit_open_until")):
            left = float(snap[key])
            snap[until] = (now + dt.timedelta(seconds=left)).isoformat() if left > 0 else None
        return client.health.as_dict(snap, now)

    def _health_changed(self, account_id: int) -> None:
        now = self._monotonic()
        last = self._persisted_at.get(account_id)
        if last is not None and now - last < HEALTH_PERSIST_S:
            return
        self._persisted_at[account_id] = now
        task = asyncio.get_running_loop().create_task(self._persist(account_id), name="amo-health")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _persist(self, account_id: int) -> None:
        snapshot = self.health(account_id)
        try:
            async with self._core.sessions() as s:
                row = await s.scalar(
                    select(CrmBinding).where(
                        CrmBinding.crm_kind == "amocrm",
                        CrmBinding.external_account_id == account_id,
                        CrmBinding.status == "active",
                    )
                )
                if row is None:
                    return
                row.health = {**(row.health or {}), "client": snapshot}
                await s.commit()
        except Exception as e:  # the panel's copy is best effort; the in-memory one stays exact
            log.warning("amocrm.health_not_saved", account_id=account_id, error=type(e).__name__)

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._own_http:
            await self._http.aclose()


# One pool per process and core: every feature (routing lookups, widget API, jobs) shares the account's
# limiter, so its whole traffic stays under the budget (§2.5).
_SHARED: PerCore[AmoClientPool] = PerCore()


def shared_pool(core: Core) -> AmoClientPool:
    """The process's ``AmoClientPool`` for ``core`` (made on first use; closed by ``close_shared_pool``)."""
    return _SHARED.get(core, lambda: AmoClientPool(core))


async def close_shared_pool(core: Core) -> None:
    pool = _SHARED.pop(core)
    if pool is not None:
        await pool.aclose()


class ClientPoolPart:
    """The runtime part that closes the shared pool (its HTTP connections, pending health copies) on stop."""

    def __init__(self, core: Core) -> None:
        self.core = core

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await close_shared_pool(self.core)
