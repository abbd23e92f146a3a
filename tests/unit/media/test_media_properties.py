"""Properties (hypothesis, bounded): RTP parse/serialize, the rewriter's continuity, the DTMF receiver."""

from __future__ import annotations

import contextlib
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from vpbx.clock import FakeClock
from vpbx.errors import MediaParseError
from vpbx.media.dtmf import DTMF_EVENTS, DtmfReceiver, digit_payloads
from vpbx.media.rtp import (
    LegRewriter,
    RtpExtension,
    RtpPacket,
    is_rtp,
    parse_packet,
    payload_bounds,
    serialize_packet,
)

FAST = settings(max_examples=100, deadline=None)

packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127),
    sequence_number=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    marker=st.booleans(),
    csrc=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
    extension=st.none()
    | st.builds(
        RtpExtension, st.integers(0, 0xFFFF), st.binary(max_size=12).map(lambda b: b + bytes(-len(b) % 4))
    ),
    padding=st.sampled_from([0, 1, 4, 255]),
    payload=st.binary(max_size=200),
)


@FAST
@given(packets)
def test_serialize_then_parse_is_identity(p: RtpPacket) -> None:
    raw = serialize_packet(p)
    assert parse_packet(raw) == p
    assert payload_bounds(raw, len(raw)) is not None


@FAST
@given(st.binary(max_size=300))
def test_parse_raises_only_parse_errors_and_fast_checks_agree(data: bytes) -> None:
    parsed = None
    with contextlib.suppress(MediaParseError):
        parsed = parse_packet(data)
    if parsed is None:
        return
    assert parse_packet(serialize_packet(parsed)) == parsed
    bounds = payload_bounds(data, len(data))
    assert bounds is not None and data[bounds[0] : bounds[1]] == parsed.payload
    assert is_rtp(data, len(data)) == (not 72 <= parsed.payload_type <= 76)


@FAST
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 20)), min_size=1, max_size=12))
def test_rewriter_output_is_continuous_across_source_changes(runs: list[tuple[int, int]]) -> None:
    """Each run: ``count`` consecutive packets from source ``src``; the leg sees one unbroken sequence."""
    rw = LegRewriter(0xABCDEF)
    now = 0.0
    out: list[tuple[int, int, bool]] = []
    starts = {0: (100, 1000), 1: (60_000, 0xFFFFF000), 2: (7, 5), 3: (65_530, 123_456)}
    sent = dict.fromkeys(starts, 0)
    for src, count in runs:
        seq0, ts0 = starts[src]
        for _ in range(count):
            k = sent[src]
            sent[src] += 1
            buf = bytearray(
                serialize_packet(
                    RtpPacket(
                        payload_type=0,
                        sequence_number=(seq0 + k) % 65536,
                        timestamp=(ts0 + 160 * k) % (1 << 32),
                        ssrc=0x100 + src,
                    )
                )
            )
            now += 0.02
            rw.rewrite(buf, now)
            p = parse_packet(bytes(buf))
            assert p.ssrc == 0xABCDEF
            out.append((p.sequence_number, p.timestamp, p.marker))
    for (s1, t1, _), (s2, t2, m2) in itertools.pairwise(out):
        assert s2 == (s1 + 1) % 65536
        assert (t2 - t1) % (1 << 32) >= 160  # never backwards, at least a frame
        if not m2:
            assert (t2 - t1) % (1 << 32) == 160


@FAST
@given(
    st.lists(st.sampled_from(DTMF_EVENTS), min_size=1, max_size=8),
    st.lists(st.integers(1, 3), min_size=7, max_size=7),
)
def test_receiver_reports_each_digit_once_whatever_the_duplication(
    digits: list[str], copies: list[int]
) -> None:
    clock = FakeClock()
    rx = DtmfReceiver(clock)
    got: list[str] = []
    ts = 0
    for d in digits:
        ts += 1600
        for payload, n in zip(digit_payloads(d), copies, strict=True):
            for _ in range(n):  # the network duplicates packets too
                got += [x.digit for x in rx.feed(payload, ts, 1)]
            clock.advance(0.02)
    assert got == digits
