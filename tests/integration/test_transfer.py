"""Hold with music and transfers between real phones: baresips around ``python -m vpbx serve``.

Each phone plays its own tone as its microphone and records what it hears (telephony.md §7.2), so the audio
path is checked by frequency: after a transfer the transferee hears the target's tone on the same call
(no re-INVITE reached it), and the call's events keep one session id (integration-api.md §5.2).
baresip 1.0.0 has ``hold``, ``resume`` and ``transfer`` (blind, REFER) in its menu module, driven here over
ctrl_tcp.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.integration.peers.audio import dominant_frequency, make_silence, make_tone, read_wav, rms
from tests.integration.peers.baresip import Account, Baresip
from tests.integration.peers.process import require_binary
from tests.integration.peers.sipp import run_sipp
from tests.integration.peers.vpbx import Setup
from tests.integration.test_calls import Server, caller_run, running
from tests.integration.test_history import db_url, read_history
from vpbx.pbx.history import session_log_string

pytestmark = pytest.mark.peers

ALICE_HZ, BOB_HZ, CAROL_HZ = 440.0, 1000.0, 700.0
TONE_S = 30
TOLERANCE = 0.05
BYTES_PER_S = 8000 * 2  # baresip records 8 kHz mono s16
MOH_HZ = (440.0, 554.37, 659.25)  # the platform's music on hold (vpbx.media.prompts)


@dataclass
class Phones:
    server: Server
    alice: Baresip
    bob: Baresip
    carol: Baresip


@contextlib.asynccontextmanager
async def phones(
    tmp_path: Path, *, tones: bool = True, trace_alice: bool = False, setup: Setup | None = None
) -> AsyncIterator[Phones]:
    require_binary("baresip")
    require_binary("sox")
    sources = []
    for name, hz in (("alice", ALICE_HZ), ("bob", BOB_HZ), ("carol", CAROL_HZ)):
        path = tmp_path / f"{name}.wav"
        sources.append(await make_tone(path, hz, TONE_S) if tones else await make_silence(path, TONE_S))
    async with (
        running(tmp_path, setup=setup) as server,
        Baresip.start(tmp_path, name="alice", audio_source=sources[0], sip_trace=trace_alice) as alice,
        Baresip.start(tmp_path, name="bob", audio_source=sources[1]) as bob,
        Baresip.start(tmp_path, name="carol", audio_source=sources[2]) as carol,
    ):
        await alice.register(Account.on(server.service, "101"))
        await bob.register(Account.on(server.service, "102", answermode="auto"))
        await carol.register(Account.on(server.service, "103", answermode="auto"))
        yield Phones(server, alice, bob, carol)


async def heard_next(phone: Baresip, seconds: float) -> Path:
    """Wait until the phone's current recording has ``seconds`` more audio than now; that recording."""
    files = phone.recorded("dec")
    have = (files[-1].stat().st_size - 44) / BYTES_PER_S if files else 0.0
    return await phone.wait_recorded(have + seconds)


def tail(path: Path, seconds: float) -> tuple[float, float]:
    """Dominant frequency and RMS of the recording's last ``seconds``."""
    pcm = read_wav(path)
    window = pcm.window(max(0.0, pcm.seconds - seconds), seconds)
    return dominant_frequency(window), rms(window.samples)


async def alice_calls_bob(p: Phones) -> None:
    await p.alice.dial("102")
    await p.alice.wait_event("CALL_ESTABLISHED")
    await p.bob.wait_event("CALL_ESTABLISHED")


async def bob_transfers_blind_to_carol(p: Phones) -> None:
    """bob REFERs his caller to 103: carol answers, bob's call closes."""
    await p.bob.command("transfer", f"sip:103@{p.server.service.domain}")
    await p.carol.wait_event("CALL_ESTABLISHED")
    await p.bob.wait_event("CALL_CLOSED")


async def alice_consults_carol(p: Phones) -> str:
    """alice holds bob and calls carol (alice's SIP trace on); the Replaces of the consultation dialog."""
    await p.alice.command("hold")
    await p.alice.dial("103")
    await p.alice.wait_event("CALL_ESTABLISHED")
    await p.carol.wait_event("CALL_ESTABLISHED")
    return dialog_from_trace(p.alice.workdir / "baresip.log", "103")


async def alice_merges(p: Phones, replaces: str) -> None:
    """alice REFERs bob's call to carol with Replaces: both of alice's calls close."""
    await p.alice.command("line", "1")  # back to bob's call, which is the one transferred
    domain = p.server.service.domain
    await p.alice.command("transfer", f"sip:103@{domain}?Replaces={quote(replaces, safe='@')}")
    await p.alice.wait_event("CALL_CLOSED")
    await p.alice.wait_event("CALL_CLOSED")


async def test_blind_transfer_by_the_callee_bridges_the_caller_to_the_target(tmp_path: Path) -> None:
    async with phones(tmp_path) as p:
        await alice_calls_bob(p)
        before = tail(await heard_next(p.alice, 1.0), 0.5)

        await bob_transfers_blind_to_carol(p)
        after_alice = tail(await heard_next(p.alice, 1.5), 0.5)
        after_carol = tail(await heard_next(p.carol, 1.0), 0.5)
        calls_at_alice = len(p.alice.recorded("dec"))

        await p.alice.hangup()
        await p.carol.wait_event("CALL_CLOSED")
        [events] = (await p.server.calls(ended=1)).values()
        url = db_url(p.server)

    assert before[0] == pytest.approx(BOB_HZ, rel=TOLERANCE)
    assert after_alice[0] == pytest.approx(CAROL_HZ, rel=TOLERANCE)  # alice now hears carol
    assert after_carol[0] == pytest.approx(ALICE_HZ, rel=TOLERANCE)  # and carol hears alice
    assert calls_at_alice == 1  # on the same call: alice was never re-INVITEd into a new one
    assert [(e["state"], e.get("request_pin"), e.get("disconnect_reason")) for e in events] == [
        ("new", "102", None),
        ("calling", "102", None),
        ("connected", "102", None),
        ("disconnected", "102", "0"),
        ("calling", "103", None),
        ("connected", "103", None),
        ("disconnected", "103", "5"),
        ("end", "103", None),
    ]
    assert len({e["session_id"] for e in events}) == 1
    # the call history's protocol: one record, the transfer in it, and the compact wire string
    [record] = [r for r in (await read_history(url))[0] if r.session_id == events[0]["session_id"]]
    assert [(code, party) for _, code, party in record.session_log] == [
        ("ct", "102"),
        ("cc", "102"),
        ("cd", "102"),
        ("tr", "103"),
        ("ct", "103"),
        ("cc", "103"),
        ("cd", "103"),
    ]
    # offsets are whole Unix seconds from the start (a second boundary may fall between "new" and "calling")
    wire = session_log_string(record.session_log)
    assert re.fullmatch(r"[01]:ct:102;\d+:cc:102;(\d+:\w\w:10[23];){5}", wire)
    offsets = [offset for offset, _, _ in record.session_log]
    assert offsets == sorted(offsets)
    assert record.ended_at is not None and record.answering_pin == "102"


def dialog_from_trace(log: Path, callee: str) -> str:
    """Replaces for the phone's dialog with ``callee`` from its SIP trace: the 200 to its INVITE gives the
    Call-ID, its own tag (From) and ours (To); in Replaces our tag is the to-tag (RFC 3891 §3)."""
    for message in log.read_text(errors="replace").split("SIP/2.0 200 OK")[1:]:
        head = message.split("\n\n", 1)[0].split("\r\n\r\n", 1)[0]
        if not re.search(r"^CSeq:\s*\d+ INVITE", head, re.M | re.I):
            continue
        to = re.search(r"^To:.*sip:" + callee + r"@.*;tag=([^;\s>]+)", head, re.M | re.I)
        from_ = re.search(r"^From:.*;tag=([^;\s>]+)", head, re.M | re.I)
        call_id = re.search(r"^Call-ID:\s*(\S+)", head, re.M | re.I)
        if to and from_ and call_id:
            return f"{call_id[1]};to-tag={to[1]};from-tag={from_[1]}"
    raise AssertionError(f"no 200 OK for an INVITE to {callee} in {log}")


async def test_attended_transfer_by_the_caller_merges_the_consultation_call(tmp_path: Path) -> None:
    """alice (baresip, with its SIP trace) calls bob, holds him, consults carol, then REFERs bob's call with
    Replaces naming the consultation dialog: bob hears carol on the same call, carol is re-INVITEd once."""
    async with phones(tmp_path, trace_alice=True) as p:
        await alice_calls_bob(p)
        replaces = await alice_consults_carol(p)
        music = tail(await heard_next(p.bob, 1.5), 1.0)  # bob, held all along

        await alice_merges(p, replaces)
        bob_hears = tail(await heard_next(p.bob, 1.5), 0.5)
        carol_hears = tail(await heard_next(p.carol, 1.5), 0.5)
        bob_calls = len(p.bob.recorded("dec"))

        await p.bob.hangup()
        await p.carol.wait_event("CALL_CLOSED")
        calls = await p.server.calls(ended=2)
        url = db_url(p.server)

    assert min(abs(music[0] - hz) / hz for hz in MOH_HZ) < TOLERANCE  # bob waited with music
    assert bob_hears[0] == pytest.approx(CAROL_HZ, rel=TOLERANCE)
    assert carol_hears[0] == pytest.approx(BOB_HZ, rel=TOLERANCE)
    assert bob_calls == 1  # bob's call went on: never re-INVITEd into another
    first, consultation = sorted(calls.values(), key=lambda events: events[0]["timestamp"])
    assert [(e["state"], e.get("request_pin"), e.get("disconnect_reason")) for e in first] == [
        ("new", "102", None),
        ("calling", "102", None),
        ("connected", "102", None),
        ("disconnected", "102", "0"),
        ("connected", "103", None),
        ("disconnected", "103", "5"),
        ("end", "103", None),
    ]
    records = {r.session_id: r for r in (await read_history(url))[0]}
    protocol = [(code, party) for _, code, party in records[first[0]["session_id"]].session_log]
    assert protocol == [
        ("ct", "102"),
        ("cc", "102"),
        ("cd", "102"),
        ("tr", "103"),
        ("cc", "103"),
        ("cd", "103"),
    ]
    assert [(e["state"], e.get("disconnect_reason")) for e in consultation] == [
        ("new", None),
        ("calling", None),
        ("connected", None),
        ("disconnected", "0"),
        ("end", None),
    ]


@pytest.mark.parametrize("target", ["999", "104"])  # no such extension; a user with no phone registered
async def test_a_refused_transfer_keeps_the_call(tmp_path: Path, target: str) -> None:
    """SIPp as the transferor (baresip 1.0.0 hangs up whenever its transfer ends): a REFER to a target
    that cannot be rung gets 202 and NOTIFYs 100 then the failure; the call goes on until SIPp's BYE."""
    async with phones(tmp_path) as p:
        run = caller_run(
            p.server, "uac_transfer_refused", caller="101", callee="102", calls=1, duration_ms=1500
        )
        run.keys["target"] = target
        transferor = await run_sipp(run, tmp_path)
        await p.bob.wait_event("CALL_CLOSED")
        [events] = (await p.server.calls(ended=1)).values()

    assert transferor.ok, transferor.describe()  # 202, NOTIFY 100, NOTIFY 4xx terminated, BYE answered
    assert [e["state"] for e in events] == ["new", "calling", "connected", "disconnected", "end"]
    assert events[3]["disconnect_reason"] == "5"


async def test_the_held_party_hears_music_and_resume_brings_the_other_back(tmp_path: Path) -> None:
    async with phones(tmp_path, tones=False) as p:  # silent microphones: whatever bob hears is ours
        await alice_calls_bob(p)
        quiet = tail(await heard_next(p.bob, 1.0), 0.5)

        await p.alice.command("hold")
        music = tail(await heard_next(p.bob, 2.0), 1.5)

        await p.alice.command("resume")
        await heard_next(p.bob, 1.0)
        resumed = tail(await heard_next(p.bob, 1.0), 0.5)

        await p.bob.hangup()
        await p.alice.wait_event("CALL_CLOSED")
        [events] = (await p.server.calls(ended=1)).values()

    assert quiet[1] < 0.01
    assert music[1] > 0.05  # the held party hears music, not silence
    assert min(abs(music[0] - hz) / hz for hz in MOH_HZ) < TOLERANCE
    assert resumed[1] < 0.01  # the music stopped: alice's silence again
    assert [e["state"] for e in events] == ["new", "calling", "connected", "disconnected", "end"]
