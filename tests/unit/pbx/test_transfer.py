"""Hold with music, blind transfer (REFER), attended transfer (REFER with Replaces) and INVITE with Replaces.

The B2BUA kit's phones speak SIP bytes to the real node and B2BUA; media and prompts are fakes that record
what was asked of them (telephony.md §4, RFC 3515, 3891, 4488; integration-api.md §5.2 for the events).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.unit.pbx.b2bua_kit import (
    MEDIA_HOST,
    PORT_A,
    PORT_B,
    TENANT,
    FakeMedia,
    IncomingCall,
    OutgoingCall,
    Pbx,
    Phone,
    sdp,
)
from vpbx.app import Core
from vpbx.media.prompts import Prompt, PromptError, PromptId, SystemPhrase, Tone, Voice, tone_pcm
from vpbx.media.relay import Address as MediaAddress
from vpbx.media.relay import LegRef
from vpbx.media.rtp import HANDOVER_SEQ_GAP, LegRewriter
from vpbx.pbx.bus import CallEvent
from vpbx.pbx.directory import DomainInfo
from vpbx.sip.dialog import tag_of
from vpbx.sip.message import Request, build_response
from vpbx.sip.refer import parse_sipfrag
from vpbx.sip.sdp import parse_sdp
from vpbx.store.models import DomainId

A_HOST, B_HOST, C_HOST, D_HOST = "192.0.2.10", "192.0.2.20", "192.0.2.30", "192.0.2.40"
MOH_ID = "ab" * 32
RTP_HEADER = (
    bytes([0x80, 8]) + (500).to_bytes(2, "big") + (8000).to_bytes(4, "big") + (0xABCD).to_bytes(4, "big")
)


def _prompt(prompt_id: str) -> Prompt:
    return Prompt(
        id=PromptId(prompt_id), duration_s=1.0, wav=Path("/x.wav"), pcma=Path("/x.a"), pcmu=Path("/x.u")
    )


class FakePrompts:
    def __init__(self, stored: tuple[str, ...] = ()) -> None:
        self.stored = stored

    async def system_phrase(self, phrase: SystemPhrase, voice: Voice = "ru") -> Prompt:
        return _prompt(f"phrase-{phrase}")

    def get(self, prompt_id: str) -> Prompt:
        if prompt_id not in self.stored:
            raise PromptError("prompt-missing", "The prompt file is missing")
        return _prompt(prompt_id)

    async def tone(self, kind: Tone) -> Prompt:
        return _prompt(f"tone-{kind}")


@dataclass
class TrackingMedia(FakeMedia):
    playing: dict[str, str] = field(default_factory=dict)  # side → prompt id (session-blind: one call)
    plays: dict[tuple[str, str], str] = field(default_factory=dict)  # (session, side) → prompt id

    async def play(self, leg: LegRef, prompt: Prompt, *, loop: bool = False) -> None:
        await super().play(leg, prompt, loop=loop)
        self.plays[(leg.session, leg.side)] = prompt.id

    async def stop_play(self, leg: LegRef) -> bool:
        return self.plays.pop((leg.session, leg.side), None) is not None

    def now_playing(self, session: str) -> dict[str, str]:
        return {side: p for (s, side), p in self.plays.items() if s == session}


@dataclass
class Connected:
    pbx: Pbx
    media: TrackingMedia
    alice: Phone
    bob: Phone
    carol: Phone
    out: OutgoingCall
    incoming: IncomingCall

    @property
    def session(self) -> str:
        return self.pbx.bus.events[0].session_id

    def events(self, session: str | None = None) -> list[CallEvent]:
        sid = session or self.session
        return [e for e in self.pbx.bus.events if e.session_id == sid]


async def connected(core: Core) -> Connected:
    pbx = await Pbx.create(core, ("101", "102", "103", "104"))
    media = TrackingMedia()
    pbx.media = media
    pbx.b2bua.media = media
    pbx.b2bua.prompts = FakePrompts((MOH_ID,))
    alice, bob, carol = pbx.phone("101", A_HOST), pbx.phone("102", B_HOST), pbx.phone("103", C_HOST)
    await pbx.register(bob)
    await pbx.register(carol)
    out = await alice.call("102")
    incoming = await bob.ringing()
    await incoming.answer(sdp(B_HOST, 31000))
    await out.answered()
    return Connected(pbx, media, alice, bob, carol, out, incoming)


@pytest.fixture
async def call(core: Core) -> AsyncIterator[Connected]:
    c = await connected(core)
    yield c
    await c.pbx.node.stop()


def refer_to(target: str, replaces: str = "") -> tuple[tuple[str, str], ...]:
    query = f"?Replaces={replaces}" if replaces else ""
    return (("Refer-To", f"<sip:{target}@{TENANT}{query}>"),)


async def bob_sends(call: Connected, method: str, headers: tuple[tuple[str, str], ...] = ()) -> Request:
    dialog = call.incoming.dialog
    assert dialog is not None
    req = dialog.build_request(method, via=call.bob.via, headers=headers)
    await call.bob.send(req)
    return req


async def notified(phone: Phone) -> tuple[int, str]:
    """The next NOTIFY's sipfrag status and Subscription-State; answered 200."""
    notify: Request = await phone.expect("NOTIFY")
    assert notify.headers["Event"].startswith("refer")
    assert notify.headers["Content-Type"].startswith("message/sipfrag")
    await phone.send(build_response(notify, 200))
    return parse_sipfrag(notify.body), notify.headers["Subscription-State"]


def states(events: list[CallEvent]) -> list[str]:
    return [e.state for e in events]


# --- tones ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ringback", "moh"])
def test_platform_tones_are_audible_whole_frames(kind: Tone) -> None:
    pcm = tone_pcm(kind)
    samples = [int.from_bytes(pcm[i : i + 2], "little", signed=True) for i in range(0, len(pcm), 2)]
    assert len(pcm) % 320 == 0  # 20 ms of 8 kHz s16
    assert max(samples) > 8000  # about -10 dBFS peaks, not silence
    if kind == "ringback":
        assert samples[-800:] == [0] * 800  # the cadence's pause


def test_a_moved_phone_keeps_its_rtp_stream() -> None:
    old, new = LegRewriter(0x1111), LegRewriter(0x2222)
    packet = bytearray(RTP_HEADER)
    old.rewrite(packet, 10.0, 8)  # seq 500, ts 8000 from the first source: passed through
    new.rewrite(bytearray(RTP_HEADER), 10.0, 8)

    new.adopt(old.stream(10.5), 10.5)
    moved = bytearray(RTP_HEADER)
    new.rewrite(moved, 10.5, 8)

    assert moved[8:12] == (0x1111).to_bytes(4, "big")  # the old SSRC
    assert int.from_bytes(moved[2:4], "big") == 501 + HANDOVER_SEQ_GAP  # ahead of what the old leg sent
    assert int.from_bytes(moved[4:8], "big") == 8000 + 4000  # the wall time that passed, at 8 kHz
    assert moved[1] & 0x80  # marker: re-sync


def test_a_leg_that_sent_nothing_reports_the_stream_it_will_send() -> None:
    old, new = LegRewriter(0x1111), LegRewriter(0x2222)
    state = old.stream(10.0)  # nothing sent yet
    late = bytearray(RTP_HEADER)
    old.rewrite(late, 10.02, 8)  # a packet that slips out of the old leg before the hand-over ends

    new.adopt(state, 10.04)
    moved = bytearray(RTP_HEADER)
    new.rewrite(moved, 10.04, 8)

    assert int.from_bytes(late[2:4], "big") == state.seq + 1  # in sequence with the state, not passed through
    assert int.from_bytes(moved[2:4], "big") == state.seq + 1 + HANDOVER_SEQ_GAP


# --- hold and music ---------------------------------------------------------------------------------------


async def test_hold_plays_the_platform_tone_to_the_other_party_and_resume_stops_it(call: Connected) -> None:
    hold = await call.out.send("INVITE", body=sdp(A_HOST, 30000, direction="sendonly", version=2))
    ok = await call.alice.expect(200)
    await call.out.ack(hold)

    audio = parse_sdp(ok.body).audio
    assert audio is not None and parse_sdp(ok.body).direction_of(audio).value == "recvonly"
    assert call.media.now_playing(call.session) == {"b": "tone-moh"}  # bob hears it, not alice
    assert call.pbx.registry.snapshot()[0].state == "held"

    resume = await call.out.send("INVITE", body=sdp(A_HOST, 30000, version=3))
    await call.alice.expect(200)
    await call.out.ack(resume)
    assert call.media.now_playing(call.session) == {}
    assert call.pbx.registry.snapshot()[0].state == "connected"


async def test_hold_by_the_callee_plays_the_domains_own_music_to_the_caller(call: Connected) -> None:
    ctx = call.pbx.b2bua._calls[call.session]  # type: ignore[index]
    ctx.call.domain = dataclasses.replace(ctx.call.domain, moh_prompt_id=MOH_ID)

    await call.incoming.send("INVITE", body=sdp(B_HOST, 31000, direction="inactive", version=2))
    await call.bob.expect(200)

    assert call.media.now_playing(call.session) == {"a": MOH_ID}


async def test_a_missing_domain_prompt_falls_back_to_the_tone(call: Connected) -> None:
    ctx = call.pbx.b2bua._calls[call.session]  # type: ignore[index]
    ctx.call.domain = dataclasses.replace(ctx.call.domain, moh_prompt_id="cd" * 32)

    await call.out.send("INVITE", body=sdp("0.0.0.0", 30000, version=2))
    await call.alice.expect(200)

    assert call.media.now_playing(call.session) == {"b": "tone-moh"}


async def test_hanging_up_on_hold_is_reason_4(call: Connected) -> None:
    hold = await call.out.send("INVITE", body=sdp(A_HOST, 30000, direction="sendonly", version=2))
    await call.alice.expect(200)
    await call.out.ack(hold)

    await bob_sends(call, "BYE")

    disconnected = [e for e in call.events() if e.state == "disconnected"]
    assert [e.disconnect_reason for e in disconnected] == ["4"]


# --- blind transfer ---------------------------------------------------------------------------------------


async def test_blind_transfer_by_the_callee_rings_the_target_and_bridges_it(call: Connected) -> None:
    await bob_sends(call, "REFER", (*refer_to("103"), ("Referred-By", "<sip:102@acme.vpbx.test>")))
    assert (await call.bob.expect(202)).headers.get("Refer-Sub") is None
    assert await notified(call.bob) == (100, "active;expires=60")

    ring = await call.carol.ringing()
    assert ring.invite.headers["Referred-By"] == f"<sip:102@{TENANT}>"
    offer = parse_sdp(ring.invite.body)
    assert offer.audio is not None and offer.audio.port == PORT_B  # the transferor's side
    assert call.media.now_playing(call.session) == {"a": "tone-ringback"}  # alice waits with ringback
    assert call.alice.unread() == []  # and is not re-INVITEd

    await ring.answer(sdp(C_HOST, 32000))

    assert await notified(call.bob) == (200, "terminated;reason=noresource")
    await call.bob.expect("BYE")
    assert call.media.last("b")[0] == MediaAddress(C_HOST, 32000)
    assert call.media.now_playing(call.session) == {}
    events = call.events()
    assert states(events) == ["new", "calling", "connected", "disconnected", "calling", "connected"]
    gone = events[3]
    assert (gone.disconnect_reason, gone.extra, gone.request_pin) == ("0", {"transfer_to": "103"}, "102")
    assert (events[5].from_pin, events[5].request_pin) == ("101", "103")
    assert {e.session_id for e in events} == {call.session}  # one session through the transfer

    await ring.send("BYE")  # carol hangs up: alice is BYEd, the call ends
    await call.alice.expect("BYE")
    assert states(call.events())[-2:] == ["disconnected", "end"]
    left = call.pbx.b2bua.indexes()
    del left["clients"]  # INVITE client transactions linger for Timer M (RFC 6026), slow in the kit
    assert left == dict.fromkeys(left, 0)


async def test_blind_transfer_by_the_caller_gives_the_target_the_callers_side(call: Connected) -> None:
    await call.out.send("REFER", headers=refer_to("103"))
    await call.alice.expect(202)
    await notified(call.alice)

    ring = await call.carol.ringing()
    offer = parse_sdp(ring.invite.body)
    assert offer.audio is not None and offer.audio.port == PORT_A
    assert ring.invite.from_address.uri.user == "102"  # carol sees who she will talk to
    assert call.media.now_playing(call.session) == {"b": "tone-ringback"}

    await ring.answer(sdp(C_HOST, 32000))
    await notified(call.alice)
    await call.alice.expect("BYE")
    assert call.media.last("a")[0] == MediaAddress(C_HOST, 32000)

    await call.incoming.send("BYE")  # bob hangs up: carol is BYEd
    await call.carol.expect("BYE")
    assert states(call.events())[-1] == "end"


async def test_refer_sub_false_gets_no_notify(call: Connected) -> None:
    await bob_sends(call, "REFER", (*refer_to("103"), ("Refer-Sub", "false")))

    assert (await call.bob.expect(202)).headers["Refer-Sub"] == "false"
    ring = await call.carol.ringing()
    await ring.answer()
    await call.bob.expect("BYE")
    assert "NOTIFY" not in call.bob.unread()


async def test_transfer_to_an_unknown_extension_fails_and_the_call_survives(call: Connected) -> None:
    await bob_sends(call, "REFER", refer_to("999"))

    await call.bob.expect(202)
    assert await notified(call.bob) == (100, "active;expires=60")
    assert await notified(call.bob) == (404, "terminated;reason=noresource")
    assert call.carol.unread() == []
    assert states(call.events()) == ["new", "calling", "connected"]  # no transfer happened

    await bob_sends(call, "BYE")  # the original call is still up
    await call.alice.expect("BYE")
    assert [e.disconnect_reason for e in call.events() if e.state == "disconnected"] == ["5"]


async def test_transfer_to_another_domain_is_forbidden(call: Connected) -> None:
    await bob_sends(call, "REFER", (("Refer-To", "<sip:103@other.example>"),))
    await call.bob.expect(202)
    await notified(call.bob)
    assert (await notified(call.bob))[0] == 403
    assert call.carol.unread() == []


async def test_transfer_to_an_extension_without_phones_is_480(call: Connected) -> None:
    await bob_sends(call, "REFER", refer_to("104"))  # a user that never registered
    await call.bob.expect(202)
    await notified(call.bob)
    assert (await notified(call.bob))[0] == 480


async def test_a_busy_target_gives_the_transferee_back_to_the_transferor(call: Connected) -> None:
    await bob_sends(call, "REFER", refer_to("103"))
    await call.bob.expect(202)
    await notified(call.bob)
    ring = await call.carol.ringing()

    await ring.reply(486)

    assert await notified(call.bob) == (486, "terminated;reason=noresource")
    assert call.media.now_playing(call.session) == {}  # the ringback stopped
    events = call.events()
    assert states(events)[-3:] == ["disconnected", "calling", "connected"]
    assert (events[-1].from_pin, events[-1].request_pin) == ("101", "102")  # back with bob
    assert "BYE" not in call.bob.unread() and "BYE" not in call.alice.unread()


async def test_an_unanswered_target_is_cancelled(call: Connected) -> None:
    await bob_sends(call, "REFER", refer_to("103"))
    await call.bob.expect(202)
    await notified(call.bob)
    ring = await call.carol.ringing()
    await ring.reply(180)
    assert await notified(call.bob) == (180, "active;expires=60")

    await call.pbx.advance(call.pbx.b2bua.no_answer_s)

    await call.carol.expect("CANCEL")
    assert (await notified(call.bob))[0] == 480


async def test_the_transferor_may_hang_up_before_the_target_answers(call: Connected) -> None:
    await bob_sends(call, "REFER", refer_to("103"))
    await call.bob.expect(202)
    await notified(call.bob)
    ring = await call.carol.ringing()

    await bob_sends(call, "BYE")
    assert (await call.bob.expect(200)).cseq.method == "BYE"
    assert call.alice.unread() == []  # alice still waits for carol

    await ring.answer(sdp(C_HOST, 32000))
    assert call.media.last("b")[0] == MediaAddress(C_HOST, 32000)
    assert call.bob.unread() == []  # no NOTIFY, no BYE: bob's dialog is gone
    assert states(call.events())[-1] == "connected"


async def test_with_the_transferor_gone_a_failed_transfer_ends_the_call(call: Connected) -> None:
    await bob_sends(call, "REFER", refer_to("103"))
    await call.bob.expect(202)
    await notified(call.bob)
    ring = await call.carol.ringing()
    await bob_sends(call, "BYE")

    await ring.reply(603)

    await call.alice.expect("BYE")
    assert states(call.events())[-1] == "end"


async def test_the_transferee_hanging_up_cancels_the_target(call: Connected) -> None:
    await bob_sends(call, "REFER", refer_to("103"))
    await call.bob.expect(202)
    await notified(call.bob)
    ring = await call.carol.ringing()
    await ring.reply(180)

    await call.out.send("BYE")

    await call.carol.expect("CANCEL")
    await call.bob.expect("BYE")
    disconnected = [e for e in call.events() if e.state == "disconnected"]
    assert [e.disconnect_reason for e in disconnected] == ["0", "4"]


# --- bad REFERs -------------------------------------------------------------------------------------------


async def test_refer_without_refer_to_is_400(call: Connected) -> None:
    await bob_sends(call, "REFER")
    assert (await call.bob.expect(400)).cseq.method == "REFER"


@pytest.mark.parametrize("value", ["<sip:103@", "<mailto:x@y>", "<sip:103@acme.vpbx.test?Replaces=x>"])
async def test_a_bad_refer_to_is_400(call: Connected, value: str) -> None:
    await bob_sends(call, "REFER", (("Refer-To", value),))
    assert (await call.bob.expect(400)).cseq.method == "REFER"
    assert states(call.events()) == ["new", "calling", "connected"]


async def test_refer_outside_a_dialog_is_481(call: Connected) -> None:
    assert call.out.dialog is not None
    call.out.dialog.remote_tag = "not-ours"
    await call.out.send("REFER", headers=refer_to("103"))
    assert (await call.alice.expect(481)).cseq.method == "REFER"


async def test_a_second_refer_while_one_runs_is_491(call: Connected) -> None:
    await bob_sends(call, "REFER", refer_to("103"))
    await call.bob.expect(202)
    await bob_sends(call, "REFER", refer_to("101"))
    assert (await call.bob.expect(491)).cseq.method == "REFER"


# --- attended transfer: REFER with Replaces ---------------------------------------------------------------


async def consult(call: Connected) -> tuple[OutgoingCall, IncomingCall]:
    """Alice (holding bob) calls carol: the consultation call."""
    hold = await call.out.send("INVITE", body=sdp(A_HOST, 30000, direction="sendonly", version=2))
    await call.alice.expect(200)
    await call.out.ack(hold)
    out2 = await call.alice.call("103")
    ring = await call.carol.ringing()
    await ring.answer(sdp(C_HOST, 32000))
    await out2.answered()
    return out2, ring


def replaces_of(out: OutgoingCall) -> str:
    """Replaces as alice builds it from her dialog with the PBX (the PBX's tag is the to-tag)."""
    assert out.dialog is not None
    d = out.dialog
    return f"{d.call_id}%3Bto-tag%3D{d.remote_tag}%3Bfrom-tag%3D{d.local_tag}"


async def test_attended_transfer_merges_the_consultation_into_the_call(call: Connected) -> None:
    out2, ring2 = await consult(call)
    second = call.pbx.bus.events[-1].session_id
    assert second != call.session
    assert call.media.now_playing(call.session) == {"b": "tone-moh"}  # bob on hold meanwhile

    await call.out.send("REFER", headers=refer_to("103", replaces_of(out2)))

    await call.alice.expect(202)
    assert (await notified(call.alice))[0] == 100
    assert (await notified(call.alice))[0] == 200
    byes = [await call.alice.expect("BYE"), await call.alice.expect("BYE")]  # both of alice's legs
    assert {b.call_id for b in byes} == {call.out.invite.call_id, out2.invite.call_id}
    reinvite: Request = await call.carol.expect("INVITE")  # carol's phone is pointed at the call's port
    assert reinvite.call_id == ring2.invite.call_id
    audio = parse_sdp(reinvite.body).audio
    assert audio is not None and audio.port == PORT_A
    answer = sdp(C_HOST, 32000, version=2)
    headers = [("Contact", str(call.carol.contact)), ("Content-Type", "application/sdp")]
    await call.carol.send(build_response(reinvite, 200, headers=headers, body=answer))
    assert (await call.carol.expect("ACK")).cseq.sequence == reinvite.cseq.sequence
    assert call.media.last("a")[0] == MediaAddress(C_HOST, 32000)
    assert call.media.now_playing(call.session) == {}  # bob's music stopped
    assert call.bob.unread() == []  # bob is never re-INVITEd
    [(adopted, state)] = call.media.adopted  # carol's phone keeps its RTP stream across the move
    assert adopted == LegRef(call.session, "a") and state.ssrc == 7  # type: ignore[arg-type]

    first = call.events()
    assert states(first)[-2:] == ["disconnected", "connected"]
    assert (first[-2].disconnect_reason, first[-2].extra) == ("0", {"transfer_to": "103"})
    assert (first[-1].from_pin, first[-1].request_pin) == ("102", "103")
    consultation = call.events(second)
    assert states(consultation)[-2:] == ["disconnected", "end"]
    assert consultation[-2].disconnect_reason == "0"

    await call.incoming.send("BYE")  # bob hangs up: carol gets the BYE, on her original dialog
    bye: Request = await call.carol.expect("BYE")
    assert bye.call_id == ring2.invite.call_id
    assert states(call.events())[-1] == "end"
    left = call.pbx.b2bua.indexes()
    del left["clients"]  # INVITE client transactions linger for Timer M (RFC 6026), slow in the kit
    assert left == dict.fromkeys(left, 0)


async def test_refer_with_replaces_of_an_unknown_dialog_fails_with_481(call: Connected) -> None:
    await call.out.send("REFER", headers=refer_to("103", "nope%3Bto-tag%3Da%3Bfrom-tag%3Db"))
    await call.alice.expect(202)
    await notified(call.alice)
    assert (await notified(call.alice))[0] == 481
    assert call.bob.unread() == []
    assert states(call.events()) == ["new", "calling", "connected"]


async def test_refer_with_replaces_of_another_tenants_call_fails_with_481(call: Connected) -> None:
    out2, _ring2 = await consult(call)
    consultation = call.pbx.b2bua._calls[call.pbx.bus.events[-1].session_id]  # type: ignore[index]
    consultation.call.domain = DomainInfo(DomainId(uuid.uuid4()), "other.test", 10, "UTC")

    await call.out.send("REFER", headers=refer_to("103", replaces_of(out2)))

    await call.alice.expect(202)
    await notified(call.alice)
    assert (await notified(call.alice))[0] == 481
    assert call.carol.unread() == []  # not re-INVITEd, not BYEd


async def test_media_timeout_waits_while_the_target_rings(call: Connected) -> None:
    await bob_sends(call, "REFER", refer_to("103"))
    await call.bob.expect(202)
    await call.carol.ringing()

    call.pbx.b2bua.on_media_timeout(LegRef(call.session, "b"), 60.0)  # type: ignore[arg-type]
    await call.pbx.settle()

    assert "BYE" not in call.alice.unread()


async def test_refer_with_replaces_of_its_own_dialog_fails(call: Connected) -> None:
    await call.out.send("REFER", headers=refer_to("102", replaces_of(call.out)))
    await call.alice.expect(202)
    await notified(call.alice)
    assert (await notified(call.alice))[0] == 481


# --- INVITE with Replaces ---------------------------------------------------------------------------------


def bobs_dialog(call: Connected) -> str:
    """Replaces naming the PBX's dialog with bob: our tag (the INVITE's From tag) is the to-tag."""
    ours = tag_of(call.incoming.invite.from_address)
    return f"{call.incoming.invite.call_id};to-tag={ours};from-tag={call.incoming.tag}"


async def test_invite_with_replaces_takes_over_a_connected_leg(call: Connected) -> None:
    out3 = await call.carol.call("102", body=sdp(C_HOST, 33000), headers=(("Replaces", bobs_dialog(call)),))

    ok = await out3.answered()
    audio = parse_sdp(ok.body).audio
    assert audio is not None and (parse_sdp(ok.body).connection_of(audio) or audio).address == MEDIA_HOST
    assert audio.port == PORT_B  # bob's side
    await call.bob.expect("BYE")
    assert call.media.last("b")[0] == MediaAddress(C_HOST, 33000)
    events = call.events()
    assert states(events)[-2:] == ["disconnected", "connected"]
    assert (events[-1].from_pin, events[-1].request_pin) == ("101", "103")
    assert len(call.pbx.registry.snapshot()) == 1

    await out3.send("BYE")
    await call.alice.expect("BYE")


async def test_invite_with_replaces_of_an_unknown_dialog_is_481(call: Connected) -> None:
    out3 = await call.carol.call("102", headers=(("Replaces", "nope;to-tag=a;from-tag=b"),))
    assert (await call.carol.expect(481)).cseq.method == "INVITE"
    assert out3.dialog is None
    assert call.bob.unread() == []


async def test_invite_with_replaces_of_another_tenants_call_is_481(call: Connected) -> None:
    ctx = call.pbx.b2bua._calls[call.session]  # type: ignore[index]
    ctx.call.domain = DomainInfo(DomainId(uuid.uuid4()), "other.test", 10, "UTC")

    await call.carol.call("102", headers=(("Replaces", bobs_dialog(call)),))

    assert (await call.carol.expect(481)).cseq.method == "INVITE"
    assert call.bob.unread() == []


async def test_invite_with_a_bad_replaces_is_400(call: Connected) -> None:
    await call.carol.call("102", headers=(("Replaces", "only-a-call-id"),))
    assert (await call.carol.expect(400)).cseq.method == "INVITE"


async def test_early_only_replaces_of_a_confirmed_dialog_is_486(call: Connected) -> None:
    await call.carol.call("102", headers=(("Replaces", bobs_dialog(call) + ";early-only"),))
    assert (await call.carol.expect(486)).cseq.method == "INVITE"
