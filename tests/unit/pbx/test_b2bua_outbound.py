"""Calls from users to outside numbers through the domain's trunks: format, caller ID, rights, digest,
failover."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import update

from tests.unit.pbx.b2bua_kit import IncomingCall, Pbx, Phone, tag, trunk
from vpbx.app import Core
from vpbx.media.prompts import Prompt, PromptId, SystemPhrase
from vpbx.pbx import lines
from vpbx.pbx.outbound import OutboundRouter
from vpbx.pbx.trunkmon import TrunkInfo
from vpbx.sip.message import Request, Response
from vpbx.store.models import DomainId, User

LINE = "+74951234567"


class FakeTrunks:
    def __init__(self, *trunks: TrunkInfo) -> None:
        self.trunks = list(trunks)

    def trunk_for_source(self, host: str, port: int) -> TrunkInfo | None:
        return None

    def outbound_trunks(self, domain_id: DomainId) -> list[TrunkInfo]:
        return [t for t in self.trunks if t.domain_id == domain_id]


@pytest.fixture
async def pbx(core: Core) -> AsyncIterator[Pbx]:
    p = await Pbx.create(core)
    async with core.sessions() as s:
        await lines.create_number(s, p.domain_id, lines.NumberInput(number=LINE))
        await s.commit()
    p.b2bua.outbound = OutboundRouter(core.sessions)
    yield p
    await p.node.stop()


def carrier(pbx: Pbx, host: str) -> Phone:
    c = Phone(pbx, "carrier", host, 5060, name="carrier")
    pbx.phones[(host, 5060)] = c
    return c


async def test_a_user_calls_out_in_the_carriers_format_with_the_domains_number(pbx: Pbx) -> None:
    main = carrier(pbx, "198.51.100.60")
    pbx.b2bua.trunks = FakeTrunks(trunk(pbx.domain_id, "Main", "198.51.100.60"))
    alice = pbx.phone("101", "192.0.2.11")
    out = await alice.call("84957654321")  # dialled the Russian way
    invite: Request = await main.expect("INVITE")
    assert invite.uri.user == "84957654321" and invite.uri.host == "198.51.100.60"  # national format
    assert invite.from_address.uri.user == "84951234567"  # the domain's line, in the trunk's format
    assert "Proxy-Authorization" not in invite.headers.keys()
    incoming = IncomingCall(main, invite, "t1")  # the carrier answers like a phone
    await incoming.answer()
    await out.answered()
    events = pbx.bus.events
    assert [e.state for e in events] == ["new", "connected"]  # no `calling` for an outbound call
    assert events[0].type == "outbound" and events[0].request_number.startswith("sip:74957654321@")


async def test_the_carriers_challenge_is_answered_once(pbx: Pbx) -> None:
    main = carrier(pbx, "198.51.100.60")
    pbx.b2bua.trunks = FakeTrunks(trunk(pbx.domain_id, "Main", "198.51.100.60"))
    alice = pbx.phone("101", "192.0.2.11")
    await alice.call("+74957654321")
    first: Request = await main.expect("INVITE")
    challenge = IncomingCall(main, first, "t1").response(
        407, headers=(("Proxy-Authenticate", 'Digest realm="carrier", nonce="abc123", qop="auth"'),)
    )
    await main.send(challenge)
    second: Request = await main.expect("INVITE")
    assert second.cseq.sequence == first.cseq.sequence + 1 and second.call_id == first.call_id
    auth = second.headers["Proxy-Authorization"]
    assert 'username="acme"' in auth and 'realm="carrier"' in auth and "carrier-secret" not in auth


async def test_a_failing_carrier_hands_the_call_to_the_next_trunk(pbx: Pbx) -> None:
    first, second = carrier(pbx, "198.51.100.60"), carrier(pbx, "198.51.100.61")
    pbx.b2bua.trunks = FakeTrunks(
        trunk(pbx.domain_id, "Main", "198.51.100.60"),
        trunk(pbx.domain_id, "Backup", "198.51.100.61", number_format="e164"),
    )
    alice = pbx.phone("101", "192.0.2.11")
    await alice.call("84957654321")
    invite: Request = await first.expect("INVITE")
    await first.send(IncomingCall(first, invite, "t1").response(503))
    backup: Request = await second.expect("INVITE")
    assert backup.uri.user == "+74957654321"  # the backup trunk's own format


async def test_rights_no_trunk_and_nonsense(core: Core, pbx: Pbx) -> None:
    alice = pbx.phone("101", "192.0.2.11")
    pbx.b2bua.trunks = FakeTrunks()
    await alice.call("84957654321")
    assert (await alice.expect(503)).code == 503  # no trunk
    pbx.b2bua.trunks = FakeTrunks(trunk(pbx.domain_id, "Main", "198.51.100.60"))
    async with core.sessions() as s:
        await s.execute(update(User).where(User.pin == "101").values(allow_international=False))
        await s.commit()
    await alice.call("+4930123456")
    refused = await alice.expect(403)
    assert "international" in refused.phrase  # no prompt store here: refused without a phrase
    await alice.call("12")  # neither an extension nor a number
    assert (await alice.expect(404)).code == 404
    assert pbx.bus.events == []
    assert all(dest.host != "198.51.100.60" for _, dest in pbx.stray)  # nothing reached the carrier


async def test_a_busy_trunk_passes_the_next_call_to_the_next_trunk(pbx: Pbx) -> None:
    first, second = carrier(pbx, "198.51.100.60"), carrier(pbx, "198.51.100.61")
    pbx.b2bua.trunks = FakeTrunks(
        trunk(pbx.domain_id, "Main", "198.51.100.60", max_calls=1),
        trunk(pbx.domain_id, "Backup", "198.51.100.61"),
    )
    alice, bob = pbx.phone("101", "192.0.2.11"), pbx.phone("102", "192.0.2.12")
    await alice.call("84957654321")
    await first.expect("INVITE")
    await bob.call("84957654322")  # Main's only channel is taken
    assert (await second.expect("INVITE")).uri.user == "84957654322"


class FakePhrases:
    def __init__(self, tmp: Path) -> None:
        self.asked: list[SystemPhrase] = []
        self.tmp = tmp

    async def system_phrase(self, phrase: SystemPhrase, voice: str = "ru") -> Prompt:
        self.asked.append(phrase)
        f = self.tmp / "phrase.pcma"
        return Prompt(id=PromptId("p" * 64), duration_s=0.05, wav=f, pcma=f, pcmu=f)


async def test_a_refused_caller_hears_why_before_the_403(pbx: Pbx, tmp_path: Path) -> None:
    phrases = FakePhrases(tmp_path)
    pbx.b2bua.prompts = phrases
    pbx.b2bua.trunks = FakeTrunks(trunk(pbx.domain_id, "Main", "198.51.100.60"))
    alice = pbx.phone("101", "192.0.2.11")
    await alice.call("+493012345678")
    early = await alice.expect(183)
    assert early.body and b"m=audio" in early.body  # early media from our relay
    for _ in range(100):  # the phrase lasts 50 ms of the loop's real time
        if any(isinstance(m, Response) and m.code == 403 for m in alice.inbox):
            break
        await asyncio.sleep(0.01)
        await pbx.settle()
    refused = await alice.expect(403)
    assert tag(refused) == tag(early)  # one dialog: the early one, then its end
    assert phrases.asked == [SystemPhrase.NOT_ALLOWED]
    assert [leg.side for leg, _ in pbx.media.played] == ["a"]
    assert pbx.media.released and pbx.bus.events == []
