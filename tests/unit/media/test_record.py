"""Recording (telephony.md §3.10): the capture core on the media clock, and the relay recording real UDP
legs on loopback into a WAV written by its own thread.

Every wait is for the packet counter or the writer's future, bounded; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import math
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.peers.audio import Pcm, goertzel_power
from tests.unit.media.test_relay import S1, S2, Phones, free_range, wait_until
from vpbx.clock import FakeClock
from vpbx.errors import NoMediaSession, RecordingFailed
from vpbx.media import InlineMediaBackend, LegRef
from vpbx.media.capture import CHUNK_BYTES, FRAME_SAMPLES, SAMPLE_RATE, Capture, WavWriter, interleave
from vpbx.media.g711 import alaw_to_pcm, pcm_to_alaw, pcm_to_ulaw
from vpbx.media.rtp import PT_PCMA, PT_PCMU

WAIT_S = 2.0
FRAME_S = FRAME_SAMPLES / SAMPLE_RATE


def tone(freq: float, frames: int, *, start_frame: int = 0, amplitude: int = 12000) -> bytes:
    """s16 PCM of a sine, ``frames`` × 20 ms, phase-continuous from ``start_frame``."""
    first = start_frame * FRAME_SAMPLES
    return b"".join(
        int(amplitude * math.sin(2 * math.pi * freq * (first + i) / SAMPLE_RATE)).to_bytes(
            2, "little", signed=True
        )
        for i in range(frames * FRAME_SAMPLES)
    )


def frame_of(pcm: bytes, i: int) -> bytes:
    return pcm[i * FRAME_SAMPLES * 2 : (i + 1) * FRAME_SAMPLES * 2]


def channels_of(path: Path) -> tuple[int, list[Pcm]]:
    """(channel count, one Pcm per channel) of a 16-bit WAV."""
    with wave.open(str(path), "rb") as w:
        n, rate, raw = w.getnchannels(), w.getframerate(), w.readframes(w.getnframes())
    values = memoryview(raw).cast("h")
    return n, [Pcm(rate, tuple(v / 32768.0 for v in values[c::n])) for c in range(n)]


def wav_samples(path: Path) -> int:
    with wave.open(str(path), "rb") as w:
        return w.getnframes()


# --- the capture core -----------------------------------------------------------------------------------


def test_frames_land_by_timestamp_on_the_media_clock_with_silence_in_gaps(tmp_path: Path) -> None:
    cap = Capture(tmp_path / "x.wav", start=100.0)
    a_pcm = tone(440, 10)
    b_pcm = tone(1000, 10)
    # A sends frames 0..9 except 4 (lost); B starts 3 frames late and sends 3..9
    for i in range(10):
        now = 100.0 + i * FRAME_S + 0.001
        if i != 4:
            cap.feed("a", pcm_to_alaw(frame_of(a_pcm, i)), PT_PCMA, 5000 + i * FRAME_SAMPLES, 7, now)
        if i >= 3:
            cap.feed("b", pcm_to_ulaw(frame_of(b_pcm, i)), PT_PCMU, 90 + (i - 3) * FRAME_SAMPLES, 9, now)
    cap.finish(100.0 + 10 * FRAME_S)
    data = b"".join(cap.take_chunks())
    assert cap.frames == 10 and len(data) == 10 * FRAME_SAMPLES * 4
    stereo = memoryview(data).cast("h")
    left, right = stereo[0::2], stereo[1::2]
    fs = FRAME_SAMPLES
    assert not any(left[4 * fs : 5 * fs]), "the lost frame is silence"
    assert any(left[5 * fs : 6 * fs])
    assert not any(right[: 3 * fs]), "B sent nothing yet: silence"
    assert any(right[3 * fs : 4 * fs])
    # G.711 round trip keeps the waveform close: the A channel is the 440 Hz tone, in place
    want = memoryview(a_pcm).cast("h")
    assert max(abs(left[i] - want[i]) for i in range(fs, 2 * fs)) < 600


def test_reordered_packets_fall_into_place(tmp_path: Path) -> None:
    cap = Capture(tmp_path / "x.wav", start=0.0, channels="a")
    frames = [bytes([0x80 + i]) * FRAME_SAMPLES for i in range(4)]  # distinct A-law values per frame
    order = [0, 2, 1, 3]
    for k, i in enumerate(order):
        cap.feed("a", frames[i], PT_PCMA, i * FRAME_SAMPLES, 1, 0.001 + k * FRAME_S)
    cap.finish(4 * FRAME_S)
    mono = memoryview(b"".join(cap.take_chunks())).cast("h")
    got = [mono[i * FRAME_SAMPLES + FRAME_SAMPLES // 2] for i in range(4)]
    want = [memoryview(alaw_to_pcm(f)).cast("h")[0] for f in frames]
    assert got == want and len(set(want)) == 4


def test_a_new_ssrc_or_a_timestamp_jump_reanchors_at_arrival(tmp_path: Path) -> None:
    cap = Capture(tmp_path / "x.wav", start=0.0, channels="a")
    cap.feed("a", b"\x80" * FRAME_SAMPLES, PT_PCMA, 1000, 1, 0.0)
    cap.feed("a", b"\x80" * FRAME_SAMPLES, PT_PCMA, 1000 + 8000 * 60, 1, FRAME_S)  # jumps a minute ahead
    cap.feed("a", b"\x80" * FRAME_SAMPLES, PT_PCMA, 77, 2, 2 * FRAME_S)  # another source
    cap.finish(3 * FRAME_S)
    assert cap.frames == 3, "nothing was placed a minute away"
    mono = memoryview(b"".join(cap.take_chunks())).cast("h")
    assert all(mono[i * FRAME_SAMPLES] != 0 for i in range(3))


def test_mono_a_ignores_the_b_leg_and_other_payload_types(tmp_path: Path) -> None:
    cap = Capture(tmp_path / "x.wav", start=0.0, channels="a")
    cap.feed("b", b"\x80" * FRAME_SAMPLES, PT_PCMA, 0, 1, 0.0)
    cap.feed("a", b"\x01" * 4, 101, 0, 1, 0.0)  # telephone-event or anything not G.711
    cap.finish(FRAME_S)
    assert cap.nchannels == 1 and cap.frames == 1
    assert not any(memoryview(b"".join(cap.take_chunks())).cast("h"))


def test_final_audio_leaves_in_full_64k_chunks(tmp_path: Path) -> None:
    cap = Capture(tmp_path / "x.wav", start=0.0)
    seconds = 5
    for i in range(seconds * 50):
        cap.feed("a", b"\x80" * FRAME_SAMPLES, PT_PCMA, i * FRAME_SAMPLES, 1, i * FRAME_S)
    chunks = cap.take_chunks()
    assert chunks and all(len(c) >= CHUNK_BYTES for c in chunks)
    cap.advance(seconds + 1.0)  # nobody sends: the clock still moves the file on (silence)
    cap.finish(seconds + 1.0)
    assert cap.frames == (seconds + 1) * 50


def test_interleave_puts_a_left_and_b_right() -> None:
    left = (1).to_bytes(2, "little", signed=True) * 3
    right = (-2).to_bytes(2, "little", signed=True) * 3
    assert list(memoryview(interleave(left, right)).cast("h")) == [1, -2] * 3


def test_capture_refuses_unknown_channel_layouts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="channels"):
        Capture(tmp_path / "x.wav", start=0.0, channels="b")  # type: ignore[arg-type]


# --- the writer thread ----------------------------------------------------------------------------------


async def test_writer_makes_directories_and_finalises_the_header(tmp_path: Path) -> None:
    writer = WavWriter()
    try:
        path = tmp_path / "d" / "2026" / "01" / "r.wav"
        h = writer.open(path, 2)
        writer.write(h, bytes(4 * 8000))
        result = await asyncio.wait_for(asyncio.wrap_future(writer.close(h)), WAIT_S)
    finally:
        writer.stop()
    assert result.path == path and result.frames == 50 and result.duration_s == pytest.approx(1.0)
    assert wav_samples(path) == 8000


async def test_writer_reports_a_file_it_could_not_open(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    writer = WavWriter()
    try:
        h = writer.open(blocker / "r.wav", 2)  # its parent is a file
        writer.write(h, bytes(400))
        with pytest.raises(OSError):
            await asyncio.wait_for(asyncio.wrap_future(writer.close(h)), WAIT_S)
    finally:
        writer.stop()


# --- the relay, real UDP legs -----------------------------------------------------------------------------


@pytest.fixture
async def phones() -> AsyncIterator[Phones]:
    p = Phones()
    yield p
    p.close()
    await asyncio.sleep(0)


@pytest.fixture
async def media() -> AsyncIterator[tuple[InlineMediaBackend, FakeClock]]:
    clock = FakeClock()
    backend = InlineMediaBackend(ports=free_range(8), advertise_host="127.0.0.1", clock=clock)
    yield backend, clock
    await backend.aclose()


async def talk(
    backend: InlineMediaBackend, clock: FakeClock, phones: Phones, *, a_pt: int, b_pt: int, frames: int
) -> None:
    """A call where Alice sends 440 Hz and Bob 1000 Hz, ``frames`` × 20 ms each, on the fake media clock."""
    ports = await backend.allocate(S1)
    alice, bob = await phones.new(), await phones.new()
    await backend.update(LegRef(S1, "a"), alice.address, a_pt, 101)
    await backend.update(LegRef(S1, "b"), bob.address, b_pt, 101)
    a_pcm, b_pcm = tone(440, frames), tone(1000, frames)
    enc = {PT_PCMA: pcm_to_alaw, PT_PCMU: pcm_to_ulaw}
    rs = backend.relay.get(S1)
    for i in range(frames):
        alice.send(ports.a, pt=a_pt, payload=enc[a_pt](frame_of(a_pcm, i)))
        bob.send(ports.b, pt=b_pt, payload=enc[b_pt](frame_of(b_pcm, i)), ssrc=0x55)
        await wait_until(lambda i=i: rs.a.rx_packets == i + 1 and rs.b.rx_packets == i + 1)  # type: ignore[misc]
        clock.advance(FRAME_S)


async def test_relay_records_both_legs_in_stereo(
    media: tuple[InlineMediaBackend, FakeClock], phones: Phones, tmp_path: Path
) -> None:
    backend, clock = media
    path = tmp_path / "rec" / "call.wav"
    await backend.allocate(S1)
    await backend.record_start(S1, path)
    await talk(backend, clock, phones, a_pt=PT_PCMA, b_pt=PT_PCMU, frames=100)
    result = await backend.record_stop(S1)
    assert result is not None and result.path == path and result.channels == 2
    assert result.frames == 100 and result.duration_s == pytest.approx(2.0)
    n, (left, right) = channels_of(path)
    assert n == 2
    assert goertzel_power(left, 440) > 10 * goertzel_power(left, 1000)
    assert goertzel_power(right, 1000) > 10 * goertzel_power(right, 440)
    assert not backend.relay.recording(S1)
    assert await backend.record_stop(S1) is None  # stopping twice: nothing more


async def test_relay_records_the_a_leg_alone_for_voicemail(
    media: tuple[InlineMediaBackend, FakeClock], phones: Phones, tmp_path: Path
) -> None:
    backend, clock = media
    path = tmp_path / "vm.wav"
    await backend.allocate(S1)
    await backend.record_start(S1, path, channels="a")
    await talk(backend, clock, phones, a_pt=PT_PCMU, b_pt=PT_PCMU, frames=50)
    result = await backend.record_stop(S1)
    assert result is not None and result.channels == 1 and result.frames == 50
    n, (mono,) = channels_of(path)
    assert n == 1 and goertzel_power(mono, 440) > 10 * goertzel_power(mono, 1000)


async def test_silence_fills_the_file_while_nobody_sends(
    media: tuple[InlineMediaBackend, FakeClock], tmp_path: Path
) -> None:
    backend, clock = media
    path = tmp_path / "quiet.wav"
    await backend.allocate(S1)
    await backend.record_start(S1, path)
    for _ in range(5):  # the watchdog's tick moves the recording on
        clock.advance(1.0)
        backend.check()
    result = await backend.record_stop(S1)
    assert result is not None and result.duration_s == pytest.approx(5.0)
    _, chans = channels_of(path)
    assert all(not any(c.samples) for c in chans)


async def test_release_stops_the_recording_and_finalises_the_file(
    media: tuple[InlineMediaBackend, FakeClock], phones: Phones, tmp_path: Path
) -> None:
    backend, clock = media
    path = tmp_path / "released.wav"
    await backend.allocate(S1)
    await backend.record_start(S1, path)
    await talk(backend, clock, phones, a_pt=PT_PCMA, b_pt=PT_PCMA, frames=25)
    await backend.release(S1)
    writer = backend.relay.writer
    done = writer.close(0)  # a sentinel behind the release's close in the writer's queue
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(asyncio.wrap_future(done), WAIT_S)
    assert wav_samples(path) == 25 * FRAME_SAMPLES
    assert await backend.record_stop(S1) is None  # gone with the session


async def test_recording_twice_or_an_unknown_session_is_refused(
    media: tuple[InlineMediaBackend, FakeClock], tmp_path: Path
) -> None:
    backend, _ = media
    await backend.allocate(S1)
    await backend.record_start(S1, tmp_path / "one.wav")
    with pytest.raises(ValueError, match="already recording"):
        await backend.record_start(S1, tmp_path / "two.wav")
    with pytest.raises(NoMediaSession):
        await backend.record_start(S2, tmp_path / "three.wav")
    assert await backend.record_stop(S2) is None


async def test_a_recording_that_cannot_be_written_fails_on_stop(
    media: tuple[InlineMediaBackend, FakeClock], tmp_path: Path
) -> None:
    backend, _ = media
    (tmp_path / "file").write_bytes(b"")
    await backend.allocate(S1)
    await backend.record_start(S1, tmp_path / "file" / "r.wav")
    with pytest.raises(RecordingFailed):
        await backend.record_stop(S1)
