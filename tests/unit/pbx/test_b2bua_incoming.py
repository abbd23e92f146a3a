"""Calls from a carrier to a line: the domain's rules pick a user or a group; the plan rings them in turn."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import update

from tests.unit.pbx.b2bua_kit import TENANT, IncomingCall, Pbx, Phone, sdp, trunk
from vpbx.app import Core
from vpbx.pbx import groups, lines, routing
from vpbx.pbx.actions import ActionInput
from vpbx.pbx.incoming import IncomingRouter, RoutingAnswer, RoutingQuery
from vpbx.pbx.trunkmon import TrunkInfo
from vpbx.sip.dialog import LocalVia, build_initial_request, new_call_id, new_tag
from vpbx.sip.flow import Destination
from vpbx.sip.message import URI, Address, Parameters, Request, Response
from vpbx.store.models import DomainId, User, UserContactNumber

CARRIER = Destination("udp", "198.51.100.50", 5060)
LINE = "+74951234567"
CALLER = "+79161234567"
MOBILE_CARRIER = "198.51.100.70"


class FakeTrunks:
    def __init__(self, domain_id: DomainId, out: TrunkInfo | None = None) -> None:
        self.trunk = trunk(domain_id, "Carrier", CARRIER.host)
        self.out = out

    def trunk_for_source(self, host: str, port: int) -> TrunkInfo | None:
        return self.trunk if host == CARRIER.host else None

    def outbound_trunks(self, domain_id: DomainId) -> list[TrunkInfo]:
        return [self.out] if self.out is not None and domain_id == self.trunk.domain_id else []


class Carrier:
    """The carrier's side of incoming calls: INVITEs to our lines from its address."""

    def __init__(self, pbx: Pbx) -> None:
        self.phone = Phone(pbx, "carrier", CARRIER.host, CARRIER.port, name="carrier")
        pbx.phones[(CARRIER.host, CARRIER.port)] = self.phone

    async def call(self, line: str = LINE) -> Request:
        invite = build_initial_request(
            "INVITE",
            URI(scheme="sip", user=line.lstrip("+"), host=CARRIER.host),
            via=LocalVia("UDP", CARRIER.host, CARRIER.port),
            from_=Address(
                uri=URI(scheme="sip", user=CALLER, host=CARRIER.host), parameters=Parameters(tag=new_tag())
            ),
            to=Address(uri=URI(scheme="sip", user=line.lstrip("+"), host=CARRIER.host)),
            call_id=new_call_id(),
            cseq=1,
            contact=Address(uri=URI(scheme="sip", user="carrier", host=CARRIER.host, port=CARRIER.port)),
            body=sdp(CARRIER.host, 40000),
            content_type="application/sdp",
        )
        await self.phone.send(invite)
        return invite


async def _rule(core: Core, domain_id: uuid.UUID, action: ActionInput) -> None:
    async with core.sessions() as s:
        number = await lines.create_number(s, domain_id, lines.NumberInput(number=LINE))
        await routing.add_rule(s, domain_id, number.id, routing.RuleInput(target=action))
        await s.commit()


async def _registered(pbx: Pbx, *pins: str) -> list[Phone]:
    """Registered phones for these extensions (192.0.2.11, .12, … in order)."""
    phones = [pbx.phone(pin, f"192.0.2.{11 + i}") for i, pin in enumerate(pins)]
    for phone in phones:
        await pbx.register(phone)
    return phones


async def _group_line(core: Core, pbx: Pbx, data: groups.GroupInput) -> None:
    """The group, and the line routed to it."""
    async with core.sessions() as s:
        g = await groups.create_group(s, pbx.domain_id, data)
        await s.commit()
    await _rule(core, pbx.domain_id, ActionInput(action="group", group_id=g.id))


async def _user_id(core: Core, domain_id: uuid.UUID, pin: str) -> uuid.UUID:
    async with core.sessions() as s:
        for u in (await s.execute(User.__table__.select().where(User.domain_id == domain_id))).all():
            if u.pin == pin:
                return uuid.UUID(str(u.id))
    raise AssertionError(pin)


@pytest.fixture
async def pbx(core: Core) -> AsyncIterator[Pbx]:
    p = await Pbx.create(core, extensions=("101", "102", "103"))
    p.b2bua.trunks = FakeTrunks(p.domain_id)  # type: ignore[assignment]
    p.b2bua.incoming = IncomingRouter(core.sessions)
    yield p
    await p.node.stop()


async def test_a_line_routed_to_a_user_rings_their_phone_and_connects(core: Core, pbx: Pbx) -> None:
    await _rule(
        core, pbx.domain_id, ActionInput(action="user", user_id=await _user_id(core, pbx.domain_id, "101"))
    )
    alice = pbx.phone("101", "192.0.2.11")
    await pbx.register(alice)
    carrier = Carrier(pbx)
    await carrier.call()
    incoming = await alice.ringing()
    assert incoming.invite.from_address.uri.user == CALLER  # the phone shows who calls
    await incoming.answer()
    ok: Response = await carrier.phone.expect(200)
    assert ok.code == 200
    events = pbx.bus.events
    assert [e.state for e in events] == ["new", "calling", "connected"]
    assert events[0].type == "incoming"
    assert events[0].from_number == f"sip:{CALLER.lstrip('+')}@{TENANT}"
    assert events[0].request_number == f"sip:{LINE.lstrip('+')}@{TENANT}"
    assert events[1].request_number == f"user101@{TENANT}" and events[1].request_pin == "101"


async def test_a_sequential_group_rings_one_member_after_another(core: Core, pbx: Pbx) -> None:
    await _group_line(
        core,
        pbx,
        groups.GroupInput(
            name="Sales",
            pin="600",
            strategy="sequential",
            member_timeout_s=10,
            overall_timeout_s=25,
            members=["101", "102"],
        ),
    )
    alice, bob = await _registered(pbx, "101", "102")
    carrier = Carrier(pbx)
    await carrier.call()
    first = await alice.ringing()
    await first.reply(180)
    assert bob.unread() == []
    await pbx.advance(10)  # alice's turn is over: CANCEL to her, bob rings
    await alice.expect("CANCEL")
    second = await bob.ringing()
    await second.reply(180)
    await pbx.advance(10)  # back to alice
    await bob.expect("CANCEL")
    third = await alice.ringing()
    await third.reply(180)
    await pbx.advance(5)  # overall timeout: 25 s
    await alice.expect("CANCEL")
    assert (await carrier.phone.expect(480)).code == 480
    states = [e.state for e in pbx.bus.events]
    assert states == ["new", "calling", "calling", "calling", "end"]
    assert (
        pbx.bus.events[-1].request_number == f"sip:{LINE.lstrip('+')}@{TENANT}"
    )  # nobody answered: the line


async def test_a_busy_member_hands_over_at_once(core: Core, pbx: Pbx) -> None:
    await _group_line(
        core,
        pbx,
        groups.GroupInput(
            name="Support",
            pin="601",
            strategy="sequential",
            member_timeout_s=20,
            overall_timeout_s=60,
            members=["101", "102"],
        ),
    )
    alice, bob = await _registered(pbx, "101", "102")
    carrier = Carrier(pbx)
    await carrier.call()
    busy = await alice.ringing()
    await busy.reply(486)
    second = await bob.ringing()  # no 20 s wait
    await second.answer()
    assert (await carrier.phone.expect(200)).code == 200


async def test_reject_and_unknown_lines_and_other_tenants(core: Core, pbx: Pbx) -> None:
    await _rule(core, pbx.domain_id, ActionInput(action="reject"))
    carrier = Carrier(pbx)
    await carrier.call()
    assert (await carrier.phone.expect(603)).code == 603
    await carrier.call("+74959999999")  # no domain has it
    assert (await carrier.phone.expect(404)).code == 404
    pbx.b2bua.trunks = FakeTrunks(DomainId(uuid.uuid4()))  # type: ignore[assignment]
    await carrier.call()  # our line, but the carrier is another tenant's trunk
    assert (await carrier.phone.expect(404)).code == 404
    assert pbx.bus.events == []


async def test_a_user_with_a_mobile_number_gets_it_rung_too_after_the_delay(core: Core, pbx: Pbx) -> None:
    user_id = await _user_id(core, pbx.domain_id, "101")
    async with core.sessions() as s:
        s.add(UserContactNumber(user_id=user_id, position=0, number="+79160000001"))
        await s.execute(update(User).where(User.id == user_id).values(mobile_delay_s=15))
        await s.commit()
    await _rule(core, pbx.domain_id, ActionInput(action="user", user_id=user_id))
    pbx.b2bua.trunks = FakeTrunks(
        pbx.domain_id, trunk(pbx.domain_id, "Out", MOBILE_CARRIER, number_format="e164")
    )  # type: ignore[assignment]
    mobile = Phone(pbx, "mobile-carrier", MOBILE_CARRIER, 5060, name="mc")
    pbx.phones[(MOBILE_CARRIER, 5060)] = mobile
    alice = pbx.phone("101", "192.0.2.11")
    await pbx.register(alice)
    carrier = Carrier(pbx)
    await carrier.call()
    desk = await alice.ringing()
    await desk.reply(180)
    assert mobile.unread() == []
    await pbx.advance(15)
    forwarded: Request = await mobile.expect("INVITE")
    assert forwarded.uri.user == "+79160000001"
    assert forwarded.from_address.uri.user == LINE  # the line as caller ID towards the carrier
    answer = IncomingCall(mobile, forwarded, "m1")
    await answer.answer()
    assert (await carrier.phone.expect(200)).code == 200
    await alice.expect("CANCEL")  # the desk phone stops ringing
    calling = [e for e in pbx.bus.events if e.state == "calling"]
    assert [e.request_uri for e in calling][-1].startswith("sip:+79160000001@")
    assert all(e.request_pin == "101" for e in calling)


# --- the routing hook (integration-api.md §5.3) ------------------------------------------------------------


async def test_a_hook_answer_routes_the_call_and_names_the_caller(core: Core, pbx: Pbx) -> None:
    await _rule(
        core, pbx.domain_id, ActionInput(action="user", user_id=await _user_id(core, pbx.domain_id, "101"))
    )
    asked: list[RoutingQuery] = []

    async def crm(query: RoutingQuery) -> RoutingAnswer | None:
        asked.append(query)
        return RoutingAnswer(pin="102", display_name='Иванов "VIP"\x07 Сергей')

    pbx.b2bua.routing_hooks = [("crm", crm)]
    alice, bob = await _registered(pbx, "101", "102")
    await Carrier(pbx).call()
    invite = (await bob.ringing()).invite
    assert invite.from_address.name == "Иванов VIP Сергей"
    assert alice.unread() == []
    [q] = asked
    assert (q.from_number, q.request_number, q.domain) == (CALLER.lstrip("+"), LINE.lstrip("+"), TENANT)
    assert q.session_id == pbx.bus.events[0].session_id


async def test_a_late_failing_or_empty_hook_leaves_the_call_to_the_rules(core: Core, pbx: Pbx) -> None:
    await _rule(
        core, pbx.domain_id, ActionInput(action="user", user_id=await _user_id(core, pbx.domain_id, "101"))
    )
    cancelled = asyncio.Event()

    async def slow(query: RoutingQuery) -> RoutingAnswer | None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return RoutingAnswer(pin="102")

    async def broken(query: RoutingQuery) -> RoutingAnswer | None:
        raise RuntimeError("CRM down")

    async def unknown_pin(query: RoutingQuery) -> RoutingAnswer | None:
        return RoutingAnswer(pin="999", display_name="Known Caller")

    pbx.b2bua.routing_hook_deadline_s = 0.2
    pbx.b2bua.routing_hooks = [("slow", slow), ("broken", broken), ("unknown", unknown_pin)]
    alice, bob = await _registered(pbx, "101", "102")
    await Carrier(pbx).call()
    invite = (await alice.ringing()).invite  # the rule's user, not the slow hook's
    assert invite.from_address.name == "Known Caller"  # a display name counts even with an unusable PIN
    assert cancelled.is_set() and bob.unread() == []


async def test_a_group_nobody_answers_falls_through_to_a_user(core: Core, pbx: Pbx) -> None:
    await _group_line(
        core,
        pbx,
        groups.GroupInput(
            name="Night",
            pin="602",
            strategy="simultaneous",
            member_timeout_s=5,
            overall_timeout_s=10,
            members=["101"],
            fallthrough=ActionInput(action="user", user_id=await _user_id(core, pbx.domain_id, "102")),
        ),
    )
    alice, bob = await _registered(pbx, "101", "102")
    carrier = Carrier(pbx)
    await carrier.call()
    await (await alice.ringing()).reply(180)
    await pbx.advance(10)  # the group's overall timeout
    await alice.expect("CANCEL")
    await (await bob.ringing()).answer()
    assert (await carrier.phone.expect(200)).code == 200
    assert [(e.state, e.request_pin) for e in pbx.bus.events] == [
        ("new", ""),
        ("calling", "101"),
        ("calling", "102"),
        ("connected", "102"),
    ]


async def test_a_line_forwarded_to_an_outside_number_goes_out_through_the_trunk(core: Core, pbx: Pbx) -> None:
    await _rule(core, pbx.domain_id, ActionInput(action="external", number="+79160000002"))
    pbx.b2bua.trunks = FakeTrunks(
        pbx.domain_id, trunk(pbx.domain_id, "Out", MOBILE_CARRIER, number_format="plain")
    )  # type: ignore[assignment]
    mobile = Phone(pbx, "mobile-carrier", MOBILE_CARRIER, 5060, name="mc")
    pbx.phones[(MOBILE_CARRIER, 5060)] = mobile
    carrier = Carrier(pbx)
    await carrier.call()
    forwarded: Request = await mobile.expect("INVITE")
    assert forwarded.uri.user == "79160000002"  # the trunk's plain format
    await IncomingCall(mobile, forwarded, "x1").answer()
    assert (await carrier.phone.expect(200)).code == 200
    assert [e.state for e in pbx.bus.events] == ["new", "connected"]


async def test_a_trunk_at_its_channel_limit_refuses_more_calls(core: Core, pbx: Pbx) -> None:
    await _rule(
        core, pbx.domain_id, ActionInput(action="user", user_id=await _user_id(core, pbx.domain_id, "101"))
    )
    trunks = FakeTrunks(pbx.domain_id)
    trunks.trunk = trunk(pbx.domain_id, "Carrier", CARRIER.host, max_calls=1)
    pbx.b2bua.trunks = trunks  # type: ignore[assignment]
    alice = pbx.phone("101", "192.0.2.11")
    await pbx.register(alice)
    carrier = Carrier(pbx)
    await carrier.call()
    await (await alice.ringing()).reply(180)
    await carrier.call()  # a second call while the only channel is busy
    assert (await carrier.phone.expect(503)).code == 503


async def test_a_phone_registered_from_the_carriers_network_is_still_a_phone(core: Core, pbx: Pbx) -> None:
    await _rule(core, pbx.domain_id, ActionInput(action="reject"))
    inside = pbx.phone("103", CARRIER.host, 5070)  # same host as the carrier, its own registration
    await pbx.register(inside)
    await inside.send(inside.invite("101"))
    assert (await inside.expect(407)).code == 407  # challenged like any phone, not taken for the carrier
    carrier = Carrier(pbx)
    await carrier.call()
    assert (await carrier.phone.expect(603)).code == 603  # the carrier's own port still is the carrier


# --- a hook's overflow (amocrm.md F9.5: the ИМК rings the responsible, then the rules) ------------------


async def test_an_overflowing_hook_rings_its_pin_then_the_rules(core: Core, pbx: Pbx) -> None:
    await _rule(
        core, pbx.domain_id, ActionInput(action="user", user_id=await _user_id(core, pbx.domain_id, "101"))
    )

    async def crm(query: RoutingQuery) -> RoutingAnswer | None:
        return RoutingAnswer(pin="102", display_name="Анна Смирнова", overflow_after_s=20)

    pbx.b2bua.routing_hooks = [("crm", crm)]
    alice, bob = await _registered(pbx, "101", "102")
    carrier = Carrier(pbx)
    await carrier.call()
    await (await bob.ringing()).reply(180)
    await pbx.advance(19)
    assert alice.unread() == []  # the responsible's time is not over yet
    await pbx.advance(1)
    await bob.expect("CANCEL")
    rules = await alice.ringing()  # the rules' user, with the CRM's name still on the phone
    assert rules.invite.from_address.name == "Анна Смирнова"
    await rules.answer()
    assert (await carrier.phone.expect(200)).code == 200
    assert [(e.state, e.request_pin) for e in pbx.bus.events] == [
        ("new", ""),
        ("calling", "102"),
        ("calling", "101"),
        ("connected", "101"),
    ]


async def test_an_overflowing_hook_whose_pin_is_busy_goes_to_the_rules_at_once(core: Core, pbx: Pbx) -> None:
    await _group_line(
        core,
        pbx,
        groups.GroupInput(
            name="Sales",
            pin="600",
            strategy="sequential",
            member_timeout_s=10,
            overall_timeout_s=30,
            members=["101", "102"],
        ),
    )

    async def crm(query: RoutingQuery) -> RoutingAnswer | None:
        return RoutingAnswer(pin="103", overflow_after_s=20)

    pbx.b2bua.routing_hooks = [("crm", crm)]
    alice, bob, carol = await _registered(pbx, "101", "102", "103")
    carrier = Carrier(pbx)
    await carrier.call()
    await (await carol.ringing()).reply(486)
    first = await alice.ringing()  # no 20 s wait: the group of the rules, from its first member
    await first.answer()
    assert (await carrier.phone.expect(200)).code == 200
    assert bob.unread() == []


async def test_without_overflow_a_hook_pin_rings_for_the_whole_no_answer_time(core: Core, pbx: Pbx) -> None:
    """get_number_info's behaviour is unchanged: the hook's PIN rings alone, the rules never follow."""
    await _rule(
        core, pbx.domain_id, ActionInput(action="user", user_id=await _user_id(core, pbx.domain_id, "101"))
    )

    async def crm(query: RoutingQuery) -> RoutingAnswer | None:
        return RoutingAnswer(pin="102")

    pbx.b2bua.routing_hooks = [("crm", crm)]
    alice, bob = await _registered(pbx, "101", "102")
    carrier = Carrier(pbx)
    await carrier.call()
    await (await bob.ringing()).reply(180)
    await pbx.advance(pbx.b2bua.no_answer_s)
    await bob.expect("CANCEL")
    assert (await carrier.phone.expect(480)).code == 480
    assert alice.unread() == []


async def test_an_overflow_to_rules_that_reject_ends_the_call_after_the_pin(core: Core, pbx: Pbx) -> None:
    await _rule(core, pbx.domain_id, ActionInput(action="reject"))

    async def crm(query: RoutingQuery) -> RoutingAnswer | None:
        return RoutingAnswer(pin="102", overflow_after_s=5)

    pbx.b2bua.routing_hooks = [("crm", crm)]
    (bob,) = await _registered(pbx, "102")
    carrier = Carrier(pbx)
    await carrier.call()
    await (await bob.ringing()).reply(180)
    await pbx.advance(5)
    await bob.expect("CANCEL")
    assert (await carrier.phone.expect(480)).code == 480
