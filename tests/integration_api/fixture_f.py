"""Test fixture F of integration-api.md §4, for every Integration API test: the domain, its users, group,
line, the finished call, the guide's credentials, and a client that signs exactly the bytes it sends.

F: domain ``demo.vpbx.example``; X-Client-ID and key the guide's test values (§2.2); encryption mode on;
allowlist ``203.0.113.0/24``; requests from ``203.0.113.10`` over HTTPS to ``https://api.example/api``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI

from vpbx.app import Core
from vpbx.billing.service import INTEGRATION_API, enable
from vpbx.integration_api.core import sign
from vpbx.integration_api.settings import ensure_settings
from vpbx.pbx import domains, groups, lines, users
from vpbx.store.models import CallRecord

DOMAIN = "demo.vpbx.example"
CLIENT_ID = "000003C405E6525C64C184258C44EC99"
KEY = "00000716ABDA6D4DFF10F82BCBBFC532"
ALLOWLIST = "203.0.113.0/24"
CRM_IP = "203.0.113.10"
OTHER_IP = "198.51.100.7"
HOST = "api.example"
LINE = "74951234567"
CUSTOMER = "79161234567"
CALL_ID = "534dbe28-7e58-4705-89a4-26a308405464"
CALL_START = dt.datetime(2025, 6, 12, 8, 0, 0, tzinfo=dt.UTC)  # 11:00:00 MSK, 1749715200
GUIDE_BODY = b'{"request_number": "+74951234567","from_sipuri": "test_user@cloudpbx.rt.ru"}'
GUIDE_SIGN = "fc95a524342dc68df90f7488e6d821c5a8a3b667d585490b50ebf939f1202c36"
COMPACT_SIGN = "dbce7d471b2fc33706ec9dfed490d23162bb56442a2739cb6023f403ab0f61c8"
EMPTY_SIGN = "2897ea7bba7400f91696733d5787ce770ba07542caaac341c16ef46a6d4d8268"


@dataclass(frozen=True)
class FixtureF:
    domain_id: uuid.UUID
    ivanov_id: uuid.UUID
    petrova_id: uuid.UUID
    call: CallRecord


async def enable_api(
    core: Core,
    domain_id: uuid.UUID,
    *,
    client_id: str | None = None,
    key: str | None = None,
    allowlist: str = "",
    tls_required: bool = False,
) -> tuple[str, str]:
    """Switch the service on for a domain with the given (or fresh) credentials; returns (client ID, key)."""
    async with core.sessions() as s:
        await enable(s, domain_id, INTEGRATION_API, core.clock.now())
        row = await ensure_settings(s, domain_id, core.box)
        if client_id is not None:
            row.client_id = client_id
        if key is not None:
            row.sign_key_enc = core.box.seal(key)
        row.allowlist = allowlist
        row.tls_required = tls_required
        await s.commit()
        return row.client_id, core.box.open(row.sign_key_enc)


def f_call(domain_id: uuid.UUID, **kw: Any) -> CallRecord:
    """F's finished incoming call: answered by 501 after 6 s, 95 s of talk, recorded."""
    fields: dict[str, Any] = {
        "session_id": CALL_ID,
        "domain_id": domain_id,
        "call_type": "incoming",
        "call_kind": "normal",
        "started_at": CALL_START,
        "answered_at": CALL_START + dt.timedelta(seconds=6),
        "ended_at": CALL_START + dt.timedelta(seconds=101),
        "end_reason": "normal",
        "duration_s": 95,
        "caller_number": f"sip:{CUSTOMER}@{DOMAIN}",
        "callee_number": f"sip:{LINE}@{DOMAIN}",
        "line": LINE,
        "answering_uri": f"ivanov@{DOMAIN}",
        "answering_pin": "501",
        "is_record": True,
        "session_log": [[0, "ct", "501"], [6, "cc", "501"], [101, "cd", "501"]],
    }
    fields.update(kw)
    return CallRecord(**fields)


async def make_fixture_f(core: Core) -> FixtureF:
    async with core.sessions() as s:
        d = await domains.create_domain(s, domains.DomainInput(name=DOMAIN))
        ivanov = await users.create_user(
            s,
            d.id,
            users.UserInput(
                name="ivanov", display_name="Иванов Сергей", pin="501", email="ivanov@example.com"
            ),
            box=core.box,
        )
        petrova = await users.create_user(
            s, d.id, users.UserInput(name="petrova", display_name="Петрова Анна", pin="502"), box=core.box
        )
        await groups.create_group(s, d.id, groups.GroupInput(name="Отдел продаж", pin="600", members=["501"]))
        await lines.create_number(s, d.id, lines.NumberInput(number=LINE))
        call = f_call(d.id)
        s.add(call)
        await s.commit()
    await enable_api(core, d.id, client_id=CLIENT_ID, key=KEY, allowlist=ALLOWLIST, tls_required=True)
    return FixtureF(domain_id=d.id, ivanov_id=ivanov.id, petrova_id=petrova.id, call=call)


def api_client(app: FastAPI, *, ip: str = CRM_IP, https: bool = True) -> httpx.AsyncClient:
    """A CRM's HTTP client over ASGI: its TCP peer address is ``ip``."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(ip, 50000)),
        base_url=f"{'https' if https else 'http'}://{HOST}",
    )


def signed_headers(
    body: bytes, *, client_id: str = CLIENT_ID, key: str = KEY, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Client-ID": client_id,
        "X-Client-Sign": sign(client_id, body, key),
        **(extra or {}),
    }


async def post(
    client: httpx.AsyncClient,
    method: str,
    body: bytes,
    *,
    base: str = "/api",
    client_id: str = CLIENT_ID,
    key: str = KEY,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """POST exactly ``body`` to ``{base}/{method}``, signed with F's (or the given) credentials."""
    return await client.post(
        f"{base}/{method}",
        content=body,
        headers=signed_headers(body, client_id=client_id, key=key, extra=headers),
    )
