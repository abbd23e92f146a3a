"""Recording files: WAV → MP3 (mono mixdown, 32 kbit/s CBR, duration checked) in the process pool, and the
local recording store's names. The MP3 is decoded back with sox (libsox-fmt-mp3) and checked by frequency.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import uuid
import wave
from pathlib import Path

import pytest

from tests.integration.peers.audio import goertzel_power, read_wav
from tests.unit.media.test_record import tone
from vpbx.errors import RecordingFailed
from vpbx.media.capture import interleave
from vpbx.media.recorder import LocalRecordingStore, Mp3Encoder, encode_mp3, mp3_duration

SOX_TIMEOUT_S = 30


def write_wav(path: Path, channels: int, pcm: bytes, *, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return path


def stereo_call(path: Path, seconds: int) -> Path:
    frames = seconds * 50
    return write_wav(path, 2, interleave(tone(440, frames), tone(1000, frames)))


def decode(mp3: Path, wav: Path) -> Path:
    subprocess.run(
        ["sox", str(mp3), "-r", "8000", "-c", "1", "-b", "16", str(wav)], check=True, timeout=SOX_TIMEOUT_S
    )
    return wav


def test_a_stereo_call_becomes_a_mono_mp3_with_both_parties(tmp_path: Path) -> None:
    wav = stereo_call(tmp_path / "call.wav", 3)
    mp3 = tmp_path / "out" / "call.mp3"
    duration = encode_mp3(wav, mp3)
    assert duration == pytest.approx(3.0)
    data = mp3.read_bytes()
    assert 2.9 <= mp3_duration(data) <= 3.5
    assert abs(len(data) * 8 / 32_000 - 3.0) < 0.5  # 32 kbit/s CBR
    assert not (tmp_path / "out" / "call.mp3.part").exists()
    pcm = read_wav(decode(mp3, tmp_path / "back.wav")).window(0.5, 2.0)
    p440, p1000, p700 = goertzel_power(pcm, 440), goertzel_power(pcm, 1000), goertzel_power(pcm, 700)
    assert p440 > 20 * p700 and p1000 > 20 * p700, (p440, p1000, p700)


def test_a_mono_recording_is_encoded_as_it_is(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "vm.wav", 1, tone(440, 100))
    mp3 = tmp_path / "vm.mp3"
    assert encode_mp3(wav, mp3) == pytest.approx(2.0)
    pcm = read_wav(decode(mp3, tmp_path / "back.wav")).window(0.3, 1.4)
    assert goertzel_power(pcm, 440) > 20 * goertzel_power(pcm, 1000)


def test_a_truncated_wav_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    wav = stereo_call(tmp_path / "call.wav", 2)
    data = wav.read_bytes()
    wav.write_bytes(data[: len(data) // 2])  # the header still says 2 s
    mp3 = tmp_path / "call.mp3"
    with pytest.raises(RecordingFailed):
        encode_mp3(wav, mp3)
    assert not mp3.exists() and not (tmp_path / "call.mp3.part").exists()


def test_a_wav_that_is_not_ours_is_refused(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "cd.wav", 2, bytes(4 * 4410), rate=44100)
    with pytest.raises(RecordingFailed, match="8 kHz"):
        encode_mp3(wav, tmp_path / "cd.mp3")
    (tmp_path / "junk.wav").write_bytes(b"not a wav")
    with pytest.raises(RecordingFailed):
        encode_mp3(tmp_path / "junk.wav", tmp_path / "junk.mp3")


def test_mp3_duration_walks_frames_and_skips_junk() -> None:
    header = bytes([0xFF, 0xE3, 0x48, 0xC4])  # MPEG-2.5 layer III, 32 kbit/s, 8 kHz, no padding: 288 octets
    frame = header + bytes(288 - 4)
    assert mp3_duration(b"junk" + frame * 10) == pytest.approx(10 * 576 / 8000)
    assert mp3_duration(b"") == 0.0


async def test_the_pool_encodes_off_the_loop_and_reports_failures(tmp_path: Path) -> None:
    encoder = Mp3Encoder(workers=1, timeout_s=30.0)
    try:
        wav = stereo_call(tmp_path / "call.wav", 2)
        assert await encoder.encode(wav, tmp_path / "call.mp3") == pytest.approx(2.0)
        with pytest.raises(RecordingFailed):
            await encoder.encode(tmp_path / "missing.wav", tmp_path / "missing.mp3")
    finally:
        await asyncio.wait_for(encoder.aclose(), 30.0)


def test_local_store_names_by_domain_and_month_and_refuses_escapes(tmp_path: Path) -> None:
    store = LocalRecordingStore(tmp_path / "recordings")
    domain = uuid.UUID("11111111-1111-4111-8111-111111111111")
    name = store.new_name(domain, "abc-123/../x", dt.datetime(2026, 3, 9, tzinfo=dt.UTC))
    assert name == f"{domain}/2026/03/abc-123x.mp3"
    assert (
        store.path(name) == (tmp_path / "recordings").resolve() / str(domain) / "2026" / "03" / "abc-123x.mp3"
    )
    assert store.wav_path(name).suffix == ".wav"
    for bad in ("../etc/passwd", "/etc/passwd", ""):
        with pytest.raises(ValueError):
            store.path(bad)
    store.path(name).parent.mkdir(parents=True)
    store.path(name).write_bytes(b"x")
    store.wav_path(name).write_bytes(b"y")
    store.delete(name)
    store.delete(name)  # twice: harmless
    assert not store.path(name).exists() and not store.wav_path(name).exists()
