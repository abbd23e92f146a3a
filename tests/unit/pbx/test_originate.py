"""Calls the PBX places (call_back, integration-api.md §4.1): the employee rung first, then the customer
through the trunk, bridged on answer; the failures after the API answered show only in the events."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import update

from tests.unit.pbx.b2bua_kit import TENANT, IncomingCall, Pbx, Phone, tag, trunk
from tests.unit.pbx.test_b2bua_outbound import FakeTrunks
from vpbx.app import Core
from vpbx.media.prompts import Prompt, PromptId, SystemPhrase, Tone, Voice
from vpbx.pbx import lines
from vpbx.pbx.bus import SessionId
from vpbx.pbx.calls import Party
from vpbx.pbx.directory import DomainInfo
from vpbx.pbx.originate import EMPLOYEE_RING_S
from vpbx.pbx.outbound import OutboundRouter
from vpbx.sip.dialog import new_tag
from vpbx.sip.message import Request
from vpbx.store.models import User

LINE = "+74951234567"
CUSTOMER = "+79161234567"
CARRIER = "198.51.100.60"


class Tones:
    async def system_phrase(self, phrase: SystemPhrase, voice: Voice = "ru") -> Prompt:
        raise NotImplementedError

    def get(self, prompt_id: str) -> Prompt:
        raise NotImplementedError

    async def tone(self, kind: Tone) -> Prompt:
        return Prompt(
            id=PromptId(f"tone-{kind}"),
            duration_s=1.0,
            wav=Path("t.wav"),
            pcma=Path("t.al"),
            pcmu=Path("t.ul"),
        )


@pytest.fixture
async def pbx(core: Core) -> AsyncIterator[Pbx]:
    p = await Pbx.create(core)
    async with core.sessions() as s:
        await lines.create_number(s, p.domain_id, lines.NumberInput(number=LINE))
        await s.commit()
    p.b2bua.outbound = OutboundRouter(core.sessions)
    p.b2bua.trunks = FakeTrunks(trunk(p.domain_id, "Main", CARRIER))
    p.b2bua.prompts = Tones()
    yield p
    await p.node.stop()


async def _start(pbx: Pbx, pin: str = "101", number: str = CUSTOMER) -> tuple[SessionId, Phone, Phone]:
    employee_phone = pbx.phone(pin, "192.0.2.11")
    await pbx.register(employee_phone)
    carrier = Phone(pbx, "carrier", CARRIER, 5060, name="carrier")
    pbx.phones[(CARRIER, 5060)] = carrier
    assert pbx.b2bua.directory is not None
    domain = await pbx.b2bua.directory.domain(TENANT)
    assert domain is not None
    employee = await pbx.b2bua.directory.user_by_pin(domain, pin)
    assert employee is not None
    sid = SessionId(str(uuid.uuid4()))
    assert await pbx.b2bua.originate(domain, employee, number, session_id=sid)
    await pbx.settle()
    return sid, employee_phone, carrier


async def test_employee_answers_then_the_customer_is_dialled_and_bridged(pbx: Pbx) -> None:
    sid, alice, carrier = await _start(pbx)
    ring = await alice.ringing()
    assert ring.invite.from_address.uri.user == "79161234567"  # the phone shows whom it will call
    assert ring.invite.to_address.uri.user == "101"
    assert pbx.bus.states(sid) == ["new", "calling"]
    assert carrier.unread() == []  # nobody dials the customer before the employee answers
    await ring.reply(180)
    await ring.answer()
    assert pbx.media.played[-1][0].side == "a" and pbx.media.played[-1][1] == "tone-ringback"
    invite: Request = await carrier.expect("INVITE")
    assert invite.uri.user == "89161234567" and invite.uri.host == CARRIER  # the trunk's national format
    assert invite.from_address.uri.user == "84951234567"  # the domain's line as caller ID
    customer = IncomingCall(carrier, invite, new_tag())
    await customer.answer()
    assert pbx.bus.states(sid) == ["new", "calling", "connected"]
    assert pbx.media.last("a")[0] is not None and pbx.media.last("b")[0] is not None
    await ring.send("BYE")
    assert await alice.expect(200)
    bye: Request = await carrier.expect("BYE")
    assert tag(bye, "From") == customer.tag or bye.call_id == invite.call_id
    events = [e for e in pbx.bus.events if e.session_id == sid]
    assert [e.state for e in events] == ["new", "calling", "connected", "disconnected", "end"]
    assert {e.call_kind for e in events} == {"callback"} and {e.type for e in events} == {"outbound"}
    assert events[0].from_pin == "101" and events[0].from_number == f"user101@{TENANT}"
    assert events[0].request_number == f"sip:79161234567@{TENANT}"
    assert events[3].disconnect_reason == "5"
    assert events[-1].line == "74951234567"
    assert pbx.registry.active(pbx.domain_id) == 0
    assert {k: v for k, v in pbx.b2bua.indexes().items() if k != "clients"} == dict.fromkeys(
        ("calls", "pending", "invites", "tokens", "dialogs"), 0
    )


async def test_employee_does_not_answer_the_call_ends_without_connected(pbx: Pbx) -> None:
    sid, alice, carrier = await _start(pbx)
    ring = await alice.ringing()
    await ring.reply(180)
    await pbx.advance(EMPLOYEE_RING_S)
    cancel: Request = await alice.expect("CANCEL")
    await ring.answer_request(cancel)
    await ring.reply(487)
    assert pbx.bus.states(sid) == ["new", "calling", "end"]
    assert pbx.bus.events[-1].extra["end_reason"] == "no_answer"
    assert carrier.unread() == []  # the customer was never dialled
    assert pbx.registry.active(pbx.domain_id) == 0


async def test_an_employee_answer_without_usable_sdp_ends_the_call(pbx: Pbx) -> None:
    sid, alice, carrier = await _start(pbx)
    ring = await alice.ringing()
    await ring.answer(body=b"")  # a 200 with no SDP: no media to ring back on
    bye: Request = await alice.expect("BYE")
    assert "488" in (bye.headers.get("Reason") or "")
    await ring.answer_request(bye)
    await pbx.settle()
    assert carrier.unread() == []  # the customer is not dialled
    assert pbx.bus.states(sid)[-1] == "end" and "connected" not in pbx.bus.states(sid)
    assert pbx.registry.active(pbx.domain_id) == 0
    assert pbx.b2bua.indexes()["calls"] == 0


async def test_customer_busy_hangs_up_the_employee(pbx: Pbx) -> None:
    sid, alice, carrier = await _start(pbx)
    ring = await alice.ringing()
    await ring.answer()
    invite: Request = await carrier.expect("INVITE")
    await IncomingCall(carrier, invite, new_tag()).reply(486)
    bye: Request = await alice.expect("BYE")
    assert "486" in bye.headers.get("Reason", "")
    assert pbx.bus.states(sid) == ["new", "calling", "end"]
    end = pbx.bus.events[-1]
    assert end.extra["status_code"] == "486" and end.call_kind == "callback"


async def test_employee_hangs_up_while_the_customer_rings(pbx: Pbx) -> None:
    sid, alice, carrier = await _start(pbx)
    ring = await alice.ringing()
    await ring.answer()
    invite: Request = await carrier.expect("INVITE")
    customer = IncomingCall(carrier, invite, new_tag())
    await customer.reply(180)
    await ring.send("BYE")
    cancel: Request = await carrier.expect("CANCEL")
    assert cancel.call_id == invite.call_id
    await customer.answer_request(cancel)
    await customer.reply(487)
    assert pbx.bus.states(sid) == ["new", "calling", "end"]


async def test_a_destination_the_employee_may_not_call_ends_after_the_answer(pbx: Pbx, core: Core) -> None:
    async with core.sessions() as s:
        await s.execute(update(User).where(User.pin == "101").values(allow_international=False))
        await s.commit()
    sid, alice, carrier = await _start(pbx, number="+442071234567")
    ring = await alice.ringing()
    await ring.answer()
    assert await alice.expect("BYE")
    assert carrier.unread() == []
    assert pbx.bus.states(sid) == ["new", "calling", "end"]


async def test_the_channel_limit_refuses_the_call(pbx: Pbx) -> None:
    domain = DomainInfo(id=pbx.domain_id, name=TENANT, channel_limit=0, timezone="Europe/Moscow")
    employee = Party(user_id=None, login="user101", pin="101", display_name="", domain=TENANT)
    sid = SessionId(str(uuid.uuid4()))
    assert not await pbx.b2bua.originate(domain, employee, CUSTOMER, session_id=sid)
    assert pbx.bus.states(sid) == []
