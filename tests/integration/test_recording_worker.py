"""Recording through a real media worker process (telephony.md §3.10): the worker's relay writes the WAV
with its own thread; ``record_stop`` comes back over the control socket with the file's length.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import wave
from pathlib import Path

import pytest

from tests.integration.peers.audio import Pcm, goertzel_power
from tests.integration.peers.net import wait_until
from tests.integration.test_media_workers import Phone, Recorder, backend, phones, rtp
from tests.unit.media.test_record import frame_of, tone
from vpbx.errors import NoMediaSession
from vpbx.media.g711 import pcm_to_alaw, pcm_to_ulaw
from vpbx.media.recorder import repair_wav
from vpbx.media.relay import LegRef
from vpbx.pbx.bus import SessionId

__all__ = ["phones"]  # the fixture, shared with the worker suite

FRAMES = 75  # 1.5 s per side
WAIT_S = 10.0
FRAME_S = 0.02


def channels_of(path: Path) -> tuple[int, float, list[Pcm]]:
    with wave.open(str(path), "rb") as w:
        n, rate, raw = w.getnchannels(), w.getframerate(), w.readframes(w.getnframes())
        seconds = w.getnframes() / rate
    values = memoryview(raw).cast("h")
    return n, seconds, [Pcm(rate, tuple(v / 32768.0 for v in values[c::n])) for c in range(n)]


async def send_tones(a: Phone, b: Phone, to_a_port: object, to_b_port: object, frames: int = FRAMES) -> None:
    """Alice 440 Hz (PCMU), Bob 1000 Hz (PCMA), paced on absolute deadlines."""
    a_pcm, b_pcm = tone(440, frames), tone(1000, frames)
    start = time.monotonic()
    for i in range(frames):
        a.send(rtp(i + 1, pt=0, payload=pcm_to_ulaw(frame_of(a_pcm, i))), to_a_port)  # type: ignore[arg-type]
        b.send(rtp(i + 1, pt=8, ssrc=0x99, payload=pcm_to_alaw(frame_of(b_pcm, i))), to_b_port)  # type: ignore[arg-type]
        await asyncio.sleep(max(0.0, start + (i + 1) * FRAME_S - time.monotonic()))


async def test_a_worker_records_both_legs_to_a_stereo_wav(
    phones: tuple[Phone, Phone], tmp_path: Path
) -> None:
    a, b = phones
    path = tmp_path / "rec" / "call.wav"
    async with backend(Recorder()) as media:
        session = SessionId("rec-1")
        ports = await media.allocate(session)
        await media.update(LegRef(session, "a"), a.address, 0, 101)
        await media.update(LegRef(session, "b"), b.address, 8, 101)
        await media.record_start(session, path)
        with pytest.raises(ValueError, match="already recording"):
            await media.record_start(session, path)
        await send_tones(a, b, ports.a, ports.b)
        result = await media.record_stop(session)
        assert result is not None and result.path == path and result.channels == 2
        assert await media.record_stop(session) is None
        await media.release(session)
        with pytest.raises(NoMediaSession):
            await media.record_start(SessionId("gone"), path)
    n, seconds, (left, right) = channels_of(path)
    assert n == 2 and seconds == pytest.approx(result.duration_s)
    assert 1.0 <= seconds <= 3.0
    assert goertzel_power(left, 440) > 10 * goertzel_power(left, 1000)
    assert goertzel_power(right, 1000) > 10 * goertzel_power(right, 440)


async def test_release_in_a_worker_finalises_a_mono_recording(
    phones: tuple[Phone, Phone], tmp_path: Path
) -> None:
    a, b = phones
    path = tmp_path / "vm.wav"
    async with backend(Recorder()) as media:
        session = SessionId("rec-2")
        ports = await media.allocate(session)
        await media.update(LegRef(session, "a"), a.address, 0, 101)
        await media.update(LegRef(session, "b"), b.address, 8, 101)
        await media.record_start(session, path, channels="a")
        await send_tones(a, b, ports.a, ports.b)
        await media.release(session)  # no record_stop: the worker finalises the file itself
        with pytest.raises(ValueError, match="absolute"):
            other = SessionId("rec-3")
            await media.allocate(other)
            await media.record_start(other, Path("relative.wav"))
    n, seconds, (mono,) = channels_of(path)  # the header is complete: nframes matches the data
    assert n == 1 and 1.0 <= seconds <= 3.0
    assert goertzel_power(mono, 440) > 10 * goertzel_power(mono, 1000)


async def test_what_a_killed_worker_wrote_can_be_recovered(
    phones: tuple[Phone, Phone], tmp_path: Path
) -> None:
    """The worker dies mid-call: its full 64 KiB buffers are on disk under a header never finalised;
    ``repair_wav`` gives the file the length of what is there (the engine then encodes it)."""
    a, b = phones
    path = tmp_path / "lost.wav"
    async with backend(Recorder()) as media:
        session = SessionId("rec-4")
        ports = await media.allocate(session)
        await media.update(LegRef(session, "a"), a.address, 0, 101)
        await media.update(LegRef(session, "b"), b.address, 8, 101)
        await media.record_start(session, path)
        await send_tones(a, b, ports.a, ports.b, frames=200)  # 4 s: at least one 64 KiB buffer (2 s) written
        worker = media._where[session]
        pid = worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: session not in media._where, timeout_s=WAIT_S, what="the worker's death")
        assert await media.record_stop(session) is None
    with wave.open(str(path), "rb") as w:
        header_frames = w.getnframes()  # what the first write said: nobody finalised it
    frames = repair_wav(path)
    assert frames >= header_frames
    n, seconds, (left, right) = channels_of(path)
    assert n == 2 and frames >= 2 * 8000 and seconds == frames / 8000
    assert goertzel_power(left, 440) > 10 * goertzel_power(left, 1000)
    assert goertzel_power(right, 1000) > 10 * goertzel_power(right, 440)
