"""Voicemail in the engine: a line or a group's fall-through sends the caller to a box, a user's box takes
calls the user did not answer; greeting, beep, recording until hang-up, # or the limit; too short: dropped."""

from __future__ import annotations

import hashlib
import math
import struct
import uuid
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.unit.pbx.b2bua_kit import FakeMedia, FakeTimers, OutgoingCall, Pbx
from tests.unit.pbx.test_b2bua_incoming import Carrier, FakeTrunks, _registered, _rule, _user_id
from vpbx.app import Core
from vpbx.media.capture import Channels, RecordingResult
from vpbx.media.dtmf import Digit
from vpbx.media.prompts import Prompt, PromptId
from vpbx.media.relay import LegRef
from vpbx.pbx import groups
from vpbx.pbx.actions import ActionInput
from vpbx.pbx.bus import SessionId
from vpbx.pbx.dnd import set_dnd
from vpbx.pbx.incoming import IncomingRouter
from vpbx.pbx.ivr_plan import MenuPlans
from vpbx.pbx.menus import KeyInput, MenuInput, create_menu
from vpbx.pbx.voicemail import BoxInput, Voicemail, save_box
from vpbx.sip.message import Request
from vpbx.store.models import VoicemailMessage


class FakePrompts:
    """Prompt ids without espeak-ng or sox: the id is the hash of the text or file."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def get(self, prompt_id: str) -> Prompt:
        f = self.tmp / f"{prompt_id[:8]}.pcma"
        return Prompt(id=PromptId(prompt_id), duration_s=1.0, wav=f, pcma=f, pcmu=f)

    async def tts(self, text: str, *, voice: str = "ru") -> Prompt:
        return self.get("t" + hashlib.sha256(text.encode()).hexdigest()[1:])

    async def upload(self, data: bytes) -> Prompt:
        return self.get("b" + hashlib.sha256(data).hexdigest()[1:])

    async def system_phrase(self, phrase: str, voice: str = "ru") -> Prompt:
        return self.get("s" + hashlib.sha256(phrase.encode()).hexdigest()[1:])


def tone_pcm(seconds: float, hz: int = 440) -> bytes:
    n = int(8000 * seconds)
    return struct.pack(f"<{n}h", *(int(8000 * math.sin(2 * math.pi * hz * i / 8000)) for i in range(n)))


@dataclass
class RecMedia(FakeMedia):
    """The kit's media, recording too: record_stop writes a 440 Hz tone as long as the recording lasted on
    the test's clock."""

    timers: FakeTimers | None = None
    recording: dict[SessionId, tuple[Path, float]] = field(default_factory=dict)
    stopped: list[SessionId] = field(default_factory=list)

    async def record_start(self, session: SessionId, path: Path, *, channels: Channels = "stereo") -> None:
        assert channels == "a" and self.timers is not None
        self.recording[session] = (path, self.timers.now)

    async def record_stop(self, session: SessionId) -> RecordingResult | None:
        assert self.timers is not None
        path, t0 = self.recording.pop(session)
        self.stopped.append(session)
        seconds = self.timers.now - t0
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(tone_pcm(seconds))
        return RecordingResult(path=path, duration_s=seconds, frames=int(seconds * 50), channels=1)


class FakeMailer:
    def __init__(self) -> None:
        self.sent: list[EmailMessage] = []

    async def send(self, message: EmailMessage) -> None:
        self.sent.append(message)


@pytest.fixture
async def pbx(core: Core, tmp_path: Path) -> AsyncIterator[Pbx]:
    p = await Pbx.create(core, extensions=("101", "102"))
    p.media = RecMedia(timers=p.timers)
    p.b2bua.media = p.media
    p.b2bua.trunks = FakeTrunks(p.domain_id)  # type: ignore[assignment]
    p.b2bua.incoming = IncomingRouter(core.sessions)
    prompts = FakePrompts(tmp_path)
    p.b2bua.prompts = prompts  # type: ignore[assignment]
    p.b2bua.voicemail = Voicemail(
        core.sessions,
        prompts,  # type: ignore[arg-type]
        tmp_path / "voicemail",
        mailer=FakeMailer(),
        mail_from="pbx@example.test",
    )
    yield p
    await p.node.stop()
    assert isinstance(p.b2bua.voicemail, Voicemail)
    await p.b2bua.voicemail.stop()


def desk(pbx: Pbx) -> Voicemail:
    assert isinstance(pbx.b2bua.voicemail, Voicemail)
    return pbx.b2bua.voicemail


def media(pbx: Pbx) -> RecMedia:
    assert isinstance(pbx.media, RecMedia)
    return pbx.media


async def box_of(core: Core, pbx: Pbx, pin: str, **fields: object) -> uuid.UUID:
    async with core.sessions() as s:
        box = await save_box(
            s, pbx.domain_id, BoxInput(**fields), None, user_id=await _user_id(core, pbx.domain_id, pin)
        )
        await s.commit()
        return box.id


async def played(pbx: Pbx) -> None:
    pbx.b2bua.on_play_done(LegRef(pbx.media.allocated[-1], "a"))
    await pbx.settle()


async def key(pbx: Pbx, digit: str) -> None:
    session = pbx.media.allocated[-1]
    pbx.b2bua.on_dtmf(LegRef(session, "a"), Digit(digit=digit, timestamp=0, duration=800, ended=True))
    await pbx.settle()


async def messages(core: Core) -> list[VoicemailMessage]:
    async with core.sessions() as s:
        return list((await s.scalars(select(VoicemailMessage))).all())


async def answered_call(pbx: Pbx) -> OutgoingCall:
    carrier = Carrier(pbx)
    call = OutgoingCall(carrier.phone, await carrier.call())
    await call.answered()
    return call


async def to_recording(pbx: Pbx) -> None:
    """Greeting and beep played out: the recording runs."""
    await played(pbx)  # greeting
    await played(pbx)  # beep
    assert list(media(pbx).recording) == [pbx.media.allocated[-1]]


async def test_a_line_routed_to_voicemail_records_until_the_caller_hangs_up(core: Core, pbx: Pbx) -> None:
    uid = await _user_id(core, pbx.domain_id, "101")
    await box_of(core, pbx, "101", notify_email="alice@example.test")
    await _rule(core, pbx.domain_id, ActionInput(action="voicemail", user_id=uid))
    call = await answered_call(pbx)
    assert [p[0] for _leg, p in pbx.media.played] == ["t"]  # the default greeting, spoken
    await played(pbx)
    assert [p[0] for _leg, p in pbx.media.played] == ["t", "b"]  # then the beep
    await played(pbx)
    await pbx.advance(3)
    await call.send("BYE")
    assert await call.phone.expect(200)
    end = pbx.bus.events[-1]
    assert [e.state for e in pbx.bus.events] == ["new", "end"]
    assert end.extra["voicemail"] == "true"
    await desk(pbx).drain()
    [m] = await messages(core)
    assert m.status == "ready" and m.caller_number == "+79161234567" and m.duration_s == pytest.approx(3.0)
    mp3 = (desk(pbx).root / m.path).read_bytes()
    assert mp3[:3] == b"ID3" or (mp3[0] == 0xFF and mp3[1] & 0xE0 == 0xE0)  # an MPEG audio frame
    [mail] = desk(pbx).mailer.sent  # type: ignore[union-attr]
    assert mail["To"] == "alice@example.test"
    assert [a.get_content_type() for a in mail.iter_attachments()] == ["audio/mpeg"]
    assert m.emailed_at is not None
    assert pbx.b2bua.indexes()["calls"] == 0


async def test_hash_ends_the_message_and_we_hang_up(core: Core, pbx: Pbx) -> None:
    uid = await _user_id(core, pbx.domain_id, "101")
    await _rule(core, pbx.domain_id, ActionInput(action="voicemail", user_id=uid))
    call = await answered_call(pbx)
    await to_recording(pbx)
    await pbx.advance(2)
    await key(pbx, "#")
    bye: Request = await call.phone.expect("BYE")
    assert bye.method == "BYE"
    assert pbx.bus.events[-1].extra["voicemail"] == "true"
    await desk(pbx).drain()
    assert len(await messages(core)) == 1


async def test_hash_during_the_greeting_skips_to_the_beep(core: Core, pbx: Pbx) -> None:
    uid = await _user_id(core, pbx.domain_id, "101")
    await _rule(core, pbx.domain_id, ActionInput(action="voicemail", user_id=uid))
    await answered_call(pbx)
    await key(pbx, "#")
    assert [p[0] for _leg, p in pbx.media.played] == ["t", "b"]


async def test_the_box_limit_ends_the_message(core: Core, pbx: Pbx) -> None:
    await box_of(core, pbx, "101", max_message_s=30)
    uid = await _user_id(core, pbx.domain_id, "101")
    await _rule(core, pbx.domain_id, ActionInput(action="voicemail", user_id=uid))
    call = await answered_call(pbx)
    await to_recording(pbx)
    await pbx.advance(29)
    assert "BYE" not in call.phone.unread()
    await pbx.advance(1)
    assert (await call.phone.expect("BYE")).method == "BYE"
    assert pbx.bus.events[-1].extra["voicemail"] == "true"


async def test_a_message_under_a_second_is_dropped(core: Core, pbx: Pbx, tmp_path: Path) -> None:
    uid = await _user_id(core, pbx.domain_id, "101")
    await _rule(core, pbx.domain_id, ActionInput(action="voicemail", user_id=uid))
    call = await answered_call(pbx)
    await to_recording(pbx)
    await pbx.advance(0.5)
    await call.send("BYE")
    assert pbx.bus.events[-1].state == "end" and "voicemail" not in pbx.bus.events[-1].extra
    await desk(pbx).drain()
    assert await messages(core) == []
    assert list((tmp_path / "voicemail").rglob("*.*")) == []  # the short recording is gone too


async def test_hanging_up_during_the_greeting_leaves_nothing(core: Core, pbx: Pbx) -> None:
    uid = await _user_id(core, pbx.domain_id, "101")
    await _rule(core, pbx.domain_id, ActionInput(action="voicemail", user_id=uid))
    call = await answered_call(pbx)
    await call.send("BYE")
    assert "voicemail" not in pbx.bus.events[-1].extra
    assert media(pbx).stopped == []


async def test_a_group_falls_through_to_its_voicemail(core: Core, pbx: Pbx) -> None:
    async with core.sessions() as s:
        g = await groups.create_group(
            s,
            pbx.domain_id,
            groups.GroupInput(
                name="Sales", pin="600", member_timeout_s=5, overall_timeout_s=10, members=["101"]
            ),
        )
        await s.commit()
        g = await groups.update_group(
            s,
            pbx.domain_id,
            g.id,
            groups.GroupInput(
                name="Sales",
                pin="600",
                member_timeout_s=5,
                overall_timeout_s=10,
                members=["101"],
                fallthrough=ActionInput(action="voicemail", group_id=g.id),
            ),
        )
        await s.commit()
    await _rule(core, pbx.domain_id, ActionInput(action="group", group_id=g.id))
    [alice] = await _registered(pbx, "101")
    carrier = Carrier(pbx)
    await carrier.call()
    ringing = await alice.ringing()
    await ringing.reply(180)
    await pbx.advance(10)  # nobody answers: the group's box
    assert (await carrier.phone.expect(200)).code == 200
    assert (await alice.expect("CANCEL")).method == "CANCEL"
    await ringing.reply(487)
    await to_recording(pbx)
    await pbx.advance(4)
    await key(pbx, "#")
    await desk(pbx).drain()
    [m] = await messages(core)
    async with core.sessions() as s:
        from vpbx.pbx.voicemail import find_box

        box = await find_box(s, pbx.domain_id, group_id=g.id)
    assert box is not None and m.box_id == box.id


async def test_a_users_box_takes_the_call_they_did_not_answer(core: Core, pbx: Pbx) -> None:
    await box_of(core, pbx, "101", on_no_answer=True)
    uid = await _user_id(core, pbx.domain_id, "101")
    await _rule(core, pbx.domain_id, ActionInput(action="user", user_id=uid))
    [alice] = await _registered(pbx, "101")
    carrier = Carrier(pbx)
    await carrier.call()
    await (await alice.ringing()).reply(180)
    await pbx.advance(60)
    assert (await carrier.phone.expect(200)).code == 200
    assert (await alice.expect("CANCEL")).method == "CANCEL"
    assert [p[0] for _leg, p in pbx.media.played] == ["t"]


async def test_without_on_no_answer_the_caller_hears_480_as_before(core: Core, pbx: Pbx) -> None:
    await box_of(core, pbx, "101", on_busy=True)
    uid = await _user_id(core, pbx.domain_id, "101")
    await _rule(core, pbx.domain_id, ActionInput(action="user", user_id=uid))
    [alice] = await _registered(pbx, "101")
    carrier = Carrier(pbx)
    await carrier.call()
    await alice.ringing()
    await pbx.advance(60)
    assert (await carrier.phone.expect(480)).code == 480
    assert pbx.media.played == []


async def test_a_busy_user_with_on_busy_gets_a_message(core: Core, pbx: Pbx) -> None:
    await box_of(core, pbx, "101", on_busy=True)
    uid = await _user_id(core, pbx.domain_id, "101")
    await _rule(core, pbx.domain_id, ActionInput(action="user", user_id=uid))
    [alice] = await _registered(pbx, "101")
    carrier = Carrier(pbx)
    await carrier.call()
    ringing = await alice.ringing()
    await ringing.reply(486)
    assert (await carrier.phone.expect(200)).code == 200
    assert [p[0] for _leg, p in pbx.media.played] == ["t"]


async def test_an_internal_call_to_an_absent_user_reaches_their_box(core: Core, pbx: Pbx) -> None:
    await box_of(core, pbx, "102", on_no_answer=True, greeting_text="Боб в отпуске")
    bob_caller = pbx.phone("101", "192.0.2.21")
    call = await bob_caller.call("102")  # 102 has no registered phone
    await call.answered()
    [(_leg, prompt)] = pbx.media.played
    assert prompt[0] == "t"
    await to_recording(pbx)
    await pbx.advance(2)
    await call.send("BYE")
    assert pbx.bus.events[-1].extra["voicemail"] == "true"
    await desk(pbx).drain()
    [m] = await messages(core)
    assert (m.caller_number, m.caller_name) == ("101", "User 101")


async def test_another_domains_user_as_target_is_no_box(core: Core, pbx: Pbx) -> None:
    assert await desk(pbx).target(pbx.domain_id, user_id=uuid.uuid4()) is None


async def test_a_message_being_recorded_when_the_node_stops_is_kept(core: Core, pbx: Pbx) -> None:
    uid = await _user_id(core, pbx.domain_id, "101")
    await _rule(core, pbx.domain_id, ActionInput(action="voicemail", user_id=uid))
    call = await answered_call(pbx)
    await to_recording(pbx)
    await pbx.advance(3)
    await pbx.b2bua.stop(pbx.node)
    await pbx.settle()
    assert (await call.phone.expect("BYE")).method == "BYE"
    assert pbx.bus.events[-1].extra["voicemail"] == "true"
    await desk(pbx).drain()
    assert len(await messages(core)) == 1


async def test_a_menu_key_leads_to_a_box(core: Core, pbx: Pbx) -> None:
    """A voice menu whose key 1 is «leave a message»: the greeting stops, the box's greeting plays, the
    message is kept."""
    uid = await _user_id(core, pbx.domain_id, "101")
    async with core.sessions() as s:
        menu = await create_menu(
            s,
            pbx.domain_id,
            MenuInput(
                name="Night",
                prompt_text="Нажмите 1",
                keys=[KeyInput(key="1", target=ActionInput(action="voicemail", user_id=uid))],
            ),
        )
        await s.commit()
    await _rule(core, pbx.domain_id, ActionInput(action="menu", menu_id=menu.id))
    pbx.b2bua.menus = MenuPlans(core.sessions, pbx.b2bua.prompts)  # type: ignore[arg-type]
    call = await answered_call(pbx)
    await key(pbx, "1")
    assert [p[0] for _leg, p in pbx.media.played][-1] == "t"  # the box's default greeting, spoken
    await to_recording(pbx)
    await pbx.advance(2)
    await call.send("BYE")
    assert await call.phone.expect(200)
    assert pbx.bus.events[-1].extra["voicemail"] == "true"
    await desk(pbx).drain()
    assert len(await messages(core)) == 1


async def test_a_user_on_dnd_with_on_busy_gets_a_message_and_no_ring(core: Core, pbx: Pbx) -> None:
    await box_of(core, pbx, "101", on_busy=True)
    uid = await _user_id(core, pbx.domain_id, "101")
    async with core.sessions() as s:
        await set_dnd(s, pbx.domain_id, uid, True, now=core.clock.now())
        await s.commit()
    await _rule(core, pbx.domain_id, ActionInput(action="user", user_id=uid))
    [alice] = await _registered(pbx, "101")
    carrier = Carrier(pbx)
    await carrier.call()
    assert (await carrier.phone.expect(200)).code == 200  # the box answers at once
    assert [p[0] for _leg, p in pbx.media.played] == ["t"]
    assert alice.unread() == []
    bob = pbx.phone("102", "192.0.2.22")
    call = await bob.call("101")  # a direct call too: the box, no ring
    await call.answered()
    assert alice.unread() == []


async def test_a_user_on_dnd_without_on_busy_is_486_even_with_on_no_answer(core: Core, pbx: Pbx) -> None:
    await box_of(core, pbx, "101", on_no_answer=True)
    uid = await _user_id(core, pbx.domain_id, "101")
    async with core.sessions() as s:
        await set_dnd(s, pbx.domain_id, uid, True, now=core.clock.now())
        await s.commit()
    [alice] = await _registered(pbx, "101")
    bob = pbx.phone("102", "192.0.2.22")
    await bob.call("101")
    assert (await bob.expect(486)).code == 486
    assert alice.unread() == [] and pbx.media.played == []
