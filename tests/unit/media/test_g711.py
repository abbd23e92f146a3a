"""A-law ↔ µ-law tables and G.711 ↔ PCM: the audioop path and the pure table path agree on every value."""

from __future__ import annotations

import math
from array import array
from collections import Counter

import pytest

from vpbx.media import g711
from vpbx.media.g711 import (
    ALAW_TO_ULAW,
    ULAW_TO_ALAW,
    AudioopG711,
    TableG711,
    alaw_decode,
    alaw_to_ulaw,
    ulaw_decode,
    ulaw_to_alaw,
)

ALL_CODES = bytes(range(256))
ALL_SAMPLES = array("h", range(-32768, 32768)).tobytes()

needs_audioop = pytest.mark.skipif(g711.AUDIOOP is None, reason="audioop is gone (Python ≥ 3.13)")


def test_tables_are_256_byte_translate_tables() -> None:
    assert len(ALAW_TO_ULAW) == len(ULAW_TO_ALAW) == 256
    assert alaw_to_ulaw(ALL_CODES) == ALAW_TO_ULAW
    assert ulaw_to_alaw(bytearray(ALL_CODES)) == ULAW_TO_ALAW


@pytest.mark.parametrize(("there", "back"), [(ALAW_TO_ULAW, ULAW_TO_ALAW), (ULAW_TO_ALAW, ALAW_TO_ULAW)])
def test_round_trip_wherever_the_map_is_one_to_one(there: bytes, back: bytes) -> None:
    shared = Counter(there)
    one_to_one = [c for c in range(256) if shared[there[c]] == 1]
    assert len(set(there)) == 240  # 16 codes share an image with a neighbour
    assert all(back[there[c]] == c for c in one_to_one)
    # where two codes collide, one of them still comes back and the other lands on it
    for c in range(256):
        if back[there[c]] != c:
            assert shared[there[c]] >= 2 and there[back[there[c]]] == there[c]


def test_translation_keeps_sign_and_level() -> None:
    for c in range(256):
        a, u = alaw_decode(c), ulaw_decode(ALAW_TO_ULAW[c])
        assert (a >= 0) == (u >= 0) or abs(a) <= 8
        assert abs(a - u) <= max(16, abs(a) // 16)  # within one quantisation step
        m, n = ulaw_decode(c), alaw_decode(ULAW_TO_ALAW[c])
        assert abs(m - n) <= max(16, abs(m) // 16)


def test_silence_maps_to_the_quietest_codes() -> None:
    assert ULAW_TO_ALAW[0xFF] == ULAW_TO_ALAW[0x7F] == 0xD5  # µ-law ±0 → A-law +8 (A-law has no zero)
    assert ALAW_TO_ULAW[0xD5] == 0xFE and ALAW_TO_ULAW[0x55] == 0x7E  # ±8 both ways
    assert ulaw_decode(0xFE) == alaw_decode(0xD5) == 8


@needs_audioop
def test_tables_equal_the_audioop_pcm_route() -> None:
    a = AudioopG711()
    assert a.pcm_to_ulaw(a.alaw_to_pcm(ALL_CODES)) == ALAW_TO_ULAW
    assert a.pcm_to_alaw(a.ulaw_to_pcm(ALL_CODES)) == ULAW_TO_ALAW


@needs_audioop
def test_decoders_agree_on_all_256_codes() -> None:
    a, t = AudioopG711(), TableG711()
    assert t.alaw_to_pcm(ALL_CODES) == a.alaw_to_pcm(ALL_CODES)
    assert t.ulaw_to_pcm(ALL_CODES) == a.ulaw_to_pcm(ALL_CODES)


@needs_audioop
def test_encoders_agree_on_all_65536_samples() -> None:
    a, t = AudioopG711(), TableG711()
    assert t.pcm_to_alaw(ALL_SAMPLES) == a.pcm_to_alaw(ALL_SAMPLES)
    assert t.pcm_to_ulaw(ALL_SAMPLES) == a.pcm_to_ulaw(ALL_SAMPLES)


def test_table_path_round_trips_a_tone() -> None:
    t = TableG711()
    tone = array("h", (int(8000 * math.sin(2 * math.pi * 425 * i / 8000)) for i in range(160))).tobytes()
    for encode, decode in ((t.pcm_to_alaw, t.alaw_to_pcm), (t.pcm_to_ulaw, t.ulaw_to_pcm)):
        coded = encode(tone)
        assert len(coded) == 160
        back = array("h", decode(coded))
        assert max(abs(x - y) for x, y in zip(back, array("h", tone), strict=True)) <= 256
        assert encode(decode(coded)) == coded  # decoded values re-encode to themselves


def test_table_path_refuses_odd_pcm() -> None:
    with pytest.raises(ValueError):
        TableG711().pcm_to_alaw(b"\x00\x01\x02")


def test_module_functions_use_the_default_codec() -> None:
    assert g711.alaw_to_pcm(ALL_CODES) == TableG711().alaw_to_pcm(ALL_CODES)
    assert g711.ulaw_to_pcm(ALL_CODES) == TableG711().ulaw_to_pcm(ALL_CODES)
    assert g711.pcm_to_alaw(ALL_SAMPLES[:320]) == TableG711().pcm_to_alaw(ALL_SAMPLES[:320])
    assert g711.pcm_to_ulaw(ALL_SAMPLES[:320]) == TableG711().pcm_to_ulaw(ALL_SAMPLES[:320])
    expected = AudioopG711 if g711.AUDIOOP is not None else TableG711
    assert isinstance(g711.default_codec(), expected)
