"""call_back's acceptance rows (integration-api.md §4.1) through the real gateway: fixture F, signed bodies
byte for byte over ASGI, the B2BUA kit's engine behind ``app.state.b2bua``."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from tests.integration_api.fixture_f import (
    CLIENT_ID,
    DOMAIN,
    GUIDE_BODY,
    GUIDE_SIGN,
    FixtureF,
    post,
)
from tests.unit.pbx.b2bua_kit import Pbx
from vpbx.app import Core
from vpbx.pbx.outbound import OutboundRouter
from vpbx.store.models import ApiDelivery, ApiLog, DomainId

BODY = b'{"request_number":"+79161234567","from_pin":"501"}'
OK = "Операция выполнена успешно"


@pytest.fixture
async def pbx(app: FastAPI, core: Core, f: FixtureF) -> AsyncIterator[Pbx]:
    """The engine on F's domain; Иванов (501) has a registered phone, Петрова (502) none."""
    p = Pbx(core, DomainId(f.domain_id), channel_limit=10, no_answer_s=60.0)
    p.b2bua.outbound = OutboundRouter(core.sessions)
    phone = p.phone("501", "192.0.2.11")
    await p.register(phone, domain=DOMAIN)
    app.state.b2bua = p.b2bua
    yield p
    await p.node.stop()


async def test_the_request_is_answered_with_a_session_then_new_follows(
    crm: httpx.AsyncClient, pbx: Pbx
) -> None:
    resp = await post(crm, "call_back", BODY)
    assert resp.status_code == 200
    body = resp.json()
    assert list(body) == ["result", "resultMessage", "session_id"]
    assert (body["result"], body["resultMessage"]) == ("0", OK)
    assert uuid.UUID(body["session_id"]).version == 4
    await pbx.settle()
    new = pbx.bus.events[0]
    assert (new.state, new.session_id, new.type, new.from_pin) == (
        "new",
        body["session_id"],
        "outbound",
        "501",
    )
    assert pbx.phones[("192.0.2.11", 5060)].unread()[:1] == ["INVITE"]


async def test_guide_vector_byte_for_byte(crm: httpx.AsyncClient, pbx: Pbx) -> None:
    resp = await crm.post(
        "/api/call_back",
        content=GUIDE_BODY,
        headers={"X-Client-ID": CLIENT_ID, "X-Client-Sign": GUIDE_SIGN},
    )
    assert (resp.status_code, resp.content) == (
        200,
        json.dumps(
            {"result": "-20", "resultMessage": "Пользователь не найден", "error": "user-not-found"},
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode(),
    )
    await pbx.settle()
    assert pbx.events() == []


async def test_petrova_has_no_device(crm: httpx.AsyncClient, pbx: Pbx) -> None:
    resp = await post(crm, "call_back", b'{"request_number":"+79161234567","from_pin":"502"}')
    assert (resp.status_code, resp.json()) == (
        200,
        {"result": "-20", "resultMessage": "Пользователь недоступен", "error": "user-unavailable"},
    )
    await pbx.settle()
    assert pbx.events() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"request_number":"12","from_pin":"501"}', "request_number"),
        (b'{"request_number":"+79161234567"}', "from_pin"),
    ],
)
async def test_r11(crm: httpx.AsyncClient, pbx: Pbx, body: bytes, field: str) -> None:
    resp = await post(crm, "call_back", body)
    assert resp.status_code == 400
    assert resp.json() == {
        "result": "-1",
        "resultMessage": f"Некорректное значение поля {field}",
        "error": "bad-request",
        "field": field,
    }


async def test_group_pin_is_no_employee(crm: httpx.AsyncClient, pbx: Pbx) -> None:
    resp = await post(crm, "call_back", b'{"request_number":"+79161234567","from_pin":"600"}')
    assert resp.json()["error"] == "user-not-found"


async def test_same_idempotency_key_twice_one_call(crm: httpx.AsyncClient, pbx: Pbx) -> None:
    headers = {"Idempotency-Key": "crm-order-42"}
    first = await post(crm, "call_back", BODY, headers=headers)
    await pbx.settle()
    second = await post(crm, "call_back", BODY, headers=headers)
    await pbx.settle()
    assert (first.status_code, first.content) == (second.status_code, second.content)
    assert pbx.events().count("new") == 1


async def test_sandbox_answers_a_test_session_and_queues_its_events(
    crm: httpx.AsyncClient, pbx: Pbx, core: Core
) -> None:
    resp = await post(crm, "call_back", BODY, base="/api-test")
    sid = resp.json()["session_id"]
    assert resp.json()["result"] == "0" and sid.startswith("test-")
    await pbx.settle()
    assert pbx.events() == []
    async with core.sessions() as s:
        rows = list(await s.scalars(select(ApiDelivery).where(ApiDelivery.session_id == sid)))
        logged = list(await s.scalars(select(ApiLog).where(ApiLog.method == "call_back")))
    assert sorted(json.loads(r.body)["state"] for r in rows) == sorted(
        ["new", "calling", "connected", "disconnected", "end"]
    )
    assert all(r.test for r in rows)
    assert logged
