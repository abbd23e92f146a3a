"""The player's pacing core: frames due on absolute 20 ms deadlines, RTP headers, loop, stalls; the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpbx.media.player import (
    FRAME_S,
    MAX_BURST,
    SILENCE_ALAW,
    SILENCE_ULAW,
    AudioCache,
    Playback,
    PromptAudio,
)
from vpbx.media.prompts import Prompt, PromptError, PromptId
from vpbx.media.rtp import PT_PCMA, PT_PCMU, parse_packet

START = 1000.0


def audio(frames: int) -> PromptAudio:
    """Frame i is 160 octets of value i (A-law) and 255 - i (µ-law), so each packet shows its frame."""
    alaw = b"".join(bytes([i]) * 160 for i in range(frames))
    ulaw = b"".join(bytes([255 - i]) * 160 for i in range(frames))
    return PromptAudio(alaw, ulaw)


def test_prompt_audio_pads_the_last_frame_with_silence() -> None:
    a = PromptAudio(b"\x01" * 170, b"\x02" * 170)
    assert a.frames == 2 and len(a.alaw) == len(a.ulaw) == 320
    assert a.alaw[170:] == bytes([SILENCE_ALAW]) * 150 and a.ulaw[170:] == bytes([SILENCE_ULAW]) * 150
    assert a.duration_s == pytest.approx(0.04)
    with pytest.raises(ValueError):
        PromptAudio(b"\x01", b"")


def test_first_frame_at_once_then_one_per_20_ms_with_rtp_headers() -> None:
    pb = Playback(audio(10), start=START, ssrc=0xABCD, seq=65534, ts=2**32 - 160)
    first = [parse_packet(bytes(p)) for p in pb.due(START, ulaw=False)]
    assert len(first) == 1 and first[0].marker and first[0].payload_type == PT_PCMA
    assert pb.due(START + 0.0185, ulaw=False) == []  # the second frame is due at +20 ms (1 ms slack)
    assert pb.next_at == pytest.approx(START + FRAME_S)
    later = [parse_packet(bytes(p)) for p in pb.due(START + 0.1, ulaw=False)]
    assert len(later) == 5  # frames 1..5, due at +20 … +100 ms
    packets = first + later
    assert [p.sequence_number for p in packets] == [65534, 65535, 0, 1, 2, 3]
    assert [p.timestamp for p in packets] == [(2**32 - 160 + 160 * i) % 2**32 for i in range(6)]
    assert {p.ssrc for p in packets} == {0xABCD}
    assert [p.marker for p in packets] == [True] + [False] * 5
    assert [p.payload for p in packets] == [bytes([i]) * 160 for i in range(6)]


def test_the_law_follows_the_leg_per_frame() -> None:
    pb = Playback(audio(3), start=START)
    (p,) = pb.due(START, ulaw=True)
    pkt = parse_packet(bytes(p))
    assert pkt.payload_type == PT_PCMU and pkt.payload == bytes([255]) * 160


def test_finishes_when_the_last_frame_has_played_out() -> None:
    pb = Playback(audio(3), start=START)
    assert len(pb.due(START + 10.0, ulaw=False)) == 3  # late but within the burst: all frames, in order
    assert pb.exhausted and pb.due(START + 20.0, ulaw=False) == []
    pb = Playback(audio(3), start=START)
    pb.due(START + 0.04, ulaw=False)
    assert pb.exhausted and not pb.finished(START + 0.05)
    assert pb.finished(START + 0.06)  # 3 × 20 ms after the start


def test_loop_wraps_the_audio_and_keeps_the_clock_running() -> None:
    pb = Playback(audio(3), start=START, loop=True, ts=0, seq=0)
    packets = [parse_packet(bytes(p)) for p in pb.due(START + 0.1, ulaw=False)]
    assert [p.payload[0] for p in packets] == [0, 1, 2, 0, 1, 2]
    assert [p.timestamp for p in packets] == [160 * i for i in range(6)]
    assert not pb.exhausted and not pb.finished(START + 100)
    with pytest.raises(ValueError):
        Playback(PromptAudio(b"", b""), start=START, loop=True)


def test_a_stall_skips_frames_instead_of_a_long_burst() -> None:
    pb = Playback(audio(200), start=START, ts=0, seq=100)
    pb.due(START, ulaw=False)
    late = [parse_packet(bytes(p)) for p in pb.due(START + 1.0, ulaw=False)]  # 50 frames overdue
    assert len(late) == 1 and pb.skipped == 49
    assert late[0].sequence_number == 101  # nothing was lost on the wire
    assert late[0].timestamp == 50 * 160 and late[0].payload[0] == 50  # the audio of now
    burst = pb.due(START + 1.0 + MAX_BURST * FRAME_S, ulaw=False)
    assert len(burst) == MAX_BURST  # within the burst limit, nothing more is skipped
    assert pb.skipped == 49


def write_prompt(tmp_path: Path, name: str, frames: int) -> Prompt:
    a = audio(frames)
    (tmp_path / f"{name}.pcma").write_bytes(a.alaw)
    (tmp_path / f"{name}.pcmu").write_bytes(a.ulaw)
    return Prompt(
        id=PromptId(name),
        duration_s=a.duration_s,
        wav=tmp_path / f"{name}.wav",
        pcma=tmp_path / f"{name}.pcma",
        pcmu=tmp_path / f"{name}.pcmu",
    )


async def test_cache_loads_once_and_drops_the_least_recently_used(tmp_path: Path) -> None:
    p1, p2, p3 = (write_prompt(tmp_path, f"p{i}", 10) for i in range(3))
    cache = AudioCache(max_bytes=2 * 2 * 1600)  # two prompts of 10 frames, both laws
    a1 = await cache.load(p1)
    p1.pcma.unlink()  # from now on only the cache has it
    assert await cache.load(p1) is a1 and a1.frames == 10
    await cache.load(p2)
    await cache.load(p1)  # p1 is now the most recent
    await cache.load(p3)  # p2 goes
    assert len(cache) == 2
    assert await cache.load(p1) is a1
    p2.pcmu.unlink()
    with pytest.raises(PromptError) as e:
        await cache.load(p2)
    assert e.value.reason == "prompt-missing"
