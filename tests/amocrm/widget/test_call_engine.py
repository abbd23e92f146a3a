"""Click-to-call (amocrm.md §3.5) into the real engine (the B2BUA kit's node and phones): the employee's phone
rings once per Idempotency-Key, the answer names the session, and the card hint waits in ``AmoCall``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI
from sqlalchemy import select

from tests.amocrm.widget.conftest import Widget, World, amo_state
from tests.unit.pbx.b2bua_kit import Pbx, Phone
from vpbx.pbx.outbound import OutboundRouter
from vpbx.store.models import AmoCall, CrmUserMap, DomainId

DOMAIN_A = "demo.vpbx.test"


@pytest.fixture
async def pbx(app: FastAPI, world: World) -> AsyncIterator[Pbx]:
    p = Pbx(world.core, DomainId(world.domain_a), channel_limit=10, no_answer_s=60.0)
    p.b2bua.outbound = OutboundRouter(world.core.sessions)
    amo_state(app).b2bua = p.b2bua  # what EngineLink does in `vpbx serve`
    yield p
    await p.node.stop()


@pytest.fixture
async def ivan(pbx: Pbx, world: World) -> Phone:
    """Extension 101 has a registered phone and is amoCRM user 5001."""
    phone = pbx.phone("101", "192.0.2.11")
    await pbx.register(phone, domain=DOMAIN_A, domain_id=DomainId(world.domain_a))
    async with world.core.sessions() as s:
        s.add(CrmUserMap(binding_id=world.binding_a, crm_user_id=5001, extension="101"))
        s.add(CrmUserMap(binding_id=world.binding_a, crm_user_id=5002, extension="102"))
        await s.commit()
    return phone


async def test_a_click_rings_the_employee_once_per_key(
    admin_a: Widget, pbx: Pbx, ivan: Phone, world: World
) -> None:
    body = {"phone": "8 (916) 123-45-67", "entity": {"type": "contacts", "id": 9001}}
    first = await admin_a.request("POST", "/call", json=body, headers={"Idempotency-Key": "click-1"})
    assert first.status_code == 200, first.text
    sid = first.json()["session_id"]
    assert list(first.json()) == ["session_id"]
    again = await admin_a.request("POST", "/call", json=body, headers={"Idempotency-Key": "click-1"})
    assert again.json() == {"session_id": sid}  # a double click: the first answer, no second call
    await pbx.settle()
    await ivan.expect("INVITE")
    assert pbx.events() == ["new", "calling"]
    new = pbx.bus.events[0]
    assert (new.session_id, new.call_kind, new.from_pin) == (sid, "callback", "101")
    assert new.request_number == f"sip:79161234567@{DOMAIN_A}"
    async with world.core.sessions() as s:
        rows = list(await s.scalars(select(AmoCall)))
    assert [(r.binding_id, r.session_id, r.card_hint) for r in rows] == [
        (world.binding_a, sid, {"type": "contacts", "id": 9001})
    ]
    assert (rows[0].direction, rows[0].call_kind, rows[0].client_e164, rows[0].manager_pin) == (
        "outgoing",
        "callback",
        "79161234567",
        "101",
    )
    other = await admin_a.request("POST", "/call", json=body, headers={"Idempotency-Key": "click-2"})
    assert other.status_code == 200 and other.json()["session_id"] != sid  # a new click, a new call


async def test_the_pbx_refusal_codes_come_back_as_409(
    admin_a: Widget, user_a: Widget, pbx: Pbx, ivan: Phone
) -> None:
    r = await user_a.request("POST", "/call", json={"phone": "+79161234567"})  # 102: no phone registered
    assert (r.status_code, r.json()) == (
        409,
        {"error": "user-unavailable", "message": "Пользователь недоступен"},
    )
    await pbx.settle()
    assert pbx.events() == []
