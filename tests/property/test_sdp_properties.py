"""Properties of vpbx.sip.sdp: hostile bodies raise only SdpParseError; what parses round-trips."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from vpbx.errors import SdpParseError
from vpbx.sip.sdp import Direction, Origin, build_offer, negotiate, parse_sdp, serialize_sdp

SEEDS = [p.read_bytes() for p in sorted((Path(__file__).parents[1] / "fixtures" / "sdp").glob("*.sdp"))]
OURS = Origin(session_id="1", version=1, address="203.0.113.1")


def _check(data: bytes) -> None:
    try:
        sd = parse_sdp(data)
    except SdpParseError:
        return
    assert parse_sdp(serialize_sdp(sd)) == sd
    answer = negotiate(sd, origin=OURS, address="203.0.113.1", port=40000)
    if answer is not None:
        assert len(answer.media) == len(sd.media)  # RFC 3264 §6: one answer line per offered line
        assert sum(m.port != 0 for m in answer.media) == 1
        assert parse_sdp(serialize_sdp(answer)) == answer


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1024))
def test_arbitrary_bytes(data: bytes) -> None:
    _check(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    lines = draw(st.sampled_from(SEEDS)).split(b"\r\n")
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "dup", "edit"]))
        if op == "drop":
            del lines[at]
        elif op == "dup":
            lines.insert(at, lines[at])
        else:
            pieces = [b" ", b"", b"0", b"x", b"/", b":", b"65536", b"-1", b"IP6", b"\r", b"\n", b"a="]
            piece = draw(st.sampled_from(pieces))
            line = lines[at]
            cut = draw(st.integers(0, len(line)))
            lines[at] = line[:cut] + piece + line[cut + draw(st.integers(0, 4)) :]
        if not lines:
            break
    return b"\r\n".join(lines)


@settings(max_examples=200, deadline=None)
@given(mutated())
def test_mutated_real_offers(data: bytes) -> None:
    _check(data)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 65535),
    st.lists(st.sampled_from([0, 8]), min_size=1, max_size=2, unique=True),
    st.none() | st.integers(96, 127),
    st.sampled_from(list(Direction)),
)
def test_our_offers_round_trip_and_answer(
    port: int, codecs: list[int], event: int | None, direction: Direction
) -> None:
    offer = build_offer(
        origin=OURS,
        address="198.51.100.1",
        port=port,
        codecs=codecs,
        telephone_event=event,
        direction=direction,
    )
    assert parse_sdp(serialize_sdp(offer)) == offer
    answer = negotiate(offer, origin=OURS.bumped(), address="203.0.113.1", port=40000)
    if port == 0:
        assert answer is None
        return
    assert answer is not None
    (audio,) = answer.media
    assert audio.payload_types[0] == codecs[0]
    assert audio.telephone_event == event
    assert audio.direction is direction.reverse()
