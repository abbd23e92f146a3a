"""SDP (RFC 8866) for audio calls, and the offer/answer rules of RFC 3264 (telephony.md §3.8). Pure.

``parse_sdp`` reads the lines we act on (``v o s c t m`` and ``a=rtpmap/fmtp/ptime/sendrecv/sendonly/
recvonly/inactive/rtcp``) into frozen dataclasses and keeps every other line as it came, so
``serialize_sdp(parse_sdp(x))`` reads back the same. ``build_offer`` writes our offer (PCMA 8, PCMU 0,
telephone-event 101 ``0-16``, ptime 20); ``negotiate`` answers an offer: the first offered codec we
support, one audio stream, every other m-line kept with port 0, and the hold rules of RFC 3264 §8.4.

The caller owns the ``o=`` line: RFC 3264 §8 wants its version to move only when the SDP changes, which
only the media session knows, so offers and answers take an ``Origin``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from vpbx.errors import SdpParseError, SipError

__all__ = [
    "PCMA",
    "PCMU",
    "TELEPHONE_EVENT_PT",
    "Attribute",
    "Connection",
    "Direction",
    "Fmtp",
    "MediaDescription",
    "Origin",
    "Rtcp",
    "RtpMap",
    "SessionDescription",
    "build_offer",
    "negotiate",
    "parse_sdp",
    "serialize_sdp",
]

# --- protocol numbers --------------------------------------------------------------------------------------
PCMU = 0  # RFC 3551 §6 table 4: static payload type of G.711 µ-law
PCMA = 8  # RFC 3551 §6 table 4: static payload type of G.711 A-law
TELEPHONE_EVENT_PT = 101  # our offer's dynamic PT for RFC 4733 events; peers may choose another
TELEPHONE_EVENTS = "0-16"  # RFC 4733 §3.2: DTMF 0-9 * # A-D and flash
PTIME_MS = 20  # packetisation we offer and answer
AUDIO_CLOCK = 8000  # Hz, G.711 and the telephone-event we pair with it
RTP_AVP = "RTP/AVP"  # RFC 3551: the one profile we answer (no SRTP, no feedback profiles yet)
HOLD_ADDRESSES = ("0.0.0.0", "::")  # RFC 3264 §8.4: the old way to say "do not send to me"
MAX_SDP = 16 * 1024  # octets; a SIP message is at most 64 KiB anyway
MAX_MEDIA = 16  # m-lines per description: anything more is not a phone

STATIC_CODECS = {PCMU: ("PCMU", AUDIO_CLOCK), PCMA: ("PCMA", AUDIO_CLOCK)}  # RFC 3551 §6


class Direction(StrEnum):
    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    def reverse(self) -> Direction:
        """The answerer's direction for an offer with this one (RFC 3264 §6.1)."""
        return _REVERSE[self]

    @property
    def sends(self) -> bool:
        return self in (Direction.SENDRECV, Direction.SENDONLY)

    @property
    def receives(self) -> bool:
        return self in (Direction.SENDRECV, Direction.RECVONLY)


_REVERSE = {
    Direction.SENDRECV: Direction.SENDRECV,
    Direction.SENDONLY: Direction.RECVONLY,
    Direction.RECVONLY: Direction.SENDONLY,
    Direction.INACTIVE: Direction.INACTIVE,
}
_DIRECTIONS = {d.value: d for d in Direction}
# Session lines we keep as they are, by their place in RFC 8866 §5's order: before c=, before t=, after t=.
_SESSION_OTHER_RANK = {"i": 0, "u": 0, "e": 0, "p": 0, "b": 1, "t": 2, "r": 2, "z": 2, "k": 2}


@dataclass(frozen=True, slots=True, kw_only=True)
class Origin:
    """``o=`` (RFC 8866 §5.2)."""

    username: str = "-"
    session_id: str
    version: int
    net_type: str = "IN"
    addr_type: str = "IP4"
    address: str

    def bumped(self) -> Origin:
        """The same session with its version moved on: the SDP changed (RFC 3264 §8)."""
        return dataclasses.replace(self, version=self.version + 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Connection:
    """``c=`` (RFC 8866 §5.7); ``address`` as written (a multicast one may carry ``/ttl``)."""

    net_type: str = "IN"
    addr_type: str = "IP4"
    address: str

    @property
    def is_hold(self) -> bool:
        return self.address in HOLD_ADDRESSES


@dataclass(frozen=True, slots=True)
class RtpMap:
    """``a=rtpmap:<pt> <encoding>/<clock>[/<channels>]`` (RFC 8866 §6.6)."""

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int | None = None


@dataclass(frozen=True, slots=True)
class Fmtp:
    """``a=fmtp:<format> <parameters>`` (RFC 8866 §6.15), parameters kept as one string."""

    format: str
    parameters: str


@dataclass(frozen=True, slots=True)
class Rtcp:
    """``a=rtcp:<port> [<nettype> <addrtype> <address>]`` (RFC 3605)."""

    port: int
    connection: Connection | None = None


@dataclass(frozen=True, slots=True)
class Attribute:
    """Any other ``a=`` line: ``name`` and ``value`` (None for a property attribute, e.g. ``a=rtcp-mux``)."""

    name: str
    value: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaDescription:
    """One ``m=`` section. ``direction`` None: not stated here (the session's applies, else sendrecv)."""

    media: str
    port: int
    port_count: int | None = None
    proto: str
    formats: tuple[str, ...]
    connection: Connection | None = None
    bandwidths: tuple[str, ...] = ()
    rtpmaps: tuple[RtpMap, ...] = ()
    fmtps: tuple[Fmtp, ...] = ()
    ptime: int | None = None
    rtcp: Rtcp | None = None
    direction: Direction | None = None
    attributes: tuple[Attribute, ...] = ()
    other_lines: tuple[tuple[str, str], ...] = ()  # i=, k=… as (type, value)

    @property
    def is_rtp(self) -> bool:
        return "RTP/" in self.proto.upper()

    @property
    def payload_types(self) -> tuple[int, ...]:
        """The formats as RTP payload types (empty for a non-RTP stream)."""
        return tuple(int(f) for f in self.formats) if self.is_rtp else ()

    def rtpmap(self, payload_type: int) -> RtpMap | None:
        """The mapping of ``payload_type``: its ``a=rtpmap`` line, else the static one of RFC 3551."""
        for m in self.rtpmaps:
            if m.payload_type == payload_type:
                return m
        static = STATIC_CODECS.get(payload_type)
        return RtpMap(payload_type, static[0], static[1]) if static else None

    def fmtp(self, payload_type: int) -> str | None:
        wanted = str(payload_type)
        for f in self.fmtps:
            if f.format == wanted:
                return f.parameters
        return None

    @property
    def codec(self) -> RtpMap | None:
        """The first format that is not telephone-event: in an answer, the codec in use."""
        for pt in self.payload_types:
            m = self.rtpmap(pt)
            if m is not None and m.encoding.lower() != "telephone-event":
                return m
        return None

    @property
    def telephone_event(self) -> int | None:
        """The payload type of telephone-event at the codec's clock rate (8000 Hz), if offered."""
        for pt in self.payload_types:
            m = self.rtpmap(pt)
            if m is not None and m.encoding.lower() == "telephone-event" and m.clock_rate == AUDIO_CLOCK:
                return pt
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionDescription:
    """A whole description. ``direction`` is the session-level attribute, None when absent."""

    version: int = 0
    origin: Origin
    session_name: str = "-"
    connection: Connection | None = None
    timing: tuple[int, int] = (0, 0)
    direction: Direction | None = None
    attributes: tuple[Attribute, ...] = ()
    other_lines: tuple[tuple[str, str], ...] = ()  # i= u= e= p= b= r= z= k= as (type, value)
    media: tuple[MediaDescription, ...] = ()

    def direction_of(self, media: MediaDescription) -> Direction:
        """Media-level direction, else session-level, else sendrecv (RFC 3264 §5.1)."""
        return media.direction or self.direction or Direction.SENDRECV

    def connection_of(self, media: MediaDescription) -> Connection | None:
        """Media-level ``c=``, else the session's (RFC 8866 §5.7)."""
        return media.connection or self.connection

    @property
    def audio(self) -> MediaDescription | None:
        """The first audio stream that is not rejected (port ≠ 0)."""
        for m in self.media:
            if m.media == "audio" and m.port != 0:
                return m
        return None

    def is_hold(self, media: MediaDescription) -> bool:
        """Whether the sender of this description asks not to receive (sendonly, inactive, c=0.0.0.0)."""
        conn = self.connection_of(media)
        return not self.direction_of(media).receives or (conn is not None and conn.is_hold)


# --- parse -------------------------------------------------------------------------------------------------
def parse_sdp(data: bytes | str) -> SessionDescription:
    """A session description from a SIP body; ``SdpParseError`` on anything we cannot read.

    Lines may end in CRLF or LF (RFC 8866 §5 asks parsers to accept both).
    """
    if isinstance(data, bytes):
        if len(data) > MAX_SDP:
            raise SdpParseError("too-large", f"{len(data)} octets")
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise SdpParseError("not-utf8") from None
    else:
        text = data
        if len(text) > MAX_SDP:
            raise SdpParseError("too-large", f"{len(text)} characters")
    lines = [line.rstrip("\r") for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise SdpParseError("empty")
    parsed: list[tuple[str, str]] = []
    for line in lines:
        if len(line) < 2 or line[1] != "=" or not ("a" <= line[0] <= "z") or "\r" in line:
            raise SdpParseError("bad-line", line[:60])
        parsed.append((line[0], line[2:]))

    if parsed[0] != ("v", "0"):
        raise SdpParseError("bad-version", lines[0][:20])
    if len(parsed) < 2 or parsed[1][0] != "o":
        raise SdpParseError("missing-origin")
    origin = _parse_origin(parsed[1][1])

    session_name: str | None = None
    connection: Connection | None = None
    timing: tuple[int, int] | None = None
    direction: Direction | None = None
    attributes: list[Attribute] = []
    others: list[tuple[str, str]] = []
    media: list[MediaDescription] = []
    current: _MediaBuilder | None = None

    for kind, value in parsed[2:]:
        if kind == "m":
            if current is not None:
                media.append(current.build())
            if len(media) >= MAX_MEDIA:
                raise SdpParseError("too-many-media")
            current = _MediaBuilder(value)
            continue
        if current is not None:
            current.add(kind, value)
            continue
        if kind == "s":
            if session_name is not None:
                raise SdpParseError("bad-line", "second s=")
            session_name = value
        elif kind == "c":
            if connection is not None:
                raise SdpParseError("bad-line", "second session-level c=")
            connection = _parse_connection(value)
        elif kind == "t":
            if timing is None:  # later t= lines (several active periods) stay as they are
                timing = _parse_timing(value)
            else:
                others.append((kind, value))
        elif kind == "a":
            name, attr_value = _split_attribute(value)
            if name in _DIRECTIONS and attr_value is None:
                direction = _DIRECTIONS[name]
            else:
                attributes.append(Attribute(name, attr_value))
        elif kind in _SESSION_OTHER_RANK:
            others.append((kind, value))
        else:  # RFC 8866 §5: a description with a type letter we do not know is refused
            raise SdpParseError("bad-line", f"{kind}= at session level")
    if current is not None:
        media.append(current.build())
    if session_name is None:
        raise SdpParseError("missing-session-name")
    return SessionDescription(
        origin=origin,
        session_name=session_name,
        connection=connection,
        timing=timing or (0, 0),
        direction=direction,
        attributes=tuple(attributes),
        other_lines=tuple(sorted(others, key=lambda line: _SESSION_OTHER_RANK[line[0]])),
        media=tuple(media),
    )


def _digits(text: str, max_len: int = 20) -> bool:
    """ASCII digits only, and few enough for int() (Python refuses over 4300) and for NTP times."""
    return 0 < len(text) <= max_len and text.isascii() and text.isdigit()


def _parse_origin(value: str) -> Origin:
    parts = value.split()
    if len(parts) != 6 or not _digits(parts[2]):
        raise SdpParseError("bad-origin", value[:80])
    return Origin(
        username=parts[0],
        session_id=parts[1],
        version=int(parts[2]),
        net_type=parts[3],
        addr_type=parts[4],
        address=parts[5],
    )


def _parse_connection(value: str) -> Connection:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpParseError("bad-connection", value[:80])
    return Connection(net_type=parts[0], addr_type=parts[1], address=parts[2])


def _parse_timing(value: str) -> tuple[int, int]:
    parts = value.split()
    if len(parts) != 2 or not all(_digits(p) for p in parts):
        raise SdpParseError("bad-timing", value[:40])
    return int(parts[0]), int(parts[1])


def _split_attribute(value: str) -> tuple[str, str | None]:
    name, sep, rest = value.partition(":")
    if not name:
        raise SdpParseError("bad-attribute", value[:40])
    return name, rest if sep else None


def _int(text: str, low: int, high: int, reason: str) -> int:
    if not _digits(text, 10) or not low <= int(text) <= high:
        raise SdpParseError(reason, text[:20])
    return int(text)


class _MediaBuilder:
    """Collects the lines of one m= section."""

    def __init__(self, value: str) -> None:
        parts = value.split()
        if len(parts) < 4:
            raise SdpParseError("bad-media", value[:80])
        port_text, _, count_text = parts[1].partition("/")
        self.media = parts[0]
        self.port = _int(port_text, 0, 65535, "bad-media")
        self.port_count = _int(count_text, 1, 65535, "bad-media") if count_text else None
        self.proto = parts[2]
        self.formats = tuple(parts[3:])
        if "RTP/" in self.proto.upper():
            for f in self.formats:
                _int(f, 0, 127, "bad-media")
        self.connection: Connection | None = None
        self.bandwidths: list[str] = []
        self.rtpmaps: list[RtpMap] = []
        self.fmtps: list[Fmtp] = []
        self.ptime: int | None = None
        self.rtcp: Rtcp | None = None
        self.direction: Direction | None = None
        self.attributes: list[Attribute] = []
        self.others: list[tuple[str, str]] = []

    def add(self, kind: str, value: str) -> None:
        if kind == "c":
            if self.connection is None:  # several c= lines mean multicast layers; the first is enough
                self.connection = _parse_connection(value)
            else:
                self.others.append((kind, value))
        elif kind == "b":
            self.bandwidths.append(value)
        elif kind == "a":
            self._attribute(value)
        elif kind in ("i", "k"):
            self.others.append((kind, value))
        else:
            raise SdpParseError("bad-line", f"{kind}= in a media section")

    def _attribute(self, value: str) -> None:
        name, attr = _split_attribute(value)
        if attr is None and name in _DIRECTIONS:
            self.direction = _DIRECTIONS[name]
        elif name == "rtpmap" and attr is not None:
            self.rtpmaps.append(_parse_rtpmap(attr))
        elif name == "fmtp" and attr is not None:
            fmt, _, params = attr.partition(" ")
            if not fmt:
                raise SdpParseError("bad-fmtp", attr[:40])
            self.fmtps.append(Fmtp(fmt, params.strip()))
        elif name == "ptime" and attr is not None and _digits(attr, 5) and self.ptime is None:
            self.ptime = int(attr)
        elif name == "rtcp" and attr is not None:
            self.rtcp = _parse_rtcp(attr)
        else:  # a=ptime:20.5, a=maxptime, a=rtcp-mux, a=crypto… ride along untouched
            self.attributes.append(Attribute(name, attr))

    def build(self) -> MediaDescription:
        return MediaDescription(
            media=self.media,
            port=self.port,
            port_count=self.port_count,
            proto=self.proto,
            formats=self.formats,
            connection=self.connection,
            bandwidths=tuple(self.bandwidths),
            rtpmaps=tuple(self.rtpmaps),
            fmtps=tuple(self.fmtps),
            ptime=self.ptime,
            rtcp=self.rtcp,
            direction=self.direction,
            attributes=tuple(self.attributes),
            other_lines=tuple(sorted(self.others, key=lambda line: line[0] != "i")),
        )


def _parse_rtpmap(value: str) -> RtpMap:
    pt_text, _, rest = value.partition(" ")
    pieces = rest.strip().split("/")
    if len(pieces) not in (2, 3) or not pieces[0]:
        raise SdpParseError("bad-rtpmap", value[:60])
    return RtpMap(
        _int(pt_text, 0, 127, "bad-rtpmap"),
        pieces[0],
        _int(pieces[1], 1, 10_000_000, "bad-rtpmap"),
        _int(pieces[2], 1, 255, "bad-rtpmap") if len(pieces) == 3 else None,
    )


def _parse_rtcp(value: str) -> Rtcp:
    parts = value.split()
    port = _int(parts[0] if parts else "", 0, 65535, "bad-rtcp")
    if len(parts) == 1:
        return Rtcp(port)
    if len(parts) != 4:
        raise SdpParseError("bad-rtcp", value[:60])
    return Rtcp(port, _parse_connection(" ".join(parts[1:])))


# --- serialize ---------------------------------------------------------------------------------------------
def serialize_sdp(sd: SessionDescription) -> bytes:
    """Wire form with CRLF line ends, lines in the order of RFC 8866 §5."""
    out = [f"v={sd.version}", _origin_line(sd.origin), f"s={sd.session_name}"]
    out += [f"{k}={v}" for k, v in sd.other_lines if _SESSION_OTHER_RANK.get(k) == 0]
    if sd.connection is not None:
        out.append(_connection_line(sd.connection))
    out += [f"{k}={v}" for k, v in sd.other_lines if _SESSION_OTHER_RANK.get(k) == 1]
    out.append(f"t={sd.timing[0]} {sd.timing[1]}")
    out += [f"{k}={v}" for k, v in sd.other_lines if _SESSION_OTHER_RANK.get(k, 2) == 2]
    out += [_attribute_line(a) for a in sd.attributes]
    if sd.direction is not None:
        out.append(f"a={sd.direction.value}")
    for m in sd.media:
        out += _media_lines(m)
    for line in out:
        if "\r" in line or "\n" in line:
            raise SipError("An SDP value contains a line break")
    return ("\r\n".join(out) + "\r\n").encode()


def _origin_line(o: Origin) -> str:
    return f"o={o.username} {o.session_id} {o.version} {o.net_type} {o.addr_type} {o.address}"


def _connection_line(c: Connection) -> str:
    return f"c={c.net_type} {c.addr_type} {c.address}"


def _attribute_line(a: Attribute) -> str:
    return f"a={a.name}" if a.value is None else f"a={a.name}:{a.value}"


def _media_lines(m: MediaDescription) -> list[str]:
    port = f"{m.port}/{m.port_count}" if m.port_count is not None else str(m.port)
    out = [f"m={m.media} {port} {m.proto} {' '.join(m.formats)}"]
    out += [f"{k}={v}" for k, v in m.other_lines if k == "i"]
    if m.connection is not None:
        out.append(_connection_line(m.connection))
    out += [f"b={b}" for b in m.bandwidths]
    out += [f"{k}={v}" for k, v in m.other_lines if k != "i"]
    for r in m.rtpmaps:
        suffix = f"/{r.channels}" if r.channels is not None else ""
        out.append(f"a=rtpmap:{r.payload_type} {r.encoding}/{r.clock_rate}{suffix}")
    out += [f"a=fmtp:{f.format} {f.parameters}" if f.parameters else f"a=fmtp:{f.format}" for f in m.fmtps]
    if m.ptime is not None:
        out.append(f"a=ptime:{m.ptime}")
    if m.rtcp is not None:
        rtcp = f"a=rtcp:{m.rtcp.port}"
        if m.rtcp.connection is not None:
            c = m.rtcp.connection
            rtcp += f" {c.net_type} {c.addr_type} {c.address}"
        out.append(rtcp)
    out += [_attribute_line(a) for a in m.attributes]
    if m.direction is not None:
        out.append(f"a={m.direction.value}")
    return out


# --- offer / answer ----------------------------------------------------------------------------------------
def _addr_type(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def _audio_codecs(codecs: Iterable[int]) -> list[RtpMap]:
    out: list[RtpMap] = []
    for pt in codecs:
        if pt not in STATIC_CODECS:
            raise ValueError(f"unsupported codec payload type {pt}")
        name, clock = STATIC_CODECS[pt]
        out.append(RtpMap(pt, name, clock))
    return out


def build_offer(
    *,
    origin: Origin,
    address: str,
    port: int,
    codecs: Sequence[int] = (PCMA, PCMU),
    telephone_event: int | None = TELEPHONE_EVENT_PT,
    ptime: int = PTIME_MS,
    direction: Direction = Direction.SENDRECV,
) -> SessionDescription:
    """Our offer (telephony.md §3.8): G.711 in ``codecs`` order, telephone-event, ptime 20, sendrecv."""
    rtpmaps = _audio_codecs(codecs)
    formats = [str(pt) for pt in codecs]
    fmtps: list[Fmtp] = []
    if telephone_event is not None:
        rtpmaps.append(RtpMap(telephone_event, "telephone-event", AUDIO_CLOCK))
        fmtps.append(Fmtp(str(telephone_event), TELEPHONE_EVENTS))
        formats.append(str(telephone_event))
    audio = MediaDescription(
        media="audio",
        port=port,
        proto=RTP_AVP,
        formats=tuple(formats),
        rtpmaps=tuple(rtpmaps),
        fmtps=tuple(fmtps),
        ptime=ptime,
        direction=direction,
    )
    return SessionDescription(
        origin=origin,
        connection=Connection(addr_type=_addr_type(address), address=address),
        media=(audio,),
    )


def negotiate(
    offer: SessionDescription,
    *,
    origin: Origin,
    address: str,
    port: int,
    supported: Sequence[int] = (PCMA, PCMU),
    telephone_event: bool = True,
    ptime: int = PTIME_MS,
) -> SessionDescription | None:
    """Our answer to ``offer`` (RFC 3264 §6), or None when nothing in it is acceptable (answer 488).

    One audio stream is accepted: the first offered ``RTP/AVP`` audio m-line with a codec in ``supported``
    (matched by name, so a dynamic PT mapped to PCMA counts). It gets the first such codec in the offer's
    order, with the offer's payload type, plus telephone-event/8000 when offered and ``telephone_event``.
    Every other m-line is answered with port 0, so the count and order match the offer. Direction is the
    reverse of the offer's (sendonly → recvonly, inactive → inactive); an offer whose connection is
    0.0.0.0 does not want to receive, so it is treated as sendonly (or inactive) (RFC 3264 §8.4).
    """
    wanted = {STATIC_CODECS[pt][0].lower(): pt for pt in supported if pt in STATIC_CODECS}
    answered: list[MediaDescription] = []
    accepted = False
    for m in offer.media:
        answer = None if accepted else _answer_audio(offer, m, wanted, telephone_event, port, ptime)
        if answer is None:
            answered.append(_rejected(m))
        else:
            answered.append(answer)
            accepted = True
    if not accepted:
        return None
    return SessionDescription(
        origin=origin,
        connection=Connection(addr_type=_addr_type(address), address=address),
        timing=offer.timing,  # RFC 3264 §6: the answer's t= equals the offer's
        media=tuple(answered),
    )


def _rejected(m: MediaDescription) -> MediaDescription:
    """An m-line refused in the answer: port 0, same media, proto and formats, nothing else."""
    return MediaDescription(media=m.media, port=0, proto=m.proto, formats=m.formats)


def _answer_audio(
    offer: SessionDescription,
    m: MediaDescription,
    wanted: dict[str, int],
    telephone_event: bool,
    port: int,
    ptime: int,
) -> MediaDescription | None:
    if m.media != "audio" or m.port == 0 or m.proto.upper() != RTP_AVP:
        return None
    chosen: RtpMap | None = None
    for pt in m.payload_types:
        mapping = m.rtpmap(pt)
        if mapping is not None and mapping.clock_rate == AUDIO_CLOCK and mapping.encoding.lower() in wanted:
            chosen = RtpMap(pt, STATIC_CODECS[wanted[mapping.encoding.lower()]][0], AUDIO_CLOCK)
            break
    if chosen is None:
        return None
    formats = [str(chosen.payload_type)]
    rtpmaps = [chosen]
    fmtps: list[Fmtp] = []
    event_pt = m.telephone_event if telephone_event else None
    if event_pt is not None:
        formats.append(str(event_pt))
        rtpmaps.append(RtpMap(event_pt, "telephone-event", AUDIO_CLOCK))
        fmtps.append(Fmtp(str(event_pt), m.fmtp(event_pt) or TELEPHONE_EVENTS))
    offered = offer.direction_of(m)
    conn = offer.connection_of(m)
    if conn is not None and conn.is_hold:  # "do not send to me", the RFC 2543 way
        offered = Direction.SENDONLY if offered.sends else Direction.INACTIVE
    return MediaDescription(
        media="audio",
        port=port,
        proto=m.proto,
        formats=tuple(formats),
        rtpmaps=tuple(rtpmaps),
        fmtps=tuple(fmtps),
        ptime=ptime,
        direction=offered.reverse(),
    )
