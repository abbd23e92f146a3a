"""The dispatcher's two fixes of session 4 on SQLite and PostgreSQL: an engine refusal before any INVITE uses
no attempt, and a connect target of type ``menu`` reaches the engine as the menu's id."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from tests.integration.autoinformer.conftest import FakeDialer, World, stand_in_render
from vpbx.autoinformer.dispatcher import REFUSED_BACKOFF, Dispatcher, dispatch_key
from vpbx.pbx.broadcast import BroadcastRequest, BroadcastResult, broadcast_ids
from vpbx.store.models import VoiceMenu


@dataclass
class RefusingDialer(FakeDialer):
    """Refuses (no INVITE, the key forgotten again, as the engine does) while ``refuse`` names a detail."""

    refuse: str = ""

    async def dial(self, request: BroadcastRequest) -> BroadcastResult:
        if self.refuse:
            self.requests.append(request)
            now = self.clock.now()
            return BroadcastResult(sip_code=None, started_at=now, ended_at=now, detail=self.refuse)
        return await super().dial(request)


def dispatcher(world: World, dialer: FakeDialer, **kw: object) -> Dispatcher:
    return Dispatcher(
        world.sessions,
        dialer,
        stand_in_render,
        world.clock,
        "node-a",
        lambda d: world.busy.get(d, 0),
        **kw,  # type: ignore[arg-type]
    )


async def run(world: World, d: Dispatcher, n: int = 1, step_s: float = 1.0) -> int:
    started = 0
    for _ in range(n):
        started += await d.tick()
        await d.drain()
        world.clock.advance(step_s)
    return started


async def test_a_refusal_before_the_invite_uses_no_attempt_and_the_key_dials_later(world: World) -> None:
    dialer = RefusingDialer(world.clock, refuse="no_trunk")
    cid = await world.campaign()
    (contact_id,) = await world.contacts(cid, "79161110001")
    d = dispatcher(world, dialer)
    refused_at = world.clock.now()
    await run(world, d)
    assert len(dialer.requests) == 1
    assert await world.attempts(cid) == []  # the attempt row is gone: the key is free again
    row = await world.contact(contact_id)
    assert (row.status, row.attempts_made, row.detail) == ("pending", 0, "no_trunk")
    assert row.next_attempt_at is not None
    assert row.next_attempt_at.replace(tzinfo=dt.UTC) == refused_at + REFUSED_BACKOFF
    await run(world, d, 5)  # inside the back-off: nothing dialled
    assert len(dialer.requests) == 1
    dialer.refuse = ""
    world.clock.advance(REFUSED_BACKOFF.total_seconds())
    await run(world, d)
    (attempt,) = await world.attempts(cid)
    key = dispatch_key(cid, contact_id, 1, 0)
    assert attempt.dispatch_key == key and attempt.attempt_no == 1 and attempt.outcome == "success"
    assert dialer.requests[0].call_id == dialer.requests[1].call_id == broadcast_ids(key)[1]
    row = await world.contact(contact_id)
    assert (row.status, row.attempts_made) == ("succeeded", 1)


async def test_a_refusal_in_a_later_round_puts_the_contact_back_to_waiting_retry(world: World) -> None:
    dialer = RefusingDialer(world.clock)
    dialer.script["79161110001"] = ["busy", "success"]
    cid = await world.campaign()
    (contact_id,) = await world.contacts(cid, "79161110001")
    d = dispatcher(world, dialer)
    await run(world, d)
    first = await world.contact(contact_id)
    assert (first.status, first.attempts_made) == ("waiting_retry", 1)
    dialer.refuse = "channels"
    assert first.next_attempt_at is not None
    world.clock.set(first.next_attempt_at.replace(tzinfo=dt.UTC))
    await run(world, d)
    assert len(dialer.requests) == 2
    (only,) = await world.attempts(cid)
    row = await world.contact(contact_id)
    assert (row.status, row.attempts_made, row.detail) == ("waiting_retry", 1, "channels")
    assert row.last_session_id == only.session_id
    dialer.refuse = ""
    world.clock.advance(REFUSED_BACKOFF.total_seconds())
    await run(world, d)
    rounds = [(a.attempt_no, a.outcome) for a in await world.attempts(cid)]
    assert rounds == [(1, "busy"), (2, "success")]


async def test_a_failure_after_the_invite_still_spends_the_attempt(world: World) -> None:
    dialer = RefusingDialer(world.clock, refuse="bad_number")  # not a refusal that frees the key
    cid = await world.campaign(attempts={"max": 1})
    (contact_id,) = await world.contacts(cid, "79161110001")
    await run(world, dispatcher(world, dialer))
    (attempt,) = await world.attempts(cid)
    assert (attempt.outcome, attempt.detail) == ("failed", "bad_number")
    assert (await world.contact(contact_id)).status not in ("pending", "waiting_retry")


async def test_the_trunks_free_capacity_caps_the_claims(world: World) -> None:
    room = {"free": 1}
    cid = await world.campaign(concurrency=5)
    await world.contacts(cid, "79161110001", "79161110002", "79161110003")
    d = dispatcher(world, world.dialer, trunk_room=lambda _d: room["free"])
    assert await run(world, d) == 1
    room["free"] = 0
    assert await run(world, d, 3) == 0
    room["free"] = 5
    assert await run(world, d, 2) == 2
    assert len(await world.attempts(cid)) == 3


async def test_a_menu_target_named_by_name_or_hex_reaches_the_engine_as_its_id(world: World) -> None:
    async with world.sessions() as s:
        menu = VoiceMenu(domain_id=world.domain_id, name="Главное меню")
        s.add(menu)
        await s.commit()
        menu_id = menu.id
    actions = {
        "1": {"action": "connect", "target": {"type": "menu", "pin": "Главное меню"}},
        "2": {"action": "connect", "target": {"type": "menu", "pin": menu_id.hex}},
        "3": {"action": "connect", "target": {"type": "menu", "pin": "Нет такого"}},
        "4": {"action": "connect", "target": {"type": "user", "pin": "101"}},
    }
    cid = await world.campaign(dtmf={"actions": actions})
    await world.contacts(cid, "79161110001")
    await run(world, dispatcher(world, world.dialer))
    got = world.dialer.requests[0].actions
    assert got["1"].target_type == "menu" and uuid.UUID(got["1"].target or "") == menu_id
    assert uuid.UUID(got["2"].target or "") == menu_id
    assert got["3"].target == "Нет такого"  # gone: the engine reports the operator unknown
    assert (got["4"].target_type, got["4"].target) == ("user", "101")
