"""A contact that is gone (ICMP port unreachable, RFC 3261 §18.4) fails its branch at once, not after Timer B.

The node gets the ICMP error as its transports report it (``IcmpError`` for an address and port); the real
node, transaction table and B2BUA do the rest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.unit.pbx.b2bua_kit import TENANT, Pbx, Phone
from vpbx.app import Core
from vpbx.pbx.keepalive import options_request
from vpbx.pbx.registrar import aor_for
from vpbx.sip.dialog import LocalVia
from vpbx.sip.icmp import IcmpError
from vpbx.sip.message import Response
from vpbx.sip.transaction import TransactionKey

A_HOST, B_HOST, B2_HOST = "192.0.2.10", "192.0.2.20", "192.0.2.21"
ECONNREFUSED = 111


def port_unreachable(phone: Phone) -> IcmpError:
    return IcmpError(phone.flow.host, phone.flow.port, ECONNREFUSED, 3, 3)


@pytest.fixture
async def pbx(core: Core) -> AsyncIterator[Pbx]:
    p = await Pbx.create(core)
    yield p
    await p.node.stop()


@pytest.fixture
def alice(pbx: Pbx) -> Phone:
    return pbx.phone("101", A_HOST)


def end_extra(pbx: Pbx) -> dict[str, str]:
    (end,) = [e for e in pbx.bus.events if e.state == "end"]
    return dict(end.extra)


async def test_the_only_contact_is_gone_the_caller_hears_unavailable_at_once(pbx: Pbx, alice: Phone) -> None:
    bob = pbx.phone("102", B_HOST)
    await pbx.register(bob)
    await alice.call("102")
    await bob.expect("INVITE")

    pbx.node._unreachable(port_unreachable(bob))
    await pbx.settle()

    await alice.expect(480)  # the user's "unavailable" answer, with no Timer B wait (no time advanced)
    assert pbx.events() == ["new", "calling", "end"]
    extra = end_extra(pbx)
    assert extra["end_reason"] == "unreachable" and extra["status_code"] == "480"
    assert bob.unread() == []  # no CANCEL to a phone that is not there
    # ICMP is not authenticated: the registration stays
    assert len(await pbx.node.location.lookup(pbx.domain_id, aor_for("102", TENANT))) == 1


async def test_a_fork_goes_on_with_the_contact_that_lives(pbx: Pbx, alice: Phone) -> None:
    gone, soft = pbx.phone("102", B_HOST, name="gone"), pbx.phone("102", B2_HOST, name="soft")
    await pbx.register(gone)
    await pbx.register(soft)
    out = await alice.call("102")
    await gone.expect("INVITE")
    on_soft = await soft.ringing()

    pbx.node._unreachable(port_unreachable(gone))
    await pbx.settle()
    assert alice.unread() == []  # the other branch still rings
    await on_soft.reply(180)
    await alice.expect(180)

    await on_soft.answer()
    await out.answered()
    assert pbx.events() == ["new", "calling", "calling", "connected"]
    assert gone.unread() == []


async def test_icmp_for_another_port_changes_nothing(pbx: Pbx, alice: Phone) -> None:
    bob = pbx.phone("102", B_HOST)
    await pbx.register(bob)
    await alice.call("102")
    incoming = await bob.ringing()

    pbx.node._unreachable(IcmpError(B_HOST, 5070, ECONNREFUSED, 3, 3))
    await pbx.settle()
    assert alice.unread() == []
    await incoming.answer()
    assert pbx.events() == ["new", "calling", "connected"]


async def test_a_phone_that_answers_503_itself_is_not_unreachable(pbx: Pbx, alice: Phone) -> None:
    bob = pbx.phone("102", B_HOST)
    await pbx.register(bob)
    await alice.call("102")
    incoming = await bob.ringing()

    await incoming.reply(503)

    await alice.expect(480)
    assert end_extra(pbx)["end_reason"] == "no_answer"


class Pinger:
    """A client-transaction user like the NAT keep-alive and the trunk monitor."""

    def __init__(self) -> None:
        self.responses: list[int] = []
        self.ended: list[str] = []

    def on_response(self, key: TransactionKey, response: Response) -> None:
        self.responses.append(response.code)

    def on_terminated(self, key: TransactionKey, reason: str) -> None:
        self.ended.append(reason)


async def test_an_options_ping_to_a_gone_phone_is_a_miss_not_an_answer(pbx: Pbx) -> None:
    bob = pbx.phone("102", B_HOST)
    await pbx.register(bob)
    (binding,) = await pbx.node.location.lookup(pbx.domain_id, aor_for("102", TENANT))
    request = options_request(binding, aor_for("102", TENANT), LocalVia("UDP", *pbx.node.advertised))
    assert request is not None
    pinger = Pinger()
    pbx.node.send_request(request, bob.flow, user=pinger)
    await bob.expect("OPTIONS")

    pbx.node._unreachable(port_unreachable(bob))
    await pbx.settle()

    # the local 503 is not the phone's answer: a pinger that counted any answer as "alive" must see a miss
    assert pinger.responses == [] and pinger.ended == ["transport-error"]
