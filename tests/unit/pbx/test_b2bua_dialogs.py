"""The B2BUA inside established calls: hold and resume, OPTIONS, UPDATE, CSeq, media timeout, shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from tests.unit.pbx.b2bua_kit import MEDIA_HOST, PORT_A, PORT_B, IncomingCall, OutgoingCall, Pbx, Phone, sdp
from vpbx.app import Core
from vpbx.media.relay import Address as MediaAddress
from vpbx.media.relay import LegRef
from vpbx.sip.dialog import Dialog
from vpbx.sip.sdp import Direction, parse_sdp

A_HOST, B_HOST = "192.0.2.10", "192.0.2.20"


@dataclass
class Connected:
    pbx: Pbx
    alice: Phone
    bob: Phone
    out: OutgoingCall
    incoming: IncomingCall


@pytest.fixture
async def call(core: Core) -> AsyncIterator[Connected]:
    pbx = await Pbx.create(core)
    alice, bob = pbx.phone("101", A_HOST), pbx.phone("102", B_HOST)
    await pbx.register(bob)
    out = await alice.call("102")
    incoming = await bob.ringing()
    await incoming.answer()
    await out.answered()
    yield Connected(pbx, alice, bob, out, incoming)
    await pbx.node.stop()


def direction(body: bytes) -> tuple[Direction, int, int]:
    sd = parse_sdp(body)
    audio = sd.audio
    assert audio is not None
    return sd.direction_of(audio), audio.port, sd.origin.version


# --- hold ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("offered", "answered"), [("sendonly", "recvonly"), ("inactive", "inactive")])
async def test_hold_from_the_caller_is_answered_locally(call: Connected, offered: str, answered: str) -> None:
    before = call.out.ok
    assert before is not None
    reinvite = await call.out.send("INVITE", body=sdp(A_HOST, 30000, direction=offered, version=2))

    ok = await call.alice.expect(200)
    d, port, version = direction(ok.body)
    assert (d.value, port) == (answered, PORT_A)
    assert version == direction(before.body)[2] + 1  # our SDP changed: o= moves on
    await call.out.ack(reinvite)
    assert call.bob.unread() == []  # the other leg is not re-INVITEd
    assert call.pbx.registry.snapshot()[0].state == "held"


async def test_resume_after_hold_answers_sendrecv(call: Connected) -> None:
    hold = await call.out.send("INVITE", body=sdp(A_HOST, 30000, direction="sendonly", version=2))
    held = await call.alice.expect(200)
    await call.out.ack(hold)

    resume = await call.out.send("INVITE", body=sdp(A_HOST, 30000, direction="sendrecv", version=3))
    ok = await call.alice.expect(200)
    await call.out.ack(resume)

    assert direction(ok.body)[0] is Direction.SENDRECV
    assert direction(ok.body)[2] == direction(held.body)[2] + 1
    assert call.pbx.registry.snapshot()[0].state == "connected"


async def test_hold_by_connection_address_stops_sending_to_that_phone(call: Connected) -> None:
    held = sdp(A_HOST, 30000).replace(f"c=IN IP4 {A_HOST}".encode(), b"c=IN IP4 0.0.0.0")
    reinvite = await call.out.send("INVITE", body=held)

    ok = await call.alice.expect(200)
    await call.out.ack(reinvite)

    assert direction(ok.body)[0] is Direction.RECVONLY
    assert call.pbx.media.last("a") == (None, 8, 101)


async def test_hold_from_the_callee_is_answered_on_its_leg(call: Connected) -> None:
    await call.incoming.send("INVITE", body=sdp(B_HOST, 31000, direction="sendonly", version=2))

    ok = await call.bob.expect(200)
    d, port, _ = direction(ok.body)
    assert (d, port) == (Direction.RECVONLY, PORT_B)
    assert call.alice.unread() == []


async def test_the_answer_to_a_reinvite_is_retransmitted_until_acked(call: Connected) -> None:
    reinvite = await call.out.send("INVITE", body=sdp(A_HOST, 30000, direction="sendonly", version=2))
    await call.alice.expect(200)

    await call.pbx.advance(0.5)
    await call.alice.expect(200)
    await call.out.ack(reinvite)
    await call.pbx.advance(10)

    assert call.alice.unread() == []


async def test_media_timeout_does_not_end_a_held_call(call: Connected) -> None:
    reinvite = await call.out.send("INVITE", body=sdp(A_HOST, 30000, direction="sendonly", version=2))
    await call.alice.expect(200)
    await call.out.ack(reinvite)

    call.pbx.b2bua.on_media_timeout(LegRef(call.pbx.media.allocated[0], "b"), 60.0)
    await call.pbx.settle()

    assert call.alice.unread() == [] and call.bob.unread() == []
    assert call.pbx.events()[-1] == "connected"


async def test_offerless_reinvite_gets_our_offer_and_takes_the_answer_from_the_ack(call: Connected) -> None:
    reinvite = await call.out.send("INVITE")
    ok = await call.alice.expect(200)
    assert direction(ok.body)[:2] == (Direction.SENDRECV, PORT_A)

    await call.out.ack(reinvite, body=sdp(A_HOST, 30500, codecs="0 101"))

    assert call.pbx.media.last("a") == (MediaAddress(A_HOST, 30500), 0, 101)


async def test_a_reinvite_with_a_bad_offer_gets_488_and_the_call_stays(call: Connected) -> None:
    await call.out.send("INVITE", body=sdp(A_HOST, 30000, codecs="18"))

    await call.alice.expect(488)
    assert call.pbx.events()[-1] == "connected"


async def test_reinvite_requiring_100rel_gets_420(call: Connected) -> None:
    await call.out.send("INVITE", body=sdp(A_HOST, 30000), headers=[("Require", "100rel")])

    refused = await call.alice.expect(420)
    assert refused.headers["Unsupported"] == "100rel"


# --- other in-dialog requests -------------------------------------------------------------------------


async def test_options_in_dialog_is_answered(call: Connected) -> None:
    await call.out.send("OPTIONS")

    ok = await call.alice.expect(200)
    assert "INVITE" in ok.headers["Allow"] and ok.headers["Accept"] == "application/sdp"


async def test_update_without_a_body_is_a_refresh(call: Connected) -> None:
    await call.incoming.send("UPDATE")

    assert (await call.bob.expect(200)).cseq.method == "UPDATE"


async def test_update_with_an_offer_is_answered_like_a_reinvite(call: Connected) -> None:
    await call.out.send("UPDATE", body=sdp(A_HOST, 30000, direction="inactive", version=2))

    ok = await call.alice.expect(200)
    assert direction(ok.body)[0] is Direction.INACTIVE


async def test_a_lower_cseq_gets_500(call: Connected) -> None:
    assert call.out.dialog is not None
    call.out.dialog.local_seq = 0  # the next request reuses a number below the INVITE's (2)

    await call.out.send("OPTIONS")

    assert (await call.alice.expect(500)).cseq.method == "OPTIONS"


async def test_requests_for_unknown_dialogs_get_481(call: Connected) -> None:
    assert call.out.dialog is not None
    call.out.dialog.remote_tag = "not-ours"

    await call.out.send("BYE")

    assert (await call.alice.expect(481)).cseq.method == "BYE"
    assert call.bob.unread() == []


async def test_info_is_acknowledged(call: Connected) -> None:
    await call.out.send("INFO")

    assert (await call.alice.expect(200)).cseq.method == "INFO"


# --- media timeout and shutdown -----------------------------------------------------------------------------


async def test_media_timeout_byes_both_legs_with_a_reason(call: Connected) -> None:
    call.pbx.b2bua.on_media_timeout(LegRef(call.pbx.media.allocated[0], "a"), 60.0)
    await call.pbx.settle()

    for phone in (call.alice, call.bob):
        bye = await phone.expect("BYE")
        assert bye.headers["Reason"] == 'SIP;cause=200;text="media timeout"'
    assert call.pbx.events() == ["new", "calling", "connected", "disconnected", "end"]
    assert call.pbx.bus.events[-2].disconnect_reason == "5"
    assert call.pbx.b2bua.indexes() == {
        "calls": 0,
        "pending": 0,
        "invites": 0,
        "tokens": 0,
        "dialogs": 0,
        "clients": call.pbx.b2bua.indexes()["clients"],
    }


async def test_stopping_the_node_ends_live_calls_with_bye(call: Connected) -> None:
    await call.pbx.node.stop()
    await call.pbx.settle()

    assert (await call.alice.expect("BYE")).headers["Reason"].startswith("SIP;cause=503")
    await call.bob.expect("BYE")
    assert call.pbx.events()[-2:] == ["disconnected", "end"]


async def test_stopping_the_node_refuses_a_ringing_call(core: Core) -> None:
    pbx = await Pbx.create(core)
    alice, bob = pbx.phone("101", A_HOST), pbx.phone("102", B_HOST)
    await pbx.register(bob)
    await alice.call("102")
    incoming = await bob.ringing()
    await incoming.reply(180)

    await pbx.node.stop()
    await pbx.settle()

    assert alice.unread() == [180, 503]
    await bob.expect("CANCEL")
    assert pbx.events() == ["new", "calling", "end"]


async def test_the_offer_without_media_in_the_invite_goes_in_the_200(core: Core) -> None:
    pbx = await Pbx.create(core)
    try:
        alice, bob = pbx.phone("101", A_HOST), pbx.phone("102", B_HOST)
        await pbx.register(bob)
        out = await alice.call("102", body=b"")
        incoming = await bob.ringing()
        await incoming.answer()

        ok = await alice.expect(200)
        assert direction(ok.body)[:2] == (Direction.SENDRECV, PORT_A)
        dialog = Dialog.uac(out.invite, ok, local_contact=alice.contact)
        ack = dialog.build_ack(
            2, via=alice.via, body=sdp(A_HOST, 30000, codecs="0"), content_type="application/sdp"
        )
        await alice.send(ack)

        assert pbx.media.last("a") == (MediaAddress(A_HOST, 30000), 0, None)
        assert MEDIA_HOST in ok.body.decode()
    finally:
        await pbx.node.stop()


async def test_lost_media_ends_even_a_held_call_with_bye(call: Connected) -> None:
    # a dead media worker: the relay is gone, so hold does not keep the call up as it does for silence
    reinvite = await call.out.send("INVITE", body=sdp(A_HOST, 30000, direction="sendonly", version=2))
    await call.alice.expect(200)
    await call.out.ack(reinvite)
    call.pbx.b2bua.on_media_lost(call.pbx.media.allocated[0])
    await call.pbx.settle()
    for phone in (call.alice, call.bob):
        bye = await phone.expect("BYE")
        assert bye.headers["Reason"] == 'SIP;cause=503;text="media lost"'
    assert call.pbx.events() == ["new", "calling", "connected", "disconnected", "end"]
    assert len(call.pbx.registry) == 0


async def test_lost_media_while_ringing_gives_503_and_cancels(core: Core) -> None:
    pbx = await Pbx.create(core)
    alice, bob = pbx.phone("101", A_HOST), pbx.phone("102", B_HOST)
    await pbx.register(bob)
    out = await alice.call("102")
    await (await bob.ringing()).reply(180)
    await alice.expect(180)
    pbx.b2bua.on_media_lost(pbx.media.allocated[0])
    await pbx.settle()
    assert (await alice.expect(503)).headers["Retry-After"] == "5"
    await bob.expect("CANCEL")
    assert pbx.events() == ["new", "calling", "end"]
    assert out is not None
    await pbx.node.stop()
