"""RTP parse/serialize against byte fixtures (broken ones included) and the per-leg header rewrite."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from vpbx.errors import MediaParseError
from vpbx.media.rtp import (
    LegRewriter,
    RtpExtension,
    RtpPacket,
    is_rtp,
    parse_packet,
    parse_rtcp_report,
    payload_bounds,
    serialize_packet,
)

FIXTURES = Path(__file__).parents[2] / "fixtures" / "rtp"

VALID = {
    "pcmu_20ms.bin",
    "pcma_marker.bin",
    "csrc_extension.bin",
    "padding.bin",
    "padding_only.bin",
    "telephone_event_end.bin",
}
BROKEN = {
    "empty.bin": "rtp-short",
    "short.bin": "rtp-short",
    "version1.bin": "rtp-version",
    "version0_stun_like.bin": "rtp-version",
    "csrc_short.bin": "rtp-csrc-short",
    "extension_header_short.bin": "rtp-extension-short",
    "extension_short.bin": "rtp-extension-short",
    "padding_zero.bin": "rtp-padding",
    "padding_overflow.bin": "rtp-padding",
}


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_every_fixture_is_classified() -> None:
    assert {p.name for p in FIXTURES.glob("*.bin")} == VALID | set(BROKEN)


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_fixture_round_trips(name: str) -> None:
    raw = load(name)
    pkt = parse_packet(raw)
    assert parse_packet(serialize_packet(pkt)) == pkt
    assert is_rtp(raw, len(raw))
    start, end = payload_bounds(raw, len(raw)) or (-1, -1)
    assert raw[start:end] == pkt.payload


@pytest.mark.parametrize(("name", "reason"), sorted(BROKEN.items()))
def test_broken_fixture_names_its_check(name: str, reason: str) -> None:
    with pytest.raises(MediaParseError) as e:
        parse_packet(load(name))
    assert e.value.reason == reason
    assert e.value.code == "media-parse"


def test_fields_of_the_fixtures() -> None:
    p = parse_packet(load("pcmu_20ms.bin"))
    assert (p.payload_type, p.sequence_number, p.timestamp, p.ssrc, p.marker) == (
        0,
        1000,
        160000,
        0x11223344,
        False,
    )
    assert p.payload == b"\xff" * 160 and p.padding == 0 and p.csrc == () and p.extension is None

    m = parse_packet(load("pcma_marker.bin"))
    assert m.marker and m.payload_type == 8 and m.sequence_number == 65535 and m.timestamp == 0xFFFFFF60

    c = parse_packet(load("csrc_extension.bin"))
    assert c.csrc == (0xA1A2A3A4, 0xB1B2B3B4)
    assert c.extension == RtpExtension(0xBEDE, b"\x10\xaa\x00\x00")
    assert c.payload == b"\x7f" * 160

    pad = parse_packet(load("padding.bin"))
    assert pad.padding == 4 and pad.payload == b"\x55" * 160
    only = parse_packet(load("padding_only.bin"))
    assert only.padding == 4 and only.payload == b""

    ev = parse_packet(load("telephone_event_end.bin"))
    assert ev.payload_type == 101 and ev.payload == bytes([5, 0x8A, 0x03, 0x20])


def test_serialize_exact_bytes() -> None:
    assert serialize_packet(parse_packet(load("pcmu_20ms.bin"))) == load("pcmu_20ms.bin")
    assert serialize_packet(parse_packet(load("csrc_extension.bin"))) == load("csrc_extension.bin")
    assert serialize_packet(parse_packet(load("padding.bin"))) == load("padding.bin")  # zero pad octets


def test_serialize_refuses_what_the_header_cannot_carry() -> None:
    with pytest.raises(ValueError):
        serialize_packet(
            RtpPacket(payload_type=0, sequence_number=0, timestamp=0, ssrc=0, csrc=tuple(range(16)))
        )
    with pytest.raises(ValueError):
        serialize_packet(RtpPacket(payload_type=128, sequence_number=0, timestamp=0, ssrc=0))
    with pytest.raises(ValueError):
        serialize_packet(
            RtpPacket(
                payload_type=0, sequence_number=0, timestamp=0, ssrc=0, extension=RtpExtension(1, b"abc")
            )
        )


def test_fast_checks_reject_what_parse_rejects() -> None:
    for name in ("empty.bin", "short.bin", "version1.bin", "version0_stun_like.bin"):
        raw = load(name)
        assert not is_rtp(raw, len(raw))
    for name in (
        "extension_header_short.bin",
        "extension_short.bin",
        "padding_zero.bin",
        "padding_overflow.bin",
    ):
        raw = load(name)
        assert payload_bounds(raw, len(raw)) is None
    rtcp_rr = struct.pack("!BBHI", 0x80, 201, 1, 42)
    assert not is_rtp(rtcp_rr, len(rtcp_rr))  # RTCP arriving on the RTP port (RFC 5761 §4)


# --- RTCP report blocks ---


def _block(lost_fraction: int, cumulative: int, jitter: int) -> bytes:
    return struct.pack("!IIIIII", 7, (lost_fraction << 24) | (cumulative & 0xFFFFFF), 1000, jitter, 0, 0)


def test_rtcp_receiver_and_sender_reports() -> None:
    rr = struct.pack("!BBHI", 0x81, 201, 7, 99) + _block(25, 12, 80)
    block = parse_rtcp_report(rr)
    assert block is not None
    assert (block.ssrc, block.fraction_lost, block.cumulative_lost, block.highest_seq, block.jitter) == (
        7,
        25,
        12,
        1000,
        80,
    )
    sr = struct.pack("!BBHI", 0x81, 200, 12, 99) + bytes(20) + _block(0, -3, 5)
    sr_block = parse_rtcp_report(sr)
    assert sr_block is not None and sr_block.cumulative_lost == -3 and sr_block.jitter == 5
    assert parse_rtcp_report(struct.pack("!BBHI", 0x80, 201, 1, 99)) is None  # no report block


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x81\xc9\x00", "rtcp-short"),
        (struct.pack("!BBHI", 0x41, 201, 7, 99) + _block(0, 0, 0), "rtcp-version"),
        (struct.pack("!BBHI", 0x81, 202, 7, 99) + _block(0, 0, 0), "rtcp-type"),
        (struct.pack("!BBHI", 0x81, 201, 7, 99) + b"\x00" * 10, "rtcp-short"),
    ],
)
def test_rtcp_errors(data: bytes, reason: str) -> None:
    with pytest.raises(MediaParseError) as e:
        parse_rtcp_report(data)
    assert e.value.reason == reason


# --- the rewriter ---


def packet(seq: int, ts: int, ssrc: int, *, pt: int = 0, marker: bool = False) -> bytearray:
    return bytearray(
        serialize_packet(
            RtpPacket(
                payload_type=pt,
                sequence_number=seq,
                timestamp=ts,
                ssrc=ssrc,
                marker=marker,
                payload=b"\xff" * 160,
            )
        )
    )


def rewritten(rw: LegRewriter, buf: bytearray, now: float, pt: int = -1) -> RtpPacket:
    rw.rewrite(buf, now, pt)
    return parse_packet(bytes(buf))


def test_first_source_keeps_numbers_and_gets_our_ssrc() -> None:
    rw = LegRewriter(0xCAFE)
    for i in range(3):
        p = rewritten(rw, packet(100 + i, 8000 + 160 * i, 0x1111), 10.0 + 0.02 * i)
        assert (p.sequence_number, p.timestamp, p.ssrc, p.marker) == (100 + i, 8000 + 160 * i, 0xCAFE, False)
        assert p.payload == b"\xff" * 160


def test_source_change_rebases_with_marker() -> None:
    rw = LegRewriter(0xCAFE)
    for i in range(5):
        last = rewritten(rw, packet(100 + i, 8000 + 160 * i, 0x1111), 10.0 + 0.02 * i)
    # a new source (prompt → bridge) 0.5 s later, with unrelated numbers
    first = rewritten(rw, packet(50_000, 3_000_000, 0x2222), 10.08 + 0.5)
    assert first.ssrc == 0xCAFE and first.marker
    assert first.sequence_number == last.sequence_number + 1
    assert first.timestamp == last.timestamp + round(0.5 * 8000)
    nxt = rewritten(rw, packet(50_001, 3_000_160, 0x2222), 10.6)
    assert not nxt.marker
    assert nxt.sequence_number == first.sequence_number + 1 and nxt.timestamp == first.timestamp + 160
    # back to the first source: another re-base, never a jump backwards
    back = rewritten(rw, packet(105, 8800, 0x1111), 10.62)
    assert back.marker and back.sequence_number == nxt.sequence_number + 1 and back.timestamp > nxt.timestamp


def test_rebase_on_request_and_minimum_gap() -> None:
    rw = LegRewriter(7)
    a = rewritten(rw, packet(1, 160, 0x1), 1.0)
    rw.rebase()
    b = rewritten(rw, packet(900, 99_999, 0x1), 1.0)  # same SSRC, same instant (transfer re-INVITE)
    assert b.marker and b.sequence_number == a.sequence_number + 1 and b.timestamp == a.timestamp + 160


def test_offsets_wrap_around() -> None:
    rw = LegRewriter(7)
    a = rewritten(rw, packet(65535, 0xFFFFFF00, 0x1), 1.0)
    b = rewritten(rw, packet(10, 5, 0x2), 1.02)
    assert b.sequence_number == (a.sequence_number + 1) % 65536 == 0
    assert b.timestamp == (0xFFFFFF00 + 160) % (1 << 32)
    c = rewritten(rw, packet(11, 165, 0x2), 1.04)
    assert c.sequence_number == 1 and c.timestamp == (b.timestamp + 160) % (1 << 32) == 64


def test_payload_type_remap_keeps_marker_and_payload() -> None:
    rw = LegRewriter(7)
    p = rewritten(rw, packet(1, 160, 0x1, pt=8, marker=True), 1.0, pt=0)
    assert p.payload_type == 0 and p.marker and p.payload == b"\xff" * 160
    q = rewritten(rw, packet(2, 320, 0x1, pt=101), 1.02, pt=96)
    assert q.payload_type == 96 and not q.marker


def test_events_repeating_their_timestamp_do_not_shrink_the_rebase_gap() -> None:
    rw = LegRewriter(7)
    rewritten(rw, packet(1, 1600, 0x1), 1.0)
    for i in range(5):  # a telephone-event: one timestamp, growing seq, 20 ms apart
        rewritten(rw, packet(2 + i, 1760, 0x1, pt=101), 1.02 + 0.02 * i)
    after = rewritten(rw, packet(1, 0, 0x9), 1.22)
    # measured from when timestamp 1760 was first sent (1.02), not from the last repeat (1.10)
    assert after.timestamp == 1760 + round(0.2 * 8000)


def test_rewrite_works_on_a_memoryview_in_place() -> None:
    buf = packet(1, 160, 0x1)
    view = memoryview(buf)
    LegRewriter(0xABCD).rewrite(view, 0.0)
    assert struct.unpack_from("!I", buf, 8)[0] == 0xABCD
