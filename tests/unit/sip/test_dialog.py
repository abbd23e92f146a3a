"""Dialogs (RFC 3261 §12–§15): creation on both sides, routing, CSeq rules, in-dialog builders."""

from __future__ import annotations

import pytest

from vpbx.errors import SipError
from vpbx.sip.dialog import (
    MAX_FORWARDS,
    Dialog,
    DialogId,
    DialogState,
    LocalVia,
    build_cancel,
    build_initial_request,
    new_branch,
    new_call_id,
    new_tag,
    reason_header,
    tag_of,
)
from vpbx.sip.message import Address, Request, Response, Via, parse, parse_address, parse_uri, serialize

VIA = LocalVia("UDP", "198.51.100.1", 5060)
CONTACT = parse_address("<sip:leg1@198.51.100.1:5060>")


def msg(text: str) -> Request | Response:
    return parse(text.replace("\n", "\r\n").encode())


def request(text: str) -> Request:
    m = msg(text)
    assert isinstance(m, Request)
    return m


def reparse(m: Request) -> Request:
    """What the peer receives: our request serialised and parsed again."""
    parsed = parse(serialize(m))
    assert isinstance(parsed, Request)
    return parsed


def response(text: str) -> Response:
    m = msg(text)
    assert isinstance(m, Response)
    return m


INVITE_IN = """INVITE sip:102@acme.test SIP/2.0
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKaaa;rport
Via: SIP/2.0/UDP 192.0.2.99;branch=z9hG4bKproxy
Record-Route: <sip:p1.example;lr>
Record-Route: <sip:p2.example;lr>
Max-Forwards: 70
From: "Alice" <sip:101@acme.test>;tag=alice1
To: <sip:102@acme.test>
Call-ID: call-in-1
CSeq: 7 INVITE
Contact: <sip:alice@192.0.2.10:5062>
Content-Length: 0

"""


def our_invite() -> Request:
    return build_initial_request(
        "INVITE",
        parse_uri("sip:102@192.0.2.20:5070"),
        via=VIA,
        from_=parse_address('"Alice" <sip:101@acme.test>;tag=ours1'),
        to=parse_address("<sip:102@acme.test>"),
        call_id="call-out-1",
        cseq=1,
        contact=CONTACT,
    )


def answer_to(
    invite: Request, code: int, *, record_route: tuple[str, ...] = (), contact: str | None = None
) -> Response:
    head = [
        f"SIP/2.0 {code} Whatever",
        f"Via: {invite.headers.getlist('Via')[0]}",
        *(f"Record-Route: {rr}" for rr in record_route),
        f"From: {invite.headers['From']}",
        f"To: {invite.headers['To']};tag=bob9",
        f"Call-ID: {invite.call_id}",
        f"CSeq: {invite.cseq.sequence} INVITE",
    ]
    if contact is not None:
        head.append(f"Contact: {contact}")
    head.append("Content-Length: 0")
    return response("\n".join(head) + "\n\n")


# --- ids and headers ---------------------------------------------------------------------------------------


def test_tags_branches_and_call_ids_are_random_and_sized() -> None:
    assert len(new_tag()) == 16 and new_tag() != new_tag()
    branch = new_branch()
    assert branch.startswith("z9hG4bK") and len(branch) == 7 + 24
    assert len(new_call_id()) == 32 and new_call_id() != new_call_id()


def test_reason_header_quotes_the_text() -> None:
    assert reason_header(200, "Call completed elsewhere") == 'SIP;cause=200;text="Call completed elsewhere"'
    assert reason_header(487) == "SIP;cause=487"
    with pytest.raises(SipError):
        reason_header(200, 'say "hi"')


def test_our_via_has_rport_and_a_fresh_branch() -> None:
    first, second = VIA.header(), VIA.header()
    assert first.startswith("SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bK")
    assert first.endswith(";rport")
    assert first != second


# --- UAS side ----------------------------------------------------------------------------------------------


def test_uas_dialog_takes_route_set_in_order_target_and_remote_cseq() -> None:
    invite = request(INVITE_IN)
    d = Dialog.uas(invite, local_tag="ourtag", local_contact=CONTACT)

    assert d.id == DialogId("call-in-1", "ourtag", "alice1")
    assert d.state is DialogState.EARLY
    assert [str(r.uri) for r in d.route_set] == ["sip:p1.example;lr", "sip:p2.example;lr"]
    assert str(d.remote_target) == "sip:alice@192.0.2.10:5062"
    assert d.remote_seq == 7 and d.local_seq == 0


def test_uas_bye_goes_to_the_target_through_the_route_set_with_swapped_tags() -> None:
    d = Dialog.uas(request(INVITE_IN), local_tag="ourtag", local_contact=CONTACT)
    d.confirm()

    bye = reparse(d.build_request("BYE", via=VIA, headers=[("Reason", reason_header(200))]))

    assert str(bye.uri) == "sip:alice@192.0.2.10:5062"
    assert bye.headers.getlist("Route") == ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]
    assert tag_of(bye.from_address) == "ourtag" and str(bye.from_address.uri) == "sip:102@acme.test"
    assert tag_of(bye.to_address) == "alice1" and bye.to_address.name == "Alice"
    assert bye.call_id == "call-in-1"
    assert (bye.cseq.sequence, bye.cseq.method) == (1, "BYE")
    assert bye.headers["Max-Forwards"] == str(MAX_FORWARDS)
    assert bye.headers["Reason"] == "SIP;cause=200"
    assert bye.via[0].parameters["branch"].startswith("z9hG4bK")


def test_local_cseq_increments_per_request() -> None:
    d = Dialog.uas(request(INVITE_IN), local_tag="t", local_contact=CONTACT)
    seqs = [d.build_request(m, via=VIA).cseq.sequence for m in ("INVITE", "OPTIONS", "BYE")]
    assert seqs == [1, 2, 3]


def test_lower_remote_cseq_gets_500_and_higher_moves_on() -> None:
    d = Dialog.uas(request(INVITE_IN), local_tag="ourtag", local_contact=CONTACT)
    lower = request(INVITE_IN.replace("CSeq: 7 INVITE", "CSeq: 6 BYE").replace("INVITE sip", "BYE sip"))
    higher = request(INVITE_IN.replace("CSeq: 7 INVITE", "CSeq: 9 BYE").replace("INVITE sip", "BYE sip"))

    assert d.receive(lower) == 500
    assert d.remote_seq == 7
    assert d.receive(higher) is None
    assert d.remote_seq == 9


def test_ack_and_cancel_skip_the_cseq_check() -> None:
    d = Dialog.uas(request(INVITE_IN), local_tag="ourtag", local_contact=CONTACT)
    d.remote_seq = 20
    ack = request(INVITE_IN.replace("CSeq: 7 INVITE", "CSeq: 7 ACK").replace("INVITE sip", "ACK sip"))
    assert d.receive(ack) is None
    assert d.remote_seq == 20


def test_reinvite_refreshes_the_remote_target() -> None:
    d = Dialog.uas(request(INVITE_IN), local_tag="ourtag", local_contact=CONTACT)
    reinvite = request(
        INVITE_IN.replace("CSeq: 7", "CSeq: 8").replace("alice@192.0.2.10:5062", "alice@192.0.2.11:6000")
    )
    assert d.receive(reinvite) is None
    assert str(d.remote_target) == "sip:alice@192.0.2.11:6000"


def test_bye_does_not_refresh_the_target() -> None:
    d = Dialog.uas(request(INVITE_IN), local_tag="ourtag", local_contact=CONTACT)
    bye = request(
        INVITE_IN.replace("CSeq: 7 INVITE", "CSeq: 8 BYE")
        .replace("INVITE sip", "BYE sip")
        .replace("alice@192.0.2.10:5062", "alice@192.0.2.11:6000")
    )
    d.receive(bye)
    assert str(d.remote_target) == "sip:alice@192.0.2.10:5062"


# --- UAC side ----------------------------------------------------------------------------------------------


def test_uac_dialog_from_a_provisional_is_early_and_reverses_record_route() -> None:
    invite = our_invite()
    ringing = answer_to(
        invite,
        180,
        record_route=("<sip:p2.example;lr>", "<sip:p1.example;lr>"),
        contact="<sip:bob@192.0.2.20:5070>",
    )

    d = Dialog.uac(invite, ringing, local_contact=CONTACT)

    assert d.state is DialogState.EARLY
    assert d.id == DialogId("call-out-1", "ours1", "bob9")
    assert [str(r.uri) for r in d.route_set] == ["sip:p1.example;lr", "sip:p2.example;lr"]
    assert d.local_seq == 1 and d.remote_seq is None


def test_uac_2xx_confirms_and_recomputes_route_set_and_target() -> None:
    invite = our_invite()
    d = Dialog.uac(invite, answer_to(invite, 180, contact="<sip:bob@192.0.2.20:5070>"), local_contact=CONTACT)
    ok = answer_to(invite, 200, record_route=("<sip:edge.example;lr>",), contact="<sip:bob@192.0.2.21:5071>")

    d.confirm(ok)

    assert d.state is DialogState.CONFIRMED
    assert [str(r.uri) for r in d.route_set] == ["sip:edge.example;lr"]
    assert str(d.remote_target) == "sip:bob@192.0.2.21:5071"


def test_uac_needs_a_to_tag() -> None:
    invite = our_invite()
    untagged = response(
        serialize(answer_to(invite, 180)).decode().replace(";tag=bob9", "").replace("\r\n", "\n")
    )
    with pytest.raises(SipError):
        Dialog.uac(invite, untagged, local_contact=CONTACT)


def test_ack_for_2xx_keeps_the_invite_cseq_and_takes_a_new_branch() -> None:
    invite = our_invite()
    ok = answer_to(invite, 200, contact="<sip:bob@192.0.2.20:5070>")
    d = Dialog.uac(invite, ok, local_contact=CONTACT)

    ack = d.build_ack(invite.cseq.sequence, via=VIA)

    assert ack.method == "ACK"
    assert str(ack.uri) == "sip:bob@192.0.2.20:5070"
    assert (ack.cseq.sequence, ack.cseq.method) == (1, "ACK")
    assert ack.via[0].parameters["branch"] != invite.via[0].parameters["branch"]
    assert tag_of(ack.to_address) == "bob9"
    assert d.local_seq == 1  # an ACK takes no new sequence number
    assert d.build_request("BYE", via=VIA).cseq.sequence == 2


def test_strict_router_gets_the_request_uri_and_the_target_goes_last() -> None:
    invite = our_invite()
    ok = answer_to(
        invite,
        200,
        record_route=("<sip:loose.example;lr>", "<sip:strict.example;foo=1>"),
        contact="<sip:bob@b.example>",
    )
    d = Dialog.uac(invite, ok, local_contact=CONTACT)  # reversed: strict first

    bye = d.build_request("BYE", via=VIA)

    assert str(bye.uri) == "sip:strict.example"
    assert bye.headers.getlist("Route") == ["<sip:loose.example;lr>", "<sip:bob@b.example>"]


def test_in_dialog_builders_refuse_ack_and_cancel() -> None:
    d = Dialog.uas(request(INVITE_IN), local_tag="t", local_contact=CONTACT)
    with pytest.raises(SipError):
        d.build_request("ACK", via=VIA)


def test_request_with_a_body_carries_its_content_type() -> None:
    d = Dialog.uas(request(INVITE_IN), local_tag="t", local_contact=CONTACT)
    reinvite = d.build_request("INVITE", via=VIA, body=b"v=0\r\n", content_type="application/sdp")
    parsed = reparse(reinvite)
    assert parsed.headers["Content-Type"] == "application/sdp"
    assert parsed.body == b"v=0\r\n"
    assert parsed.headers["Contact"] == str(CONTACT)


# --- outside dialogs ---------------------------------------------------------------------------------------


def test_initial_request_needs_a_from_tag() -> None:
    with pytest.raises(SipError):
        build_initial_request(
            "INVITE",
            parse_uri("sip:b@example.com"),
            via=VIA,
            from_=parse_address("<sip:a@example.com>"),
            to=parse_address("<sip:b@example.com>"),
            call_id="c",
            cseq=1,
            contact=CONTACT,
        )


def test_initial_request_parses_back() -> None:
    invite = our_invite()
    parsed = reparse(invite)
    assert parsed.method == "INVITE"
    assert str(parsed.uri) == "sip:102@192.0.2.20:5070"
    assert tag_of(parsed.from_address) == "ours1" and tag_of(parsed.to_address) is None
    assert parsed.headers["Contact"] == "<sip:leg1@198.51.100.1:5060>"


def test_cancel_copies_the_invite_branch_and_cseq_number() -> None:
    invite = our_invite()
    cancel = build_cancel(invite, headers=[("Reason", reason_header(200, "Call completed elsewhere"))])
    parsed = reparse(cancel)

    assert parsed.method == "CANCEL"
    assert str(parsed.uri) == str(invite.uri)
    assert parsed.via[0].parameters["branch"] == invite.via[0].parameters["branch"]
    assert (parsed.cseq.sequence, parsed.cseq.method) == (1, "CANCEL")
    assert parsed.headers["From"] == invite.headers["From"]
    assert parsed.headers["To"] == invite.headers["To"]
    assert parsed.headers["Reason"] == 'SIP;cause=200;text="Call completed elsewhere"'


def test_address_of_other_side_is_kept_without_the_tag() -> None:
    d = Dialog.uas(request(INVITE_IN), local_tag="t", local_contact=CONTACT)
    assert isinstance(d.remote_uri, Address)
    assert "tag" not in d.remote_uri.parameters


def test_our_via_parses_back_for_ipv4_and_ipv6() -> None:
    for via, host in ((VIA, "198.51.100.1"), (LocalVia("TCP", "2001:db8::1", 5060), "[2001:db8::1]")):
        parsed = Via.parse(via.header("z9hG4bKabc"))
        assert (parsed.transport, parsed.host, parsed.port) == (via.transport, host, via.port)
        assert parsed.parameters["branch"] == "z9hG4bKabc" and "rport" in parsed.parameters
