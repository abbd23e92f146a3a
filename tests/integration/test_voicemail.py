"""Voicemail with real peers: a carrier (SIPp on 127.0.0.2) calls a line routed to a user's box, speaks (a
440 Hz tone from a pcap, RFC 3551 PCMA) and hangs up. The message is stored as an MP3 that decodes to the tone
for about as long as it was sent, an e-mail with the MP3 reaches a local SMTP sink (aiosmtpd), and Chromium
plays the message in the cabinet."""

from __future__ import annotations

import asyncio
import email
import email.policy
import math
import sqlite3
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tests.integration.peers.audio import _sox, is_tone, read_wav, rms
from tests.integration.peers.net import LOOPBACK, free_ports, wait_until
from tests.integration.peers.process import require_binary
from tests.integration.peers.sipp import run_sipp, scenario_path
from tests.integration.test_calls import running
from tests.integration.test_incoming_calls import CALLER, CARRIER_IP, LINE, carrier_run
from vpbx.app import Core
from vpbx.media.g711 import pcm_to_alaw
from vpbx.pbx import lines, routing, trunks, users
from vpbx.pbx import voicemail as vm
from vpbx.pbx.actions import ActionInput
from vpbx.store.models import User

pytestmark = pytest.mark.peers

TONE_HZ = 440.0
TONE_S = 3.0
MAILBOX = "box102@example.test"
ADMIN_PASSWORD = "Admin-Password-1"
WAIT_S = 30.0


def tone_pcap(path: Path, seconds: float, hz: float) -> Path:
    """RTP (PT 8, PCMA, 20 ms) of a sine in a pcap for SIPp's play_pcap_audio: Ethernet, IPv4, UDP, RTP."""
    frames = int(seconds * 50)
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]  # pcap header, DLT_EN10MB
    for n in range(frames):
        pcm = struct.pack(
            "<160h", *(int(12000 * math.sin(2 * math.pi * hz * (n * 160 + i) / 8000)) for i in range(160))
        )
        rtp = struct.pack("!BBHII", 0x80, 8, n & 0xFFFF, n * 160, 0x1234ABCD) + pcm_to_alaw(pcm)
        udp = struct.pack("!HHHH", 6000, 6002, 8 + len(rtp), 0) + rtp
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), n, 0, 64, 17, 0, bytes(4), bytes(4)) + udp
        frame = bytes(6) + bytes(6) + b"\x08\x00" + ip
        usec = n * 20_000
        out.append(struct.pack("<IIII", usec // 1_000_000, usec % 1_000_000, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))
    return path


def to_voicemail() -> Any:
    """The carrier's IP trunk, the line routed to user 102's box (a short greeting, e-mail with the MP3),
    and an admin for the cabinet."""

    async def setup(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
        await trunks.create_trunk(
            s,
            domain_id,
            trunks.TrunkInput(
                name="Carrier", kind="ip", host=CARRIER_IP, allowed_networks=[f"{CARRIER_IP}/32"]
            ),
            box=core.box,
        )
        number = await lines.create_number(s, domain_id, lines.NumberInput(number=f"+{LINE}"))
        user_id = await s.scalar(select(User.id).where(User.domain_id == domain_id, User.pin == "102"))
        assert user_id is not None
        await vm.save_box(
            s,
            domain_id,
            vm.BoxInput(greeting_text="Говорите.", notify_email=MAILBOX, attach_audio=True),
            core.prompts,
            user_id=user_id,
        )
        await routing.add_rule(
            s,
            domain_id,
            number.id,
            routing.RuleInput(target=ActionInput(action="voicemail", user_id=user_id)),
        )
        await users.create_user(
            s,
            domain_id,
            users.UserInput(
                name="admin", display_name="Admin", pin="100", role="admin", web_password=ADMIN_PASSWORD
            ),
            box=core.box,
        )

    return setup


class Sink:
    """aiosmtpd's handler: every message received, as bytes."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 OK"


def _messages(db: Path) -> list[tuple[str, float, str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "select path, duration_s, caller_number, status from voicemail_messages"
        ).fetchall()


async def _tone_seconds(mp3: Path, tmp: Path) -> tuple[float, float, bool]:
    """(the MP3's length, seconds of it above the noise floor, whether that part is the tone)."""
    wav = tmp / "message.wav"
    await _sox(str(mp3), "-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer", str(wav))
    pcm = read_wav(wav)
    step = pcm.rate // 10  # 100 ms windows
    loud = [
        pcm.samples[i : i + step]
        for i in range(0, len(pcm.samples) - step + 1, step)
        if rms(pcm.samples[i : i + step]) > 0.05
    ]
    voiced = type(pcm)(rate=pcm.rate, samples=tuple(x for w in loud for x in w))
    return pcm.seconds, len(loud) / 10, bool(loud) and is_tone(voiced, TONE_HZ)


async def test_a_message_left_by_a_carrier_caller_is_stored_mailed_and_playable(tmp_path: Path) -> None:
    require_binary("espeak-ng")
    require_binary("chromium")
    from aiosmtpd.controller import Controller

    sink = Sink()
    smtp_port = free_ports(1)[0]
    controller = Controller(sink, hostname=LOOPBACK, port=smtp_port)
    await asyncio.to_thread(controller.start)
    scenario = tmp_path / "uac_voicemail.xml"
    pcap = tone_pcap(tmp_path / "tone.pcap", TONE_S, TONE_HZ)
    scenario.write_text(scenario_path("uac_voicemail").read_text().replace("AUDIO_PCAP", str(pcap)))
    env = {
        "VPBX_SMTP_HOST": LOOPBACK,
        "VPBX_SMTP_PORT": str(smtp_port),
        "VPBX_SMTP_FROM": "pbx@peers.vpbx.test",
    }
    data = tmp_path / "vpbx" / "data"
    try:
        async with running(tmp_path, env=env, setup=to_voicemail()) as server:
            caller = await run_sipp(
                carrier_run(server, calls=1, scenario=scenario, duration_ms=int(TONE_S * 1000) + 1000),
                tmp_path,
            )
            assert caller.ok, caller.describe()
            [events] = (await server.calls(ended=1)).values()
            await wait_until(
                lambda: bool(_messages(data / "vpbx.sqlite3")), timeout_s=WAIT_S, what="the saved message"
            )
            await wait_until(lambda: bool(sink.messages), timeout_s=WAIT_S, what="the e-mail at the sink")
            [(name, duration, number, status)] = _messages(data / "vpbx.sqlite3")
            played = await _played_in_cabinet(server.vpbx.http_url, server.service.domain)
    finally:
        await asyncio.to_thread(controller.stop)

    assert [e["state"] for e in events] == ["new", "end"]  # answered by the box, no one else rang
    assert status == "ready" and number == f"+{CALLER}"
    mp3 = data / "voicemail" / name
    length, voiced, tone = await _tone_seconds(mp3, tmp_path)
    assert abs(length - duration) < 0.5
    assert TONE_S - 0.6 <= voiced <= TONE_S + 0.3, f"{voiced} s of tone in {length} s"
    assert tone, "the message is the caller's 440 Hz tone"

    [raw] = sink.messages
    mail = email.message_from_bytes(raw, policy=email.policy.default)
    assert mail["To"] == MAILBOX and CALLER in str(mail["Subject"])
    [attachment] = list(mail.iter_attachments())  # type: ignore[attr-defined]
    assert attachment.get_content_type() == "audio/mpeg"
    assert attachment.get_content() == mp3.read_bytes()
    assert played > duration - 0.5


async def _played_in_cabinet(url: str, domain: str) -> float:
    """Chromium logs in as the admin, opens the box and lets the <audio> load the MP3: its duration."""
    from playwright.async_api import async_playwright

    from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page()
            page.set_default_timeout(10_000)
            await page.goto(f"{url}/login")
            await page.fill("#f-login", f"admin@{domain}")
            await page.fill("#f-password", ADMIN_PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_url(f"{url}/")
            await page.goto(f"{url}/voicemail")
            await page.click("a[id^=open-]")
            audio = page.locator("audio[id^=audio-]")
            script = """a => new Promise(done => {
                a.addEventListener("loadedmetadata", () => done(a.duration));
                a.addEventListener("error", () => done(-1));
                a.preload = "auto";
                a.load();
            })"""
            async with asyncio.timeout(10):
                duration: float = await audio.evaluate(script)
            return duration
        finally:
            await browser.close()
