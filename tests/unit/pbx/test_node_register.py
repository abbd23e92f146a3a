"""REGISTER through the real node: the challenge is stateless, the authenticated request is not."""

from __future__ import annotations

import re

from tests.unit.pbx.b2bua_kit import PASSWORD, TENANT, Pbx
from vpbx.app import Core
from vpbx.sip.auth import digest_response
from vpbx.sip.digest import ha1
from vpbx.sip.flow import Destination
from vpbx.sip.message import Response, parse

PHONE = Destination("udp", "192.0.2.77", 5062)


def register(cseq: int, auth: str = "") -> bytes:
    return (
        f"REGISTER sip:{TENANT} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.77:5062;branch=z9hG4bK-reg-{cseq};rport\r\n"
        f"From: <sip:101@{TENANT}>;tag=r1\r\nTo: <sip:101@{TENANT}>\r\nCall-ID: reg-1@192.0.2.77\r\n"
        f"CSeq: {cseq} REGISTER\r\nContact: <sip:101@192.0.2.77:5062>\r\nExpires: 600\r\nMax-Forwards: 70\r\n"
        f"{auth}Content-Length: 0\r\n\r\n"
    ).encode()


async def answers(pbx: Pbx, data: bytes) -> list[Response]:
    pbx.node._receive(data, PHONE)
    await pbx.settle()
    out = [parse(d) for d, dest in pbx.stray if dest == PHONE]
    pbx.stray.clear()
    return [r for r in out if isinstance(r, Response)]


async def test_the_challenge_is_stateless_and_the_registration_is_not(core: Core) -> None:
    pbx = await Pbx.create(core)
    [first] = await answers(pbx, register(1))
    [again] = await answers(pbx, register(1))  # a retransmission: a fresh challenge, no transaction kept
    assert first.code == again.code == 401
    assert len(pbx.node.table) == 0
    nonces = [re.search(r'nonce="([^"]+)"', r.headers["WWW-Authenticate"]) for r in (first, again)]
    assert nonces[0] and nonces[1] and nonces[0].group(1) != nonces[1].group(1)

    nonce = nonces[1].group(1)
    response = digest_response(
        ha1=ha1("101", TENANT, PASSWORD, "MD5"),
        nonce=nonce,
        nc="00000001",
        cnonce="c1",
        qop="auth",
        method="REGISTER",
        uri=f"sip:{TENANT}",
    )
    auth = (
        f'Authorization: Digest username="101", realm="{TENANT}", nonce="{nonce}", uri="sip:{TENANT}", '
        f'response="{response}", algorithm=MD5, qop=auth, nc=00000001, cnonce="c1"\r\n'
    )
    [ok] = await answers(pbx, register(2, auth))
    assert ok.code == 200 and len(pbx.node.table) == 1  # kept for Timer J: a retransmission is absorbed
    [same] = await answers(pbx, register(2, auth))
    assert same.code == 200 and bytes(same) == bytes(ok)  # the stored answer, not a second registration
    await pbx.node.stop()
