"""REGISTER facts from real request bytes, and SIP URI comparison (RFC 3261 §19.1.4)."""

from __future__ import annotations

import pytest
from sipmessage import Message, Request

from vpbx.sip.contact import ContactSpec, RegisterRequest, read_register, uri_equal
from vpbx.sip.flow import Destination

SRC = Destination("udp", "198.51.100.7", 40000)


def request(*headers: str) -> Request:
    base = [
        "REGISTER sip:acme.vpbx.test SIP/2.0",
        "Via: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK776asdhds;rport",
        "Max-Forwards: 70",
        'From: "Alice" <sip:alice@acme.vpbx.test>;tag=a73kszlfl',
        "To: <sip:Alice@ACME.vpbx.test>",
        "Call-ID: 1j9FpLxk3uxtm8tn@192.168.1.20",
        "CSeq: 7 REGISTER",
    ]
    msg = Message.parse(("\r\n".join([*base, *headers, "Content-Length: 0"]) + "\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


def test_reads_what_the_registrar_needs() -> None:
    req = request(
        "Contact: <sip:alice@192.168.1.20:5060;transport=udp>;expires=600;q=0.7"
        ';+sip.instance="<urn:uuid:1234>"',
        "Contact: <sip:alice@[2001:db8::7]:5062>, sip:alice@phone.example.com",
        "Expires: 1800",
        "Require: Path",
        "Path: <sip:p1.example.net;lr>, <sip:p2.example.net;lr>",
        "User-Agent: Yealink SIP-T46U 108.86.0.20",
    )
    facts = read_register(req, SRC)
    assert facts == RegisterRequest(
        to_user="Alice",
        to_host="acme.vpbx.test",
        contacts=(
            ContactSpec(
                uri="sip:alice@192.168.1.20:5060;transport=udp",
                host="192.168.1.20",
                expires="600",
                q="0.7",
                instance="<urn:uuid:1234>",
            ),
            ContactSpec(uri="sip:alice@[2001:db8::7]:5062", host="2001:db8::7"),
            ContactSpec(uri="sip:alice@phone.example.com", host="phone.example.com"),
        ),
        expires=1800,
        call_id="1j9FpLxk3uxtm8tn@192.168.1.20",
        cseq=7,
        require=("path",),
        path=("<sip:p1.example.net;lr>", "<sip:p2.example.net;lr>"),
        user_agent="Yealink SIP-T46U 108.86.0.20",
        source=SRC,
    )


def test_star_and_query() -> None:
    facts = read_register(request("Contact: *", "Expires: 0"), SRC)
    assert isinstance(facts, RegisterRequest)
    assert (facts.star, facts.contacts, facts.expires) == (True, (), 0)
    query = read_register(request(), SRC)
    assert isinstance(query, RegisterRequest)
    assert (query.star, query.contacts, query.expires) == (False, (), None)


def test_star_beside_a_contact_is_passed_on_for_the_registrar_to_refuse() -> None:
    facts = read_register(request("Contact: *", "Contact: <sip:a@b>"), SRC)
    assert isinstance(facts, RegisterRequest)
    assert facts.star
    assert len(facts.contacts) == 1


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (("Contact: *", "Contact: *"), "Contact * more than once"),
        (("Contact: <not a uri",), "Bad Contact header"),
        (("Contact: *, <sip:a@b>",), "Bad Contact header"),
    ],
)
def test_unreadable_contacts_are_a_400_reason(headers: tuple[str, ...], reason: str) -> None:
    assert read_register(request(*headers), SRC) == reason


def test_unreadable_cseq_or_to() -> None:
    req = request("Contact: <sip:a@b>")
    req.headers.set("CSeq", "seven REGISTER")
    assert read_register(req, SRC) == "Bad Call-ID or CSeq header"
    req = request("Contact: <sip:a@b>")
    req.headers.set("To", "<<>>")
    assert read_register(req, SRC) == "Bad To header"


def test_malformed_expires_header_counts_as_absent() -> None:
    facts = read_register(request("Contact: <sip:a@b>", "Expires: soon"), SRC)
    assert isinstance(facts, RegisterRequest)
    assert facts.expires is None


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        # RFC 3261 §19.1.4 examples of equal URIs
        ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp", True),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5", True),
        ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;newparam=5", True),
        ("sip:alice@atlanta.com;transport=udp", "sip:alice@atlanta.com", True),
        # and of unequal ones
        ("sip:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP", False),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060", False),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com;user=phone", False),
        ("sip:bob@biloxi.com;maddr=192.0.2.1", "sip:bob@biloxi.com", False),
        ("sip:bob@biloxi.com;transport=tcp", "sip:bob@biloxi.com;transport=udp", False),
        ("sip:bob@biloxi.com", "sips:bob@biloxi.com", False),
        ("not a uri", "not a uri", True),
        ("not a uri", "sip:bob@biloxi.com", False),
    ],
)
def test_uri_equality(a: str, b: str, equal: bool) -> None:
    assert uri_equal(a, b) is equal
    assert uri_equal(b, a) is equal
