"""Test sends API → CRM from the cabinet (integration-api.md §6.3 A): the test payloads and the limit.

The cabinet builds the chosen test payload (``session_id``/``order_id`` starting with ``test-``) and hands it
to the notifications' ``send_now``, which signs it like live traffic, posts it once and logs it as a test row.
At most ``SENDS_PER_MINUTE`` test sends per domain and minute, counted from the log.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.integration_api import notify
from vpbx.integration_api.core import moscow
from vpbx.store.models import ApiLog, Domain, IncomingNumber, User

CALL_STATES = ("new", "calling", "connected", "disconnected", "end")
TEST_METHODS = (
    *(f"call_events:{state}" for state in CALL_STATES),
    "get_number_info",
    "history_file_completed",
)
DEFAULT_CALLER = "79161234567"
SENDS_PER_MINUTE = 10  # per domain (§6.3 A)


class TooManySends(Exception):
    """More than ``SENDS_PER_MINUTE`` test sends of one domain in the last minute."""


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
    core: Any, domain_id: uuid.UUID, choice: str, *, timeout_s: int, caller: str = DEFAULT_CALLER
) -> notify.Exchange:
    """Build the chosen test item and send it to the domain's CRM now through the notifications' sender."""
    now = core.clock.now()
    async with core.sessions() as s:
        domain = await s.get(Domain, domain_id)
        if domain is None:
            raise LookupError(domain_id)
        if await recent_sends(s, domain_id, now) >= SENDS_PER_MINUTE:
            raise TooManySends
        method, payload = await test_payload(s, domain, choice, caller=caller, now=now)
    return await notify.send_now(core, domain_id, method, payload, timeout_s=float(timeout_s), test=True)
