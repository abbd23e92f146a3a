"""Bad input against the running server, over UDP and TCP: 400 where a response is due, silence otherwise,
never a crash — and OPTIONS is still answered afterwards (issue 4, acceptance "Bad input")."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.integration.peers.net import LOOPBACK, wait_sip_ready
from tests.integration.peers.service import SipService
from tests.integration.peers.vpbx import Vpbx

pytestmark = [pytest.mark.peers, pytest.mark.asyncio(loop_scope="module")]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sip"
REPLY_WAIT_S = 0.5  # a local answer takes milliseconds; silence is asserted by waiting this long


def request(*, drop: str = "", content_length: str = "0", body: bytes = b"", extra: str = "") -> bytes:
    headers = [
        ("Via", "SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKbad1;rport"),
        ("Max-Forwards", "70"),
        ("From", "<sip:probe@127.0.0.1>;tag=abc"),
        ("To", "<sip:101@peers.vpbx.test>"),
        ("Call-ID", "bad-input-1"),
        ("CSeq", "1 OPTIONS"),
        ("Content-Length", content_length),
    ]
    lines = ["OPTIONS sip:101@peers.vpbx.test SIP/2.0"]
    lines += [f"{k}: {v}" for k, v in headers if k != drop]
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


CASES: dict[str, tuple[bytes, int | None]] = {
    # name: (bytes, expected status; None = silence)
    "truncated": (request()[:60], None),
    "missing-call-id": (request(drop="Call-ID"), None),  # cannot be answered: the reply needs the Call-ID
    "missing-cseq": (request(drop="CSeq"), None),
    "missing-via": (request(drop="Via"), None),
    "missing-from": (request(drop="From"), None),
    "missing-to": (request(drop="To"), None),
    "missing-max-forwards": (request(drop="Max-Forwards"), 400),
    "bad-content-length": (request(content_length="abc"), 400),
    "short-body": (request(content_length="50", body=b"x" * 10), 400),
    "oversize-header": (request(extra="X-Pad: " + "a" * 70_000), 400),  # cut to one datagram: unframed
    "non-utf8": (request().replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 OPTIONS\r\nSubject: \xff\xfe"), 400),
    "random": (random.Random(4475).randbytes(300), None),
    "empty-lines": (b"\r\n\r\n\r\n", None),
    "response-garbage": (b"SIP/2.0 999999 Whatever\r\n\r\n", None),
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vpbx(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SipService]:
    async with Vpbx.running(tmp_path_factory.mktemp("bad-input"), users={"101": "secret-101"}) as v:
        yield v.service


class _Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.queue.put_nowait(data)


async def udp_exchange(service: SipService, data: bytes) -> bytes | None:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_Collect, local_addr=(LOOPBACK, 0))
    try:
        transport.sendto(data, (service.host, service.port))
        try:
            return await asyncio.wait_for(proto.queue.get(), REPLY_WAIT_S)
        except TimeoutError:
            return None
    finally:
        transport.close()


def status_of(reply: bytes | None) -> int | None:
    if reply is None:
        return None
    return int(reply.split(b" ", 2)[1])


@pytest.mark.parametrize("name", sorted(CASES))
async def test_udp_bad_input_gets_400_or_silence(vpbx: SipService, name: str) -> None:
    data, expected = CASES[name]
    if len(data) > 65_000:
        data = data[:65_000]  # what fits in one datagram
    reply = await udp_exchange(vpbx, data)
    assert status_of(reply) == expected, (name, reply)
    assert (await wait_sip_ready(vpbx.host, vpbx.port, timeout_s=5)).startswith(b"SIP/2.0 200")


@pytest.mark.parametrize("name", sorted(p.name for p in (FIXTURES / "rfc4475").glob("*.dat")))
async def test_rfc4475_torture_messages_never_break_the_server(vpbx: SipService, name: str) -> None:
    data = (FIXTURES / "rfc4475" / name).read_bytes()
    reply = await udp_exchange(vpbx, data)
    if reply is not None:
        assert reply.startswith(b"SIP/2.0 "), reply[:80]
    assert (await wait_sip_ready(vpbx.host, vpbx.port, timeout_s=5)).startswith(b"SIP/2.0 200")


async def test_tcp_garbage_and_a_good_request_on_a_new_connection(vpbx: SipService) -> None:
    reader, writer = await asyncio.open_connection(vpbx.host, vpbx.port)
    writer.write(b"OPTIONS sip:x SIP/2.0\r\nCall-ID: 1\r\n\r\n")  # a stream message without Content-Length
    await writer.drain()
    try:
        rest = await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:  # closed with our unread bytes still queued: RST instead of FIN
        rest = b""
    assert rest == b""  # the server closed the connection
    writer.close()
    reader, writer = await asyncio.open_connection(vpbx.host, vpbx.port)
    good = request().replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
    writer.write(good)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"SIP/2.0 200")
    writer.close()
    await writer.wait_closed()
