"""Answering-machine detection (vpbx.media.amd): the energy classifier's rules, frame by frame."""

from __future__ import annotations

import math

from vpbx.media.amd import VOICE_RMS, AmdDetector, AmdEvent, frame_rms
from vpbx.media.g711 import pcm_to_alaw, pcm_to_ulaw

FRAME_S = 0.02
LOUD, QUIET = 4000.0, 50.0


def detector(**kw: object) -> AmdDetector:
    fields: dict[str, object] = {
        "analysis_s": 3.5,
        "initial_silence_s": 2.5,
        "greeting_s": 1.5,
        "after_greeting_silence_s": 0.8,
    }
    fields.update(kw)
    return AmdDetector(**fields)  # type: ignore[arg-type]


def feed(d: AmdDetector, *spans: tuple[float, float]) -> list[tuple[float, AmdEvent]]:
    """(rms, seconds) spans as 20 ms frames; the events with the time each came at."""
    out: list[tuple[float, AmdEvent]] = []
    for rms, seconds in spans:
        for _ in range(round(seconds / FRAME_S)):
            out += [(round(d.elapsed, 2), e) for e in d.frame(rms, FRAME_S)]
    return out


def test_a_short_hello_then_silence_is_a_human() -> None:
    events = feed(detector(), (QUIET, 0.4), (LOUD, 0.6), (QUIET, 1.5))
    assert events == [(1.8, "human")]  # 0.8 s of silence after the 0.6 s hello


def test_a_long_greeting_is_a_machine() -> None:
    events = feed(detector(), (QUIET, 0.2), (LOUD, 3.0))
    assert [e for _, e in events] == ["machine"]
    assert 1.6 <= events[0][0] <= 1.8  # as soon as the talk passed greeting_s


def test_pauses_shorter_than_the_silence_keep_one_greeting() -> None:
    events = feed(detector(), (LOUD, 0.8), (QUIET, 0.4), (LOUD, 0.8))
    assert [e for _, e in events] == ["machine"]  # 0.8 + 0.4 + 0.8 s: one greeting over 1.5 s


def test_initial_silence_is_a_machine_and_missing_packets_count_as_silence() -> None:
    d = detector()
    assert feed(d, (QUIET, 1.0)) == []
    assert d.idle(1.0) == []
    assert d.idle(0.6) == ["machine"]
    assert d.done and d.idle(5.0) == []


def test_no_decision_within_the_analysis_time_is_unknown() -> None:
    events = feed(detector(), (QUIET, 2.4), (LOUD, 1.2))
    assert events == [(3.5, "unknown")]


def test_a_machine_is_followed_to_the_end_of_its_greeting_when_asked() -> None:
    d = detector(until_greeting_end=True)
    events = feed(d, (LOUD, 4.0), (QUIET, 1.0))
    assert [e for _, e in events] == ["machine", "greeting_end"]
    assert events[1][0] == 4.8  # 0.8 s into the silence after the greeting
    assert d.done


def test_frame_rms_reads_both_laws_and_refuses_others() -> None:
    samples = [round(8000 * math.sin(2 * math.pi * 1000 * i / 8000)) for i in range(160)]
    pcm = b"".join(s.to_bytes(2, "little", signed=True) for s in samples)
    for pt, encode in ((8, pcm_to_alaw), (0, pcm_to_ulaw)):
        rms = frame_rms(encode(pcm), pt)
        assert rms is not None and abs(rms - 8000 / math.sqrt(2)) < 300
        silence = frame_rms(encode(bytes(320)), pt)
        assert silence is not None and silence < VOICE_RMS
    assert frame_rms(b"\x00" * 160, 18) is None and frame_rms(b"", 8) is None
