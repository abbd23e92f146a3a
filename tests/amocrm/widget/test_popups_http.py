"""Pop-ups over real HTTP (amocrm.md F13, §3.6): the single-use stream ticket, the SSE stream scoped to the
ticket's (account, user), and the pop-up built by the runtime part from a ``connected`` event against the
emulator (contact 9001 and its deal 8001 via E5/E6), with the E16 fallback when no stream is open."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.amocrm.emu_kit import DEMO, Emu
from tests.amocrm.widget.conftest import LINE_A, Widget, World, free_port, serving
from vpbx.amocrm.client import AmoClientPool
from vpbx.amocrm.popups import Popups, hub_for
from vpbx.pbx.bus import CallEvent, SessionId
from vpbx.store.models import AmoCall, CrmBinding, CrmUserMap

WAIT_S = 10.0


async def next_event(lines: AsyncIterator[str]) -> tuple[str, Any]:
    """The next SSE event (name, data) of a stream's lines."""
    name, data = "", None
    async with asyncio.timeout(WAIT_S):
        async for line in lines:
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
            elif not line and name:
                return name, data
    raise AssertionError("the stream ended")


async def ticket(w: Widget) -> str:
    r = await w.request("POST", "/stream-ticket")
    assert r.status_code == 200, r.text
    value: str = r.json()["ticket"]
    return value


@pytest.fixture
async def origin(app: FastAPI) -> AsyncIterator[str]:
    async with serving(app, free_port()) as o:
        yield o


async def test_ticket_is_single_use_and_scoped(
    app: FastAPI, world: World, admin_a: Widget, admin_b: Widget, origin: str
) -> None:
    hub = hub_for(world.core)
    t_a, t_b = await ticket(admin_a), await ticket(admin_b)
    async with httpx.AsyncClient(base_url=origin, timeout=WAIT_S) as c:
        async with c.stream("GET", "/amo/widget/v1/stream", params={"ticket": t_a}) as a:
            assert a.status_code == 200
            assert a.headers["content-type"].startswith("text/event-stream")
            a_lines = a.aiter_lines()
            assert await next_event(a_lines) == ("hello", {"account_id": 30000001, "user_id": 5001})
            # used once: refused the second time
            again = await c.get("/amo/widget/v1/stream", params={"ticket": t_a})
            assert again.status_code == 401 and again.json() == {"error": "ticket-invalid"}
            async with c.stream("GET", "/amo/widget/v1/stream", params={"ticket": t_b}) as b:
                b_lines = b.aiter_lines()
                assert await next_event(b_lines) == ("hello", {"account_id": 30000002, "user_id": 6001})
                # a pop-up for account B's user reaches only B's stream, A's user only A's
                assert hub.push(30000002, 6001, {"who": "b"}) == 1
                assert hub.push(30000001, 5001, {"who": "a"}) == 1
                assert await next_event(b_lines) == ("call", {"who": "b"})
                assert await next_event(a_lines) == ("call", {"who": "a"})
        # an expired ticket
        t_old = await ticket(admin_a)
        for entry in hub.tickets.values():
            entry.expires = 0.0
        old = await c.get("/amo/widget/v1/stream", params={"ticket": t_old})
        assert old.status_code == 401
        assert (await c.get("/amo/widget/v1/stream")).status_code == 401
        # no widget token, no ticket
        assert (await c.post("/amo/widget/v1/stream-ticket")).status_code == 401


async def test_ping_keeps_the_stream_alive(app: FastAPI, world: World, admin_a: Widget, origin: str) -> None:
    for route in app.routes:
        if getattr(route, "path", None) == "/amo":
            route.app.state.amo_popup_ping_s = 0.2  # type: ignore[attr-defined]
    t = await ticket(admin_a)
    async with httpx.AsyncClient(base_url=origin, timeout=WAIT_S) as c:
        async with c.stream("GET", "/amo/widget/v1/stream", params={"ticket": t}) as r:
            lines = r.aiter_lines()
            assert (await next_event(lines))[0] == "hello"
            assert (await next_event(lines))[0] == "ping"


async def test_ticket_needs_an_active_binding(world: World, admin_a: Widget) -> None:
    async with world.core.sessions() as s:
        row = await s.get(CrmBinding, world.binding_a)
        assert row is not None
        row.status = "disabled"
        await s.commit()
    r = await admin_a.request("POST", "/stream-ticket")
    assert r.status_code == 409


def connected(
    world: World, *, pin: str = "101", client: str = "+79161234567", session: str = "0001"
) -> CallEvent:
    return CallEvent(
        session_id=SessionId(f"0b9c5a58-6a4c-4a51-9d59-1f3a2c9b{session}"),
        seq=3,
        state="connected",
        type="incoming",
        domain_id=world.domain_a,
        domain="demo.vpbx.test",
        timestamp=dt.datetime(2025, 11, 24, 16, 0, tzinfo=dt.UTC),
        from_number=client.lstrip("+"),
        request_number=LINE_A.lstrip("+"),
        request_pin=pin,
        line=LINE_A.lstrip("+"),
    )


@pytest.fixture
async def popups(world: World) -> AsyncIterator[Popups]:
    async with world.core.sessions() as s:
        s.add_all(
            [
                CrmUserMap(binding_id=world.binding_a, crm_user_id=5001, extension="101"),
                CrmUserMap(binding_id=world.binding_a, crm_user_id=5002, extension="102"),
            ]
        )
        await s.commit()
    pool = AmoClientPool(world.core)
    part = Popups(world.core, bus=None, clients=pool)
    yield part
    await part.stop()
    await pool.aclose()


async def test_known_contact_popup_with_nearest_deal(world: World, emu: Emu, popups: Popups) -> None:
    hub = hub_for(world.core)
    queue = hub.open(30000001, 5001)
    other = hub.open(30000001, 5002)
    msg = await popups.handle(connected(world))
    assert msg is not None
    assert msg["contact"] == {
        "id": 9001,
        "name": "Анна Смирнова",
        "url": "https://demo.amocrm.ru/contacts/detail/9001",
    }
    assert msg["lead"] == {"id": 8001, "name": "Поставка", "url": "https://demo.amocrm.ru/leads/detail/8001"}
    assert msg["client_phone"] == "+79161234567" and msg["line"] == LINE_A and msg["extension"] == "101"
    assert queue.get_nowait() == msg and other.empty()
    await popups.drain()
    assert (await emu.state(DEMO))["events_v2"] == []  # the stream got it: no E16
    paths = [str(e.get("path")) for e in await emu.log(DEMO)]
    assert any(p.endswith("/contacts/9001") for p in paths) and any(p.endswith("/leads") for p in paths)
    # the deal is cached 60 s: a second pop-up reads no E5/E6
    before = len(paths)
    assert await popups.handle(connected(world)) is None  # the same call and manager again: no second card
    again = await popups.handle(connected(world, session="0002"))
    assert again is not None and again["lead"] == msg["lead"]
    later = [str(e.get("path")) for e in (await emu.log(DEMO))[before:]]
    assert not [p for p in later if p.endswith(("/contacts/9001", "/leads"))]


async def test_new_client_without_stream_falls_back_to_e16(world: World, emu: Emu, popups: Popups) -> None:
    msg = await popups.handle(connected(world, pin="102", client="+79990001122"))
    assert (
        msg is not None and msg["contact"] is None and msg["lead"] is None and msg["title"] == "Новый клиент"
    )
    await popups.drain()
    events = (await emu.state(DEMO))["events_v2"]
    assert [(e["type"], e["phone_number"], e["users"]) for e in events] == [
        ("phone_call", "+79990001122", [5002])
    ]


async def test_unmapped_pin_or_other_domain_gets_nothing(world: World, emu: Emu, popups: Popups) -> None:
    assert await popups.handle(connected(world, pin="103")) is None  # 103 is not mapped
    foreign = dataclasses.replace(connected(world), domain_id=world.domain_b)  # B's domain, A's pins
    assert await popups.handle(foreign) is None
    await popups.drain()
    assert (await emu.state(DEMO))["events_v2"] == []


async def test_click_to_call_card_names_the_contact(world: World, emu: Emu, popups: Popups) -> None:
    """An outgoing call from contact 9001's card (§3.5) to a number the card does not hold yet: the hint
    names the contact (no phone lookup would), E5 gives its name."""
    event = dataclasses.replace(
        connected(world, session="0003"),
        type="outbound",
        call_kind="callback",
        from_number="101",
        from_pin="101",
        request_number="89990001122",
        request_pin=None,
    )
    async with world.core.sessions() as s:
        s.add(
            AmoCall(
                binding_id=world.binding_a,
                session_id=str(event.session_id),
                direction="outgoing",
                call_kind="callback",
                client_e164="79990001122",
                manager_pin="101",
                card_hint={"type": "contacts", "id": 9001},
            )
        )
        await s.commit()
    msg = await popups.handle(event)
    assert msg is not None and msg["direction"] == "outgoing" and msg["extension"] == "101"
    assert msg["client_phone"] == "+79990001122"
    assert msg["contact"] is not None and msg["contact"]["name"] == "Анна Смирнова"
    assert msg["lead"] is not None and msg["lead"]["id"] == 8001
