"""Prompts with the real converters (telephony.md §3.10, §7.4): sox-made WAV and MP3 tones are stored as
8 kHz mono s16 WAV plus A-law and µ-law payloads with the tone's frequency intact; corrupt, too long and
stuck conversions are refused with nothing stored; espeak-ng speaks Russian and English once per phrase."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

from tests.integration.peers.audio import Pcm, dominant_frequency, is_tone, read_wav, rms
from vpbx.media.g711 import alaw_to_pcm, ulaw_to_pcm
from vpbx.media.prompts import Prompt, PromptError, PromptStore, SystemPhrase

SOX_TIMEOUT_S = 30.0


async def sox(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "sox", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    async with asyncio.timeout(SOX_TIMEOUT_S):
        out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode(errors="replace")


async def tone(path: Path, hz: float, seconds: float, *, rate: int, channels: int) -> bytes:
    await sox("-n", "-r", str(rate), "-c", str(channels), str(path), "synth", str(seconds), "sine", str(hz))
    return await asyncio.to_thread(path.read_bytes)


def pcm_of(data: bytes) -> Pcm:
    values = struct.unpack(f"<{len(data) // 2}h", data)
    return Pcm(8000, tuple(v / 32768.0 for v in values))


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def assert_tone_everywhere(prompt: Prompt, hz: float) -> None:
    wav = read_wav(prompt.wav)
    assert wav.rate == 8000
    assert is_tone(wav, hz), dominant_frequency(wav)
    assert is_tone(pcm_of(alaw_to_pcm(prompt.pcma.read_bytes())), hz)
    assert is_tone(pcm_of(ulaw_to_pcm(prompt.pcmu.read_bytes())), hz)
    assert rms(wav.samples) > 0.3  # peak-normalised to -3 dBFS: a sine's RMS is about 0.5


async def test_wav_upload_becomes_8_khz_mono_with_the_same_tone(tmp_path: Path) -> None:
    store = PromptStore(tmp_path / "prompts")
    data = await tone(tmp_path / "in.wav", 1000, 2.0, rate=44100, channels=2)
    prompt = await store.upload(data)
    assert prompt.wav.parent == (tmp_path / "prompts").resolve() and prompt.wav.name == f"{prompt.id}.wav"
    with prompt.wav.open("rb") as f:
        head = f.read(44)
    assert struct.unpack_from("<HHIIHH", head, 20) == (1, 1, 8000, 16000, 2, 16)  # PCM, mono, 8 kHz, s16
    assert prompt.duration_s == pytest.approx(2.0, abs=0.02)
    assert prompt.pcma.stat().st_size == prompt.pcmu.stat().st_size == round(prompt.duration_s * 8000)
    assert prompt.pcma.stat().st_size % 160 == 0  # whole 20 ms frames
    assert_tone_everywhere(prompt, 1000)
    assert store.get(prompt.id) == prompt
    again = await store.upload(data)
    assert again == prompt and len(stored_files(tmp_path / "prompts")) == 3  # content-addressed


async def test_mp3_upload_is_decoded(tmp_path: Path) -> None:
    store = PromptStore(tmp_path / "prompts")
    data = await tone(tmp_path / "in.mp3", 440, 2.0, rate=44100, channels=2)
    assert data[:3] == b"ID3" or data[0] == 0xFF
    prompt = await store.upload(data)
    assert prompt.duration_s == pytest.approx(2.0, abs=0.1)  # MP3 adds encoder delay and padding
    assert_tone_everywhere(prompt, 440)


@pytest.mark.parametrize("suffix", ["wav", "mp3"])
async def test_a_corrupt_file_is_refused_and_nothing_is_stored(tmp_path: Path, suffix: str) -> None:
    store = PromptStore(tmp_path / "prompts")
    good = await tone(tmp_path / f"in.{suffix}", 440, 1.0, rate=8000, channels=1)
    # the header survives (it is sniffed as its format), the stream behind it is scrambled
    head = 12 if suffix == "wav" else 3
    corrupt = good[:head] + bytes((b * 7 + 13) & 0xFF for b in good[head:])
    with pytest.raises(PromptError) as e:
        await store.upload(corrupt)
    assert e.value.reason in ("prompt-corrupt", "prompt-empty")
    assert e.value.code == "prompt-invalid" and e.value.msgid
    assert stored_files(tmp_path / "prompts") == []


async def test_too_long_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    store = PromptStore(tmp_path / "prompts", max_duration_s=2.0)
    data = await tone(tmp_path / "in.wav", 440, 3.0, rate=8000, channels=1)
    with pytest.raises(PromptError) as e:
        await store.upload(data)
    assert e.value.reason == "prompt-too-long" and e.value.params == {"minutes": 0}
    assert stored_files(tmp_path / "prompts") == []
    ok = await store.upload(await tone(tmp_path / "ok.wav", 440, 1.9, rate=8000, channels=1))
    assert ok.duration_s == pytest.approx(1.9, abs=0.02)


async def test_a_stuck_converter_is_killed_at_the_deadline(tmp_path: Path) -> None:
    stuck = tmp_path / "stuck-sox"
    stuck.write_text("#!/bin/sh\nexec sleep 60\n")
    stuck.chmod(0o755)
    store = PromptStore(tmp_path / "prompts", sox=str(stuck), convert_timeout_s=0.5)
    data = await tone(tmp_path / "in.wav", 440, 1.0, rate=8000, channels=1)
    with pytest.raises(PromptError) as e:
        await store.upload(data)
    assert e.value.reason == "prompt-timeout"
    assert stored_files(tmp_path / "prompts") == []


@pytest.mark.parametrize(
    ("voice", "short", "long"),
    [
        (
            "ru",
            "Здравствуйте.",
            "Здравствуйте. Вы позвонили в компанию. Нажмите один, чтобы связаться с отделом продаж.",
        ),
        ("en", "Hello.", "Hello. You have reached the company. Press one to talk to the sales department."),
    ],
)
async def test_speech_has_a_plausible_length(tmp_path: Path, voice: str, short: str, long: str) -> None:
    store = PromptStore(tmp_path / "prompts")
    a = await store.tts(short, voice=voice)  # type: ignore[arg-type]
    b = await store.tts(long, voice=voice)  # type: ignore[arg-type]
    assert 0.3 < a.duration_s < 3.0
    assert 3.0 < b.duration_s < 15.0 and b.duration_s > 3 * a.duration_s
    speech = read_wav(b.wav)
    assert speech.rate == 8000 and rms(speech.samples) > 0.05


async def test_speech_is_synthesised_once_per_phrase(tmp_path: Path) -> None:
    root = tmp_path / "prompts"
    first = await PromptStore(root).system_phrase(SystemPhrase.OPERATORS_BUSY, "ru")
    assert 1.0 < first.duration_s < 10.0
    # no espeak-ng from now on: the cached phrase must come from disk
    offline = PromptStore(root, espeak="/nonexistent/espeak-ng")
    assert await offline.system_phrase(SystemPhrase.OPERATORS_BUSY, "ru") == first
    with pytest.raises(PromptError) as e:
        await offline.system_phrase(SystemPhrase.OPERATORS_BUSY, "en")  # another voice: not cached
    assert e.value.reason == "converter-failed"
    slower = await PromptStore(root).tts(
        "Все операторы заняты. Пожалуйста, оставайтесь на линии.", voice="ru", rate_wpm=100
    )
    assert slower.id != first.id and slower.duration_s > first.duration_s


async def test_concurrent_requests_for_one_phrase_share_one_synthesis(tmp_path: Path) -> None:
    store = PromptStore(tmp_path / "prompts")
    results = await asyncio.gather(*(store.system_phrase(SystemPhrase.GOODBYE, "en") for _ in range(4)))
    assert len({p.id for p in results}) == 1
    assert len(list((tmp_path / "prompts" / "tts").iterdir())) == 1
