"""SIP over TLS and NAT keep-alive against ``vpbx serve`` (telephony.md §3.2), with real peers.

- baresip registers over TLS and is called: the INVITE can only reach it over its TLS connection.
- sipsak (GnuTLS) sends OPTIONS and REGISTER over TLS. sipsak 0.9.8.1 loses the answer after a TLS 1.3
  handshake (the session tickets that follow it end its ``select``), so its GnuTLS is held to TLS 1.2 through
  a priority override file; the server itself offers 1.2 and 1.3.
- A phone behind NAT (its Contact names another address than the one it sends from) registers over UDP
  and gets OPTIONS on its own socket, every interval, while it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.peers import sipsak
from tests.integration.peers.baresip import Account, Baresip
from tests.integration.peers.certs import CertAuthority, Issued
from tests.integration.peers.net import LOOPBACK, free_ports
from tests.integration.peers.process import require_binary, run_command
from tests.integration.peers.vpbx import DEFAULT_DOMAIN, Vpbx

pytestmark = pytest.mark.peers

USERS = {"101": "secret-101", "102": "secret-102"}
KEEPALIVE_S = 0.5
WAIT_S = 10.0


@dataclass
class TlsServer:
    vpbx: Vpbx
    tls_port: int
    certs: Issued


@contextlib.asynccontextmanager
async def running(tmp_path: Path) -> AsyncIterator[TlsServer]:
    ca = CertAuthority.create(tmp_path / "certs")
    issued = ca.issue(tmp_path / "certs", LOOPBACK, DEFAULT_DOMAIN)
    tls_port = free_ports(1)[0]
    env = {
        "VPBX_SIP_TLS_PORT": str(tls_port),
        "VPBX_SIP_TLS_CERT": str(issued.cert),
        "VPBX_SIP_TLS_KEY": str(issued.key),
        "VPBX_SIP_KEEPALIVE_INTERVAL_S": str(KEEPALIVE_S),
    }
    async with Vpbx.running(tmp_path / "vpbx", users=USERS, env=env) as vpbx:
        yield TlsServer(vpbx, tls_port, issued)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[TlsServer]:
    async with running(tmp_path) as s:
        yield s


async def test_baresip_registers_over_tls_and_is_called_over_its_connection(
    server: TlsServer, tmp_path: Path
) -> None:
    require_binary("baresip")
    service = server.vpbx.service
    async with (
        Baresip.start(tmp_path, name="a") as a,
        Baresip.start(tmp_path, name="b") as b,
    ):
        await a.register(Account.on(service, "101"))
        tls = Account(
            user="102",
            domain=service.domain,
            password=service.password("102"),
            outbound=f"sip:{LOOPBACK}:{server.tls_port}",
            transport="tls",
            answermode="auto",
        )
        ok = await b.register(tls)
        assert ok["param"] == "200 OK"
        await a.dial("102")
        await a.wait_event("CALL_ESTABLISHED")
        established = await b.wait_event("CALL_ESTABLISHED")
        assert established["direction"] == "incoming"
        await a.hangup()
        await a.wait_event("CALL_CLOSED")
        await b.wait_event("CALL_CLOSED")


async def sipsak_tls12(tmp_path: Path, *args: str) -> sipsak.SipsakResult:
    """sipsak with its GnuTLS held to TLS 1.2 (see the module's docstring)."""
    config = tmp_path / "gnutls-tls12.conf"
    config.write_text("[overrides]\ndisabled-version = tls1.3\n")
    argv = ["env", f"GNUTLS_SYSTEM_PRIORITY_FILE={config}", sipsak.SIPSAK, *args]
    code, output = await run_command(argv, timeout_s=sipsak.RUN_TIMEOUT_S)
    return sipsak.SipsakResult(code, output)


async def test_sipsak_options_and_register_over_tls(server: TlsServer, tmp_path: Path) -> None:
    require_binary("sipsak")
    tls = ["--transport=tls", f"--tls-ca-cert={server.certs.ca}"]
    port = str(server.tls_port)
    options = await sipsak_tls12(tmp_path, "-vv", "-s", f"sip:ping@{LOOPBACK}", "-r", port, *tls)
    assert options.ok, options.output
    assert 200 in options.status_codes
    register = await sipsak_tls12(
        tmp_path, "-vv", "-U", "-s", f"sip:101@{LOOPBACK}", "-r", port, "-u", "101", "-a", USERS["101"],
        "-x", "120", *tls,
    )  # fmt: skip
    assert register.ok, register.output
    wrong = await sipsak_tls12(
        tmp_path, "-vv", "-U", "-s", f"sip:102@{LOOPBACK}", "-r", port, "-u", "102", "-a", "not-it",
        "-x", "120", *tls,
    )  # fmt: skip
    assert not wrong.ok  # the digest check runs over TLS as over UDP


# --- NAT keep-alive ---------------------------------------------------------------------------------------


class UdpPhone:
    """A minimal phone on one UDP socket: REGISTER with digest (RFC 2617, qop=auth), answer OPTIONS."""

    def __init__(self, server: tuple[str, int], user: str, password: str, contact_host: str) -> None:
        self.server = server
        self.user = user
        self.password = password
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.contact = f"sip:{user}@{contact_host}:{self.port}"
        self.call_id = secrets.token_hex(8)

    def close(self) -> None:
        self.sock.close()

    async def recv(self, timeout_s: float = WAIT_S) -> str:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s):
            data = await loop.sock_recv(self.sock, 65535)
        return data.decode()

    async def send(self, text: str) -> None:
        await asyncio.get_running_loop().sock_sendto(self.sock, text.encode(), self.server)

    def _register(self, cseq: int, auth: str | None) -> str:
        lines = [
            f"REGISTER sip:{DEFAULT_DOMAIN} SIP/2.0",
            f"Via: SIP/2.0/UDP {LOOPBACK}:{self.port};branch=z9hG4bK{secrets.token_hex(8)};rport",
            f"From: <sip:{self.user}@{DEFAULT_DOMAIN}>;tag=nat{self.port}",
            f"To: <sip:{self.user}@{DEFAULT_DOMAIN}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} REGISTER",
            f"Contact: <{self.contact}>",
            "Expires: 120",
            "Max-Forwards: 70",
        ]
        if auth:
            lines.append(f"Authorization: {auth}")
        return "\r\n".join([*lines, "Content-Length: 0", "", ""])

    async def register(self) -> str:
        await self.send(self._register(1, None))
        challenge = await self.recv()
        assert challenge.startswith("SIP/2.0 401"), challenge
        header = re.search(r"^WWW-Authenticate:\s*Digest (.*)$", challenge, re.M | re.I)
        assert header is not None, challenge
        params = dict(re.findall(r'(\w+)="?([^",]*)"?', header.group(1)))
        realm, nonce, uri, cnonce, nc = (
            params["realm"],
            params["nonce"],
            f"sip:{DEFAULT_DOMAIN}",
            "c0ffee",
            "00000001",
        )
        ha1 = _md5(f"{self.user}:{realm}:{self.password}")
        ha2 = _md5(f"REGISTER:{uri}")
        response = _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        auth = (
            f'Digest username="{self.user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}"'
        )
        await self.send(self._register(2, auth))
        return await self.recv()

    async def answer(self, request: str) -> None:
        head = request.split("\r\n\r\n", 1)[0].split("\r\n")
        keep = [h for h in head[1:] if h.split(":", 1)[0].lower() in ("via", "from", "to", "call-id", "cseq")]
        to = next(i for i, h in enumerate(keep) if h.lower().startswith("to:"))
        keep[to] += ";tag=nat"
        await self.send("\r\n".join(["SIP/2.0 200 OK", *keep, "Content-Length: 0", "", ""]))


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


async def test_nated_udp_phone_gets_options_on_its_own_socket(server: TlsServer) -> None:
    service = server.vpbx.service
    # the Contact names 127.0.0.2 while the packets come from 127.0.0.1: behind NAT (telephony.md §3.2)
    phone = UdpPhone((service.host, service.port), "101", USERS["101"], contact_host="127.0.0.2")
    try:
        ok = await phone.register()
        assert ok.startswith("SIP/2.0 200"), ok
        for _ in range(3):  # one per interval while the phone answers
            request = await phone.recv()
            assert request.startswith(f"OPTIONS {phone.contact} SIP/2.0\r\n"), request
            assert re.search(rf"^Via: SIP/2.0/UDP {re.escape(service.host)}:{service.port};", request, re.M)
            assert re.search(rf"^To: <sip:101@{re.escape(DEFAULT_DOMAIN)}>", request, re.M), request
            await phone.answer(request)
    finally:
        phone.close()


async def test_a_phone_not_behind_nat_gets_no_options(server: TlsServer) -> None:
    service = server.vpbx.service
    phone = UdpPhone((service.host, service.port), "102", USERS["102"], contact_host=LOOPBACK)
    try:
        ok = await phone.register()
        assert ok.startswith("SIP/2.0 200"), ok
        with pytest.raises(TimeoutError):
            await phone.recv(timeout_s=6 * KEEPALIVE_S)
    finally:
        phone.close()
