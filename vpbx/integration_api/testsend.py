"""Test sends API → CRM from the cabinet (integration-api.md §6.3 A).

A minimal sender written by the cabinet's helper until the notifications' ``send_now`` lands: it builds the
chosen test payload (``session_id``/``order_id`` starting with ``test-``), signs it like live traffic,
posts it once to the domain's CRM address with the given timeout, logs the exchange as a test row and
returns what the result panel shows. Nothing is retried and nothing goes through the outbox.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ssl
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from vpbx.crypto import SecretBox
from vpbx.integration_api.core import dumps, loggable_body, moscow, sign, sign_key, write_log
from vpbx.store.models import ApiLog, ApiSettings, ApiTrustedCert, Domain, IncomingNumber, User

CALL_STATES = ("new", "calling", "connected", "disconnected", "end")
TEST_METHODS = (
    *(f"call_events:{state}" for state in CALL_STATES),
    "get_number_info",
    "history_file_completed",
)
DEFAULT_CALLER = "79161234567"
SENDS_PER_MINUTE = 10  # per domain (§6.3 A)
RESPONSE_LIMIT = 16 * 1024  # bytes of the CRM's answer read and shown


@dataclass(frozen=True, slots=True)
class TestSend:
    """What the result panel shows about one test send."""

    method: str
    url: str
    request_headers: Mapping[str, str]
    request_body: str
    signature: str
    status: int | None = None
    latency_ms: int | None = None
    response_body: str = ""
    error: str = ""
    interpretation: str = ""


class TooManySends(Exception):
    """More than ``SENDS_PER_MINUTE`` test sends of one domain in the last minute."""


def crm_endpoint(crm_url: str, method: str) -> str:
    """The CRM address + ``/`` + method; a trailing slash on the address is not doubled (§5.1)."""
    return f"{crm_url.rstrip('/')}/{method}"


def digits(number: str) -> str:
    return "".join(ch for ch in number if ch.isdigit())


async def test_payload(
    s: AsyncSession, domain: Domain, choice: str, *, caller: str, now: dt.datetime
) -> tuple[str, dict[str, object]]:
    """The wire method and body of a test item: a ``call_events`` state of an incoming test call answered
    by the domain's first user, ``get_number_info`` for the domain's first line, or
    ``history_file_completed``."""
    line = await s.scalar(
        select(IncomingNumber.number)
        .where(IncomingNumber.domain_id == domain.id)
        .order_by(IncomingNumber.number)
        .limit(1)
    )
    line_digits = digits(line or "") or "74950000000"
    if choice == "get_number_info":
        return "get_number_info", {
            "domain": domain.name,
            "from_number": caller,
            "request_number": line_digits,
        }
    if choice == "history_file_completed":
        return "history_file_completed", {
            "order_id": f"test-{uuid.uuid4().hex}",
            "result": "0",
            "resultMessage": "Операция выполнена успешно",
        }
    state = choice.removeprefix("call_events:")
    if state not in CALL_STATES:
        raise ValueError(choice)
    user = await s.scalar(select(User).where(User.domain_id == domain.id).order_by(User.pin).limit(1))
    body: dict[str, object] = {
        "state": state,
        "type": "incoming",
        "session_id": f"test-{uuid.uuid4()}",
        "timestamp": moscow(now),
        "from_number": f"sip:{caller}@{domain.name}",
    }
    if state == "new" or user is None:
        body["request_number"] = f"sip:{line_digits}@{domain.name}"
    else:
        body["request_number"] = f"{user.name}@{domain.name}"
        body["request_pin"] = user.pin
    if state == "disconnected":
        body["disconnect_reason"] = "5"
    if state == "end":
        body["is_record"] = "false"
    body["domain"] = domain.name
    return "call_events", body


def interpret_number_info(raw: bytes) -> str:
    """What the PBX makes of a ``get_number_info`` answer (§5.3): keys trimmed and case-insensitive."""
    import json

    try:
        data = json.loads(raw)
    except ValueError:
        return "not JSON: routing rules decide"
    if not isinstance(data, dict):
        return "not a JSON object: routing rules decide"
    keys = {str(k).strip().lower(): v for k, v in reversed(list(data.items()))}
    exact = {str(k): v for k, v in data.items()}
    result = exact.get("result", keys.get("result"))
    name = exact.get("displayName", keys.get("displayname"))
    pin = exact.get("PIN", keys.get("pin"))
    if result is None and (name is not None or pin is not None):
        result = "0"
    if str(result).strip() != "0":
        return f"result {result!r}: routing rules decide, no name"
    return f"displayName {name!r}, PIN {pin!r}"


def ssl_context(certs: list[str]) -> ssl.SSLContext:
    """The system store plus the domain's trusted certificates; TLS 1.2 and 1.3 only (§2.5)."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for pem in certs:
        ctx.load_verify_locations(cadata=pem)
    return ctx


async def recent_sends(s: AsyncSession, domain_id: uuid.UUID, now: dt.datetime) -> int:
    return (
        await s.scalar(
            select(func.count())
            .select_from(ApiLog)
            .where(
                ApiLog.domain_id == domain_id,
                ApiLog.direction == "out",
                ApiLog.test.is_(True),
                ApiLog.at > now - dt.timedelta(minutes=1),
            )
        )
        or 0
    )


async def send_now(
    sessions: async_sessionmaker[AsyncSession],
    box: SecretBox,
    domain_id: uuid.UUID,
    choice: str,
    *,
    timeout_s: int,
    caller: str = DEFAULT_CALLER,
    now: dt.datetime,
    transport: httpx.AsyncBaseTransport | None = None,
) -> TestSend:
    """Send one test item to the domain's CRM now, log it as a test row and return the exchange."""
    async with sessions() as s:
        settings = await s.get(ApiSettings, domain_id)
        domain = await s.get(Domain, domain_id)
        if settings is None or domain is None or not settings.crm_url:
            raise LookupError("no CRM address")
        if await recent_sends(s, domain_id, now) >= SENDS_PER_MINUTE:
            raise TooManySends
        method, payload = await test_payload(s, domain, choice, caller=caller, now=now)
        certs = list(await s.scalars(select(ApiTrustedCert.pem).where(ApiTrustedCert.domain_id == domain_id)))
        client_id, key = settings.client_id, sign_key(settings, box)
        url = crm_endpoint(settings.crm_url, method)
    raw = dumps(payload)
    signature = sign(client_id, raw, key)
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "X-Client-ID": client_id,
        "X-Client-Sign": signature,
    }
    sent = TestSend(method, url, headers, raw.decode(), signature)
    started = time.perf_counter()
    status: int | None = None
    body = b""
    error = ""
    try:
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(float(timeout_s)),
            follow_redirects=False,
            verify=ssl_context(certs) if url.startswith("https:") else True,
            transport=transport,
        ) as client:
            async with client.stream("POST", url, content=raw, headers=headers) as resp:
                status = resp.status_code
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > RESPONSE_LIMIT:
                        break
    except httpx.TimeoutException:
        error = "timeout"
    except (httpx.HTTPError, ssl.SSLError, OSError) as e:
        error = f"{type(e).__name__}: {e}"[:300]
    latency_ms = round((time.perf_counter() - started) * 1000)
    shown, _cut = loggable_body(body) if body else ("", False)
    interpretation = interpret_number_info(body) if method == "get_number_info" and status else ""
    verdict = error or ("delivered" if status is not None and 200 <= status < 300 else "не доставлено")
    if interpretation:
        verdict = f"{verdict}; {interpretation}"
    await write_log(
        sessions,
        domain_id=domain_id,
        at=now,
        direction="out",
        method=method,
        url=url,
        request_headers=headers,
        request_body=raw.decode(),
        status=status,
        response_body=shown,
        latency_ms=latency_ms,
        attempt=1,
        verdict=verdict[:500],
        test=True,
    )
    return dataclasses.replace(
        sent,
        status=status,
        latency_ms=latency_ms,
        response_body=shown,
        error=error,
        interpretation=interpretation,
    )
