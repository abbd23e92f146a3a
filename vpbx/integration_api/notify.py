"""One PBX → CRM exchange (integration-api.md §5.1, §2.5, §6.3 A, §6.4): build the URL, sign the exact bytes,
POST them, log the exchange and tell the caller what happened.

The cabinet's test sends (``send_now``), the log's «Повторить» (``replay``), the notifications' dispatcher
and ``get_number_info`` all go through ``post``, so the URL rule, TLS, redirects, the timeout and the log row
are the same everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import ssl
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.integration_api.core import (
    LOG_BODY_LIMIT,
    api_settings,
    dumps,
    loggable_body,
    loggable_headers,
    sign,
    sign_key,
    write_log,
)
from vpbx.logs import get_logger
from vpbx.store.models import ApiLog, ApiSettings, ApiTrustedCert

log = get_logger("vpbx.integration_api.notify")

CONTENT_TYPE = "application/json; charset=utf-8"
RESPONSE_LIMIT = LOG_BODY_LIMIT  # bytes of an answer read; more is "too large" (get_number_info's 16 KiB cap)

DELIVERED = "доставлено"
NOT_DELIVERED = "не доставлено"


@dataclass(slots=True, kw_only=True)
class Exchange:
    """What one POST to the CRM did, as the cabinet's result panel and the dispatcher see it."""

    url: str
    method: str
    request_headers: dict[str, str]
    request_body: str
    signature: str
    status: int | None = None  # None: no HTTP answer (refused, timeout, TLS, no address)
    latency_ms: int | None = None
    response_body: str = ""
    response_raw: bytes = b""
    response_too_large: bool = False
    response_headers: dict[str, str] = field(default_factory=dict)
    error: str = ""  # why there was no usable answer (Russian, shown and logged)
    log_id: uuid.UUID | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        """Worth another attempt (§5.1): network error, timeout, ``5xx`` or ``429``; not 3xx or other 4xx."""
        if self.status is None:
            return self.error != NO_ADDRESS and not self.error.startswith(HTTPS_REQUIRED)
        return self.status >= 500 or self.status == 429

    @property
    def result(self) -> str | None:
        """The answer's ``result``, when it is a JSON object carrying one (for the log's column)."""
        try:
            data = json.loads(self.response_raw)
        except ValueError:
            return None
        if isinstance(data, dict) and isinstance(data.get("result"), str | int) and "result" in data:
            return str(data["result"])[:16]
        return None


NO_ADDRESS = "Адрес CRM не задан"
HTTPS_REQUIRED = "Требуется HTTPS"


def crm_url(base: str, method: str) -> str:
    """The CRM address + ``/`` + method; a trailing slash on the address is not doubled (§5.1)."""
    base = base.strip()
    return f"{base.rstrip('/')}/{method}" if base else ""


# --- TLS (§2.5): the system store plus the domain's trusted certificates -----------------------------------

_CONTEXTS: dict[tuple[str, ...], ssl.SSLContext] = {}


def tls_context(pems: tuple[str, ...]) -> ssl.SSLContext:
    """Verification against the system store plus these PEMs; TLS 1.2 and 1.3 only; never switched off."""
    ctx = _CONTEXTS.get(pems)
    if ctx is None:
        ctx = ssl.create_default_context()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        for pem in pems:
            try:
                ctx.load_verify_locations(cadata=pem)
            except (ssl.SSLError, ValueError):
                log.warning("api.trusted_cert_unusable")
        if len(_CONTEXTS) > 256:
            _CONTEXTS.clear()
        _CONTEXTS[pems] = ctx
    return ctx


async def trusted_pems(s: AsyncSession, domain_id: uuid.UUID) -> tuple[str, ...]:
    rows = await s.scalars(
        select(ApiTrustedCert.pem).where(ApiTrustedCert.domain_id == domain_id).order_by(ApiTrustedCert.id)
    )
    return tuple(rows)


# --- the exchange ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how a domain's CRM is reached, read once per exchange."""

    client_id: str
    key: str
    base_url: str
    timeout_s: int
    tls_required: bool
    pems: tuple[str, ...]


async def target(core: Any, s: AsyncSession, settings: ApiSettings) -> Target:
    return Target(
        client_id=settings.client_id,
        key=sign_key(settings, core.box),
        base_url=settings.crm_url,
        timeout_s=settings.timeout_s,
        tls_required=settings.tls_required,
        pems=await trusted_pems(s, settings.domain_id),
    )


async def post(
    url: str,
    method: str,
    raw: bytes,
    *,
    client_id: str,
    signature: str,
    timeout_s: float,
    tls_required: bool,
    pems: tuple[str, ...] = (),
    client: httpx.AsyncClient | None = None,
) -> Exchange:
    """POST these exact bytes; no redirects; connect and answer within ``timeout_s``; never raises.

    ``client``: a keep-alive client made by ``keepalive_client(pems)`` (the dispatcher keeps one per domain);
    without it the exchange opens and closes its own connection."""
    headers = {
        "Content-Type": CONTENT_TYPE,
        "X-Client-ID": client_id,
        "X-Client-Sign": signature,
    }
    ex = Exchange(
        url=url,
        method=method,
        request_headers=headers,
        request_body=raw.decode("utf-8", errors="replace"),
        signature=signature,
    )
    if not url:
        ex.error = NO_ADDRESS
        return ex
    scheme = url.split(":", 1)[0].lower()
    if scheme not in ("http", "https") or (tls_required and scheme != "https"):
        ex.error = f"{HTTPS_REQUIRED}: адрес CRM должен начинаться с https://"
        return ex
    started = time.monotonic()
    try:
        async with contextlib.AsyncExitStack() as stack:
            if client is None:
                client = await stack.enter_async_context(
                    httpx.AsyncClient(
                        verify=tls_context(pems), follow_redirects=False, timeout=timeout_s, trust_env=False
                    )
                )
            await stack.enter_async_context(asyncio.timeout(timeout_s))
            response = await stack.enter_async_context(
                client.stream("POST", url, content=raw, headers=headers, timeout=timeout_s)
            )
            ex.status = response.status_code
            ex.response_headers = {k.lower(): v for k, v in response.headers.items()}
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > RESPONSE_LIMIT:
                    ex.response_too_large = True
                    break
            ex.response_raw = bytes(body[: RESPONSE_LIMIT + 1])
    except TimeoutError:
        ex.error = f"Нет ответа за {timeout_s:g} с"
    except httpx.TimeoutException:
        ex.error = f"Нет ответа за {timeout_s:g} с"
    except httpx.ConnectError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ssl.SSLError) or "certificate" in str(exc).lower() or "ssl" in str(exc).lower():
            ex.error = f"Ошибка TLS: {str(exc)[:200]}"
        else:
            ex.error = f"Ошибка соединения: {str(exc)[:200] or type(exc).__name__}"
    except httpx.HTTPError as exc:
        ex.error = f"Ошибка соединения: {str(exc)[:200] or type(exc).__name__}"
    ex.latency_ms = int((time.monotonic() - started) * 1000)
    if ex.status is not None:
        ctype = ex.response_headers.get("content-type", "application/json")
        ex.response_body, _ = loggable_body(ex.response_raw, ctype)
        if ex.response_too_large:
            ex.error = "Ответ больше 16 КиБ"
        elif not ex.delivered:
            ex.error = f"HTTP {ex.status}"
    return ex


def keepalive_client(pems: tuple[str, ...], connections: int) -> httpx.AsyncClient:
    """A client that keeps up to ``connections`` connections open to a CRM between exchanges (§2.5's TLS
    rules; no redirects; the timeout is given per exchange)."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(
        verify=tls_context(pems), follow_redirects=False, trust_env=False, limits=limits, timeout=None
    )


def log_row(
    core: Any, domain_id: uuid.UUID, ex: Exchange, *, test: bool, verdict: str, attempt: int | None = None
) -> dict[str, Any]:
    """The log row of one outgoing exchange (§6.4), as ``ApiLog``'s fields: headers with X-Client-Sign,
    bodies, status, verdict."""
    body, cut = loggable_body(ex.request_body.encode())
    return {
        "id": uuid.uuid4(),
        "domain_id": domain_id,
        "at": now_utc(core),
        "direction": "out",
        "method": ex.method,
        "url": ex.url[:1000],
        "source_ip": "",
        "request_headers": loggable_headers(ex.request_headers),
        "request_body": body,
        "request_truncated": cut,
        "status": ex.status,
        "result": ex.result,
        "response_body": ex.response_body,
        "latency_ms": ex.latency_ms,
        "attempt": attempt,
        "verdict": verdict[:500],
        "test": test,
    }


async def log_exchange(
    core: Any,
    domain_id: uuid.UUID,
    ex: Exchange,
    *,
    test: bool,
    verdict: str,
    attempt: int | None = None,
) -> None:
    """Write the log row of one outgoing exchange (``log_row``); its id goes to ``ex.log_id``."""
    row = log_row(core, domain_id, ex, test=test, verdict=verdict, attempt=attempt)
    try:
        await write_log(core.sessions, **row)
        ex.log_id = row["id"]
    except Exception as exc:  # a failure to log never fails the exchange
        log.warning("api.log_failed", method=ex.method, error=repr(exc)[:300])


def verdict_of(ex: Exchange) -> str:
    return DELIVERED if ex.delivered else f"{NOT_DELIVERED}: {ex.error}" if ex.error else NOT_DELIVERED


async def send_now(
    core: Any,
    domain_id: uuid.UUID,
    method: str,
    payload_or_raw_body: Mapping[str, object] | bytes,
    *,
    timeout_s: float,
    test: bool,
    url: str | None = None,
    resign: bool = True,
    signature: str | None = None,
    attempt: int | None = None,
) -> Exchange:
    """Send one request to the domain's CRM now, log it and return what the cabinet shows (§6.3 A).

    ``payload_or_raw_body``: a payload (serialised once with ``dumps``) or the exact bytes to send. ``url``
    overrides the CRM address + method (a replay to another URL). With ``resign=False`` the given
    ``signature`` is sent as it is (a byte-for-byte replay). The first successful test send resumes sending
    after a suspension (§5.1).
    """
    raw = payload_or_raw_body if isinstance(payload_or_raw_body, bytes) else dumps(payload_or_raw_body)
    async with core.sessions() as s:
        settings = await api_settings(s, domain_id)
        if settings is None:
            ex = Exchange(
                url=url or "", method=method, request_headers={}, request_body=raw.decode(), signature=""
            )
            ex.error = "Услуга «Интеграционный API» не подключена"
            return ex
        tgt = await target(core, s, settings)
    sig = sign(tgt.client_id, raw, tgt.key) if resign or not signature else signature
    ex = await post(
        url if url is not None else crm_url(tgt.base_url, method),
        method,
        raw,
        client_id=tgt.client_id,
        signature=sig,
        timeout_s=timeout_s,
        tls_required=tgt.tls_required,
        pems=tgt.pems,
    )
    await log_exchange(core, domain_id, ex, test=test, verdict=verdict_of(ex), attempt=attempt)
    if test and ex.delivered:
        await resume_on_success(core, domain_id)
    return ex


async def resume_on_success(core: Any, domain_id: uuid.UUID) -> None:
    async with core.sessions() as s:
        settings = await api_settings(s, domain_id)
        if settings is not None and settings.suspended_at is not None:
            settings.suspended_at = None
            await s.commit()
            log.info("api.sending_resumed", domain_id=str(domain_id), by="test-send")


async def replay(
    core: Any, log_id: uuid.UUID, *, url: str | None = None, resign: bool, domain_id: uuid.UUID | None = None
) -> Exchange | None:
    """«Повторить» (§6.4): send a logged PBX → CRM request again, to the same or another URL, byte for byte
    with its original signature or re-signed with the current key; the replay is a new log row.

    ``domain_id``: the session's domain; another domain's row is None (the caller answers 404)."""
    async with core.sessions() as s:
        row = await s.get(ApiLog, log_id)
        if row is None or row.direction != "out" or row.domain_id is None:
            return None
        if domain_id is not None and row.domain_id != domain_id:
            return None
        settings = await api_settings(s, row.domain_id)
        timeout_s = settings.timeout_s if settings is not None else 3
        method, body, target_url, test = row.method, row.request_body, row.url, row.test
        original = {k.lower(): v for k, v in (row.request_headers or {}).items()}.get("x-client-sign", "")
        owner = row.domain_id
    return await send_now(
        core,
        owner,
        method,
        body.encode(),
        timeout_s=timeout_s,
        test=test,
        url=url or target_url,
        resign=resign,
        signature=original,
    )


def now_utc(core: Any) -> dt.datetime:
    """The clock's now in UTC."""
    now: dt.datetime = core.clock.now()
    return now.astimezone(dt.UTC)
