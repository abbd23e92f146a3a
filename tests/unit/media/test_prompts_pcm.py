"""Prompts built by callers (the autoinformer's messages): PCM stored under a key, found again, read back;
espeak-ng voices beyond ru/en are taken from the store's list only."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from vpbx.media.prompts import PromptError, PromptStore, tone_pcm


async def test_store_pcm_under_a_key_and_read_it_back(tmp_path: Path) -> None:
    store = PromptStore(tmp_path)
    pcm = tone_pcm("ringback")[:16001]  # odd length: the half sample is dropped, frames are padded
    key = hashlib.sha256(b"inputs").hexdigest()
    assert await store.lookup(key) is None
    prompt = await store.store_pcm(pcm, key=key)
    assert await store.lookup(key) == prompt
    back = await store.read_pcm(prompt.id)
    assert back[:16000] == pcm[:16000] and len(back) % 320 == 0
    prompt.wav.unlink()  # an incomplete prompt is no cache hit
    assert await store.lookup(key) is None
    with pytest.raises(ValueError):
        await store.lookup("../escape")


async def test_store_pcm_refuses_over_ten_minutes(tmp_path: Path) -> None:
    store = PromptStore(tmp_path)
    with pytest.raises(PromptError) as e:
        await store.store_pcm(bytes(2 * 8000 * 601))
    assert e.value.reason == "prompt-too-long"


@pytest.mark.parametrize(
    ("voice", "ok"), [("ru+f3", True), ("en-us", True), ("de", False), ("ru+evil", False)]
)
async def test_espeak_voices_from_the_list_only(tmp_path: Path, voice: str, ok: bool) -> None:
    store = PromptStore(tmp_path, espeak="/nonexistent/espeak-ng")
    with pytest.raises(PromptError) as e:
        await store.tts("привет", voice=voice, rate=1.0)
    assert e.value.reason == ("converter-failed" if ok else "tts-voice")  # a listed voice reaches espeak-ng
