"""Autoinformer calls on the B2BUA (vpbx.pbx.broadcaster; autoinformer.md §3.4, §3.5, §5): the number dialled
through the trunk with the request's Call-ID, the message played on answer, keys, the actions, connect to an
operator within the same call, and the result ``dial`` returns."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

from tests.unit.pbx.b2bua_kit import TENANT, IncomingCall, Pbx, Phone, trunk
from tests.unit.pbx.test_b2bua_outbound import FakeTrunks
from vpbx.app import Core
from vpbx.media.dtmf import Digit
from vpbx.media.prompts import Prompt, PromptError, PromptId, SystemPhrase, Tone, Voice
from vpbx.media.relay import LegRef
from vpbx.pbx import groups, lines
from vpbx.pbx.broadcast import AmdSettings, BroadcastRequest, BroadcastResult, KeyAction, broadcast_ids
from vpbx.pbx.bus import SessionId
from vpbx.pbx.calls import Call, outside_party
from vpbx.pbx.directory import DomainInfo
from vpbx.pbx.incoming import IncomingRouter
from vpbx.pbx.outbound import OutboundRouter
from vpbx.sip.dialog import new_tag
from vpbx.sip.message import Request
from vpbx.store.models import CallRecord

LINE = "+74951234567"
NUMBER = "79161234567"
CARRIER = "198.51.100.60"
MESSAGE_S = 4.0
WAIT_ROUNDS = 200


class Prompts:
    """Stored prompts by id (each ``MESSAGE_S`` long, ``confirm`` 1 s) and the ringback tone."""

    def __init__(self) -> None:
        self.known = {"message": MESSAGE_S, "thanks": 1.0, "sorry": 1.0}

    async def system_phrase(self, phrase: SystemPhrase, voice: Voice = "ru") -> Prompt:
        raise NotImplementedError

    def get(self, prompt_id: str) -> Prompt:
        if prompt_id not in self.known:
            raise PromptError("prompt-missing", "missing")
        return _prompt(prompt_id, self.known[prompt_id])

    async def tone(self, kind: Tone) -> Prompt:
        return _prompt(f"tone-{kind}", 1.0)


def _prompt(prompt_id: str, seconds: float) -> Prompt:
    return Prompt(
        id=PromptId(prompt_id), duration_s=seconds, wav=Path("x.wav"), pcma=Path("x.al"), pcmu=Path("x.ul")
    )


@pytest.fixture
async def pbx(core: Core) -> AsyncIterator[Pbx]:
    p = await Pbx.create(core)
    async with core.sessions() as s:
        await lines.create_number(s, p.domain_id, lines.NumberInput(number=LINE))
        await s.commit()
    p.b2bua.outbound = OutboundRouter(core.sessions)
    p.b2bua.incoming = IncomingRouter(core.sessions)
    p.b2bua.trunks = FakeTrunks(trunk(p.domain_id, "Main", CARRIER))
    p.b2bua.prompts = Prompts()
    p.b2bua.broadcaster.sessions = core.sessions
    yield p
    await p.node.stop()


def request(pbx: Pbx, key: str = "k1", **kw: object) -> BroadcastRequest:
    sid, call_id = broadcast_ids(key)
    fields: dict[str, object] = {
        "domain_id": pbx.domain_id,
        "session_id": sid,
        "call_id": call_id,
        "number": NUMBER,
        "caller_id": LINE.lstrip("+"),
        "ring_timeout_s": 30,
        "message_prompt_id": "message",
    }
    fields.update(kw)
    return BroadcastRequest(**fields)  # type: ignore[arg-type]


def carrier_of(pbx: Pbx) -> Phone:
    carrier = Phone(pbx, "carrier", CARRIER, 5060, name="carrier")
    pbx.phones[(CARRIER, 5060)] = carrier
    return carrier


async def until(pbx: Pbx, ready: object) -> None:
    """Let the dial task and the node run until ``ready()`` holds (bounded)."""
    for _ in range(WAIT_ROUNDS):
        await pbx.settle()
        if ready():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the call did not get there")


async def ringing(pbx: Pbx, carrier: Phone) -> IncomingCall:
    await until(pbx, lambda: any(isinstance(m, Request) and m.method == "INVITE" for m in carrier.inbox))
    invite: Request = await carrier.expect("INVITE")
    return IncomingCall(carrier, invite, new_tag())


async def result_of(pbx: Pbx, task: asyncio.Task[BroadcastResult]) -> BroadcastResult:
    await until(pbx, task.done)
    return task.result()


async def key(pbx: Pbx, sid: str, digit: str) -> None:
    pbx.b2bua.on_dtmf(LegRef(SessionId(sid), "a"), Digit(digit=digit, timestamp=1, duration=800, ended=True))
    await pbx.settle()


async def played(pbx: Pbx, sid: str) -> None:
    pbx.b2bua.on_play_done(LegRef(SessionId(sid), "a"))
    await pbx.settle()


def plays(pbx: Pbx) -> list[str]:
    return [prompt for leg, prompt in pbx.media.played if leg.side == "a"]


async def answered_call(
    pbx: Pbx, actions: Mapping[str, KeyAction] | str | None = None, **kw: object
) -> tuple[BroadcastRequest, asyncio.Task[BroadcastResult], IncomingCall]:
    """A dial the recipient answers; ``actions`` may be the dispatch key instead (no actions then)."""
    if isinstance(actions, str):
        req = request(pbx, actions, **kw)
    else:
        req = request(pbx, actions=actions or {}, **kw)
    carrier = carrier_of(pbx)
    task = asyncio.create_task(pbx.b2bua.broadcaster.dial(req))
    recipient = await ringing(pbx, carrier)
    await recipient.reply(180)
    await recipient.answer()
    return req, task, recipient


async def test_an_answered_call_plays_the_message_twice_and_ends_after_the_wait(pbx: Pbx) -> None:
    req = request(pbx, repeat=2, dtmf_wait_s=5.0)
    carrier = carrier_of(pbx)
    task = asyncio.create_task(pbx.b2bua.broadcaster.dial(req))
    recipient = await ringing(pbx, carrier)
    invite = recipient.invite
    assert invite.call_id == req.call_id  # the request's Call-ID goes to the carrier
    assert invite.uri.user == "89161234567" and invite.uri.host == CARRIER  # the trunk's number format
    assert invite.from_address.uri.user == "84951234567"  # the campaign's line as caller ID
    await recipient.reply(180)
    await recipient.answer()
    sid = req.session_id
    assert plays(pbx) == ["message"]
    await pbx.advance(MESSAGE_S)
    await played(pbx, sid)
    await pbx.settle()
    assert plays(pbx) == ["message"]  # the second play waits a second
    await pbx.advance(1.0)
    assert plays(pbx) == ["message", "message"]
    await pbx.advance(MESSAGE_S)
    await played(pbx, sid)
    await pbx.advance(4.9)
    assert recipient.phone.unread() == []
    await pbx.advance(0.2)  # dtmf_wait_s after the last play: the PBX hangs up
    bye: Request = await carrier.expect("BYE")
    await recipient.answer_request(bye)
    result = await result_of(pbx, task)
    assert result.sip_code == 200 and result.played_full and result.listen_s == 2 * MESSAGE_S
    assert result.answered_at is not None and result.ended_at is not None
    assert result.started_at <= result.answered_at <= result.ended_at
    assert result.started_at.tzinfo is not None and result.started_at.utcoffset() == dt.timedelta(0)
    assert (result.digits, result.action, result.operator_answered, result.detail) == ("", None, None, "")
    events = [e for e in pbx.bus.events if e.session_id == sid]
    assert [e.state for e in events] == ["new", "connected", "disconnected", "end"]
    assert {e.call_kind for e in events} == {"autoinformer"} and {e.type for e in events} == {"outbound"}
    assert events[0].from_number == f"sip:74951234567@{TENANT}"
    assert events[0].request_number == f"sip:{NUMBER}@{TENANT}"
    assert events[-1].line == "74951234567"
    assert pbx.registry.active(pbx.domain_id) == 0
    assert pbx.b2bua.indexes()["calls"] == 0


@pytest.mark.parametrize("code", [486, 404, 603, 480])
async def test_the_carriers_final_code_is_the_result(pbx: Pbx, code: int) -> None:
    req = request(pbx)
    task = asyncio.create_task(pbx.b2bua.broadcaster.dial(req))
    recipient = await ringing(pbx, carrier_of(pbx))
    await recipient.reply(code)
    result = await result_of(pbx, task)
    assert (result.sip_code, result.answered_at, result.listen_s) == (code, None, 0.0)
    assert pbx.bus.states(req.session_id) == ["new", "end"]
    assert pbx.bus.events[-1].extra["status_code"] == str(code)
    assert pbx.media.played == []


async def test_no_answer_is_cancelled_at_the_ring_timeout_with_408(pbx: Pbx) -> None:
    req = request(pbx, ring_timeout_s=20)
    task = asyncio.create_task(pbx.b2bua.broadcaster.dial(req))
    carrier = carrier_of(pbx)
    recipient = await ringing(pbx, carrier)
    await recipient.reply(180)
    await pbx.advance(19.9)
    assert carrier.unread() == []
    await pbx.advance(0.2)
    cancel: Request = await carrier.expect("CANCEL")
    assert cancel.call_id == req.call_id
    await recipient.answer_request(cancel)
    await recipient.reply(487)
    result = await result_of(pbx, task)
    assert (result.sip_code, result.detail) == (408, "ring_timeout")
    assert pbx.bus.events[-1].extra["end_reason"] == "no_answer"


async def test_a_second_dial_of_the_same_key_is_refused_without_an_invite(pbx: Pbx, core: Core) -> None:
    req, task, recipient = await answered_call(pbx)
    again = await pbx.b2bua.broadcaster.dial(req)  # while the first is up
    assert (again.sip_code, again.detail) == (None, "duplicate")
    await recipient.send("BYE")
    await result_of(pbx, task)
    again = await pbx.b2bua.broadcaster.dial(req)  # after it
    assert again.detail == "duplicate"
    # a key the call history knows (a restart forgot the memory): refused too
    sid, _call_id = broadcast_ids("from-the-last-run")
    async with core.sessions() as s:
        s.add(
            CallRecord(
                session_id=sid,
                domain_id=pbx.domain_id,
                call_type="outbound",
                call_kind="autoinformer",
                started_at=dt.datetime.now(dt.UTC),
            )
        )
        await s.commit()
    old = await pbx.b2bua.broadcaster.dial(request(pbx, "from-the-last-run"))
    assert old.detail == "duplicate"
    assert [m for m in recipient.phone.unread() if m == "INVITE"] == []


async def test_no_trunk_or_no_channel_refuses_and_the_key_may_be_dialled_later(pbx: Pbx) -> None:
    trunks = pbx.b2bua.trunks
    pbx.b2bua.trunks = FakeTrunks()
    req = request(pbx)
    result = await pbx.b2bua.broadcaster.dial(req)
    assert (result.sip_code, result.detail) == (None, "no_trunk")
    pbx.b2bua.trunks = trunks
    for i in range(10):  # the domain's 10 channels taken
        assert pbx.registry.admit(_busy_call(pbx, i))
    result = await pbx.b2bua.broadcaster.dial(req)
    assert (result.sip_code, result.detail) == (None, "channels")
    assert pbx.bus.events == []


def _busy_call(pbx: Pbx, i: int) -> Call:
    domain = DomainInfo(id=pbx.domain_id, name=TENANT, channel_limit=10, timezone="Europe/Moscow")
    party = outside_party("+74950000000", TENANT)
    return Call(
        session_id=SessionId(f"busy-{i}"),
        domain=domain,
        caller=party,
        callee=party,
        started_at=dt.datetime.now(dt.UTC),
    )


async def test_unmapped_keys_are_recorded_and_the_first_mapped_key_decides(pbx: Pbx) -> None:
    actions = {"1": KeyAction(action="confirm", prompt_id="thanks"), "9": KeyAction(action="opt_out")}
    req, task, recipient = await answered_call(pbx, actions)
    sid = req.session_id
    await pbx.advance(1.5)
    await key(pbx, sid, "5")  # unmapped: ignored, the message goes on
    await pbx.settle()
    assert pbx.media.stops == 0
    await pbx.advance(0.5)
    await key(pbx, sid, "1")
    await pbx.settle()
    assert plays(pbx) == ["message", "thanks"]  # the message interrupted, the confirmation played
    await key(pbx, sid, "9")  # after the decision: not counted
    await pbx.advance(1.0)
    await played(pbx, sid)
    bye: Request = await recipient.phone.expect("BYE")
    await recipient.answer_request(bye)
    result = await result_of(pbx, task)
    assert (result.digits, result.action, result.played_full) == ("51", "confirm", False)
    assert result.listen_s == pytest.approx(2.0)


async def test_repeat_replays_at_most_the_extra_times_then_keys_still_decide(pbx: Pbx) -> None:
    actions = {"0": KeyAction(action="repeat"), "3": KeyAction(action="hangup")}
    req, task, recipient = await answered_call(pbx, actions, max_extra_repeats=1)
    sid = req.session_id
    await pbx.advance(1.0)
    await key(pbx, sid, "0")
    await pbx.settle()
    assert plays(pbx) == ["message", "message"]
    await pbx.advance(1.0)
    await key(pbx, sid, "0")  # over the limit: ignored
    await pbx.settle()
    assert plays(pbx) == ["message", "message"]
    await pbx.advance(3.0)
    await played(pbx, sid)
    await pbx.advance(1.0)
    await key(pbx, sid, "3")
    bye: Request = await recipient.phone.expect("BYE")
    await recipient.answer_request(bye)
    result = await result_of(pbx, task)
    assert (result.digits, result.action, result.played_full) == ("003", "hangup", True)
    assert result.listen_s == pytest.approx(1.0 + MESSAGE_S)


async def test_a_key_over_sip_info_counts_like_rfc_4733(pbx: Pbx) -> None:
    _req, task, recipient = await answered_call(pbx, {"9": KeyAction(action="opt_out")})
    info = recipient.dialog.build_request(  # type: ignore[union-attr]
        "INFO",
        via=recipient.phone.via,
        body=b"Signal=9\r\nDuration=160\r\n",
        content_type="application/dtmf-relay",
    )
    await recipient.phone.send(info)
    assert await recipient.phone.expect(200)
    bye: Request = await recipient.phone.expect("BYE")
    await recipient.answer_request(bye)
    result = await result_of(pbx, task)
    assert (result.digits, result.action) == ("9", "opt_out")


async def test_the_recipient_hanging_up_mid_message_counts_what_was_played(pbx: Pbx) -> None:
    req, task, recipient = await answered_call(pbx)
    await pbx.advance(2.5)
    await recipient.send("BYE")
    result = await result_of(pbx, task)
    assert result.listen_s == pytest.approx(2.5) and not result.played_full
    assert pbx.bus.states(req.session_id) == ["new", "connected", "disconnected", "end"]


async def test_connect_rings_the_operator_in_the_same_call_and_bridges(pbx: Pbx) -> None:
    operator = pbx.phone("101", "192.0.2.11")
    await pbx.register(operator)
    actions = {"1": KeyAction(action="connect", target_type="user", target="101")}
    req, task, recipient = await answered_call(pbx, actions, operator_display="Автоинформатор: Долги")
    sid = req.session_id
    await key(pbx, sid, "1")
    ring = await operator.ringing()
    assert ring.invite.from_address.name == "Автоинформатор: Долги"
    assert ring.invite.from_address.uri.user == f"+{NUMBER}"  # the recipient's number on the phone
    assert plays(pbx)[-1] == "tone-ringback"
    await ring.reply(180)
    await ring.answer()
    assert pbx.media.last("b")[0] is not None
    await ring.send("BYE")
    bye: Request = await recipient.phone.expect("BYE")
    await recipient.answer_request(bye)
    result = await result_of(pbx, task)
    assert (result.action, result.operator_target, result.operator_answered) == ("connect", "101", True)
    events = [e for e in pbx.bus.events if e.session_id == sid]
    assert [e.state for e in events] == [
        "new",
        "connected",
        "disconnected",
        "calling",
        "connected",
        "disconnected",
        "end",
    ]
    assert events[2].extra["transfer_to"] == "101" and events[2].disconnect_reason == "0"
    assert events[3].request_pin == "101" and events[4].request_pin == "101"
    assert events[4].from_number == f"sip:{NUMBER}@{TENANT}"


async def test_an_operator_who_does_not_answer_gets_the_unavailable_prompt_then_the_end(
    pbx: Pbx, core: Core
) -> None:
    async with core.sessions() as s:
        await groups.create_group(
            s,
            pbx.domain_id,
            groups.GroupInput(name="Desk", pin="600", strategy="simultaneous", members=["101", "102"]),
        )
        await s.commit()
    a, b = pbx.phone("101", "192.0.2.11"), pbx.phone("102", "192.0.2.12")
    await pbx.register(a)
    await pbx.register(b)
    actions = {"1": KeyAction(action="connect", target_type="group", target="600", prompt_id="sorry")}
    req, task, recipient = await answered_call(pbx, actions, operator_timeout_s=30.0)
    sid = req.session_id
    await key(pbx, sid, "1")
    ring_a, ring_b = await a.ringing(), await b.ringing()
    await ring_a.reply(180)
    await ring_b.reply(180)
    await pbx.advance(30.0)
    for ring in (ring_a, ring_b):
        cancel: Request = await ring.phone.expect("CANCEL")
        await ring.answer_request(cancel)
        await ring.reply(487)
    assert plays(pbx)[-1] == "sorry"
    await played(pbx, sid)
    bye: Request = await recipient.phone.expect("BYE")
    await recipient.answer_request(bye)
    result = await result_of(pbx, task)
    assert (result.action, result.operator_target, result.operator_answered) == ("connect", "600", False)
    events = [e for e in pbx.bus.events if e.session_id == sid]
    assert [e.state for e in events][:4] == ["new", "connected", "disconnected", "calling"]
    assert events[-1].state == "end" and events[-1].request_number == f"sip:{NUMBER}@{TENANT}"


async def test_a_missing_message_prompt_refuses_before_dialling(pbx: Pbx) -> None:
    result = await pbx.b2bua.broadcaster.dial(request(pbx, message_prompt_id="gone"))
    assert (result.sip_code, result.detail) == (None, "no_prompt")
    assert pbx.bus.events == [] and pbx.stray == []


async def test_a_domain_of_another_id_is_refused(pbx: Pbx) -> None:
    result = await pbx.b2bua.broadcaster.dial(request(pbx, domain_id=uuid.uuid4()))
    assert result.detail == "domain_unavailable"


async def amd_event(pbx: Pbx, sid: str, event: str) -> None:
    pbx.b2bua.on_amd(LegRef(SessionId(sid), "a"), event)
    await pbx.settle()


async def test_amd_machine_with_hangup_ends_the_call_before_the_message(pbx: Pbx) -> None:
    req, task, recipient = await answered_call(pbx, amd=AmdSettings(on_machine="hangup"))
    sid = req.session_id
    assert plays(pbx) == []  # the first seconds are listened to, not talked over
    (leg, params), *_ = pbx.media.amd
    assert leg.side == "a" and params is not None and params.analysis_s == 3.5
    assert params.until_greeting_end is False
    await amd_event(pbx, sid, "machine")
    bye: Request = await recipient.phone.expect("BYE")
    await recipient.answer_request(bye)
    result = await result_of(pbx, task)
    assert (result.sip_code, result.amd_result, result.listen_s) == (200, "machine", 0.0)
    assert plays(pbx) == []


async def test_amd_machine_with_leave_message_plays_after_the_greeting(pbx: Pbx) -> None:
    req, task, recipient = await answered_call(pbx, amd=AmdSettings(on_machine="leave_message"))
    sid = req.session_id
    assert pbx.media.amd[0][1] is not None and pbx.media.amd[0][1].until_greeting_end is True
    await amd_event(pbx, sid, "machine")
    assert plays(pbx) == []
    await amd_event(pbx, sid, "greeting_end")
    assert plays(pbx) == ["message"]
    await pbx.advance(MESSAGE_S)
    await played(pbx, sid)
    await pbx.advance(5.0)
    bye: Request = await recipient.phone.expect("BYE")
    await recipient.answer_request(bye)
    result = await result_of(pbx, task)
    assert (result.amd_result, result.played_full) == ("machine", True)


async def test_amd_human_or_no_verdict_plays_the_message(pbx: Pbx) -> None:
    req, _task, _recipient = await answered_call(pbx, "k1", amd=AmdSettings())
    await amd_event(pbx, req.session_id, "human")
    assert plays(pbx) == ["message"]
    assert (pbx.media.amd[-1][1]) is None  # the detector stopped
    _, second, answered = await answered_call(pbx, "k2", amd=AmdSettings(analysis_s=2.0))
    await pbx.advance(2.0 + 1.0)  # the media never answered: "unknown" after the grace
    assert plays(pbx) == ["message", "message"]
    await answered.send("BYE")
    result = await result_of(pbx, second)
    assert result.amd_result == "unknown"


async def test_connect_to_an_outside_number_rings_it_through_the_trunk_with_our_line(pbx: Pbx) -> None:
    actions = {"0": KeyAction(action="connect", target_type="number", target="+74957654321")}
    req, task, recipient = await answered_call(pbx, actions)
    await key(pbx, req.session_id, "0")
    invite: Request = await recipient.phone.expect("INVITE")  # the same carrier, a second leg
    assert invite.uri.user == "84957654321" and invite.call_id != req.call_id
    assert invite.from_address.uri.user == "84951234567"  # our line, not the recipient's number
    operator = IncomingCall(recipient.phone, invite, new_tag())
    await operator.answer()
    await operator.send("BYE")
    bye: Request = await recipient.phone.expect("BYE")
    await recipient.answer_request(bye)
    result = await result_of(pbx, task)
    assert (result.operator_target, result.operator_answered) == ("+74957654321", True)
    assert pbx.bus.events[-1].request_number == f"sip:74957654321@{TENANT}"


async def test_a_failing_carrier_fails_over_to_the_next_trunk_on_the_recipients_side(pbx: Pbx) -> None:
    backup = "198.51.100.61"
    pbx.b2bua.trunks = FakeTrunks(
        trunk(pbx.domain_id, "Main", CARRIER, priority=1), trunk(pbx.domain_id, "Backup", backup, priority=2)
    )
    req = request(pbx)
    task = asyncio.create_task(pbx.b2bua.broadcaster.dial(req))
    first = await ringing(pbx, carrier_of(pbx))
    second_carrier = Phone(pbx, "backup", backup, 5060, name="backup")
    pbx.phones[(backup, 5060)] = second_carrier
    await first.reply(503)
    invite: Request = await second_carrier.expect("INVITE")
    again = IncomingCall(second_carrier, invite, new_tag())
    await again.answer()
    assert plays(pbx) == ["message"]  # the message plays to the recipient on the backup trunk
    await again.send("BYE")
    result = await result_of(pbx, task)
    assert result.sip_code == 200


async def test_an_answer_without_usable_sdp_is_hung_up_as_failed(pbx: Pbx) -> None:
    req = request(pbx)
    carrier = carrier_of(pbx)
    task = asyncio.create_task(pbx.b2bua.broadcaster.dial(req))
    recipient = await ringing(pbx, carrier)
    await recipient.answer(body=b"")  # a 200 with no SDP: nothing to send the message to
    bye: Request = await carrier.expect("BYE")
    assert "488" in (bye.headers.get("Reason") or "")
    await recipient.answer_request(bye)
    result = await result_of(pbx, task)
    assert (result.sip_code, result.detail, result.listen_s) == (200, "bad_sdp", 0.0)
    assert plays(pbx) == []
    assert pbx.registry.active(pbx.domain_id) == 0
    assert pbx.b2bua.indexes()["calls"] == 0
