"""The player (telephony.md §3.9, §3.10) on the inline backend and in a worker process: a sox-made tone prompt
reaches a phone's UDP socket as paced RTP (20 ms frames, timestamps +160, one SSRC, marker first, the tone
in the leg's law), ``play_done`` fires, ``stop_play`` stops, the other phone's media is held back while the
prompt plays and joins the same stream (marker, continuous numbers) after it, and digits keep coming.

The phones are UDP sockets of this process on loopback; every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from tests.integration.peers.audio import Pcm, dominant_frequency, is_tone
from tests.integration.peers.net import free_port_block, wait_until
from vpbx.clock import SystemClock
from vpbx.errors import NoMediaSession
from vpbx.media.backend import InlineMediaBackend, WorkerMediaBackend
from vpbx.media.dtmf import Digit, digit_payloads
from vpbx.media.g711 import alaw_to_pcm, ulaw_to_pcm
from vpbx.media.prompts import Prompt, PromptStore
from vpbx.media.relay import Address, LegRef
from vpbx.media.rtp import PT_PCMA, PT_PCMU, RtpPacket, parse_packet, serialize_packet
from vpbx.pbx.bus import SessionId

WAIT_S = 10.0
RECV_TIMEOUT_S = 2.0
TONE_HZ = 440.0
TONE_S = 1.0
SESSION = SessionId("00000000-0000-4000-8000-0000000000aa")
A = LegRef(SESSION, "a")
B = LegRef(SESSION, "b")
FROM_B = b"\x2a" * 160  # what phone B says: never a byte of the tone prompt's frames in a row

Backend = InlineMediaBackend | WorkerMediaBackend


class Phone:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.seq = 500

    @property
    def address(self) -> Address:
        host, port = self.sock.getsockname()
        return Address(host, port)

    def send(
        self, to: Address, *, pt: int, payload: bytes, ssrc: int = 0x5151, ts: int | None = None
    ) -> None:
        self.seq += 1
        pkt = RtpPacket(
            payload_type=pt,
            sequence_number=self.seq,
            timestamp=self.seq * 160 if ts is None else ts,
            ssrc=ssrc,
            payload=payload,
        )
        self.sock.sendto(serialize_packet(pkt), (to.host, to.port))

    async def recv(self) -> RtpPacket:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(RECV_TIMEOUT_S):
            return parse_packet(await loop.sock_recv(self.sock, 2048))

    def close(self) -> None:
        self.sock.close()


class Events:
    def __init__(self) -> None:
        self.done: list[LegRef] = []
        self.digits: list[tuple[LegRef, Digit]] = []

    def on_play_done(self, leg: LegRef) -> None:
        self.done.append(leg)

    def on_dtmf(self, leg: LegRef, digit: Digit) -> None:
        self.digits.append((leg, digit))


@contextlib.asynccontextmanager
async def make_backend(kind: str, events: Events) -> AsyncIterator[Backend]:
    first = free_port_block(9)
    first += first & 1
    ports = (first, first + 7)
    media: Backend
    if kind == "inline":
        media = InlineMediaBackend(
            ports=ports,
            bind_host="127.0.0.1",
            clock=SystemClock(),
            check_interval_s=0.1,
            on_play_done=events.on_play_done,
            on_dtmf=events.on_dtmf,
        )
    else:
        media = WorkerMediaBackend(
            ports=ports,
            workers=1,
            bind_host="127.0.0.1",
            check_interval_s=0.1,
            on_play_done=events.on_play_done,
            on_dtmf=events.on_dtmf,
            log_level="warning",
        )
        await media.start()
    try:
        yield media
    finally:
        await media.aclose()


@pytest.fixture(scope="module")
def tone_prompt(tmp_path_factory: pytest.TempPathFactory) -> Prompt:
    root = tmp_path_factory.mktemp("prompts")

    async def make() -> Prompt:
        src = root / "tone.wav"
        proc = await asyncio.create_subprocess_exec(
            "sox",
            "-n",
            "-r",
            "8000",
            "-c",
            "1",
            "-b",
            "16",
            str(src),
            "synth",
            str(TONE_S),
            "sine",
            str(TONE_HZ),
        )
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
        return await PromptStore(root / "store").upload(src.read_bytes())

    return asyncio.run(make())


@pytest.fixture(params=["inline", "worker"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def phones() -> Iterator[tuple[Phone, Phone]]:
    a, b = Phone(), Phone()
    yield a, b
    a.close()
    b.close()


async def bridge(media: Backend, a: Phone, b: Phone, *, law_a: int = PT_PCMA) -> tuple[Address, Address]:
    ports = await media.allocate(SESSION)
    await media.update(A, a.address, law_a, 101)
    await media.update(B, b.address, law_a, 101)  # one law: bob's bytes reach alice unchanged
    return ports.a, ports.b


def decode(packets: list[RtpPacket]) -> Pcm:
    data = b"".join(p.payload for p in packets)
    pcm = alaw_to_pcm(data) if packets[0].payload_type == PT_PCMA else ulaw_to_pcm(data)
    values = struct.unpack(f"<{len(pcm) // 2}h", pcm)
    return Pcm(8000, tuple(v / 32768.0 for v in values))


async def receive_until(phone: Phone, stop: Callable[[RtpPacket], bool]) -> list[RtpPacket]:
    got: list[RtpPacket] = []
    while True:
        pkt = await phone.recv()
        got.append(pkt)
        if stop(pkt):
            return got


@pytest.mark.parametrize("law", [PT_PCMA, PT_PCMU])
async def test_a_prompt_reaches_the_phone_as_paced_rtp(
    kind: str, law: int, tone_prompt: Prompt, phones: tuple[Phone, Phone]
) -> None:
    alice, bob = phones
    events = Events()
    async with make_backend(kind, events) as media:
        _port_a, port_b = await bridge(media, alice, bob, law_a=law)
        await media.play(A, tone_prompt)
        got: list[RtpPacket] = []
        while not events.done:
            try:
                got.append(await alice.recv())
            except TimeoutError:
                break
            # phone B talks throughout: none of it may reach alice while the prompt plays
            bob.send(port_b, pt=law, payload=FROM_B)
            await asyncio.sleep(0)  # one loop turn so the inline relay reads bob's packet
        await wait_until(lambda: events.done == [A], timeout_s=WAIT_S, what="play_done")

        frames = round(tone_prompt.duration_s / 0.02)
        prompt = [p for p in got if p.payload != FROM_B]
        assert all(p.payload != FROM_B for p in got), "media from the other leg reached a playing leg"
        assert frames - 2 <= len(prompt) <= frames
        assert {p.ssrc for p in prompt} == {prompt[0].ssrc}
        assert {p.payload_type for p in prompt} == {law}
        assert [p.marker for p in prompt] == [True] + [False] * (len(prompt) - 1)
        assert all(
            (q.sequence_number - p.sequence_number) % 65536 == 1 for p, q in itertools.pairwise(prompt)
        )
        assert all((q.timestamp - p.timestamp) % 2**32 == 160 for p, q in itertools.pairwise(prompt))
        assert is_tone(decode(prompt), TONE_HZ), dominant_frequency(decode(prompt))

        # after the prompt, the bridge resumes on the same stream: same SSRC, next seq, marker set
        bob.send(port_b, pt=law, payload=FROM_B)
        resumed = await receive_until(alice, lambda p: p.payload == FROM_B)
        pkt = resumed[-1]
        assert pkt.ssrc == prompt[0].ssrc and pkt.marker
        last = prompt[-1] if len(resumed) == 1 else resumed[-2]
        assert (pkt.sequence_number - last.sequence_number) % 65536 == 1
        assert 0 < (pkt.timestamp - last.timestamp) % 2**32 < 2**31
        assert events.done == [A]
        stats = await media.stats(SESSION)
        assert stats.a.tx_packets >= len(prompt) + 1


async def test_stop_play_stops_a_looping_prompt(
    kind: str, tone_prompt: Prompt, phones: tuple[Phone, Phone]
) -> None:
    alice, bob = phones
    events = Events()
    law = PT_PCMA
    async with make_backend(kind, events) as media:
        _port_a, port_b = await bridge(media, alice, bob)
        await media.play(A, tone_prompt, loop=True)
        loops = round(tone_prompt.duration_s / 0.02) + 10
        got = [await alice.recv() for _ in range(loops)]  # past the end of the audio: it loops
        assert all((q.timestamp - p.timestamp) % 2**32 == 160 for p, q in itertools.pairwise(got))
        assert events.done == []
        assert await media.stop_play(A) is True
        assert await media.stop_play(A) is False
        # what was in flight may still arrive; then only bob's media, all of it
        for _ in range(5):
            bob.send(port_b, pt=law, payload=FROM_B)
        await receive_until(alice, lambda p: p.payload == FROM_B)
        after = [await alice.recv() for _ in range(4)]
        assert all(p.payload == FROM_B for p in after)
        assert events.done == []  # stopping is not finishing
        with pytest.raises(NoMediaSession):
            await media.play(LegRef(SessionId("nope"), "a"), tone_prompt)


async def test_digits_are_reported_while_a_prompt_plays(
    kind: str, tone_prompt: Prompt, phones: tuple[Phone, Phone]
) -> None:
    alice, bob = phones
    events = Events()
    async with make_backend(kind, events) as media:
        port_a, _port_b = await bridge(media, alice, bob)
        await media.play(A, tone_prompt, loop=True)
        await alice.recv()
        for payload in digit_payloads("7"):
            alice.send(port_a, pt=101, payload=payload, ts=80_000)  # one timestamp per event (RFC 4733)
        await wait_until(lambda: bool(events.digits), timeout_s=WAIT_S, what="the digit")
        leg, digit = events.digits[0]
        assert leg == A and digit.digit == "7" and digit.ended
        assert await media.stop_play(A) is True


async def test_a_new_prompt_replaces_the_playing_one_and_release_ends_it(
    kind: str, tone_prompt: Prompt, phones: tuple[Phone, Phone]
) -> None:
    alice, bob = phones
    events = Events()
    async with make_backend(kind, events) as media:
        await bridge(media, alice, bob)
        await media.play(A, tone_prompt, loop=True)
        first = await alice.recv()
        await media.play(A, tone_prompt)  # replaces the looping one: a new start, marker set again
        pkt = await receive_until(alice, lambda p: p.marker)
        assert pkt[-1].ssrc == first.ssrc
        await wait_until(lambda: events.done == [A], timeout_s=WAIT_S, what="play_done of the second")
        await media.play(B, tone_prompt, loop=True)
        await bob.recv()
        await media.release(SESSION)  # closing ends the prompt quietly
        assert events.done == [A]
