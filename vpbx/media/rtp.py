"""RTP packets: pure parse/serialize (RFC 3550 §5.1) and the relay's per-leg header rewrite.

``parse_packet``/``serialize_packet`` build objects and are for fixtures, diagnostics and the endpoint; the
relay fast path never builds a packet object. It makes the ``is_rtp`` check inline (RFC 3550 App. A.1
subset), finds the payload with ``payload_bounds`` and rewrites the header in place through ``LegRewriter``:
one stable SSRC per outgoing leg, with sequence number and timestamp offsets re-based (and the marker bit
set) whenever the source behind the leg changes (prompt → bridge, transfer, a phone restarting its stream).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from vpbx.errors import MediaParseError

RTP_VERSION = 2  # RFC 3550 §5.1: V field
RTP_HEADER_SIZE = 12  # RFC 3550 §5.1: fixed header
RTP_MAX_CSRC = 15  # RFC 3550 §5.1: CC is 4 bits
RTP_EXTENSION_HEADER_SIZE = 4  # RFC 3550 §5.3.1: profile (16) + length in 32-bit words (16)
SEQ_MOD = 1 << 16  # RFC 3550 §5.1: 16-bit sequence number
TS_MOD = 1 << 32  # RFC 3550 §5.1: 32-bit timestamp
MAX_DROPOUT = 3000  # RFC 3550 App. A.1: a jump this far ahead is a new sequence, not loss
MAX_MISORDER = 100  # RFC 3550 App. A.1

PT_PCMU = 0  # RFC 3551 §6 Table 4: G.711 µ-law, 8000 Hz
PT_PCMA = 8  # RFC 3551 §6 Table 4: G.711 A-law, 8000 Hz
PT_CN = 13  # RFC 3551 §6 Table 4 / RFC 3389: comfort noise
TELEPHONE_EVENT_PT = 101  # our offer's default (telephony.md §3.8); peers may choose another
RTCP_PT_MIN = 72  # RFC 5761 §4: RTCP packet types 200–204 seen through the RTP PT field (with M set)
RTCP_PT_MAX = 76
G711_CLOCK_RATE = 8000  # RFC 3551 §4.5.14
FRAME_SAMPLES = 160  # 20 ms at 8 kHz: our ptime (telephony.md §3.8)

_B0_VERSION = 0xC0
_B0_PADDING = 0x20
_B0_EXTENSION = 0x10
_B0_CC = 0x0F
_B1_MARKER = 0x80
_B1_PT = 0x7F

# at offset 1: M+PT, sequence number, timestamp, SSRC — all the relay reads or rewrites (RFC 3550 §5.1)
HEADER_FIELDS = struct.Struct("!BHII")
_FIXED = struct.Struct("!BBHII")
_EXT = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class RtpExtension:
    """RFC 3550 §5.3.1 header extension: a profile word and ``len(data)`` (a multiple of 4) octets."""

    profile: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class RtpPacket:
    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension: RtpExtension | None = None
    padding: int = 0  # octets of padding including the count octet (RFC 3550 §5.1 P); 0 = none
    payload: bytes = b""


def parse_packet(data: bytes) -> RtpPacket:
    """Parse one RTP datagram (RFC 3550 §5.1); raises ``MediaParseError`` with a ``reason`` per check."""
    n = len(data)
    if n < RTP_HEADER_SIZE:
        raise MediaParseError("rtp-short", f"need {RTP_HEADER_SIZE} bytes, got {n}")
    b0, b1, seq, ts, ssrc = _FIXED.unpack_from(data, 0)
    if b0 >> 6 != RTP_VERSION:
        raise MediaParseError("rtp-version", f"version {b0 >> 6}, expected {RTP_VERSION}")
    cc = b0 & _B0_CC
    pos = RTP_HEADER_SIZE + 4 * cc
    if pos > n:
        raise MediaParseError("rtp-csrc-short", f"{cc} CSRC need {pos} bytes, got {n}")
    csrc = struct.unpack_from(f"!{cc}I", data, RTP_HEADER_SIZE) if cc else ()
    extension = None
    if b0 & _B0_EXTENSION:
        if pos + RTP_EXTENSION_HEADER_SIZE > n:
            raise MediaParseError("rtp-extension-short", "extension header past the end")
        profile, words = _EXT.unpack_from(data, pos)
        start = pos + RTP_EXTENSION_HEADER_SIZE
        pos = start + 4 * words
        if pos > n:
            raise MediaParseError("rtp-extension-short", f"extension of {words} words past the end")
        extension = RtpExtension(profile, bytes(data[start:pos]))
    end = n
    padding = 0
    if b0 & _B0_PADDING:
        padding = data[n - 1]
        if padding == 0 or pos + padding > n:
            raise MediaParseError("rtp-padding", f"padding count {padding} with {n - pos} bytes after header")
        end = n - padding
    return RtpPacket(
        payload_type=b1 & _B1_PT,
        sequence_number=seq,
        timestamp=ts,
        ssrc=ssrc,
        marker=bool(b1 & _B1_MARKER),
        csrc=tuple(csrc),
        extension=extension,
        padding=padding,
        payload=bytes(data[pos:end]),
    )


def serialize_packet(p: RtpPacket) -> bytes:
    """The wire form of ``p``; padding octets are zero except the final count (RFC 3550 §5.1)."""
    if len(p.csrc) > RTP_MAX_CSRC:
        raise ValueError(f"at most {RTP_MAX_CSRC} CSRC, got {len(p.csrc)}")
    if not 0 <= p.payload_type <= _B1_PT:
        raise ValueError(f"payload type {p.payload_type} out of range")
    if not 0 <= p.padding <= 255:
        raise ValueError(f"padding {p.padding} out of range")
    b0 = RTP_VERSION << 6 | len(p.csrc)
    if p.padding:
        b0 |= _B0_PADDING
    if p.extension is not None:
        b0 |= _B0_EXTENSION
    b1 = p.payload_type | (_B1_MARKER if p.marker else 0)
    parts = [_FIXED.pack(b0, b1, p.sequence_number % SEQ_MOD, p.timestamp % TS_MOD, p.ssrc % TS_MOD)]
    if p.csrc:
        parts.append(struct.pack(f"!{len(p.csrc)}I", *p.csrc))
    if p.extension is not None:
        ext = p.extension
        if len(ext.data) % 4:
            raise ValueError("extension data must be a multiple of 4 octets")
        parts.append(_EXT.pack(ext.profile, len(ext.data) // 4))
        parts.append(ext.data)
    parts.append(p.payload)
    if p.padding:
        parts.append(bytes(p.padding - 1) + bytes((p.padding,)))
    return b"".join(parts)


def is_rtp(buf: bytes | bytearray | memoryview, n: int) -> bool:
    """The relay's per-packet check (RFC 3550 App. A.1 subset): v2, a whole fixed header, not RTCP."""
    return (
        n >= RTP_HEADER_SIZE
        and buf[0] & _B0_VERSION == 0x80
        and not (RTCP_PT_MIN <= buf[1] & _B1_PT <= RTCP_PT_MAX)
    )


def payload_bounds(buf: bytes | bytearray | memoryview, n: int) -> tuple[int, int] | None:
    """``(start, end)`` of the payload in the first ``n`` octets (after CSRC and extension, before padding).

    ``None`` when the header claims more than the datagram holds; the caller drops the packet.
    """
    b0 = buf[0]
    pos = RTP_HEADER_SIZE + 4 * (b0 & _B0_CC)
    if b0 & _B0_EXTENSION:
        if pos + RTP_EXTENSION_HEADER_SIZE > n:
            return None
        pos += RTP_EXTENSION_HEADER_SIZE + 4 * ((buf[pos + 2] << 8) | buf[pos + 3])
    end = n
    if b0 & _B0_PADDING:
        pad = buf[n - 1]
        end = n - pad
        if pad == 0:
            return None
    if pos > end:
        return None
    return pos, end


HANDOVER_SEQ_GAP = 50  # packets skipped when a stream moves legs: the old leg may still send a second of it


class LegRewriter:
    """Header rewrite for one outgoing leg: our stable SSRC, re-based seq/timestamp, PT remap.

    While one source (input SSRC) feeds the leg, sequence numbers and timestamps move by fixed offsets. When
    the source changes (or ``rebase()`` was called), the offsets are re-computed so the leg's sequence
    continues at the next number and its timestamp advances by the wall time that passed (at least one
    frame), and the marker bit tells the receiver to re-sync its jitter buffer (RFC 3550 §5.1). The first
    source passes seq/timestamp through unchanged.
    """

    __slots__ = ("_at", "_rebase", "_seq", "_seq_off", "_src", "_ts", "_ts_off", "clock_rate", "ssrc")

    def __init__(self, ssrc: int, *, clock_rate: int = G711_CLOCK_RATE) -> None:
        self.ssrc = ssrc % TS_MOD
        self.clock_rate = clock_rate
        self._src = -1  # input SSRC being forwarded; -1 before the first packet
        self._rebase = False
        self._seq_off = 0
        self._ts_off = 0
        self._seq = 0  # highest sequence number sent so far
        self._ts = 0  # timestamp sent with it
        self._at = 0.0  # when it was sent

    def rebase(self) -> None:
        """Re-base on the next packet even if its SSRC is unchanged (e.g. the other party was transferred)."""
        self._rebase = True

    def rewrite(self, buf: bytearray | memoryview, now: float, payload_type: int = -1) -> None:
        """Rewrite the RTP header at the start of ``buf`` in place; ``payload_type`` < 0 keeps the PT."""
        b1, seq, ts, ssrc = HEADER_FIELDS.unpack_from(buf, 1)
        self.apply(buf, b1, seq, ts, ssrc, now, payload_type)

    def apply(
        self,
        buf: bytearray | memoryview,
        b1: int,
        seq: int,
        ts: int,
        ssrc: int,
        now: float,
        payload_type: int,
    ) -> None:
        """``rewrite`` with the header fields already read by the caller (the relay reads them once)."""
        first = False
        if ssrc != self._src or self._rebase:
            if self._src >= 0:
                gap = max(FRAME_SAMPLES, round((now - self._at) * self.clock_rate))
                self._seq_off = (self._seq + 1 - seq) % SEQ_MOD
                self._ts_off = (self._ts + gap - ts) % TS_MOD
                b1 |= _B1_MARKER
            first = True
            self._src = ssrc
            self._rebase = False
        if payload_type >= 0:
            b1 = (b1 & _B1_MARKER) | payload_type
        oseq = (seq + self._seq_off) % SEQ_MOD
        ots = (ts + self._ts_off) % TS_MOD
        HEADER_FIELDS.pack_into(buf, 1, b1, oseq, ots, self.ssrc)
        if first or (oseq - self._seq) % SEQ_MOD < SEQ_MOD // 2:
            self._seq = oseq
        if first or 0 < (ots - self._ts) % TS_MOD < TS_MOD // 2:
            self._ts = ots  # telephone-event packets repeat their start timestamp: only forward moves count
            self._at = now

    def stream(self, now: float) -> StreamState:
        """What the phone last got from this leg: SSRC, sequence number, timestamp and how long ago.

        A leg that has sent nothing yet stops passing its first source through: whatever it still sends
        re-bases on the state reported here, so packets that slip out before the hand-over completes stay
        in sequence with it."""
        if self._src < 0:
            self._src = 0
            self._rebase = True
            self._at = now
        return StreamState(self.ssrc, self._seq, self._ts, max(0.0, now - self._at))

    def adopt(self, state: StreamState, now: float) -> None:
        """Continue another leg's stream toward the same phone (a transfer moved the phone here): its SSRC,
        and the next packet re-bases on its sequence number and timestamp as after a source change."""
        self.ssrc = state.ssrc % TS_MOD
        self._seq = (state.seq + HANDOVER_SEQ_GAP) % SEQ_MOD
        self._ts = state.timestamp % TS_MOD
        self._at = now - state.age_s
        self._src = max(self._src, 0)  # "a source was seen": the next packet computes offsets
        self._rebase = True


class StreamState(NamedTuple):
    """An outgoing RTP stream's position (``LegRewriter.stream``), handed on when a phone changes legs."""

    ssrc: int
    seq: int
    timestamp: int
    age_s: float


RTCP_SR = 200  # RFC 3550 §6.4.1
RTCP_RR = 201  # RFC 3550 §6.4.2
_RTCP_HEADER_SIZE = 8
_RTCP_SENDER_INFO_SIZE = 20  # RFC 3550 §6.4.1: NTP (8), RTP timestamp, packet and octet counts
_RTCP_BLOCK_SIZE = 24  # RFC 3550 §6.4.1: one report block
_RTCP_BLOCK = struct.Struct(
    "!IIII"
)  # SSRC, fraction lost (8) + cumulative lost (24), ext. highest seq, jitter


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """What the peer says about the stream we send it (RFC 3550 §6.4.1)."""

    ssrc: int
    fraction_lost: int  # out of 256, since the previous report
    cumulative_lost: int  # signed 24-bit
    highest_seq: int
    jitter: int  # timestamp units


def parse_rtcp_report(data: bytes | bytearray | memoryview, n: int | None = None) -> ReportBlock | None:
    """The first report block of the SR or RR that starts a compound RTCP packet (RFC 3550 §6.1).

    ``None`` for a packet without a report block; raises ``MediaParseError`` for one that is not RTCP.
    """
    n = len(data) if n is None else n
    if n < _RTCP_HEADER_SIZE:
        raise MediaParseError("rtcp-short", f"need {_RTCP_HEADER_SIZE} bytes, got {n}")
    if data[0] >> 6 != RTP_VERSION:
        raise MediaParseError("rtcp-version", f"version {data[0] >> 6}, expected {RTP_VERSION}")
    packet_type = data[1]
    if packet_type == RTCP_SR:
        pos = _RTCP_HEADER_SIZE + _RTCP_SENDER_INFO_SIZE
    elif packet_type == RTCP_RR:
        pos = _RTCP_HEADER_SIZE
    else:
        raise MediaParseError("rtcp-type", f"compound packet starts with type {packet_type}, not SR or RR")
    if data[0] & 0x1F == 0:
        return None
    if pos + _RTCP_BLOCK_SIZE > n:
        raise MediaParseError("rtcp-short", "report block past the end")
    ssrc, lost, highest, jitter = _RTCP_BLOCK.unpack_from(data, pos)
    cumulative = lost & 0xFFFFFF
    if cumulative & 0x800000:
        cumulative -= 0x1000000
    return ReportBlock(ssrc, lost >> 24, cumulative, highest, jitter)
