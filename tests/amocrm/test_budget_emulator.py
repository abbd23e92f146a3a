"""§5.9's request budget of an answered call from an existing client, counted in the amoCRM emulator's
request log: the pop-up reads the contact and its nearest deal (E5 + E6) once, its answer goes into the
call's context and the process's 60 s cache (vpbx/amocrm/nearest.py), and ``amo.finish`` reads neither
again; a second call of the same client within 60 s costs the note alone. E16 (``POST /api/v2/events``) is the
pop-up's server fallback: no widget tab is open in these tests. And the deal check stays correct: a deal a
manager makes during the call is seen, so no duplicate deal is made.

The call is driven as ``vpbx serve`` drives it: the routing hook's context row (a cached client: lookup
``hit``), the engine's events through the call history's ``apply_events``, the pop-up part fed the
``connected`` event, then the consumer and the job runner, all against the emulator over real HTTP with the
real client."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from tests.amocrm.emu_kit import DEMO, Emu, emulator
from tests.amocrm.test_finish_emulator import emu_world
from tests.amocrm.unit.jobs_kit import DOMAIN, LINE, World
from vpbx.amocrm.client import AmoClientPool
from vpbx.amocrm.nearest import LEAD_TTL_S, NO_ACTIVE_LEAD
from vpbx.amocrm.popups import Popups
from vpbx.pbx.bus import CallEvent, SessionId
from vpbx.settings import Settings
from vpbx.store.models import AmoCall

ANNA = ("79161234567", 9001, "Анна Смирнова")  # the fixture's deal 8001 «Поставка» is active
OLEG = ("79167654321", 9002, "Олег Ким")  # no deals

E5_ANNA = ("GET", "/api/v4/contacts/9001")
E5_OLEG = ("GET", "/api/v4/contacts/9002")
E6 = ("GET", "/api/v4/leads")
E16 = ("POST", "/api/v2/events")
NOTE = ("POST", "/api/v4/contacts/notes")
NEW_LEAD = ("POST", "/api/v4/leads")


@pytest.fixture
async def emu() -> AsyncIterator[Emu]:
    async with emulator() as e:
        yield e


@pytest.fixture
async def setup(settings: Settings, emu: Emu) -> AsyncIterator[tuple[World, Popups, AmoClientPool]]:
    world, pool = await emu_world(settings, emu)
    popups = Popups(world.core, bus=None, clients=pool)
    try:
        yield world, popups, pool
    finally:
        await popups.stop()
        await pool.aclose()
        await world.core.engine.dispose()


async def requests(emu: Emu) -> list[tuple[str, str]]:
    """(method, path) of every API request the account saw so far (the token endpoint excluded)."""
    return [(e["method"], e["path"]) for e in await emu.log(DEMO) if "/api/" in e["path"]]


async def answered_call(
    world: World, popups: Popups, client: tuple[str, int, str], *, talk_s: int = 10, during: object = None
) -> tuple[str, dict[str, object] | None]:
    """An incoming call of a cached client answered by 101: the routing hook's context, the events, the
    pop-up at ``connected``, ``during`` (an awaitable run while they talk), the end and the finish job."""
    phone, contact_id, name = client
    sid = f"s-{secrets.token_hex(6)}"
    async with world.core.sessions() as s, s.begin():
        s.add(
            AmoCall(
                binding_id=world.binding_id,
                session_id=sid,
                direction="incoming",
                scenario_id=world.scenario_id,
                client_e164=phone,
                line=LINE,
                lookup="hit",
                contact_id=contact_id,
                contact_name=name,
            )
        )
    frm = {"from_number": f"sip:{phone}@{DOMAIN}"}
    leg = {"request_number": f"user101@{DOMAIN}", "request_pin": "101", **frm}
    await world.event(sid, "new", "incoming", request_number=f"sip:{LINE}@{DOMAIN}", line=LINE, **frm)
    world.clock.advance(1)
    await world.event(sid, "calling", "incoming", **leg)
    world.clock.advance(2)
    await world.event(sid, "connected", "incoming", line=LINE, **leg)
    connected = CallEvent(
        session_id=SessionId(sid),
        seq=world.seqs[sid],
        state="connected",
        type="incoming",
        domain_id=world.domain_id,
        domain=DOMAIN,
        timestamp=world.clock.now(),
        line=LINE,
        **leg,
    )
    message = await popups.handle(connected)
    await popups.drain()  # the E16 fallback too
    if during is not None:
        await during  # type: ignore[misc]
    world.clock.advance(talk_s)
    await world.event(sid, "disconnected", "incoming", disconnect_reason="5", **leg)
    await world.event(sid, "end", "incoming", is_record=False, extra={}, **leg)
    await world.settle()
    return sid, message


async def test_existing_client_reads_e5_e6_once_and_within_60_s_only_the_note(
    setup: tuple[World, Popups, AmoClientPool], emu: Emu
) -> None:
    world, popups, _ = setup
    sid, message = await answered_call(world, popups, ANNA)
    assert message is not None and message["lead"] == {
        "id": 8001,
        "name": "Поставка",
        "url": "https://demo.amocrm.ru/leads/detail/8001",
    }
    # §5.9: routing 0 (cache hit), pop-up E5 + E6, finish 1 (the note); E16 is the pop-up's fallback
    assert await requests(emu) == [E5_ANNA, E6, E16, NOTE]
    call = await world.call_row(sid)
    assert call.nearest_lead_id == 8001 and call.classification == "incoming.existing"
    assert call.steps["lead"]["state"] == "skipped" and call.steps["lead"]["last_error"] == "active lead"
    assert call.steps["note"]["state"] == "done"

    # the same client again within 60 s: the note only (and the fallback)
    before = len(await requests(emu))
    second, again = await answered_call(world, popups, ANNA)
    assert again is not None and again["lead"] == message["lead"]
    assert (await requests(emu))[before:] == [E16, NOTE]
    assert (await world.call_row(second)).steps["lead"]["state"] == "skipped"

    # a minute later the answer is read again, once
    world.clock.advance(LEAD_TTL_S)
    before = len(await requests(emu))
    await answered_call(world, popups, ANNA)
    assert (await requests(emu))[before:] == [E5_ANNA, E6, E16, NOTE]


async def test_a_deal_made_during_the_call_makes_no_second_deal(
    setup: tuple[World, Popups, AmoClientPool], emu: Emu
) -> None:
    """The pop-up saw no active deal; a manager makes one while they talk. The finish would create a deal
    for an existing client without one, so it reads "no active deal" again, finds the manager's deal and
    skips its own."""
    world, popups, pool = setup
    made: list[int] = []

    async def manager_makes_a_deal() -> None:
        created = await pool.for_account(30000001).create_leads(
            [{"name": "Сделка менеджера", "_embedded": {"contacts": [{"id": 9002}]}}]
        )
        made.append(int(created[0]["id"]))

    sid, message = await answered_call(world, popups, OLEG, during=manager_makes_a_deal())
    assert message is not None and message["lead"] is None and message["contact"]["name"] == "Олег Ким"  # type: ignore[index]
    assert await requests(emu) == [E5_OLEG, E16, NEW_LEAD, E5_OLEG, E6, NOTE]  # one POST: the manager's
    call = await world.call_row(sid)
    assert call.nearest_lead_id == NO_ACTIVE_LEAD  # the pop-up's answer, re-read before making a deal
    assert call.steps["lead"]["state"] == "skipped" and call.steps["lead"]["last_error"] == "active lead"
    state = await emu.state(DEMO)
    assert [lead["id"] for lead in state["leads"] if lead["id"] >= 10_000_000] == made


async def test_no_deal_during_the_call_the_finish_makes_one_after_reading_again(
    setup: tuple[World, Popups, AmoClientPool], emu: Emu
) -> None:
    """The counterpart: still no active deal at the end, so the finish creates the scenario's deal."""
    world, popups, _ = setup
    sid, _ = await answered_call(world, popups, OLEG)
    assert await requests(emu) == [E5_OLEG, E16, E5_OLEG, NEW_LEAD, NOTE]
    call = await world.call_row(sid)
    assert call.steps["lead"]["state"] == "done"
