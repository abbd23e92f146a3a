"""Do Not Disturb in the engine (vpbx.pbx.dnd): a call to a user on DND rings nothing and is busy; a group
skips them; calls from them are unaffected; *78 / *79 from their own phone flip the switch."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select, update

from tests.unit.pbx.b2bua_kit import Pbx, Phone, trunk
from tests.unit.pbx.test_b2bua_incoming import (
    MOBILE_CARRIER,
    Carrier,
    FakeTrunks,
    _group_line,
    _registered,
    _rule,
    _user_id,
)
from tests.unit.pbx.test_transfer import bob_sends, connected, notified, refer_to, states
from vpbx.app import Core
from vpbx.errors import NotFound
from vpbx.pbx import groups
from vpbx.pbx.actions import ActionInput
from vpbx.pbx.dnd import set_dnd
from vpbx.pbx.incoming import IncomingRouter, RoutingAnswer, RoutingQuery
from vpbx.sip.message import Response
from vpbx.store.models import User, UserContactNumber


@pytest.fixture
async def pbx(core: Core) -> AsyncIterator[Pbx]:
    p = await Pbx.create(core, extensions=("101", "102", "103"))
    p.b2bua.trunks = FakeTrunks(p.domain_id)  # type: ignore[assignment]
    p.b2bua.incoming = IncomingRouter(core.sessions)
    yield p
    await p.node.stop()


async def dnd(core: Core, pbx: Pbx, pin: str, on: bool = True) -> uuid.UUID:
    uid = await _user_id(core, pbx.domain_id, pin)
    async with core.sessions() as s:
        await set_dnd(s, pbx.domain_id, uid, on, now=core.clock.now())
        await s.commit()
    return uid


async def is_dnd(core: Core, uid: uuid.UUID) -> tuple[bool, bool]:
    """(dnd, dnd_since is set)"""
    async with core.sessions() as s:
        user = await s.scalar(select(User).where(User.id == uid))
        assert user is not None
        return user.dnd, user.dnd_since is not None


async def test_a_direct_call_to_a_user_on_dnd_is_busy_and_rings_nothing(core: Core, pbx: Pbx) -> None:
    alice, bob = await _registered(pbx, "101", "102")
    await dnd(core, pbx, "102")
    await alice.call("102")
    busy: Response = await alice.expect(486)
    assert busy.phrase == "Busy Here"
    assert bob.unread() == []
    end = pbx.bus.events[-1]
    assert [e.state for e in pbx.bus.events] == ["new", "end"]
    assert (end.extra["end_reason"], end.extra["status_code"]) == ("dnd", "486")


async def test_calls_from_a_user_on_dnd_are_unaffected(core: Core, pbx: Pbx) -> None:
    alice, bob = await _registered(pbx, "101", "102")
    await dnd(core, pbx, "101")
    call = await alice.call("102")
    await (await bob.ringing()).answer()
    assert (await call.answered()).code == 200


async def test_feature_codes_switch_dnd_from_the_users_own_phone(core: Core, pbx: Pbx) -> None:
    alice, bob = await _registered(pbx, "101", "102")
    uid = await _user_id(core, pbx.domain_id, "102")

    await bob.call("*78")
    on: Response = await bob.expect(480)
    assert on.phrase == "DND on"
    assert await is_dnd(core, uid) == (True, True)
    assert pbx.bus.events == []  # no call: nothing in the history
    await alice.call("102")
    assert (await alice.expect(486)).code == 486
    assert bob.unread() == []

    await bob.call("*79")
    off: Response = await bob.expect(480)
    assert off.phrase == "DND off"
    assert await is_dnd(core, uid) == (False, False)
    await alice.call("102")
    assert (await bob.ringing()).invite.uri.user is not None  # rings again


async def test_a_line_to_a_user_on_dnd_rings_neither_phone_nor_mobile(core: Core, pbx: Pbx) -> None:
    uid = await _user_id(core, pbx.domain_id, "101")
    async with core.sessions() as s:
        s.add(UserContactNumber(user_id=uid, position=0, number="+79160000001"))
        await s.execute(update(User).where(User.id == uid).values(mobile_delay_s=0))
        await s.commit()
    await _rule(core, pbx.domain_id, ActionInput(action="user", user_id=uid))
    pbx.b2bua.trunks = FakeTrunks(
        pbx.domain_id, trunk(pbx.domain_id, "Out", MOBILE_CARRIER, number_format="e164")
    )  # type: ignore[assignment]
    mobile = Phone(pbx, "mobile-carrier", MOBILE_CARRIER, 5060, name="mc")
    pbx.phones[(MOBILE_CARRIER, 5060)] = mobile
    [alice] = await _registered(pbx, "101")
    await dnd(core, pbx, "101")
    carrier = Carrier(pbx)
    await carrier.call()
    assert (await carrier.phone.expect(486)).code == 486
    assert alice.unread() == [] and mobile.unread() == []
    assert pbx.bus.events[-1].extra["end_reason"] == "dnd"


async def test_a_group_skips_a_member_on_dnd(core: Core, pbx: Pbx) -> None:
    await _group_line(
        core,
        pbx,
        groups.GroupInput(
            name="Sales", pin="600", strategy="simultaneous", overall_timeout_s=30, members=["101", "102"]
        ),
    )
    alice, bob = await _registered(pbx, "101", "102")
    await dnd(core, pbx, "101")
    carrier = Carrier(pbx)
    await carrier.call()
    await (await bob.ringing()).answer()
    assert (await carrier.phone.expect(200)).code == 200
    assert alice.unread() == []


async def test_a_sequential_group_jumps_over_a_member_on_dnd(core: Core, pbx: Pbx) -> None:
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
    await dnd(core, pbx, "101")
    carrier = Carrier(pbx)
    await carrier.call()
    assert (await bob.ringing()).invite.method == "INVITE"  # at once, not after 101's 20 s
    assert alice.unread() == []


async def test_a_group_all_on_dnd_falls_through_as_nobody_answered(core: Core, pbx: Pbx) -> None:
    await _group_line(
        core,
        pbx,
        groups.GroupInput(
            name="Night",
            pin="602",
            strategy="simultaneous",
            overall_timeout_s=30,
            members=["101", "102"],
            fallthrough=ActionInput(action="user", user_id=await _user_id(core, pbx.domain_id, "103")),
        ),
    )
    alice, bob, carol = await _registered(pbx, "101", "102", "103")
    await dnd(core, pbx, "101")
    await dnd(core, pbx, "102")
    carrier = Carrier(pbx)
    await carrier.call()
    await (await carol.ringing()).answer()
    assert (await carrier.phone.expect(200)).code == 200
    assert alice.unread() == [] and bob.unread() == []


async def test_a_group_all_on_dnd_without_fallthrough_is_unanswered(core: Core, pbx: Pbx) -> None:
    await _group_line(
        core,
        pbx,
        groups.GroupInput(name="Night", pin="603", strategy="simultaneous", members=["101", "102"]),
    )
    await _registered(pbx, "101", "102")
    await dnd(core, pbx, "101")
    await dnd(core, pbx, "102")
    carrier = Carrier(pbx)
    await carrier.call()
    assert (await carrier.phone.expect(480)).code == 480
    assert pbx.bus.events[-1].extra["end_reason"] == "no_answer"


async def test_dnd_since_keeps_the_first_switch_on_and_another_domain_is_not_found(
    core: Core, pbx: Pbx
) -> None:
    uid = await _user_id(core, pbx.domain_id, "101")
    first, later = dt.datetime(2026, 1, 1, 9, tzinfo=dt.UTC), dt.datetime(2026, 1, 1, 10, tzinfo=dt.UTC)
    async with core.sessions() as s:
        await set_dnd(s, pbx.domain_id, uid, True, now=first)
        await set_dnd(s, pbx.domain_id, uid, True, now=later)
        await s.commit()
        assert await s.scalar(select(User.dnd_since).where(User.id == uid)) == first
        with pytest.raises(NotFound):
            await set_dnd(s, uuid.uuid4(), uid, False, now=later)


async def test_a_blind_transfer_to_a_user_on_dnd_is_refused_busy(core: Core) -> None:
    call = await connected(core)
    try:
        await dnd(core, call.pbx, "103")
        await bob_sends(call, "REFER", refer_to("103"))
        await call.bob.expect(202)
        await notified(call.bob)
        assert (await notified(call.bob))[0] == 486
        assert call.carol.unread() == []
        assert states(call.events()) == ["new", "calling", "connected"]  # the call goes on with bob
    finally:
        await call.pbx.node.stop()


async def test_a_hooks_pin_on_dnd_is_busy_and_with_overflow_the_rules_ring_at_once(
    core: Core, pbx: Pbx
) -> None:
    """integration-api.md §5.3: the CRM's PIN rings as a direct call would (DND applies); an overflowing
    answer (amoCRM) hands the call to the rules without waiting."""
    await _rule(
        core, pbx.domain_id, ActionInput(action="user", user_id=await _user_id(core, pbx.domain_id, "101"))
    )
    overflow: list[float | None] = [None]

    async def crm(query: RoutingQuery) -> RoutingAnswer | None:
        return RoutingAnswer(pin="102", overflow_after_s=overflow[0])

    pbx.b2bua.routing_hooks = [("crm", crm)]
    alice, bob = await _registered(pbx, "101", "102")
    await dnd(core, pbx, "102")
    carrier = Carrier(pbx)
    await carrier.call()
    assert (await carrier.phone.expect(486)).code == 486
    assert alice.unread() == [] and bob.unread() == []

    overflow[0] = 20
    await carrier.call()
    await (await alice.ringing()).answer()  # the rules' user, no 20 s wait
    assert (await carrier.phone.expect(200)).code == 200
    assert bob.unread() == []
