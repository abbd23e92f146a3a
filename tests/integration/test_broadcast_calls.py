"""Autoinformer calls with real peers (autoinformer.md §3.4, §3.5, §5; vpbx.pbx.broadcaster).

``vpbx serve`` runs with ``VPBX_DEBUG_BROADCAST_TOKEN``, so the test places each call through the engine's
``BroadcastDialer`` with ``POST /debug/broadcast`` and reads back its ``BroadcastResult``. The recipients'
carrier is SIPp on 127.0.0.2 behind an IP trunk (answering the trunk's OPTIONS too): it answers, refuses,
rings until cancelled, or presses keys (SIPp's RFC 4733 recordings, or SIP INFO). The message is a sox tone
uploaded as a prompt. Operators are SIPp phones bound to extensions with sipsak.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import struct
import uuid
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from tests.integration.peers.audio import TONE_TOLERANCE, dominant_frequency, make_tone, read_wav, rms
from tests.integration.peers.baresip import Account, Baresip
from tests.integration.peers.net import LOOPBACK, free_port_block
from tests.integration.peers.process import require_binary
from tests.integration.peers.sipp import SippProcess, scenario_path
from tests.integration.test_call_back import record
from tests.integration.test_calls import Server, bind, callee_run, running
from tests.integration.test_outbound_calls import CARRIER_IP, carrier_trunk
from vpbx.app import Core
from vpbx.pbx import trunks
from vpbx.pbx.broadcast import broadcast_ids

pytestmark = pytest.mark.peers

DOMAIN = "peers.vpbx.test"
NUMBER = "79161234567"
LINE = "74951234567"
TONE_HZ = 1000
MESSAGE_S = 1.5
TOKEN = secrets.token_hex(16)
HTTP_TIMEOUT_S = 40.0  # a dial returns when the call has ended: ring, message, keys, operator


class Campaign:
    """The server with its carrier trunk and the message prompt (its id once uploaded)."""

    def __init__(self, tmp_path: Path, port: int) -> None:
        self.tmp_path = tmp_path
        self.port = port
        self.prompt_id = ""

    async def setup(self, s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
        await carrier_trunk(self.port)(s, core, domain_id)
        wav = await make_tone(self.tmp_path / "message.wav", TONE_HZ, MESSAGE_S)
        self.prompt_id = (await core.prompts.upload(wav.read_bytes())).id


@pytest.fixture
def port() -> int:
    return free_port_block(1)


async def dial(server: Server, key: str, **kw: Any) -> dict[str, Any]:
    sid, call_id = broadcast_ids(key)
    body: dict[str, Any] = {
        "domain": DOMAIN,
        "session_id": sid,
        "call_id": call_id,
        "number": NUMBER,
        "caller_id": LINE,
        "ring_timeout_s": 10,
        "dtmf_wait_s": 1.0,
    }
    body.update(kw)
    async with httpx.AsyncClient(base_url=server.vpbx.http_url, timeout=HTTP_TIMEOUT_S) as client:
        resp = await client.post("/debug/broadcast", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    return result


def carrier(scenario: str | Path, port: int) -> Any:
    return callee_run(scenario, calls=100_000, local_ip=CARRIER_IP, local_port=port, trace_msg=True)


CAPTURE = """<action>
      <ereg regexp="[^ ].*" search_in="hdr" header="From:" assign_to="caller"/>
      <ereg regexp="[^ ].*" search_in="hdr" header="To:" assign_to="callee"/>
    </action>"""


def keyed(tmp_path: Path, keys: str) -> Path:
    """uas_trunk_keys.xml with ``keys`` after the answer (and the INVITE's From/To captured for an INFO)."""
    path = tmp_path / "uas_trunk_keys.xml"
    text = scenario_path("uas_trunk_keys").read_text().replace("KEYS", keys)
    path.write_text(text.replace("CAPTURE", CAPTURE if "[$caller]" in keys else ""))
    return path


def rfc4733(digit: str) -> str:
    pcap = Path(f"/usr/share/sip-tester/dtmf_2833_{digit}.pcap")
    if not pcap.exists():
        pytest.fail(f"{pcap} is missing: the sip-tester package ships it")
    return f'<nop><action><exec play_pcap_audio="{pcap}"/></action></nop>'


def sip_info(digit: str) -> str:
    body = f"Signal={digit}\r\nDuration=160\r\n"
    return f"""<send retrans="500"><![CDATA[
    INFO [next_url] SIP/2.0
    Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
    [routes]
    From: [$callee];tag=[pid]u[call_number]
    To: [$caller]
    Call-ID: [call_id]
    CSeq: 1 INFO
    Contact: <sip:uas@[local_ip]:[local_port]>
    Max-Forwards: 70
    Content-Type: application/dtmf-relay
    Content-Length: {len(body)}

    {body.replace(chr(13) + chr(10), chr(10) + "    ").rstrip()}

  ]]></send>
  <recv response="200" timeout="5000"/>"""


@pytest.fixture
async def env(tmp_path: Path, port: int) -> AsyncIterator[tuple[Server, Campaign]]:
    require_binary("sox")
    campaign = Campaign(tmp_path, port)
    async with running(tmp_path, env={"VPBX_DEBUG_BROADCAST_TOKEN": TOKEN}, setup=campaign.setup) as server:
        yield server, campaign


def messages(sipp: Any) -> str:
    return (sipp.workdir / "messages.log").read_text(errors="replace")


async def test_an_answered_call_plays_the_message_and_is_an_outgoing_call_in_the_history(
    env: tuple[Server, Campaign], tmp_path: Path, port: int
) -> None:
    server, campaign = env
    async with SippProcess.running(carrier("uas_trunk", port), tmp_path) as far_end:
        await far_end.wait_listening()
        result = await dial(server, "answered", message_prompt_id=campaign.prompt_id, repeat=2)
        again = await dial(server, "answered", message_prompt_id=campaign.prompt_id)  # the same key
        [events] = (await server.calls(ended=1)).values()
        answered = await far_end.stop()

    assert answered.ok, answered.describe()
    log = messages(answered)
    sid, call_id = broadcast_ids("answered")
    assert log.count(f"INVITE sip:89161234567@{CARRIER_IP}") == 1  # the carrier's format; the twin refused
    assert f"Call-ID: {call_id}" in log
    assert "From: <sip:84951234567@" in log  # the campaign's line
    assert "BYE sip:" in log  # the PBX hung up after the plays and the wait
    assert result["sip_code"] == 200 and result["played_full"] is True
    assert result["listen_s"] == pytest.approx(2 * MESSAGE_S, abs=0.3)
    assert result["answered_at"] and result["ended_at"] and result["detail"] == ""
    assert (again["sip_code"], again["detail"]) == (None, "duplicate")
    assert [e["state"] for e in events] == ["new", "connected", "disconnected", "end"]
    assert events[0]["session_id"] == sid and events[0]["type"] == "outbound"
    assert events[0]["from_number"] == f"sip:{LINE}@{DOMAIN}"
    assert events[0]["request_number"] == f"sip:{NUMBER}@{DOMAIN}"
    rec = await record(tmp_path, sid)
    assert (rec.call_type, rec.call_kind, rec.is_record) == ("outbound", "autoinformer", False)
    assert rec.answered_at is not None and rec.line == LINE


@pytest.mark.parametrize("code", [486, 404, 603])
async def test_a_refusal_passes_the_carriers_code(
    env: tuple[Server, Campaign], tmp_path: Path, port: int, code: int
) -> None:
    server, campaign = env
    scenario = tmp_path / "uas_trunk_final.xml"
    scenario.write_text(scenario_path("uas_trunk_final").read_text().replace("FINAL_CODE", str(code)))
    async with SippProcess.running(carrier(scenario, port), tmp_path) as far_end:
        await far_end.wait_listening()
        result = await dial(server, f"refused-{code}", message_prompt_id=campaign.prompt_id)
        [events] = (await server.calls(ended=1)).values()
        refusing = await far_end.stop()

    assert refusing.ok, refusing.describe()
    assert (result["sip_code"], result["answered_at"], result["listen_s"]) == (code, None, 0.0)
    assert [e["state"] for e in events] == ["new", "end"]
    rec = await record(tmp_path, broadcast_ids(f"refused-{code}")[0])
    assert rec.status_code == code and rec.answered_at is None


async def test_no_answer_is_cancelled_at_the_ring_timeout(
    env: tuple[Server, Campaign], tmp_path: Path, port: int
) -> None:
    server, campaign = env
    async with SippProcess.running(carrier("uas_trunk_ring", port), tmp_path) as far_end:
        await far_end.wait_listening()
        result = await dial(server, "silent", message_prompt_id=campaign.prompt_id, ring_timeout_s=2)
        await server.calls(ended=1)
        ringing = await far_end.stop()

    assert ringing.ok, ringing.describe()  # 180, then our CANCEL, 487, ACK
    assert "CANCEL sip:" in messages(ringing)
    assert (result["sip_code"], result["detail"], result["answered_at"]) == (408, "ring_timeout", None)


@pytest.mark.parametrize("how", ["rfc4733", "info"])
async def test_a_key_decides_opt_out(
    env: tuple[Server, Campaign], tmp_path: Path, port: int, how: str
) -> None:
    server, campaign = env
    scenario = keyed(tmp_path, rfc4733("9") if how == "rfc4733" else sip_info("9"))
    actions = {"9": {"action": "opt_out"}, "1": {"action": "confirm"}}
    async with SippProcess.running(carrier(scenario, port), tmp_path) as far_end:
        await far_end.wait_listening()
        result = await dial(
            server, f"key-{how}", message_prompt_id=campaign.prompt_id, repeat=3, actions=actions
        )
        await server.calls(ended=1)
        pressing = await far_end.stop()

    assert pressing.ok, pressing.describe()
    assert (result["digits"], result["action"]) == ("9", "opt_out")
    assert result["sip_code"] == 200
    assert result["listen_s"] < 3 * MESSAGE_S  # the key cut the plays short


async def test_connect_rings_a_baresip_operator_within_the_same_call(
    env: tuple[Server, Campaign], tmp_path: Path, port: int
) -> None:
    """The recipient presses 1 (RFC 4733): extension 102, a baresip phone, rings with the campaign's name and
    the recipient's number, answers, and hangs up after a moment; one call, one session, a transfer in its
    session_log."""
    require_binary("baresip")
    server, campaign = env
    scenario = keyed(tmp_path, rfc4733("1"))
    actions = {"1": {"action": "connect", "target_type": "user", "target": "102"}}
    async with (
        SippProcess.running(carrier(scenario, port), tmp_path) as far_end,
        Baresip.start(tmp_path, name="operator") as desk,
    ):
        await far_end.wait_listening()
        await desk.register(Account.on(server.service, "102", answermode="auto"))
        dialling = asyncio.create_task(
            dial(
                server,
                "connect",
                message_prompt_id=campaign.prompt_id,
                repeat=3,
                actions=actions,
                operator_display="Autoinformer Debts",
            )
        )
        incoming = await desk.wait_event("CALL_ESTABLISHED", timeout_s=20.0)  # auto-answered
        await asyncio.sleep(0.5)  # a moment's talk (the SIPp recipient sends no audio to record)
        await desk.hangup()
        result = await asyncio.wait_for(dialling, HTTP_TIMEOUT_S)
        [events] = (await server.calls(ended=1)).values()
        pressing = await far_end.stop()

    assert pressing.ok, pressing.describe()
    assert f"+{NUMBER}" in str(incoming.get("peeruri", ""))  # the recipient's number on the phone
    if "peerdisplayname" in incoming:
        assert incoming["peerdisplayname"] == "Autoinformer Debts"
    assert (result["action"], result["operator_target"], result["operator_answered"]) == (
        "connect",
        "102",
        True,
    )
    sid = broadcast_ids("connect")[0]
    assert {e["session_id"] for e in events} == {sid}
    assert [(e["state"], e.get("request_pin")) for e in events] == [
        ("new", None),
        ("connected", None),
        ("disconnected", None),
        ("calling", "102"),
        ("connected", "102"),
        ("disconnected", "102"),
        ("end", "102"),
    ]
    assert events[2]["disconnect_reason"] == "0"
    rec = await record(tmp_path, sid)
    assert rec.call_kind == "autoinformer"
    assert [entry[1] for entry in rec.session_log] == ["cc", "cd", "tr", "ct", "cc", "cd"]
    assert rec.session_log[2][2] == "102"


async def test_an_operator_who_does_not_answer_ends_the_call(
    env: tuple[Server, Campaign], tmp_path: Path, port: int
) -> None:
    server, campaign = env
    scenario = keyed(tmp_path, rfc4733("1"))
    actions = {"1": {"action": "connect", "target_type": "user", "target": "103"}}
    async with (
        SippProcess.running(carrier(scenario, port), tmp_path) as far_end,
        SippProcess.running(callee_run("uas_ring"), tmp_path) as operator,
    ):
        await far_end.wait_listening()
        await bind(server, "103", operator)
        result = await dial(
            server,
            "nobody",
            message_prompt_id=campaign.prompt_id,
            repeat=3,
            actions=actions,
            operator_timeout_s=2.0,
        )
        await server.calls(ended=1)
        desk = await operator.wait()
        pressing = await far_end.stop()

    assert desk.ok, desk.describe()  # rung, then cancelled
    assert pressing.ok, pressing.describe()
    assert (result["action"], result["operator_answered"]) == ("connect", False)


async def test_the_message_reaches_a_baresip_recipient_as_the_tone_and_the_call_is_recorded(
    tmp_path: Path,
) -> None:
    """baresip answers for the carrier (auto-answer, no registration; its account is the number in the trunk's
    national format, which it must match): what it receives is the message's tone, by frequency; the
    campaign asked for a recording, so the call has one."""
    require_binary("baresip")
    require_binary("sox")
    async with Baresip.start(tmp_path, name="recipient") as phone:
        national = "8" + NUMBER[1:]  # the number as the trunk dials it: baresip's contact user must match it
        account = Account(
            user=national, domain=LOOPBACK, password="unused-secret", regint_s=0, answermode="auto"
        )
        await phone.command("uanew", f"{account.line()};cuser={national}")
        campaign = Campaign(tmp_path, phone.sip_port)

        async def setup(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
            await trunks.create_trunk(
                s,
                domain_id,
                trunks.TrunkInput(
                    name="Carrier",
                    kind="ip",
                    host=LOOPBACK,
                    port=phone.sip_port,
                    allowed_networks=[f"{LOOPBACK}/32"],
                    number_format="national",
                ),
                box=core.box,
            )
            wav = await make_tone(tmp_path / "message.wav", TONE_HZ, 3.0)
            campaign.prompt_id = (await core.prompts.upload(wav.read_bytes())).id

        async with running(tmp_path, env={"VPBX_DEBUG_BROADCAST_TOKEN": TOKEN}, setup=setup) as server:
            result = await dial(server, "heard", message_prompt_id=campaign.prompt_id, record=True)
            await server.calls(ended=1)
            heard = read_wav(phone.recorded("dec")[-1])

    assert result["sip_code"] == 200 and result["played_full"] is True
    middle = heard.window(0.5, 2.0)
    assert rms(middle.samples) > 0.05  # a tone, not silence
    assert dominant_frequency(middle) == pytest.approx(TONE_HZ, rel=TONE_TOLERANCE)
    rec = await record(tmp_path, broadcast_ids("heard")[0])
    assert rec.is_record is True


def write_voice(path: Path, spans: list[tuple[float, float]]) -> Path:
    """A mono 8 kHz 16-bit WAV of (Hz, seconds) spans: 0 Hz is silence; 440 Hz stands for a voice."""
    frames = bytearray()
    for hz, seconds in spans:
        for i in range(int(seconds * 8000)):
            value = round(12000 * math.sin(2 * math.pi * hz * i / 8000)) if hz else 0
            frames += struct.pack("<h", value)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(frames))
    return path


@pytest.mark.parametrize(
    ("voice", "on_machine", "verdict", "played"),
    [
        ([(440, 0.6), (0, 20.0)], "hangup", "human", True),  # «Алло?», then waiting
        ([(440, 6.0), (0, 20.0)], "hangup", "machine", False),  # a long greeting: hung up on
        ([(440, 3.0), (0, 20.0)], "leave_message", "machine", True),  # the message after the greeting
    ],
)
async def test_answering_machine_detection_on_what_a_baresip_recipient_says(
    tmp_path: Path, voice: list[tuple[float, float]], on_machine: str, verdict: str, played: bool
) -> None:
    """The media worker classifies the first seconds baresip sends after answering (a WAV as its
    microphone): a short hello is a human, a long greeting a machine; hang up, or leave the message."""
    require_binary("baresip")
    require_binary("sox")
    source = write_voice(tmp_path / "voice.wav", voice)
    async with Baresip.start(tmp_path, name="recipient", audio_source=source) as phone:
        national = "8" + NUMBER[1:]
        account = Account(
            user=national, domain=LOOPBACK, password="unused-secret", regint_s=0, answermode="auto"
        )
        await phone.command("uanew", f"{account.line()};cuser={national}")
        campaign = Campaign(tmp_path, phone.sip_port)

        async def setup(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
            await trunks.create_trunk(
                s,
                domain_id,
                trunks.TrunkInput(
                    name="Carrier",
                    kind="ip",
                    host=LOOPBACK,
                    port=phone.sip_port,
                    allowed_networks=[f"{LOOPBACK}/32"],
                    number_format="national",
                ),
                box=core.box,
            )
            wav = await make_tone(tmp_path / "message.wav", TONE_HZ, MESSAGE_S)
            campaign.prompt_id = (await core.prompts.upload(wav.read_bytes())).id

        async with running(tmp_path, env={"VPBX_DEBUG_BROADCAST_TOKEN": TOKEN}, setup=setup) as server:
            result = await dial(
                server, "amd", message_prompt_id=campaign.prompt_id, amd={"on_machine": on_machine}
            )

    assert result["sip_code"] == 200
    assert result["amd_result"] == verdict
    assert result["played_full"] is played
    assert (result["listen_s"] > 0) is played
