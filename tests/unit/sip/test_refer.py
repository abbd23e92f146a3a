"""REFER's pieces on bytes: Refer-To with embedded Replaces, Replaces, Refer-Sub and sipfrag (RFC 3515, 3891,
4488, 3420)."""

from __future__ import annotations

import pytest

from vpbx.errors import SipParseError
from vpbx.sip.message import Request, parse
from vpbx.sip.refer import (
    Replaces,
    build_sipfrag,
    parse_refer_to,
    parse_replaces,
    parse_sipfrag,
    refer_sub_wanted,
)

# RFC 5589 §7.1 style: an attended transfer's REFER, the Replaces escaped inside the Refer-To URI
ATTENDED_REFER = (
    b"REFER sip:9f1c2b@203.0.113.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-refer1\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:101@acme.vpbx.test>;tag=a1\r\n"
    b"To: <sip:102@acme.vpbx.test>;tag=p1\r\n"
    b"Call-ID: call-one@192.0.2.10\r\n"
    b"CSeq: 3 REFER\r\n"
    b"Contact: <sip:101@192.0.2.10:5060>\r\n"
    b"Refer-To: <sip:103@acme.vpbx.test?Replaces=call-two%40192.0.2.10%3Bto-tag%3Dp2%3Bfrom-tag%3Da2>\r\n"
    b"Referred-By: <sip:101@acme.vpbx.test>\r\n"
    b"Refer-Sub: false\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_an_attended_refer_from_the_wire() -> None:
    msg = parse(ATTENDED_REFER)
    assert isinstance(msg, Request)

    refer_to = parse_refer_to(msg.headers["Refer-To"])

    assert (refer_to.uri.user, refer_to.uri.host) == ("103", "acme.vpbx.test")
    assert refer_to.replaces == Replaces(call_id="call-two@192.0.2.10", to_tag="p2", from_tag="a2")
    assert refer_to.headers == (("Replaces", "call-two@192.0.2.10;to-tag=p2;from-tag=a2"),)
    assert refer_sub_wanted(msg.headers.get("Refer-Sub")) is False


@pytest.mark.parametrize(
    ("value", "user", "display"),
    [
        ("<sip:102@acme.vpbx.test>", "102", ""),
        ("sip:102@acme.vpbx.test", "102", ""),
        ("sip:102@acme.vpbx.test;method=INVITE", "102", ""),  # header parameters after an addr-spec
        ('"Front desk" <sip:+74951234567@acme.vpbx.test;user=phone>', "+74951234567", "Front desk"),
        ("<sips:102@192.0.2.1:5061>", "102", ""),
    ],
)
def test_blind_refer_to_values(value: str, user: str, display: str) -> None:
    refer_to = parse_refer_to(value)
    assert (refer_to.uri.user, refer_to.display_name, refer_to.replaces) == (user, display, None)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "<sip:102@acme.vpbx.test",  # no closing bracket
        "<tel:+74951234567>",  # phones send sip: URIs; tel: is not a SIP target here
        "<mailto:x@example.com>",
        "<sip:102@acme.vpbx.test?Replaces>",  # a header without a value
        "<sip:102@acme.vpbx.test?Replaces=only-a-call-id>",
        "<sip:" + "1" * 2000 + "@acme.vpbx.test>",
    ],
)
def test_bad_refer_to_values(value: str) -> None:
    with pytest.raises(SipParseError) as e:
        parse_refer_to(value)
    assert e.value.reason in ("bad-refer-to", "bad-replaces")


def test_replaces_parameters() -> None:
    rep = parse_replaces("abc@h ; to-tag=1 ; from-tag=2 ; early-only")
    assert rep == Replaces(call_id="abc@h", to_tag="1", from_tag="2", early_only=True)
    assert parse_replaces("abc;FROM-TAG=2;To-Tag=1;x=y").to_tag == "1"


@pytest.mark.parametrize(
    "value", ["", ";to-tag=1;from-tag=2", "abc;to-tag=1", "abc;from-tag=2", "a b;to-tag=1"]
)
def test_bad_replaces(value: str) -> None:
    with pytest.raises(SipParseError) as e:
        parse_replaces(value)
    assert e.value.reason == "bad-replaces"


@pytest.mark.parametrize(
    ("value", "wanted"), [(None, True), ("true", True), ("false", False), (" FALSE ", False)]
)
def test_refer_sub(value: str | None, wanted: bool) -> None:
    assert refer_sub_wanted(value) is wanted


def test_sipfrag_round_trip() -> None:
    body = build_sipfrag(100, "Trying")
    assert body == b"SIP/2.0 100 Trying\r\n"
    assert parse_sipfrag(body) == 100
    assert parse_sipfrag(b"SIP/2.0 486 Busy Here\r\nContent-Length: 0\r\n") == 486
    with pytest.raises(ValueError):
        build_sipfrag(99, "Nope")


@pytest.mark.parametrize("body", [b"", b"HTTP/1.1 200 OK\r\n", b"SIP/2.0 2000 OK\r\n", b"SIP/2.0 abc\r\n"])
def test_bad_sipfrag(body: bytes) -> None:
    with pytest.raises(SipParseError) as e:
        parse_sipfrag(body)
    assert e.value.reason == "bad-sipfrag"
