"""vpbx.sip.sdp: parse/serialize real offers, our offer, and the answer rules of RFC 3264."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpbx.errors import SdpParseError, SipError
from vpbx.sip.sdp import (
    PCMA,
    PCMU,
    Attribute,
    Connection,
    Direction,
    Fmtp,
    Origin,
    Rtcp,
    RtpMap,
    SessionDescription,
    build_offer,
    negotiate,
    parse_sdp,
    serialize_sdp,
)

FIXTURES = Path(__file__).parents[2] / "fixtures" / "sdp"
ALL = sorted(p.stem for p in FIXTURES.glob("*.sdp"))
OURS = Origin(username="vpbx", session_id="7316", version=1, address="203.0.113.1")


def fixture(name: str) -> SessionDescription:
    return parse_sdp((FIXTURES / f"{name}.sdp").read_bytes())


def answer(name: str, **kwargs: object) -> SessionDescription | None:
    return negotiate(fixture(name), origin=OURS, address="203.0.113.1", port=40000, **kwargs)  # type: ignore[arg-type]


def test_fixtures_are_there() -> None:
    assert len(ALL) >= 9


@pytest.mark.parametrize("name", ALL)
def test_fixture_round_trips(name: str) -> None:
    sd = fixture(name)
    wire = serialize_sdp(sd)
    assert parse_sdp(wire) == sd
    assert serialize_sdp(parse_sdp(wire)) == wire
    assert wire.endswith(b"\r\n")
    assert b"\n" not in wire.replace(b"\r\n", b"")


def test_baresip_offer_typed_view() -> None:
    sd = fixture("baresip-offer")
    assert sd.origin == Origin(session_id="2890844526", version=2890844527, address="192.168.1.20")
    assert sd.connection == Connection(address="192.168.1.20")
    assert sd.timing == (0, 0)
    assert sd.attributes == (Attribute("tool", "baresip 3.10.1"),)
    (audio,) = sd.media
    assert sd.audio is audio
    assert (audio.media, audio.port, audio.proto) == ("audio", 10000, "RTP/AVP")
    assert audio.payload_types == (96, 9, 0, 8, 101)
    assert audio.rtpmap(96) == RtpMap(96, "opus", 48000, 2)
    assert audio.fmtp(101) == "0-15"
    assert audio.bandwidths == ("TIAS:64000",)
    assert audio.ptime == 20
    assert audio.direction is Direction.SENDRECV
    assert Attribute("rtcp-rsize") in audio.attributes
    assert audio.codec == RtpMap(96, "opus", 48000, 2)
    assert audio.telephone_event == 101
    assert not sd.is_hold(audio)


def test_linphone_offer_typed_view() -> None:
    sd = fixture("linphone-offer")
    audio, video = sd.media
    assert audio.rtpmap(18) is None  # G.729 has no rtpmap here and is not one of our static codecs
    assert audio.rtpmap(0) == RtpMap(0, "PCMU", 8000)  # static, no a=rtpmap needed (RFC 3551)
    assert audio.telephone_event == 100  # the one at 8000 Hz, not 101 (48 kHz) or 99 (16 kHz)
    assert audio.rtcp == Rtcp(7079)
    assert audio.direction is None
    assert sd.direction_of(audio) is Direction.SENDRECV
    assert video.media == "video"
    assert video.fmtp(97) == "profile-level-id=42801F"


def test_webrtc_offer_has_media_level_connection_and_rtcp_address() -> None:
    sd = fixture("webrtc-offer")
    (audio,) = sd.media
    assert sd.connection is None
    assert sd.connection_of(audio) == Connection(address="0.0.0.0")
    assert audio.rtcp == Rtcp(9, Connection(address="0.0.0.0"))
    assert Attribute("rtcp-mux") in audio.attributes
    assert Attribute("msid-semantic", " WMS") in sd.attributes


# --- our offer ----------------------------------------------------------------------------------------------
def test_build_offer_wire_form() -> None:
    offer = build_offer(origin=OURS, address="203.0.113.1", port=40000)
    assert serialize_sdp(offer) == (
        b"v=0\r\n"
        b"o=vpbx 7316 1 IN IP4 203.0.113.1\r\n"
        b"s=-\r\n"
        b"c=IN IP4 203.0.113.1\r\n"
        b"t=0 0\r\n"
        b"m=audio 40000 RTP/AVP 8 0 101\r\n"
        b"a=rtpmap:8 PCMA/8000\r\n"
        b"a=rtpmap:0 PCMU/8000\r\n"
        b"a=rtpmap:101 telephone-event/8000\r\n"
        b"a=fmtp:101 0-16\r\n"
        b"a=ptime:20\r\n"
        b"a=sendrecv\r\n"
    )
    assert parse_sdp(serialize_sdp(offer)) == offer


def test_build_offer_options() -> None:
    offer = build_offer(
        origin=OURS,
        address="2001:db8::1",
        port=40002,
        codecs=(PCMU,),
        telephone_event=None,
        direction=Direction.SENDONLY,
    )
    assert offer.connection == Connection(addr_type="IP6", address="2001:db8::1")
    (audio,) = offer.media
    assert audio.formats == ("0",)
    assert audio.telephone_event is None
    assert audio.direction is Direction.SENDONLY
    with pytest.raises(ValueError):
        build_offer(origin=OURS, address="203.0.113.1", port=40000, codecs=(18,))


def test_origin_version_moves_only_when_asked() -> None:
    assert OURS.bumped().version == 2
    assert OURS.bumped().session_id == OURS.session_id


def test_we_accept_our_own_offer() -> None:
    offer = build_offer(origin=OURS, address="203.0.113.1", port=40000)
    ours = negotiate(offer, origin=OURS.bumped(), address="198.51.100.9", port=50000)
    assert ours is not None
    (audio,) = ours.media
    assert audio.payload_types == (PCMA, 101)


# --- answers ------------------------------------------------------------------------------------------------
def test_answer_to_baresip_takes_the_first_offered_codec_we_support() -> None:
    sd = answer("baresip-offer")
    assert sd is not None
    assert sd.origin == OURS
    assert sd.connection == Connection(address="203.0.113.1")
    assert sd.timing == (0, 0)
    (audio,) = sd.media
    assert (audio.port, audio.proto) == (40000, "RTP/AVP")
    assert audio.payload_types == (PCMU, 101)  # PCMU comes before PCMA in baresip's list
    assert audio.rtpmaps == (RtpMap(0, "PCMU", 8000), RtpMap(101, "telephone-event", 8000))
    assert audio.fmtps == (Fmtp("101", "0-15"),)
    assert audio.ptime == 20
    assert audio.direction is Direction.SENDRECV
    assert audio.codec == RtpMap(0, "PCMU", 8000)
    only_alaw = answer("baresip-offer", supported=(PCMA,))
    assert only_alaw is not None
    assert only_alaw.media[0].payload_types == (PCMA, 101)
    assert answer("baresip-offer", supported=()) is None


def test_answer_to_linphone_keeps_the_video_line_rejected() -> None:
    sd = answer("linphone-offer")
    assert sd is not None
    audio, video = sd.media
    assert audio.payload_types == (PCMU, 100)
    assert audio.rtpmap(100) == RtpMap(100, "telephone-event", 8000)
    assert audio.fmtp(100) == "0-16"  # no fmtp offered: our events
    assert (video.media, video.port, video.proto, video.formats) == ("video", 0, "RTP/AVP", ("96", "97"))
    assert video.rtpmaps == () and video.attributes == () and video.direction is None


def test_answer_to_trunk() -> None:
    sd = answer("trunk-offer")
    assert sd is not None
    (audio,) = sd.media
    assert audio.payload_types == (PCMA, 101)
    assert audio.fmtp(101) == "0-16"
    assert audio.direction is Direction.SENDRECV
    assert answer("trunk-offer", telephone_event=False).media[0].payload_types == (PCMA,)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("trunk-hold-sendonly", Direction.RECVONLY),
        ("phone-hold-zero", Direction.RECVONLY),  # c=0.0.0.0 with sendrecv: they send, we only receive
        ("phone-hold-inactive", Direction.INACTIVE),
        ("trunk-offer", Direction.SENDRECV),
    ],
)
def test_hold_answers(name: str, expected: Direction) -> None:
    offer = fixture(name)
    assert offer.is_hold(offer.media[0]) is (expected is not Direction.SENDRECV)
    sd = answer(name)
    assert sd is not None
    assert sd.media[0].direction is expected


def test_hold_address_with_recvonly_or_inactive_is_inactive() -> None:
    raw = (FIXTURES / "phone-hold-zero.sdp").read_bytes()
    for direction in (b"recvonly", b"inactive"):
        offer = parse_sdp(raw + b"a=" + direction + b"\r\n")
        sd = negotiate(offer, origin=OURS, address="203.0.113.1", port=40000)
        assert sd is not None
        assert sd.media[0].direction is Direction.INACTIVE


@pytest.mark.parametrize("name", ["g729-only", "webrtc-offer"])
def test_nothing_acceptable_means_488(name: str) -> None:
    assert answer(name) is None


def test_answer_to_ipv6_offer() -> None:
    sd = negotiate(fixture("ipv6-offer"), origin=OURS, address="2001:db8::1", port=40000)
    assert sd is not None
    assert sd.connection == Connection(addr_type="IP6", address="2001:db8::1")
    assert sd.media[0].payload_types == (PCMA, 96)


OFFER_HEAD = b"v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\n"


def test_codecs_are_matched_by_name_and_clock() -> None:
    dynamic = parse_sdp(
        OFFER_HEAD + b"m=audio 4000 RTP/AVP 96 97\na=rtpmap:96 pcma/16000\na=rtpmap:97 pcma/8000\n"
    )
    sd = negotiate(dynamic, origin=OURS, address="203.0.113.1", port=40000)
    assert sd is not None
    assert sd.media[0].rtpmaps == (RtpMap(97, "PCMA", 8000),)  # the offer's PT, our spelling
    remapped = parse_sdp(OFFER_HEAD + b"m=audio 4000 RTP/AVP 8\na=rtpmap:8 G729/8000\n")
    assert negotiate(remapped, origin=OURS, address="203.0.113.1", port=40000) is None


def test_one_audio_stream_is_accepted_and_the_rest_rejected() -> None:
    offer = parse_sdp(
        OFFER_HEAD
        + b"m=audio 0 RTP/AVP 0\n"  # rejected before: stays rejected
        + b"m=audio 4000 RTP/SAVP 0\n"  # SRTP: not yet
        + b"m=audio 4002 RTP/AVP 0 8\n"
        + b"m=audio 4004 RTP/AVP 8\n"
        + b"m=application 5000 UDP/BFCP *\n"
    )
    sd = negotiate(offer, origin=OURS, address="203.0.113.1", port=40000)
    assert sd is not None
    assert [(m.media, m.port, m.proto) for m in sd.media] == [
        ("audio", 0, "RTP/AVP"),
        ("audio", 0, "RTP/SAVP"),
        ("audio", 40000, "RTP/AVP"),
        ("audio", 0, "RTP/AVP"),
        ("application", 0, "UDP/BFCP"),
    ]
    assert sd.media[2].payload_types == (PCMU,)
    assert sd.media[4].formats == ("*",)
    assert parse_sdp(serialize_sdp(sd)) == sd


def test_session_level_direction_applies_to_media() -> None:
    offer = parse_sdp(
        OFFER_HEAD + b"a=sendonly\nm=audio 4000 RTP/AVP 0\nm=audio 4002 RTP/AVP 0\na=sendrecv\n"
    )
    first, second = offer.media
    assert offer.direction_of(first) is Direction.SENDONLY
    assert offer.direction_of(second) is Direction.SENDRECV
    assert Direction.SENDONLY.reverse() is Direction.RECVONLY
    assert Direction.RECVONLY.sends is False and Direction.RECVONLY.receives is True


def test_lf_line_ends_and_unknown_lines_survive() -> None:
    text = (
        "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=Привет\ni=info\nu=http://example.com\ne=a@example.com\n"
        "c=IN IP4 192.0.2.1\nb=AS:80\nt=0 0\nr=7d 1h 0 25h\nz=2882844526 -1h\nk=clear:x\na=x-custom:1\n"
        "m=audio 4000/2 RTP/AVP 0\ni=voice\nc=IN IP4 192.0.2.2\nc=IN IP4 192.0.2.3\nb=AS:64\nk=prompt\n"
        "a=ptime:20.5\na=maxptime:40\n"
    )
    sd = parse_sdp(text)
    assert sd.session_name == "Привет"
    (audio,) = sd.media
    assert audio.port_count == 2
    assert audio.connection == Connection(address="192.0.2.2")
    assert audio.ptime is None
    assert Attribute("ptime", "20.5") in audio.attributes
    assert sd.connection_of(audio) == Connection(address="192.0.2.2")
    again = parse_sdp(serialize_sdp(sd))
    assert again == sd
    lines = serialize_sdp(sd).decode().split("\r\n")
    assert lines[:6] == ["v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=Привет", "i=info", "u=http://example.com",
                         "e=a@example.com"]  # fmt: skip
    assert lines.index("c=IN IP4 192.0.2.1") < lines.index("b=AS:80") < lines.index("t=0 0")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\r\n\r\n", "empty"),
        (b"v=1\r\n", "bad-version"),
        (b"o=- 1 1 IN IP4 a\r\nv=0\r\n", "bad-version"),
        (b"v=0\r\ns=-\r\n", "missing-origin"),
        (b"v=0\r\no=- 1 IN IP4 a\r\ns=-\r\n", "bad-origin"),
        (b"v=0\r\no=- 1 x IN IP4 a\r\ns=-\r\n", "bad-origin"),
        (b"v=0\r\no=- 1 1 IN IP4 a\r\nt=0 0\r\n", "missing-session-name"),
        (OFFER_HEAD + b"m=audio 4000 RTP/AVP 0\nc=IN IP5 a\n", "bad-connection"),
        (OFFER_HEAD.replace(b"c=IN IP4 192.0.2.1", b"c=IN IP4"), "bad-connection"),
        (OFFER_HEAD.replace(b"t=0 0", b"t=now"), "bad-timing"),
        (OFFER_HEAD + b"m=audio x RTP/AVP 0\n", "bad-media"),
        (OFFER_HEAD + b"m=audio 70000 RTP/AVP 0\n", "bad-media"),
        (OFFER_HEAD + b"m=audio 4000 RTP/AVP\n", "bad-media"),
        (OFFER_HEAD + b"m=audio 4000 RTP/AVP 128\n", "bad-media"),
        (OFFER_HEAD + b"m=audio 4000/0 RTP/AVP 0\n", "bad-media"),
        (OFFER_HEAD + b"m=audio 4000 RTP/AVP 0\na=rtpmap:0 PCMU\n", "bad-rtpmap"),
        (OFFER_HEAD + b"m=audio 4000 RTP/AVP 0\na=rtpmap:x PCMU/8000\n", "bad-rtpmap"),
        (OFFER_HEAD + b"m=audio 4000 RTP/AVP 0\na=rtpmap:0 PCMU/0\n", "bad-rtpmap"),
        (OFFER_HEAD + b"m=audio 4000 RTP/AVP 0\na=fmtp: 0-15\n", "bad-fmtp"),
        (OFFER_HEAD + b"m=audio 4000 RTP/AVP 0\na=rtcp:port\n", "bad-rtcp"),
        (OFFER_HEAD + b"m=audio 4000 RTP/AVP 0\na=rtcp:4001 IN IP4\n", "bad-rtcp"),
        (OFFER_HEAD + b"a=:x\n", "bad-attribute"),
        (OFFER_HEAD + b"X=1\n", "bad-line"),
        (OFFER_HEAD + b"m audio\n", "bad-line"),
        (OFFER_HEAD + b"a=x\ry\r\n", "bad-line"),
        (OFFER_HEAD + b"x=unknown type\n", "bad-line"),
        (OFFER_HEAD + b"o=- 1 1 IN IP4 192.0.2.1\n", "bad-line"),
        (OFFER_HEAD + b"s=again\n", "bad-line"),
        (OFFER_HEAD + b"c=IN IP4 192.0.2.9\n", "bad-line"),
        (OFFER_HEAD + b"m=audio 4000 RTP/AVP 0\nt=0 0\n", "bad-line"),
        (OFFER_HEAD + b"\xff=1\n", "not-utf8"),
        (b"v=0\no=- 1 " + b"9" * 5000 + b" IN IP4 a\ns=-\n", "bad-origin"),
        (OFFER_HEAD.replace(b"t=0 0", b"t=" + b"9" * 5000 + b" 0"), "bad-timing"),
        (OFFER_HEAD + b"m=audio " + b"9" * 5000 + b" RTP/AVP 0\n", "bad-media"),
        (OFFER_HEAD + b"m=audio 4000 RTP/AVP 0\n" * 17, "too-many-media"),
        (OFFER_HEAD + b"a=x:" + b"y" * 17000 + b"\n", "too-large"),
    ],
)
def test_parse_errors(data: bytes, reason: str) -> None:
    with pytest.raises(SdpParseError) as info:
        parse_sdp(data)
    assert info.value.reason == reason
    assert info.value.code == "sdp-parse"


def test_serialize_refuses_line_breaks() -> None:
    offer = build_offer(origin=OURS, address="203.0.113.1", port=40000)
    evil = SessionDescription(origin=offer.origin, session_name="x\r\na=evil", media=offer.media)
    with pytest.raises(SipError):
        serialize_sdp(evil)
