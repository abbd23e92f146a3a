"""Properties of vpbx.sip.message: hostile bytes only ever give SipParseError; valid messages round-trip."""

from __future__ import annotations

from pathlib import Path

import sipmessage
from hypothesis import given, settings
from hypothesis import strategies as st

from vpbx.errors import SipParseError
from vpbx.sip.message import (
    PARSE_ERROR_REASONS,
    Request,
    Response,
    build_response,
    parse,
    recover_for_reply,
    serialize,
)

TORTURE = sorted((Path(__file__).parents[1] / "fixtures" / "sip" / "rfc4475").glob("*.dat"))
SEEDS = [p.read_bytes() for p in TORTURE]


def _check_parse(data: bytes, stream: bool) -> None:
    try:
        msg = parse(data, stream=stream)
    except SipParseError as e:
        assert e.reason in PARSE_ERROR_REASONS
        assert e.status in (400, 416, 505, 513)
        recovered = recover_for_reply(data)
        if recovered is not None:
            serialize(build_response(recovered, e.status))  # a reply to a broken request always serialises
        return
    again = parse(serialize(msg))  # whatever we accept, we can write back and read again
    assert type(again) is type(msg)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048), st.booleans())
def test_arbitrary_bytes_raise_only_parse_errors(data: bytes, stream: bool) -> None:
    _check_parse(data, stream)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A torture message with a few bytes replaced, inserted or removed: reaches deeper than random bytes."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        chunk = draw(
            st.sampled_from([b"\r\n", b" ", b"\t", b":", b";", b",", b"<", b">", b'"', b"\x00", b"\xff"])
        )
        if op == "replace" and at < len(data):
            data[at : at + 1] = chunk
        elif op == "insert":
            data[at:at] = chunk
        else:
            del data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


@settings(max_examples=200, deadline=None)
@given(mutated(), st.booleans())
def test_mutated_torture_messages_raise_only_parse_errors(data: bytes, stream: bool) -> None:
    _check_parse(data, stream)


# --- valid messages ---------------------------------------------------------------------------------------
TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12)
labels = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
hosts = st.one_of(
    st.lists(labels, min_size=1, max_size=3).map(lambda ls: ".".join([*ls, "example"])),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
)
users = st.from_regex(r"[a-zA-Z0-9_.!~*'()+-]{1,12}", fullmatch=True)
ports = st.none() | st.integers(1, 65535)
tags = st.from_regex(r"[a-zA-Z0-9]{1,16}", fullmatch=True)
display_names = st.none() | st.text(st.characters(codec="utf-8", exclude_characters='"\\\r\n'), max_size=20)
header_values = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=40).map(
    lambda v: v.strip(" \t")
)
extension_names = st.from_regex(r"X-[A-Za-z0-9-]{1,10}", fullmatch=True)


def sip_uri(user: str | None, host: str, port: int | None, transport: str | None) -> str:
    uri = "sip:" + (f"{user}@" if user else "") + host + (f":{port}" if port else "")
    return uri + (f";transport={transport}" if transport else "")


@st.composite
def addresses(draw: st.DrawFn, *, tag: bool) -> str:
    uri = sip_uri(draw(users), draw(hosts), draw(ports), draw(st.none() | st.sampled_from(["udp", "TCP"])))
    name = draw(display_names)
    text = (f'"{name}" ' if name is not None else "") + f"<{uri}>"
    if tag:
        text += f";tag={draw(tags)}"
    return text


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, dict[str, object]]:
    is_request = draw(st.booleans())
    method = draw(st.sampled_from(["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER"]) | tokens)
    seq = draw(st.integers(0, 2**31 - 1))
    branches = draw(st.lists(tags.map(lambda t: "z9hG4bK" + t), min_size=1, max_size=3))
    vias = [
        f"SIP/2.0/{draw(st.sampled_from(['UDP', 'TCP', 'TLS']))} {draw(hosts)};branch={b}" for b in branches
    ]
    call_id = draw(tags) + "@" + draw(hosts)
    body = draw(st.binary(max_size=300))
    extras = draw(
        st.lists(st.tuples(extension_names, header_values), max_size=4, unique_by=lambda t: t[0].lower())
    )
    if is_request:
        start = f"{method} {sip_uri(draw(users), draw(hosts), draw(ports), None)} SIP/2.0"
    else:
        code = draw(st.integers(100, 699))
        start = f"SIP/2.0 {code} {draw(header_values)}"
    lines = [start]
    lines += [f"Via: {v}" for v in vias]
    if is_request:
        lines.append(f"Max-Forwards: {draw(st.integers(0, 255))}")
    lines += [
        f"From: {draw(addresses(tag=True))}",
        f"To: {draw(addresses(tag=not is_request))}",
        f"Call-ID: {call_id}",
        f"CSeq: {seq} {method}",
    ]
    if draw(st.booleans()):
        lines.append(f"Contact: {draw(addresses(tag=False))}")
    lines += [f"{name}: {value}" for name, value in extras]
    lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    expected: dict[str, object] = {
        "request": is_request,
        "seq": seq,
        "method": method,
        "branches": branches,
        "call_id": call_id,
        "body": body,
        "extras": extras,
    }
    return data, expected


def comparable(msg: Request | Response) -> tuple[object, ...]:
    start = (msg.method, msg.uri) if isinstance(msg, Request) else (msg.code, msg.phrase)
    headers = {name.lower(): list(msg.headers.getlist(name)) for name in msg.headers.keys()}
    return start, headers, msg.body


@settings(max_examples=200, deadline=None)
@given(messages(), st.booleans())
def test_generated_messages_parse_and_round_trip(case: tuple[bytes, dict[str, object]], stream: bool) -> None:
    data, expected = case
    msg = parse(data, stream=stream)
    assert isinstance(msg, Request) is expected["request"]
    assert msg.cseq.sequence == expected["seq"]
    assert msg.cseq.method == expected["method"]
    assert [v.parameters["branch"] for v in msg.via] == expected["branches"]
    assert msg.call_id == expected["call_id"]
    assert msg.body == expected["body"]
    for name, value in expected["extras"]:  # type: ignore[attr-defined]
        assert msg.headers[name] == value
    wire = serialize(msg)
    assert wire == data  # our own canonical form comes back byte for byte
    again = parse(wire, stream=stream)
    assert comparable(again) == comparable(msg)
    assert again.from_address == msg.from_address
    assert again.to_address == msg.to_address
    assert again.contact == msg.contact


# --- the fast grammar paths agree with sipmessage -----------------------------------------------------------
grammar_noise = st.text(alphabet=' \t<>";=,:@%*abcSIPsipUDP0123.-_/\u00a0\x1c', max_size=50)


@settings(max_examples=200, deadline=None)
@given(st.one_of(addresses(tag=True), addresses(tag=False), grammar_noise))
def test_address_fast_path_agrees_with_sipmessage(value: str) -> None:
    from vpbx.sip import message as m

    try:
        expected = sipmessage.Address.parse(value)
    except ValueError:
        try:
            m._address(value)
        except ValueError:
            return
        raise AssertionError(f"accepted what sipmessage refuses: {value!r}") from None
    got = m._address(value)
    assert got.name == expected.name
    assert dict(got.parameters) == {k.lower(): v for k, v in expected.parameters.items()}
    assert (got.uri.scheme, got.uri.user, got.uri.password, got.uri.host, got.uri.port) == (
        expected.uri.scheme,
        expected.uri.user,
        expected.uri.password,
        expected.uri.host,
        expected.uri.port,
    )
    assert dict(got.uri.parameters) == {k.lower(): v for k, v in expected.uri.parameters.items()}


vias = st.builds(
    lambda t, h, p, b: f"SIP/2.0/{t} {h}{f':{p}' if p else ''};branch={b};rport",
    st.sampled_from(["UDP", "tcp", "TLS"]),
    hosts,
    ports,
    tags,
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(vias, grammar_noise.map(lambda s: "SIP/2.0/UDP " + s)))
def test_via_fast_path_agrees_with_sipmessage(value: str) -> None:
    from vpbx.sip import message as m

    try:
        expected = sipmessage.Via.parse(value)
    except ValueError:
        try:
            m._via(value)
        except ValueError:
            return
        raise AssertionError(f"accepted what sipmessage refuses: {value!r}") from None
    got = m._via(value)
    assert (got.transport, got.host, got.port) == (expected.transport.upper(), expected.host, expected.port)
    assert dict(got.parameters) == {k.lower(): v for k, v in expected.parameters.items()}
