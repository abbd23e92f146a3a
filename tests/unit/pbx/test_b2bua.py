"""The B2BUA over the real node and transactions, driven by SIP bytes: calls, forking, CANCEL, failures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.unit.pbx.b2bua_kit import (
    MEDIA_HOST,
    PBX_HOST,
    PBX_PORT,
    PORT_A,
    PORT_B,
    TENANT,
    Pbx,
    Phone,
    sdp,
    tag,
)
from vpbx.app import Core
from vpbx.media.relay import Address as MediaAddress
from vpbx.sip.dialog import Dialog
from vpbx.sip.sdp import Direction, parse_sdp

A_HOST, B_HOST, B2_HOST = "192.0.2.10", "192.0.2.20", "192.0.2.21"


@pytest.fixture
async def pbx(core: Core) -> AsyncIterator[Pbx]:
    p = await Pbx.create(core)
    yield p
    await p.node.stop()


@pytest.fixture
def alice(pbx: Pbx) -> Phone:
    return pbx.phone("101", A_HOST)


@pytest.fixture
async def bob(pbx: Pbx) -> Phone:
    phone = pbx.phone("102", B_HOST)
    await pbx.register(phone)
    return phone


def body_sdp(msg: object) -> tuple[str, int, Direction]:
    sd = parse_sdp(msg.body)  # type: ignore[attr-defined]
    audio = sd.audio
    assert audio is not None
    conn = sd.connection_of(audio)
    assert conn is not None
    return conn.address, audio.port, sd.direction_of(audio)


# --- a basic call -------------------------------------------------------------------------------------------


async def test_call_rings_answers_bridges_and_hangs_up_from_the_caller(
    pbx: Pbx, alice: Phone, bob: Phone
) -> None:
    out = await alice.call("102", headers=[("X-Secret", "do-not-leak"), ("User-Agent", "AlicePhone")])
    incoming = await bob.ringing()
    b_invite = incoming.invite

    # a new leg: its own Call-ID and tags, our anchored offer, only the caller's identity
    assert b_invite.call_id != out.invite.call_id
    assert tag(b_invite, "From") != tag(out.invite, "From")
    assert str(b_invite.uri) == f"sip:p102@{B_HOST}:5060"
    assert b_invite.from_address.name == "Phone 101"
    assert str(b_invite.from_address.uri) == f"sip:101@{TENANT}"
    assert str(b_invite.to_address.uri) == f"sip:102@{TENANT}"
    assert "X-Secret" not in b_invite.headers.keys()
    assert b_invite.headers.get("User-Agent") == "vpbx"
    contact = b_invite.contact[0].uri
    assert (contact.host, contact.port) == (PBX_HOST, PBX_PORT)
    assert body_sdp(b_invite) == (MEDIA_HOST, PORT_B, Direction.SENDRECV)
    offer = parse_sdp(b_invite.body).audio
    assert offer is not None and offer.payload_types == (8, 0, 101)

    await incoming.reply(180)
    ringing = await alice.expect(180)
    assert tag(ringing) is not None

    ack = await incoming.answer()
    assert ack.cseq.sequence == 1 and ack.cseq.method == "ACK"
    assert tag(ack) == incoming.tag
    ok = await out.answered()
    assert tag(ok) == tag(ringing)  # one dialog with the caller
    assert body_sdp(ok) == (MEDIA_HOST, PORT_A, Direction.SENDRECV)
    assert pbx.media.last("a") == (MediaAddress(A_HOST, 30000), 8, 101)
    assert pbx.media.last("b") == (MediaAddress(B_HOST, 31000), 8, 101)
    assert pbx.events() == ["new", "calling", "connected"]

    await out.send("BYE")
    assert (await alice.expect(200)).cseq.method == "BYE"
    bye = await bob.expect("BYE")
    assert tag(bye) == incoming.tag and bye.call_id == b_invite.call_id

    assert pbx.events() == ["new", "calling", "connected", "disconnected", "end"]
    assert pbx.bus.events[3].disconnect_reason == "5"
    assert pbx.bus.events[4].is_record is False
    assert pbx.media.released == pbx.media.allocated
    assert len(pbx.registry) == 0


async def test_callee_hangs_up_and_the_caller_gets_bye_in_its_dialog(
    pbx: Pbx, alice: Phone, bob: Phone
) -> None:
    out = await alice.call("102")
    incoming = await bob.ringing()
    await incoming.answer()
    ok = await out.answered()

    bye_from_b = await incoming.send("BYE")
    assert (await bob.expect(200)).call_id == bye_from_b.call_id
    bye = await alice.expect("BYE")

    assert str(bye.uri) == f"sip:p101@{A_HOST}:5060"  # A's Contact: the remote target
    assert bye.call_id == out.invite.call_id
    assert tag(bye, "From") == tag(ok) and tag(bye) == tag(out.invite, "From")
    assert bye.cseq.sequence == 1
    assert pbx.events()[-2:] == ["disconnected", "end"]


async def test_the_2xx_is_retransmitted_until_the_ack(pbx: Pbx, alice: Phone, bob: Phone) -> None:
    await alice.call("102")
    incoming = await bob.ringing()
    await incoming.answer()
    first = await alice.expect(200)

    await pbx.advance(0.5)
    again = await alice.expect(200)
    await pbx.advance(0.9)
    assert alice.unread() == []  # doubling: the next one is 1 s after the first retransmission
    await pbx.advance(0.1)
    await alice.expect(200)

    assert again.headers["To"] == first.headers["To"] and again.body == first.body


async def test_no_ack_within_64_t1_ends_the_call_on_both_sides(pbx: Pbx, alice: Phone, bob: Phone) -> None:
    await alice.call("102")
    incoming = await bob.ringing()
    await incoming.answer()

    await pbx.advance(32.0)

    bye_a = await alice.expect("BYE")
    bye_b = await bob.expect("BYE")
    assert "no ACK" in bye_a.headers["Reason"] and "no ACK" in bye_b.headers["Reason"]
    assert pbx.events() == ["new", "calling", "connected", "disconnected", "end"]
    assert pbx.b2bua.indexes()["calls"] == 0


async def test_a_retransmitted_2xx_from_the_callee_is_acked_again(pbx: Pbx, alice: Phone, bob: Phone) -> None:
    await alice.call("102")
    incoming = await bob.ringing()
    ok = incoming.response(200, body=sdp(B_HOST, 31000))
    await incoming.reply(200, body=ok.body)
    first = await bob.expect("ACK")

    await bob.send(ok)
    second = await bob.expect("ACK")

    assert first.headers["Via"] == second.headers["Via"]  # the very same ACK
    assert alice.unread().count(200) == 1


# --- CANCEL -------------------------------------------------------------------------------------------------


async def test_cancel_while_ringing_gets_200_then_487_and_cancels_the_leg(
    pbx: Pbx, alice: Phone, bob: Phone
) -> None:
    out = await alice.call("102")
    incoming = await bob.ringing()
    await incoming.reply(180)
    await alice.expect(180)

    await out.cancel()

    assert alice.unread() == [200, 487]
    ok, terminated = await alice.expect(200), await alice.expect(487)
    assert ok.cseq.method == "CANCEL" and terminated.cseq.method == "INVITE"
    cancel = await bob.expect("CANCEL")
    assert cancel.call_id == incoming.invite.call_id
    assert cancel.headers["Via"] == incoming.invite.headers.getlist("Via")[0]
    assert "Reason" not in cancel.headers.keys()
    await bob.send(incoming.response(487))
    assert (await bob.expect("ACK")).cseq.method == "ACK"  # the transaction ACKs the 487
    assert pbx.events() == ["new", "calling", "end"]
    assert len(pbx.registry) == 0


async def test_cancel_waits_for_a_provisional_before_it_goes(pbx: Pbx, alice: Phone, bob: Phone) -> None:
    out = await alice.call("102")
    incoming = await bob.ringing()

    await out.cancel()
    await alice.expect(487)
    assert bob.unread() == []  # RFC 3261 §9.1: no CANCEL before a provisional response

    await incoming.reply(180)
    await bob.expect("CANCEL")


async def test_a_2xx_after_our_cancel_is_acked_and_byed_with_cause_487(
    pbx: Pbx, alice: Phone, bob: Phone
) -> None:
    out = await alice.call("102")
    incoming = await bob.ringing()
    await incoming.reply(180)
    await out.cancel()
    await bob.expect("CANCEL")

    await incoming.reply(200, body=sdp(B_HOST, 31000))

    await bob.expect("ACK")
    bye = await bob.expect("BYE")
    assert bye.headers["Reason"] == "SIP;cause=487"
    assert alice.unread() == [180, 200, 487]


async def test_cancel_of_an_unknown_invite_gets_481(pbx: Pbx, alice: Phone, bob: Phone) -> None:
    out = await alice.call("102")
    await bob.ringing()
    out.invite.headers.setlist("Via", [alice.via.header()])  # another branch: matches nothing

    await out.cancel()

    assert (await alice.expect(481)).cseq.method == "CANCEL"


# --- failures -----------------------------------------------------------------------------------------------


async def test_busy_callee_gives_486(pbx: Pbx, alice: Phone, bob: Phone) -> None:
    await alice.call("102")
    incoming = await bob.ringing()

    await incoming.reply(486)

    await alice.expect(486)
    assert pbx.events() == ["new", "calling", "end"]
    assert len(pbx.registry) == 0


async def test_unknown_extension_gets_404_without_events(pbx: Pbx, alice: Phone) -> None:
    await alice.call("999")

    await alice.expect(404)
    assert pbx.events() == []


async def test_user_without_bindings_gets_480(pbx: Pbx, alice: Phone) -> None:
    await alice.call("103")

    await alice.expect(480)
    assert pbx.events() == ["new", "end"]
    assert pbx.media.allocated == []


async def test_wrong_password_is_challenged_again_and_nothing_rings(
    pbx: Pbx, alice: Phone, bob: Phone
) -> None:
    await alice.call("102", password="wrong")

    await alice.expect(407)
    assert bob.unread() == []
    assert pbx.events() == []


async def test_nobody_answers_within_the_route_timeout(pbx: Pbx, alice: Phone, bob: Phone) -> None:
    await alice.call("102")
    incoming = await bob.ringing()
    await incoming.reply(180)

    await pbx.advance(59.0)
    assert alice.unread() == [180]
    await pbx.advance(1.0)

    await alice.expect(480)
    await bob.expect("CANCEL")
    assert pbx.events() == ["new", "calling", "end"]


async def test_require_100rel_gets_420(pbx: Pbx, alice: Phone, bob: Phone) -> None:
    await alice.send(alice.invite("102", headers=[("Require", "100rel")]))

    refused = await alice.expect(420)  # before any challenge: it tells nothing about accounts
    assert refused.headers["Unsupported"] == "100rel"
    assert bob.unread() == []


async def test_an_offer_without_g711_gets_488(pbx: Pbx, alice: Phone, bob: Phone) -> None:
    await alice.call("102", body=sdp(A_HOST, 30000, codecs="18"))

    await alice.expect(488)
    assert bob.unread() == []


async def test_the_channel_limit_caps_concurrent_calls(core: Core) -> None:
    pbx = await Pbx.create(core, channel_limit=1)
    try:
        alice, carol, bob = pbx.phone("101", A_HOST), pbx.phone("103", "192.0.2.30"), pbx.phone("102", B_HOST)
        await pbx.register(bob)
        first = await alice.call("102")
        await bob.ringing()

        await carol.call("102")
        refused = await carol.expect(503)
        assert refused.headers["Retry-After"] == "5"
        assert pbx.registry.active(pbx.domain_id) == 1

        await first.cancel()
        await alice.expect(487)
        await carol.call("102")
        await bob.ringing()  # admitted once the first call is over
    finally:
        await pbx.node.stop()


# --- forking ------------------------------------------------------------------------------------------------


async def test_every_binding_rings_and_the_first_answer_wins(pbx: Pbx, alice: Phone) -> None:
    desk, soft = pbx.phone("102", B_HOST, name="desk"), pbx.phone("102", B2_HOST, name="soft")
    await pbx.register(desk)
    await pbx.register(soft)
    out = await alice.call("102")
    on_desk, on_soft = await desk.ringing(), await soft.ringing()
    assert on_desk.invite.call_id != on_soft.invite.call_id
    await on_desk.reply(180)
    await on_soft.reply(180)

    await on_soft.answer()

    cancel = await desk.expect("CANCEL")
    assert cancel.headers["Reason"] == 'SIP;cause=200;text="Call completed elsewhere"'
    await out.answered()
    assert pbx.media.last("b") == (MediaAddress(B2_HOST, 31000), 8, 101)
    states = pbx.events()
    assert states == ["new", "calling", "calling", "connected"]
    assert {e.request_uri for e in pbx.bus.events if e.state == "calling"} == {
        f"sip:desk@{B_HOST}:5060",
        f"sip:soft@{B2_HOST}:5060",
    }
    await desk.send(on_desk.response(487))
    await desk.expect("ACK")
    assert alice.unread() == [180]


@pytest.mark.parametrize(
    ("codes", "expected"), [((486, 486), 486), ((480, 603), 486), ((480, 480), 480), ((404, 500), 480)]
)
async def test_when_every_binding_fails_the_caller_gets_one_answer(
    pbx: Pbx, alice: Phone, codes: tuple[int, int], expected: int
) -> None:
    desk, soft = pbx.phone("102", B_HOST, name="desk"), pbx.phone("102", B2_HOST, name="soft")
    await pbx.register(desk)
    await pbx.register(soft)
    await alice.call("102")
    on_desk, on_soft = await desk.ringing(), await soft.ringing()

    await on_desk.reply(codes[0])
    assert alice.unread() == []
    await on_soft.reply(codes[1])

    await alice.expect(expected)
    assert pbx.events() == ["new", "calling", "calling", "end"]


async def test_a_late_answer_of_a_cancelled_fork_is_acked_and_byed(pbx: Pbx, alice: Phone) -> None:
    desk, soft = pbx.phone("102", B_HOST, name="desk"), pbx.phone("102", B2_HOST, name="soft")
    await pbx.register(desk)
    await pbx.register(soft)
    await alice.call("102")
    on_desk, on_soft = await desk.ringing(), await soft.ringing()
    await on_desk.reply(180)
    await on_soft.answer()
    await desk.expect("CANCEL")

    await on_desk.reply(200, body=sdp(B_HOST, 31000))

    await desk.expect("ACK")
    bye = await desk.expect("BYE")
    assert "elsewhere" in bye.headers["Reason"]
    assert alice.unread() == [180, 200]  # one 200 only


# --- early media --------------------------------------------------------------------------------------------


async def test_early_media_is_bridged_and_the_same_answer_repeats_in_the_200(
    pbx: Pbx, alice: Phone, bob: Phone
) -> None:
    out = await alice.call("102")
    incoming = await bob.ringing()

    await incoming.reply(183, body=sdp(B_HOST, 32000))
    early = await alice.expect(183)
    assert body_sdp(early) == (MEDIA_HOST, PORT_A, Direction.SENDRECV)
    assert pbx.media.last("b") == (MediaAddress(B_HOST, 32000), 8, 101)
    assert pbx.media.last("a") == (MediaAddress(A_HOST, 30000), 8, 101)

    await incoming.answer(sdp(B_HOST, 32000))
    ok = await out.answered()

    assert ok.body == early.body  # RFC 3264 §8: nothing changed, same o= version


async def test_a_ringing_without_sdp_is_passed_as_180_once(pbx: Pbx, alice: Phone, bob: Phone) -> None:
    await alice.call("102")
    incoming = await bob.ringing()

    await incoming.reply(180)
    await incoming.reply(180)

    assert alice.unread() == [180]


async def test_a_bye_for_the_caller_waits_for_its_ack(pbx: Pbx, alice: Phone, bob: Phone) -> None:
    out = await alice.call("102")
    incoming = await bob.ringing()
    await incoming.answer()
    ok = await alice.expect(200)

    await incoming.send("BYE")  # the callee hangs up before the caller's ACK arrived
    await bob.expect(200)
    assert alice.unread() == []  # RFC 3261 §15: no BYE before the ACK of our 2xx

    dialog = Dialog.uac(out.invite, ok, local_contact=alice.contact)
    await alice.send(dialog.build_ack(out.invite.cseq.sequence, via=alice.via))
    await alice.expect("BYE")
    assert pbx.events()[-2:] == ["disconnected", "end"]
    assert pbx.b2bua.indexes()["tokens"] == 0
