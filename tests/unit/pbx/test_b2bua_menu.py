"""Voice menus in the engine: the caller is answered, hears the greeting, keys choose where the call goes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.unit.pbx.b2bua_kit import OutgoingCall, Pbx, tag
from tests.unit.pbx.test_b2bua_incoming import Carrier, FakeTrunks, _rule
from vpbx.app import Core
from vpbx.media.dtmf import Digit
from vpbx.media.prompts import Prompt, PromptId, Tone
from vpbx.media.relay import LegRef
from vpbx.pbx.actions import ActionInput
from vpbx.pbx.incoming import IncomingRouter
from vpbx.pbx.ivr_plan import HANGUP, MenuAction, MenuPlan
from vpbx.pbx.menus import MenuInput, create_menu
from vpbx.store.models import DomainId

GREETING, INVALID, RINGBACK = PromptId("g" * 64), PromptId("i" * 64), PromptId("r" * 64)


class Prompts:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def get(self, prompt_id: str) -> Prompt:
        f = self.tmp / f"{prompt_id[:8]}.pcma"
        return Prompt(id=PromptId(prompt_id), duration_s=1.0, wav=f, pcma=f, pcmu=f)

    async def tone(self, kind: Tone) -> Prompt:
        return self.get(RINGBACK if kind == "ringback" else "h" * 64)


class Menus:
    def __init__(self, plan: MenuPlan) -> None:
        self.plan = plan

    async def menu_plan(self, domain_id: DomainId, menu_id: uuid.UUID) -> MenuPlan:
        return self.plan


def menu(domain_id: DomainId, menu_id: uuid.UUID, **keys: MenuAction) -> MenuPlan:
    return MenuPlan(
        domain_id=domain_id,
        menu_id=menu_id,
        name="Main",
        voice="ru",
        greeting_prompt_id=GREETING,
        repeat_count=2,
        digit_timeout_s=5,
        invalid_prompt_id=INVALID,
        keys={k.replace("star", "*"): v for k, v in keys.items()},
        timeout=HANGUP,
    )


@pytest.fixture
async def pbx(core: Core, tmp_path: Path) -> AsyncIterator[Pbx]:
    p = await Pbx.create(core)
    async with core.sessions() as s:
        m = await create_menu(s, p.domain_id, MenuInput(name="Main", prompt_text="Здравствуйте"))
        await s.commit()
    await _rule(core, p.domain_id, ActionInput(action="menu", menu_id=m.id))
    p.b2bua.trunks = FakeTrunks(p.domain_id)  # type: ignore[assignment]
    p.b2bua.incoming = IncomingRouter(core.sessions)
    p.b2bua.prompts = Prompts(tmp_path)  # type: ignore[assignment]
    p.b2bua.menus = Menus(
        menu(
            p.domain_id,
            m.id,
            **{"1": MenuAction(action="user", pin="101"), "star": MenuAction(action="extension")},
        )
    )
    yield p
    await p.node.stop()


def greeted(pbx: Pbx) -> list[str]:
    return [prompt[:1] for leg, prompt in pbx.media.played if leg.side == "a"]


async def key(pbx: Pbx, digit: str) -> None:
    session = pbx.media.allocated[-1]
    pbx.b2bua.on_dtmf(LegRef(session, "a"), Digit(digit=digit, timestamp=0, duration=800, ended=True))
    await pbx.settle()


async def played(pbx: Pbx) -> None:
    pbx.b2bua.on_play_done(LegRef(pbx.media.allocated[-1], "a"))
    await pbx.settle()


async def test_the_caller_is_answered_greeted_and_a_key_rings_the_user(pbx: Pbx) -> None:
    alice = pbx.phone("101", "192.0.2.11")
    await pbx.register(alice)
    carrier = Carrier(pbx)
    await carrier.call()
    ok = await carrier.phone.expect(200)  # the menu answers
    assert greeted(pbx) == ["g"]
    await played(pbx)
    await key(pbx, "1")
    incoming = await alice.ringing()
    assert greeted(pbx) == ["g", "r"]  # the caller hears ringback while 101 rings
    stops = pbx.media.stops
    await incoming.answer()
    assert pbx.media.stops == stops + 1  # and no more once the audio is bridged
    assert all(not (m.code == 200 and tag(m) != tag(ok)) for m in carrier.phone.inbox if hasattr(m, "code"))
    assert [e.state for e in pbx.bus.events] == ["new", "calling", "connected"]
    assert pbx.bus.events[-1].request_pin == "101"


async def test_an_unknown_key_says_so_and_the_greeting_comes_again(pbx: Pbx) -> None:
    await Carrier(pbx).call()
    await key(pbx, "9")
    assert greeted(pbx) == ["g", "i"]
    await played(pbx)  # the "invalid choice" prompt ended
    assert greeted(pbx) == ["g", "i", "g"]


async def test_no_key_repeats_the_greeting_then_the_timeout_action(pbx: Pbx) -> None:
    carrier = Carrier(pbx)
    call = OutgoingCall(carrier.phone, await carrier.call())
    await call.answered()
    await played(pbx)
    await pbx.advance(5)  # digit timeout: the second greeting
    assert greeted(pbx) == ["g", "g"]
    await played(pbx)
    await pbx.advance(5)  # no repeat left: the timeout action hangs up
    assert (await carrier.phone.expect("BYE")).method == "BYE"
    assert [e.state for e in pbx.bus.events] == ["new", "end"]


async def test_an_extension_keyed_in_the_menu(pbx: Pbx) -> None:
    bob = pbx.phone("102", "192.0.2.12")
    await pbx.register(bob)
    await Carrier(pbx).call()
    for digit in ("*", "1", "0", "2", "#"):
        await key(pbx, digit)
    assert (await bob.ringing()).invite.method == "INVITE"


async def test_the_caller_hangs_up_in_the_menu(pbx: Pbx) -> None:
    carrier = Carrier(pbx)
    call = OutgoingCall(carrier.phone, await carrier.call())
    await call.answered()
    await played(pbx)  # the digit timer runs
    await call.send("BYE")
    assert (await carrier.phone.expect(200)).cseq.method == "BYE"
    assert [e.state for e in pbx.bus.events] == ["new", "end"]
    assert pbx.media.released == pbx.media.allocated
    await pbx.advance(30)  # nothing fires for a call that has ended
    assert [e.state for e in pbx.bus.events] == ["new", "end"]


async def test_a_key_sent_as_sip_info_works_too(pbx: Pbx) -> None:
    alice = pbx.phone("101", "192.0.2.11")
    await pbx.register(alice)
    carrier = Carrier(pbx)
    call = OutgoingCall(carrier.phone, await carrier.call())
    await call.answered()
    info = call.request("INFO", body=b"Signal=1\r\nDuration=160\r\n")
    info.headers.set("Content-Type", "application/dtmf-relay")
    await carrier.phone.send(info)
    assert (await carrier.phone.expect(200)).cseq.method == "INFO"
    assert (await alice.ringing()).invite.method == "INVITE"


class KeyWhileLoading(Menus):
    """The caller presses a key while the menu plan is still loading (its greeting spoken the first time)."""

    def __init__(self, pbx: Pbx, plan: MenuPlan, digit: str) -> None:
        super().__init__(plan)
        self.pbx, self.digit = pbx, digit

    async def menu_plan(self, domain_id: DomainId, menu_id: uuid.UUID) -> MenuPlan:
        leg = LegRef(self.pbx.media.allocated[-1], "a")
        self.pbx.b2bua.on_dtmf(leg, Digit(digit=self.digit, timestamp=0, duration=800, ended=True))
        await asyncio.sleep(0)
        return self.plan


async def test_a_key_pressed_before_the_greeting_starts_still_counts(pbx: Pbx) -> None:
    alice = pbx.phone("101", "192.0.2.11")
    await pbx.register(alice)
    assert isinstance(pbx.b2bua.menus, Menus)
    pbx.b2bua.menus = KeyWhileLoading(pbx, pbx.b2bua.menus.plan, "1")
    carrier = Carrier(pbx)
    call = OutgoingCall(carrier.phone, await carrier.call())
    await call.answered()
    assert (await alice.ringing()).invite.method == "INVITE"
    assert greeted(pbx)[-1] == "r"  # the greeting was cut short by the key; ringback while 101 rings
