"""vpbx.sip.message: parse, serialize, replies; RFC 4475 torture messages and our own broken ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import sipmessage

from vpbx.errors import SipError, SipParseError
from vpbx.sip.message import (
    MAX_MESSAGE,
    PARSE_ERROR_REASONS,
    URI,
    Request,
    Response,
    SipHeaders,
    branch,
    build_response,
    format_uri,
    parse,
    parse_uri,
    recover_for_reply,
    serialize,
    top_via,
)

FIXTURES = Path(__file__).parents[2] / "fixtures" / "sip"
TORTURE = FIXTURES / "rfc4475"


def torture(name: str) -> bytes:
    return (TORTURE / f"{name}.dat").read_bytes()


def own(name: str) -> bytes:
    return (FIXTURES / "malformed" / f"{name}.dat").read_bytes()


# RFC 4475 messages we accept: they parse and survive serialize → parse.
VALID = [
    "wsinv",  # §3.1.1.1 folding, odd spacing and case, compact forms
    "intmeth",  # §3.1.1.2 unusual token characters, NUL in a quoted string, UTF-8
    "esc01",  # §3.1.1.3 % escapes
    "escnull",  # §3.1.1.4 escaped NULs
    "esc02",  # §3.1.1.5 % that is not an escape (unknown method RE%47IST%45R)
    "lwsdisp",  # §3.1.1.6 no LWS between display name and <
    "longreq",  # §3.1.1.7 long values
    "dblreq",  # §3.1.1.8 extra trailing octets in a datagram
    "semiuri",  # §3.1.1.9 ; in the user part
    "transports",  # §3.1.1.10 unknown transports
    "mpart01",  # §3.1.1.11 binary multipart body
    "unreason",  # §3.1.1.12 UTF-8 reason phrase
    "noreason",  # §3.1.1.13 empty reason phrase
    "baddate",  # §3.1.2.12 non-GMT Date: we never read Date, so we let it through
    "badbranch",  # §3.2.1 branch is just the magic cookie: a transaction-layer matter
    "bext01",  # §3.3.5 Require/Proxy-Require: 420 is the UA's answer
    "invut",  # §3.3.6 unknown Content-Type: 415 is the UA's answer
    "regaut01",  # §3.3.7 unknown authorization scheme
    "bcast",  # §3.3.10 broadcast Via in a response
    "zeromf",  # §3.3.11 Max-Forwards: 0 (483 or answer is the UA's choice)
    "cparam01",  # §3.3.12 Contact header parameter
    "cparam02",  # §3.3.13 Contact URI parameter
    "sdp01",  # §3.3.15 unacceptable Accept
    "inv2543",  # §3.4.1 RFC 2543 syntax: no branch, no Max-Forwards, no Content-Length
]

# RFC 4475 messages we refuse, with the status the request earns and the reason (the metric label).
INVALID = {
    "badinv01": (400, "bad-via"),  # §3.1.2.1 extraneous separators
    "clerr": (400, "truncated-body"),  # §3.1.2.2 Content-Length larger than the message
    "ncl": (400, "bad-content-length"),  # §3.1.2.3 negative Content-Length
    "scalar02": (400, "bad-cseq"),  # §3.1.2.4 CSeq ≥ 2**31 (Max-Forwards, Expires also out of range)
    "scalarlg": (400, "bad-cseq"),  # §3.1.2.5 a response: dropped
    "quotbal": (400, "bad-to"),  # §3.1.2.6 unterminated quoted string
    "ltgtruri": (400, "bad-request-uri"),  # §3.1.2.7 <> around the Request-URI
    "lwsruri": (400, "bad-request-line"),  # §3.1.2.8 LWS inside the Request-URI
    "lwsstart": (400, "bad-request-line"),  # §3.1.2.9 several SP between elements
    "trws": (400, "bad-request-line"),  # §3.1.2.10 SP after the version
    "escruri": (400, "bad-request-uri"),  # §3.1.2.11 escaped headers in the Request-URI
    "regbadct": (400, "bad-contact"),  # §3.1.2.13 ? in an unenclosed Contact URI
    "badaspec": (400, "bad-to"),  # §3.1.2.14 spaces inside <>
    "baddn": (400, "bad-from"),  # §3.1.2.15 non-token display name
    "badvers": (505, "bad-version"),  # §3.1.2.16 SIP/7.0
    "mismatch01": (400, "cseq-mismatch"),  # §3.1.2.17
    "mismatch02": (400, "cseq-mismatch"),  # §3.1.2.18
    "bigcode": (400, "bad-status-code"),  # §3.1.2.19 a response: dropped
    "insuf": (400, "missing-call-id"),  # §3.3.1 no Call-ID, From, To, Max-Forwards
    "unkscm": (416, "unsupported-uri-scheme"),  # §3.3.2
    "novelsc": (416, "unsupported-uri-scheme"),  # §3.3.3
    "unksm2": (400, "bad-from"),  # §3.3.4 a PBX needs sip/sips/tel in From and To (the RFC's registrar: 400)
    "multi01": (400, "duplicate-header"),  # §3.3.8 two Call-IDs, CSeqs, Tos, Froms
    "mcl01": (400, "duplicate-header"),  # §3.3.9 two Content-Lengths
    "regescrt": (400, "bad-contact"),  # §3.3.14 ?headers in a Contact URI: we refuse them everywhere
}

# Which of the refused ones still allow a stateless reply (Via, From, To, Call-ID, CSeq recoverable).
NOT_RECOVERABLE = {"insuf", "scalarlg", "bigcode"}


def comparable(msg: Request | Response) -> tuple[object, ...]:
    """Start line, headers by name (order within a name kept; Content-Length aside) and body."""
    start = (msg.method, msg.uri) if isinstance(msg, Request) else (msg.code, msg.phrase)
    headers = {name.lower(): list(msg.headers.getlist(name)) for name in msg.headers.keys()}
    headers.pop("content-length", None)
    return start, headers, msg.body


def test_fixture_tables_cover_every_torture_message() -> None:
    names = {p.stem for p in TORTURE.glob("*.dat")}
    assert len(names) == 49
    assert names == set(VALID) | set(INVALID)
    assert not set(VALID) & set(INVALID)


@pytest.mark.parametrize("name", VALID)
def test_valid_torture_message_parses_and_round_trips(name: str) -> None:
    first = parse(torture(name))
    again = parse(serialize(first))
    assert comparable(again) == comparable(first)
    assert again.content_length == len(first.body)
    assert serialize(again) == serialize(first)


@pytest.mark.parametrize(("name", "expected"), sorted(INVALID.items()))
def test_invalid_torture_message_is_refused(name: str, expected: tuple[int, str]) -> None:
    with pytest.raises(SipParseError) as info:
        parse(torture(name))
    assert (info.value.status, info.value.reason) == expected
    assert info.value.code == "sip-parse"
    assert info.value.reason in PARSE_ERROR_REASONS


@pytest.mark.parametrize("name", sorted(INVALID))
def test_refused_requests_can_be_answered_when_their_headers_are_there(name: str) -> None:
    recovered = recover_for_reply(torture(name))
    if name in NOT_RECOVERABLE:
        assert recovered is None
        return
    assert recovered is not None
    status = INVALID[name][0]
    wire = serialize(build_response(recovered, status))
    assert wire.startswith(f"SIP/2.0 {status} ".encode())
    # The reply echoes what it got, even where that is malformed (RFC 3261 §8.2.6.2).
    call_id = recovered.headers["Call-ID"]
    assert f"\r\nCall-ID: {call_id}\r\n".encode() in wire
    assert call_id.encode() in torture(name)


def test_wsinv_typed_view() -> None:
    msg = parse(torture("wsinv"))
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    assert msg.uri.user == "vivekg"
    assert "unknownparam" in msg.uri.parameters
    assert [(v.transport, v.host, v.parameters["branch"]) for v in msg.via] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert branch(msg) == "390skdjuw"
    assert (msg.cseq.sequence, msg.cseq.method) == (9, "INVITE")
    assert msg.max_forwards == 68
    assert msg.to_address.parameters["tag"] == "1918181833n"
    assert msg.from_address.parameters["tag"] == "98asjd8"
    assert msg.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert msg.headers["Subject"] == ""
    assert msg.headers["newfangledheader"] == "newfangled value continued newfangled value"
    assert msg.headers["UnknownHeaderWithUnusualValue"] == ";;,,;;,;"
    (contact,) = msg.contact
    assert contact.parameters["q"] == "0.33"
    assert "secondparam" in contact.parameters
    assert msg.route[0].uri.host == "services.example.com"
    assert len(msg.body) == 150
    wire = serialize(msg).decode()
    assert "\r\n " not in wire and "\r\n\t" not in wire  # never folded
    assert "\r\nv: " not in wire and "\r\nm:" not in wire and "\r\ns :" not in wire  # never compact
    assert wire.count("Content-Length: 150\r\n") == 1


def test_dblreq_keeps_only_the_first_request() -> None:
    msg = parse(torture("dblreq"))
    assert isinstance(msg, Request)
    assert msg.method == "REGISTER"
    assert msg.body == b""
    assert msg.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"


def test_methods_are_case_sensitive_and_tokens_survive() -> None:
    msg = parse(torture("intmeth"))
    assert isinstance(msg, Request)
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.cseq.method == msg.method
    esc = parse(torture("esc02"))
    assert isinstance(esc, Request)
    assert esc.method == "RE%47IST%45R"  # not REGISTER
    assert len(esc.contact) == 2  # C%6Fntact is another header
    assert esc.headers["C%6Fntact"] == "<sip:alias2@host2.example.com>"
    lower = OPTIONS.replace(b"OPTIONS sip:", b"options sip:")
    with pytest.raises(SipParseError) as info:
        parse(lower)
    assert info.value.reason == "cseq-mismatch"


def test_transports_in_order_and_upper_cased() -> None:
    msg = parse(torture("transports"))
    assert [v.transport for v in msg.via] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    lower = parse(OPTIONS.replace(b"SIP/2.0/UDP", b"SIP/2.0/udp"))
    assert top_via(lower).transport == "UDP"


def test_inv2543_is_an_rfc2543_request() -> None:
    msg = parse(torture("inv2543"))
    assert branch(msg) is None
    assert msg.max_forwards is None
    assert msg.to_address.parameters["user"] == "phone"  # header parameter of an addr-spec
    assert msg.record_route[0].uri.parameters["maddr"] == "ss1.example.com"
    with pytest.raises(SipParseError) as info:
        parse(torture("inv2543"), stream=True)
    assert info.value.reason == "missing-content-length"


def test_unusual_reason_phrases() -> None:
    msg = parse(torture("unreason"))
    assert isinstance(msg, Response)
    assert msg.code == 200
    assert msg.phrase.startswith("= 2**3 * 5**2 но")
    empty = parse(torture("noreason"))
    assert isinstance(empty, Response)
    assert (empty.code, empty.phrase) == (100, "")


# --- our own messages ---------------------------------------------------------------------------------------
OPTIONS = (
    b"OPTIONS sip:101@demo.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKown.1;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:100@demo.example.com>;tag=a1b2\r\n"
    b"To: <sip:101@demo.example.com>\r\n"
    b"Call-ID: own-1@192.0.2.10\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def with_header(name: bytes, value: bytes, base: bytes = OPTIONS) -> bytes:
    """``base`` with header ``name`` replaced (or added before Content-Length)."""
    lines = base.split(b"\r\n")
    prefix = name.lower() + b":"
    out = [line for line in lines if not line.lower().startswith(prefix)]
    out.insert(-3, name + b": " + value)
    return b"\r\n".join(out)


def refused(data: bytes, *, stream: bool = False) -> tuple[int, str]:
    with pytest.raises(SipParseError) as info:
        parse(data, stream=stream)
    assert info.value.reason in PARSE_ERROR_REASONS
    return info.value.status, info.value.reason


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("truncated", (400, "truncated-headers")),
        ("missing-call-id", (400, "missing-call-id")),
        ("bad-content-length", (400, "bad-content-length")),
        ("non-utf8", (400, "bad-encoding")),
        ("oversize-headers", (513, "message-too-large")),
    ],
)
def test_own_malformed_fixtures(name: str, expected: tuple[int, str]) -> None:
    assert refused(own(name)) == expected
    assert refused(own(name), stream=True) == expected


def test_own_malformed_fixtures_that_still_get_a_400() -> None:
    assert recover_for_reply(own("truncated")) is None  # Call-ID and CSeq never arrived
    assert recover_for_reply(own("missing-call-id")) is None
    for name in ("bad-content-length", "non-utf8", "oversize-headers"):
        request = recover_for_reply(own(name))
        assert request is not None, name
        assert request.call_id == "own-1@192.0.2.10"


def test_plain_options_parses() -> None:
    msg = parse(OPTIONS)
    assert isinstance(msg, Request)
    assert (msg.method, str(msg.uri)) == ("OPTIONS", "sip:101@demo.example.com")
    assert top_via(msg).parameters["rport"] is None
    assert branch(msg) == "z9hG4bKown.1"
    assert msg.content_length == 0
    assert serialize(msg) == OPTIONS


def test_framing_over_udp_and_streams() -> None:
    body = b"v=0\r\n"
    invite = with_header(b"Content-Length", b"5", OPTIONS).replace(b"\r\n\r\n", b"\r\n\r\n" + body)
    assert parse(invite + b"garbage after the body").body == body  # UDP: extra octets dropped
    assert parse(invite + b"more", stream=True).body == body
    no_length = with_header(b"Content-Length", b"0").replace(b"Content-Length: 0\r\n", b"")
    assert parse(no_length + b"tail").body == b"tail"  # UDP without Content-Length: to the end
    assert refused(no_length, stream=True) == (400, "missing-content-length")
    assert refused(with_header(b"Content-Length", b"6", invite)) == (400, "truncated-body")
    assert refused(with_header(b"Content-Length", b" 1 2")) == (400, "bad-content-length")
    assert refused(with_header(b"Content-Length", "٣".encode())) == (400, "bad-content-length")
    assert refused(with_header(b"Content-Length", b"9" * 5000)) == (400, "bad-content-length")
    assert refused(with_header(b"Content-Length", str(MAX_MESSAGE).encode())) == (513, "message-too-large")
    assert parse(b"\r\n\r\n" + OPTIONS).cseq.method == "OPTIONS"  # CRLF before the start line (§7.5)


def test_start_line_rules() -> None:
    assert refused(b"") == (400, "truncated-headers")
    assert refused(b"\r\n\r\n") == (400, "truncated-headers")
    assert refused(OPTIONS.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1)) == (505, "bad-version")
    assert refused(OPTIONS.replace(b"SIP/2.0\r\n", b"HTTP/1.1\r\n", 1)) == (400, "bad-request-line")
    assert parse(OPTIONS.replace(b"SIP/2.0\r\n", b"sip/2.0\r\n", 1)).cseq.method == "OPTIONS"
    assert refused(OPTIONS.replace(b"OPTIONS sip", b"OPT\x01ONS sip", 1)) == (400, "bad-method")
    assert refused(OPTIONS.replace(b"sip:101@demo.example.com SIP", b"sip:101@ SIP", 1)) == (
        400,
        "bad-request-uri",
    )
    upper = parse(OPTIONS.replace(b"OPTIONS sip:", b"OPTIONS SIP:", 1))
    assert isinstance(upper, Request)
    assert upper.uri.scheme == "sip"
    tel = parse(OPTIONS.replace(b"sip:101@demo.example.com SIP", b"tel:+74951234567 SIP", 1))
    assert isinstance(tel, Request)
    assert tel.uri.user == "+74951234567"


def test_response_status_line_rules() -> None:
    response = OPTIONS.replace(b"OPTIONS sip:101@demo.example.com SIP/2.0", b"SIP/2.0 486 Busy Here")
    msg = parse(response)
    assert isinstance(msg, Response)
    assert (msg.code, msg.phrase) == (486, "Busy Here")
    assert refused(response.replace(b" 486 ", b" 099 ")) == (400, "bad-status-code")
    assert refused(response.replace(b" 486 ", b" 700 ")) == (400, "bad-status-code")
    assert refused(response.replace(b" 486 ", b" 48x ")) == (400, "bad-status-code")
    assert refused(response.replace(b"SIP/2.0 486", b"SIP/2.1 486")) == (505, "bad-version")
    no_mf = response.replace(b"Max-Forwards: 70\r\n", b"")
    assert isinstance(parse(no_mf), Response)  # responses carry no Max-Forwards


@pytest.mark.parametrize(
    ("header", "value", "expected"),
    [
        (b"CSeq", b"2147483647 OPTIONS", None),
        (b"CSeq", b"2147483648 OPTIONS", "bad-cseq"),
        (b"CSeq", b"OPTIONS", "bad-cseq"),
        (b"CSeq", b"-1 OPTIONS", "bad-cseq"),
        (b"Max-Forwards", b"255", None),
        (b"Max-Forwards", b"256", "bad-max-forwards"),
        (b"Max-Forwards", b"seventy", "bad-max-forwards"),
        (b"Expires", b"4294967295", None),
        (b"Expires", b"4294967296", "bad-expires"),
        (b"Min-Expires", b"60", None),
        (b"Min-Expires", b"-60", "bad-min-expires"),
        (b"Retry-After", b"120 (in a meeting);duration=3600", None),
        (b"Retry-After", b"99999999999", "bad-retry-after"),
        (b"Call-ID", b"two words", "bad-call-id"),
        (b"Contact", b"*", None),
        (b"Contact", b'"Bell, Alexander" <sip:a@b.example>;expires=60, <sip:c@d.example>', None),
        (b"Contact", b"<sip:a@b.example>,", "bad-contact"),
        (b"Contact", b"not a uri", "bad-contact"),
        (b"Route", b"<sip:proxy.example.com;lr>", None),
        (b"Route", b"sip proxy", "bad-route"),
        (b"Record-Route", b"<sip:p1.example.com;lr>, <sip:p2.example.com;lr>", None),
        (b"Record-Route", b"<>", "bad-record-route"),
        (b"Content-Type", b"application/sdp", None),
        (b"Content-Type", b"sdp", "bad-content-type"),
        (b"From", b"<sip:100@demo.example.com", "bad-from"),
        (b"To", b"<http://example.com>", "bad-to"),
        (b"Via", b"SIP/2.0/UDP", "bad-via"),
        (b"Via", b"SIP/2.0/UDP a.example.com;branch=z9hG4bK1,", "bad-via"),
        (b"Via", b"SIP/2.0/UDP a.example.com:65536;branch=z9hG4bK1", "bad-via"),
        (b"Via", b"SIP/2.0/UDP a.example.com:65535;branch=z9hG4bK1", None),
        (b"Contact", b"<sip:a@b.example:70000>", "bad-contact"),
        (b"CSeq", b"9" * 5000 + b" OPTIONS", "bad-cseq"),
        (b"Expires", b"9" * 5000, "bad-expires"),
    ],
)
def test_header_rules(header: bytes, value: bytes, expected: str | None) -> None:
    data = with_header(header, value)
    if expected is None:
        parse(data)
    else:
        assert refused(data) == (400, expected)


@pytest.mark.parametrize("header", [b"Call-ID", b"CSeq", b"From", b"To", b"Via", b"Max-Forwards"])
def test_required_headers(header: bytes) -> None:
    lines = [line for line in OPTIONS.split(b"\r\n") if not line.startswith(header + b":")]
    expected = "missing-" + header.decode().lower()
    assert refused(b"\r\n".join(lines)) == (400, expected)


def test_header_syntax() -> None:
    assert refused(OPTIONS.replace(b"Max-Forwards: 70", b"Max-Forwards 70")) == (400, "bad-header")
    assert refused(OPTIONS.replace(b"Max-Forwards:", b"Max Forwards:")) == (400, "bad-header")
    folded_first = OPTIONS.replace(b"SIP/2.0\r\nVia", b"SIP/2.0\r\n continued\r\nVia", 1)
    assert refused(folded_first) == (400, "bad-header")
    assert refused(OPTIONS.replace(b"Max-Forwards: 70", b"Max-Forwards: 7\n0")) == (400, "bad-line-ending")
    assert refused(OPTIONS.replace(b"Max-Forwards: 70", b"Max-Forwards: 7\r0")) == (400, "bad-line-ending")
    assert refused(OPTIONS.replace(b"Call-ID: ", b"Call-ID: \xff")) == (400, "bad-encoding")


def test_header_names_case_and_compact_forms() -> None:
    data = (
        OPTIONS.replace(b"Via:", b"v:")
        .replace(b"From:", b"f :")
        .replace(b"To:", b"T:")
        .replace(b"Call-ID:", b"i:")
        .replace(b"CSeq:", b"cseq:")
        .replace(b"Max-Forwards:", b"MAX-FORWARDS:")
        .replace(b"Content-Length:", b"l:")
    )
    msg = parse(data)
    assert msg.headers.keys() == ["Via", "Max-Forwards", "From", "To", "Call-ID", "CSeq", "Content-Length"]
    assert serialize(msg) == OPTIONS


def test_parameter_names_are_normalised_but_raw_values_kept() -> None:
    data = with_header(b"Via", b"SIP/2.0/UDP 192.0.2.10;BRANCH=z9hG4bKx;RPort")
    data = with_header(b"To", b"<sip:101@demo.example.com;Transport=TCP>;TAG=t1", data)
    msg = parse(data)
    assert branch(msg) == "z9hG4bKx"
    assert "rport" in top_via(msg).parameters
    assert msg.to_address.parameters["tag"] == "t1"
    assert msg.to_address.uri.parameters["transport"] == "TCP"
    assert msg.headers["To"] == "<sip:101@demo.example.com;Transport=TCP>;TAG=t1"


def test_raw_order_of_via_route_record_route() -> None:
    data = OPTIONS.replace(
        b"Max-Forwards: 70\r\n",
        b"Route: <sip:r1.example.com;lr>\r\n"
        b"Via: SIP/2.0/UDP second.example.com;branch=z9hG4bK2\r\n"
        b"Record-Route: <sip:rr1.example.com;lr>, <sip:rr2.example.com;lr>\r\n"
        b"Max-Forwards: 70\r\n"
        b"Route: <sip:r2.example.com;lr>\r\n"
        b"Record-Route: <sip:rr3.example.com;lr>\r\n"
        b"Via: SIP/2.0/TCP third.example.com;branch=z9hG4bK3\r\n",
    )
    msg = parse(data)
    assert [v.host for v in msg.via] == ["192.0.2.10", "second.example.com", "third.example.com"]
    assert [a.uri.host for a in msg.route] == ["r1.example.com", "r2.example.com"]
    assert [a.uri.host for a in msg.record_route] == ["rr1.example.com", "rr2.example.com", "rr3.example.com"]
    again = parse(serialize(msg))
    assert [v.host for v in again.via] == [v.host for v in msg.via]
    assert [a.uri.host for a in again.record_route] == [a.uri.host for a in msg.record_route]


def test_wildcard_contact() -> None:
    msg = parse(with_header(b"Contact", b"*", with_header(b"Expires", b"0")))
    assert msg.is_wildcard_contact
    assert msg.contact == []
    assert not parse(with_header(b"Contact", b"<sip:a@b.example>")).is_wildcard_contact


def test_parse_lets_only_sip_parse_errors_out() -> None:
    for data in (b"\x00" * 10, b"SIP/2.0\r\n\r\n", b"INVITE\r\n\r\n", b"\xff\xfe\r\n\r\n", b":\r\n:\r\n\r\n"):
        with pytest.raises(SipParseError):
            parse(data)


# --- typed accessors ----------------------------------------------------------------------------------------
def test_typed_accessors_follow_raw_edits() -> None:
    msg = parse(OPTIONS)
    assert msg.cseq.sequence == 1
    msg.headers.set("CSeq", "2 OPTIONS")
    assert msg.cseq.sequence == 2
    msg.headers.add("Via", "SIP/2.0/TCP proxy.example.com;branch=z9hG4bKp")
    assert [v.host for v in msg.via] == ["192.0.2.10", "proxy.example.com"]
    vias = msg.via
    vias.pop()
    assert len(msg.via) == 2  # callers get a copy


def test_typed_accessors_raise_parse_errors_on_built_messages() -> None:
    msg = Request("OPTIONS", URI(scheme="sip", host="example.com"))
    with pytest.raises(SipParseError) as info:
        _ = msg.cseq
    assert info.value.reason == "missing-cseq"
    msg.headers.add("From", "garbage <")
    with pytest.raises(SipParseError) as info:
        _ = msg.from_address
    assert info.value.reason == "bad-from"
    with pytest.raises(SipParseError):
        top_via(msg)


def test_parse_uri() -> None:
    assert parse_uri("sips:alice@example.com:5061;transport=tls").port == 5061
    with pytest.raises(SipParseError) as info:
        parse_uri("mailto:alice@example.com")
    assert (info.value.status, info.value.reason) == (416, "unsupported-uri-scheme")
    with pytest.raises(SipParseError) as info:
        parse_uri("<sip:alice@example.com>")
    assert (info.value.status, info.value.reason) == (400, "bad-request-uri")


# --- serialize ----------------------------------------------------------------------------------------------
def test_serialize_writes_content_length_and_full_names() -> None:
    msg = Request("MESSAGE", URI(scheme="sip", host="example.com", user="bob"), b"hello")
    msg.headers.add("v", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKm")
    msg.headers.add("l", "999")
    msg.headers.add("c", "text/plain")
    wire = serialize(msg)
    assert wire == (
        b"MESSAGE sip:bob@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKm\r\n"
        b"Content-Type: text/plain\r\n"
        b"Content-Length: 5\r\n"
        b"\r\n"
        b"hello"
    )
    assert bytes(msg) == wire


def test_serialize_accepts_plain_sipmessage_objects() -> None:
    plain = sipmessage.Response(200, "OK")
    plain.headers.add("Call-ID", "x")
    assert serialize(plain) == b"SIP/2.0 200 OK\r\nCall-ID: x\r\nContent-Length: 0\r\n\r\n"
    assert branch(parse(OPTIONS)) == "z9hG4bKown.1"
    plain_request = sipmessage.Request("OPTIONS", URI(scheme="sip", host="example.com"))
    plain_request.headers.add("Via", "SIP/2.0/UDP a.example.com;branch=z9hG4bKa, SIP/2.0/UDP b.example.com")
    assert branch(plain_request) == "z9hG4bKa"


@pytest.mark.parametrize("value", ["evil\r\nX-Injected: 1", "evil\nX: 1", "evil\rX"])
def test_serialize_refuses_line_breaks_in_values(value: str) -> None:
    msg = parse(OPTIONS)
    msg.headers.set("Subject", value)
    with pytest.raises(SipError):
        serialize(msg)


def test_serialize_refuses_line_breaks_in_the_start_line() -> None:
    response = Response(200, "OK\r\nX-Injected: 1")
    with pytest.raises(SipError):
        serialize(response)


# --- replies ------------------------------------------------------------------------------------------------
INVITE = (
    b"INVITE sip:102@demo.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp1\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.20:5062;branch=z9hG4bKc1;rport=5062;received=198.51.100.7\r\n"
    b"Max-Forwards: 69\r\n"
    b"To: <sip:102@demo.example.com>\r\n"
    b'From: "Alice" <sip:101@demo.example.com>;tag=f1\r\n'
    b"Call-ID: c1@192.0.2.20\r\n"
    b"CSeq: 7 INVITE\r\n"
    b"Timestamp: 54\r\n"
    b"Contact: <sip:101@192.0.2.20:5062>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def test_build_response_copies_rfc3261_headers() -> None:
    request = parse(INVITE)
    assert isinstance(request, Request)
    response = build_response(
        request, 486, to_tag="t9", headers=[("Retry-After", "30"), ("Warning", '399 pbx "busy"')]
    )
    assert (response.code, response.phrase) == (486, "Busy Here")
    assert response.headers.getlist("Via") == request.headers.getlist("Via")
    assert response.headers["To"] == "<sip:102@demo.example.com>;tag=t9"
    assert response.headers["From"] == request.headers["From"]
    assert response.headers["Call-ID"] == "c1@192.0.2.20"
    assert response.headers["CSeq"] == "7 INVITE"
    assert "Timestamp" not in response.headers.keys()
    assert response.headers.keys()[-2:] == ["Retry-After", "Warning"]
    again = parse(serialize(response))
    assert isinstance(again, Response)
    assert again.to_address.parameters["tag"] == "t9"
    assert [v.host for v in again.via] == ["proxy.example.com", "192.0.2.20"]


def test_build_response_keeps_an_existing_to_tag_and_copies_timestamp_on_100() -> None:
    request = parse(with_header(b"To", b"<sip:102@demo.example.com>;tag=old", INVITE))
    assert isinstance(request, Request)
    assert build_response(request, 200, to_tag="new").headers["To"].endswith(";tag=old")
    trying = build_response(parse(INVITE), 100)  # type: ignore[arg-type]
    assert trying.phrase == "Trying"
    assert trying.headers["Timestamp"] == "54"
    assert build_response(request, 299).phrase == "OK"
    assert build_response(request, 699, "Nope").phrase == "Nope"
    tagged_uri = parse(with_header(b"To", b"sip:102@demo.example.com;tag=x", INVITE))
    assert build_response(tagged_uri, 200, to_tag="y").headers["To"].endswith(";tag=x")  # type: ignore[arg-type]


def test_recover_for_reply_rules() -> None:
    assert recover_for_reply(b"\x00\x01garbage") is None
    assert (
        recover_for_reply(INVITE.replace(b"INVITE sip:", b"ACK sip:").replace(b"7 INVITE", b"7 ACK")) is None
    )
    response = INVITE.replace(b"INVITE sip:102@demo.example.com SIP/2.0", b"SIP/2.0 200 OK")
    assert recover_for_reply(response) is None
    broken = INVITE.replace(b"Max-Forwards: 69", b"Max-Forwards: lots").replace(
        b"INVITE sip:", b"INVITE <sip:"
    )
    request = recover_for_reply(broken)
    assert request is not None
    assert request.method == "INVITE"
    assert request.uri.host == "invalid"
    reply = parse(serialize(build_response(request, 400, to_tag="z")))
    assert isinstance(reply, Response)
    assert [v.host for v in reply.via] == ["proxy.example.com", "192.0.2.20"]
    assert reply.cseq.method == "INVITE"


HEADER_OPS: list[tuple[str, ...]] = [
    ("add", "Via", "SIP/2.0/UDP a.example.com;branch=z9hG4bK1"),
    ("add", "via", "SIP/2.0/UDP b.example.com;branch=z9hG4bK2"),
    ("add", "X-Custom", "one"),
    ("set", "x-custom", "two"),
    ("add", "Route", "<sip:p1.example.com;lr>"),
    ("setlist", "ROUTE", "<sip:p2.example.com;lr>", "<sip:p3.example.com;lr>"),
    ("add", "Contact", "<sip:u@192.0.2.1>"),
    ("remove", "contact"),
    ("remove", "Absent"),
    ("add", "Contact", "<sip:u@192.0.2.2>"),
]


def test_sip_headers_behave_like_sipmessage_headers() -> None:
    # SipHeaders is sipmessage's Headers API over a dict; the same operations give the same headers.
    ours, theirs = SipHeaders(), sipmessage.Headers()
    for op, name, *values in HEADER_OPS:
        for h in (ours, theirs):
            if op == "setlist":
                h.setlist(name, list(values))
            elif op == "remove":
                h.remove(name)
            else:
                getattr(h, op)(name, values[0])
        assert str(ours) == str(theirs)
        assert ours.keys() == theirs.keys()
        for key in ("VIA", "x-custom", "Route", "contact", "Absent"):
            assert ours.getlist(key) == theirs.getlist(key)
            assert ours.get(key, "-") == theirs.get(key, "-")
    assert ours["via"] == theirs["via"]
    with pytest.raises(KeyError):
        ours["absent"]
    assert "ROUTE" in ours and "absent" not in ours
    assert sipmessage.__version__ == "0.7.1"


def test_parse_memo_shares_only_good_results() -> None:
    first, second = parse(OPTIONS), parse(OPTIONS)
    assert first.to_address == second.to_address and first.uri == second.uri
    bad = OPTIONS.replace(b"To: ", b"To: <sip:bad@>", 1)
    for _ in range(2):  # a failure is not remembered as a result
        with pytest.raises(SipParseError):
            parse(bad)


def test_set_top_via_keeps_the_other_vias() -> None:
    msg = parse(OPTIONS.replace(b"Via: ", b"Via: SIP/2.0/UDP 192.0.2.50:5070;branch=z9hG4bKtop;rport, ", 1))
    vias = msg.via
    top = vias[0]
    changed = top.__class__(
        transport=top.transport,
        host=top.host,
        port=top.port,
        parameters=top.parameters.replace(rport="5071", received="198.51.100.9"),
    )
    msg.set_top_via(changed)
    again = parse(serialize(msg))
    assert again.via[0].parameters["rport"] == "5071"
    assert again.via[0].parameters["received"] == "198.51.100.9"
    assert [str(v) for v in again.via[1:]] == [str(v) for v in vias[1:]]
    assert msg.via == again.via


@pytest.mark.parametrize(
    "uri",
    [
        "sip:alice@example.com",
        "sip:alice@example.com:5070;transport=tcp;lr",
        "sips:%2Bweird%20user@example.com",
        "sip:a:secret@example.com",
        "sip:example.com;maddr=239.255.255.1",
        "tel:+74951234567;ext=12",
    ],
)
def test_format_uri_is_str(uri: str) -> None:
    parsed = parse_uri(uri)
    assert format_uri(parsed) == str(parsed)


# --- our fast paths agree with sipmessage's grammar ---------------------------------------------------------
def _normalised(params: sipmessage.Parameters) -> dict[str, str | None]:
    return {k.lower(): v for k, v in params.items()}


def _same_uri(ours: sipmessage.URI, theirs: sipmessage.URI) -> bool:
    return (ours.scheme, ours.user, ours.password, ours.host, ours.port, dict(ours.parameters)) == (
        theirs.scheme,
        theirs.user,
        theirs.password,
        theirs.host,
        theirs.port,
        _normalised(theirs.parameters),
    )


def _grammar_cases() -> list[tuple[str, str]]:
    cases: list[tuple[str, str]] = []
    for path in sorted(TORTURE.glob("*.dat")):
        head = path.read_bytes().split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        head = head.replace("\r\n ", " ").replace("\r\n\t", " ")
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            kind = {
                "via": "via",
                "v": "via",
                "from": "address",
                "f": "address",
                "to": "address",
                "t": "address",
            }
            if name.strip().lower() in kind:
                cases.append((kind[name.strip().lower()], value.strip()))
    return cases + COMMON_GRAMMAR_CASES


# What phones and SIPp send every day, each shape taking our fast paths (or deliberately not).
COMMON_GRAMMAR_CASES = [
    ("via", "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-2;rport"),
    ("via", "SIP/2.0/TCP [2001:db8::1]:5060;branch=z9hG4bKx;received=192.0.2.1;rport=5090"),
    ("via", "SIP/2.0/UDP phone.example.com;branch=z9hG4bKy"),
    ("via", "SIP/2.0/UDP 192.0.2.1:5060 ;branch=z9hG4bKz"),
    ("via", "SIP/2.0/UDP 192.0.2.1:99999999;branch=z9hG4bKz"),
    ("via", "SIP/2.0/UDP bad_host:5060;branch=z9hG4bKz"),
    ("via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK;;x"),
    ("address", "<sip:2000@bench.test>;tag=1234SIPpTag001"),
    ("address", '"Alice" <sip:alice@example.com>;tag=a1'),
    ("address", "Bob Smith <sip:bob@example.com;transport=tcp>;tag=b2;x=y"),
    ("address", '<sip:u@192.0.2.5:5062;ob>;+sip.instance="<urn:uuid:00000000-0000-0000-0000-000000000001>"'),
    ("address", "<sip:u@192.0.2.5> ;tag=c3"),
    ("address", "<sip:u@192.0.2.5>;tag"),
    ("address", "<sip:u@192.0.2.5>;=x"),
    ("address", "<sip:u@192.0.2.5>junk"),
    ("address", "sip:u@192.0.2.5;tag=d4"),
    ("address", "<sip:%75ser@example.com>;tag=e5"),
]


@pytest.mark.parametrize(("kind", "value"), _grammar_cases())
def test_fast_grammar_matches_sipmessage(kind: str, value: str) -> None:
    from vpbx.sip import message as m

    if kind == "via":
        for part in m._split_list(value):
            part = part.strip()
            try:
                theirs = sipmessage.Via.parse(part)
            except ValueError:
                with pytest.raises(ValueError):
                    m._via(part)
                continue
            ours = m._via(part)
            assert (ours.transport, ours.host, ours.port, dict(ours.parameters)) == (
                theirs.transport.upper(),
                theirs.host,
                theirs.port,
                _normalised(theirs.parameters),
            )
    else:
        try:
            expected = sipmessage.Address.parse(value)
        except ValueError:
            with pytest.raises(ValueError):
                m._address(value)
            return
        got = m._address(value)
        assert got.name == expected.name
        assert dict(got.parameters) == _normalised(expected.parameters)
        assert _same_uri(got.uri, expected.uri)
