"""Prompt store rules that need no converter: format sniffing, limits and bad input refused before any
subprocess, ids, the WAV form. Conversion and speech with the real sox and espeak-ng are in
tests/integration/test_prompts.py."""

from __future__ import annotations

import io
import itertools
import struct
import wave
from pathlib import Path

import pytest

from vpbx.errors import MediaError
from vpbx.media.prompts import (
    MAX_TTS_CHARS,
    SYSTEM_PHRASES,
    PromptError,
    PromptStore,
    SystemPhrase,
    sniff_format,
    tone_pcm,
    wav_bytes,
)


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "wav"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00", "mp3"),
        (b"\xff\xfb\x90\x64", "mp3"),  # MPEG-1 layer III frame header
        (b"\xff\xf3\x90\x64", "mp3"),  # MPEG-2 layer III
        (b"\xff\xf1\x50\x80", None),  # ADTS AAC: layer bits 00
        (b"RIFF\x24\x00\x00\x00AVI LIST", None),
        (b"OggS\x00\x02", None),
        (b"fLaC\x00\x00", None),
        (b"", None),
    ],
)
def test_sniff_format(head: bytes, kind: str | None) -> None:
    assert sniff_format(head) == kind


def test_wav_form_is_8_khz_mono_s16() -> None:
    pcm = b"\x01\x00\xff\x7f" * 80
    with wave.open(io.BytesIO(wav_bytes(pcm))) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 8000, 160)
        assert w.readframes(160) == pcm


async def test_refused_before_conversion_and_nothing_stored(tmp_path: Path) -> None:
    store = PromptStore(tmp_path / "prompts", max_upload_bytes=1000, sox="/nonexistent/sox")
    with pytest.raises(PromptError) as e:
        await store.upload(b"RIFF" + bytes(2000))
    assert e.value.reason == "prompt-too-large" and e.value.params == {"mb": 0}
    assert isinstance(e.value, MediaError) and e.value.code == "prompt-invalid"
    with pytest.raises(PromptError) as e:
        await store.upload(b"<html>not audio</html>")
    assert e.value.reason == "prompt-unsupported" and e.value.msgid.startswith("Unsupported file")
    assert not (tmp_path / "prompts").exists()


async def test_missing_converter_is_a_clear_error(tmp_path: Path) -> None:
    store = PromptStore(tmp_path / "prompts", sox="/nonexistent/sox")
    with pytest.raises(PromptError) as e:
        await store.upload(wav_bytes(bytes(3200)))
    assert e.value.reason == "converter-failed"
    assert not (tmp_path / "prompts").exists()


@pytest.mark.parametrize(
    ("text", "kwargs", "reason"),
    [
        ("   \n ", {}, "tts-empty"),
        ("a" * (MAX_TTS_CHARS + 1), {}, "tts-too-long"),
        ("hello", {"voice": "de"}, "tts-voice"),
        ("hello", {"rate_wpm": 10}, "tts-rate"),
        ("hello", {"rate_wpm": 1000}, "tts-rate"),
    ],
)
async def test_bad_tts_input(tmp_path: Path, text: str, kwargs: dict[str, object], reason: str) -> None:
    store = PromptStore(tmp_path, espeak="/nonexistent/espeak-ng")
    with pytest.raises(PromptError) as e:
        await store.tts(text, **kwargs)  # type: ignore[arg-type]
    assert e.value.reason == reason


def test_prompt_ids_are_hashes_only(tmp_path: Path) -> None:
    store = PromptStore(tmp_path)
    for bad in ("../etc/passwd", "A" * 64, "0" * 63, ""):
        with pytest.raises(ValueError):
            store.get(bad)
    with pytest.raises(PromptError) as e:
        store.get("0" * 64)
    assert e.value.reason == "prompt-missing"


def test_tts_key_depends_on_voice_rate_and_text() -> None:
    keys = {
        PromptStore.tts_key("Привет", "ru", 150),
        PromptStore.tts_key("Привет", "en", 150),
        PromptStore.tts_key("Привет", "ru", 160),
        PromptStore.tts_key("Привет!", "ru", 150),
    }
    assert len(keys) == 4


def test_every_system_phrase_has_both_languages() -> None:
    assert set(SYSTEM_PHRASES) == set(SystemPhrase)
    for texts in SYSTEM_PHRASES.values():
        assert set(texts) == {"ru", "en"} and all(t.strip() for t in texts.values())


def test_ringback_is_425_hz_one_second_on_four_off() -> None:
    pcm = tone_pcm("ringback")
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm)
    assert len(samples) == 5 * 8000
    on, off = samples[:8000], samples[8000:]
    assert not any(off)
    crossings = sum(1 for a, b in itertools.pairwise(on) if (a < 0) != (b < 0))
    assert abs(crossings / 2 - 425) < 5  # zero crossings: about 425 cycles in the second
    assert max(on) < 32767 * 0.31


async def test_tones_are_stored_once_as_prompts(tmp_path: Path) -> None:
    store = PromptStore(tmp_path)
    ringback = await store.tone("ringback")
    assert await store.tone("ringback") == ringback
    assert PromptStore(tmp_path).get(ringback.id) == ringback  # on disk like any prompt
    assert ringback.duration_s == 5.0 and (await store.tone("moh")).id != ringback.id
