"""SIP over TLS on loopback: a throwaway CA and certificate, a real stdlib TLS client (telephony.md §3.2)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import warnings
from pathlib import Path

import pytest

from tests.integration.peers.certs import CertAuthority, Issued
from tests.integration.peers.net import wait_until
from vpbx.errors import ConfigError
from vpbx.sip.flow import Destination
from vpbx.sip.transport import Transports, tls_server_context

MSG = b"OPTIONS sip:x@y SIP/2.0\r\nCall-ID: 1\r\nContent-Length: 0\r\n\r\n"
WAIT_S = 5.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertAuthority, Issued, Path]:
    d = tmp_path_factory.mktemp("tls")
    ca = CertAuthority.create(d)
    return ca, ca.issue(d, "127.0.0.1", "pbx.example.test"), d


def client_context(ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False  # the certificate names 127.0.0.1 and a domain; the address is checked below
    return ctx


async def start(
    issued: Issued, **kwargs: object
) -> tuple[Transports, asyncio.Queue[tuple[bytes, Destination]], asyncio.Queue[Destination]]:
    got: asyncio.Queue[tuple[bytes, Destination]] = asyncio.Queue()
    closed: asyncio.Queue[Destination] = asyncio.Queue()
    t = Transports(
        lambda data, src: got.put_nowait((data, src)),
        on_closed=closed.put_nowait,
        **kwargs,  # type: ignore[arg-type]
    )
    await t.start_tls("127.0.0.1", 0, tls_server_context(issued.cert, issued.key))
    return t, got, closed


async def test_tls_frames_pings_and_replies_on_the_same_connection(
    certs: tuple[CertAuthority, Issued, Path],
) -> None:
    _, issued, _ = certs
    t, got, closed = await start(issued)
    assert t.tls_local is not None
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(*t.tls_local, ssl=client_context(issued.ca), server_hostname="127.0.0.1"),
        WAIT_S,
    )
    assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
    writer.write(b"\r\n\r\n" + MSG[:20])
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(2), WAIT_S) == b"\r\n"  # RFC 5626 pong
    writer.write(MSG[20:] + b"\r\n" + MSG)  # a lone CRLF between messages is ignored
    first, src = await asyncio.wait_for(got.get(), WAIT_S)
    second, _ = await asyncio.wait_for(got.get(), WAIT_S)
    assert first == second == MSG
    assert src.transport == "tls" and src.host == "127.0.0.1" and src.conn_id is not None
    assert t.send(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", src)
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)).startswith(b"SIP/2.0 200")
    writer.close()
    assert (await asyncio.wait_for(closed.get(), WAIT_S)) == src
    assert t.connections == 0
    assert not t.send(b"x", src)  # the flow is gone
    await t.stop()


async def test_message_sent_with_the_handshake_is_not_lost(certs: tuple[CertAuthority, Issued, Path]) -> None:
    """Data decrypted in the same read as the handshake's end reaches the receiver once, in order."""
    _, issued, _ = certs
    t, got, _ = await start(issued)
    assert t.tls_local is not None
    for _ in range(3):
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(*t.tls_local, ssl=client_context(issued.ca), server_hostname="127.0.0.1"),
            WAIT_S,
        )
        writer.write(MSG + MSG)
        assert (await asyncio.wait_for(got.get(), WAIT_S))[0] == MSG
        assert (await asyncio.wait_for(got.get(), WAIT_S))[0] == MSG
        writer.close()
    await t.stop()


async def test_framing_error_over_tls_closes_the_connection(
    certs: tuple[CertAuthority, Issued, Path],
) -> None:
    _, issued, _ = certs
    errors: list[tuple[int, str, str]] = []
    t = Transports(
        lambda _d, _s: None, on_framing_error=lambda _d, st, r, s: errors.append((st, r, s.transport))
    )
    await t.start_tls("127.0.0.1", 0, tls_server_context(issued.cert, issued.key))
    assert t.tls_local is not None
    reader, writer = await asyncio.open_connection(
        *t.tls_local, ssl=client_context(issued.ca), server_hostname="127.0.0.1"
    )
    writer.write(b"OPTIONS sip:x SIP/2.0\r\nCall-ID: 1\r\n\r\n")  # no Content-Length on a stream
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), WAIT_S) == b""  # closed by the server
    assert errors == [(400, "missing-content-length", "tls")]
    writer.close()
    await t.stop()


async def test_plain_text_and_garbage_on_the_tls_port_only_close_the_connection(
    certs: tuple[CertAuthority, Issued, Path],
) -> None:
    _, issued, _ = certs
    t, got, _ = await start(issued)
    assert t.tls_local is not None
    for junk in (MSG, b"\x16\x03\x01\x00\x05hello", bytes(range(256)) * 4):
        reader, writer = await asyncio.open_connection(*t.tls_local)
        writer.write(junk)
        await writer.drain()
        with contextlib.suppress(ConnectionResetError):  # an abort may end in RST
            await asyncio.wait_for(reader.read(), WAIT_S)  # returns at end of stream: the server closed
        writer.close()
        await wait_until(lambda: t.connections == 0, timeout_s=WAIT_S, what="t.connections == 0")
    # a client that does not trust the server's certificate gives up in the handshake
    with pytest.raises(ssl.SSLError):
        await asyncio.open_connection(*t.tls_local, ssl=ssl.create_default_context(), server_hostname="x")
    # the listener still works, and the failed connections are forgotten
    reader, writer = await asyncio.open_connection(
        *t.tls_local, ssl=client_context(issued.ca), server_hostname="127.0.0.1"
    )
    writer.write(MSG)
    assert (await asyncio.wait_for(got.get(), WAIT_S))[0] == MSG
    assert t.connections == 1
    writer.close()
    await t.stop()


async def test_tls_1_1_is_refused(certs: tuple[CertAuthority, Issued, Path]) -> None:
    _, issued, _ = certs
    t, _, _ = await start(issued)
    assert t.tls_local is not None
    ctx = client_context(issued.ca)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let OpenSSL's client side offer TLS 1.1 at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.wait_for(asyncio.open_connection(*t.tls_local, ssl=ctx, server_hostname="x"), WAIT_S)
    await t.stop()


async def test_connection_cap_counts_connections_before_their_handshake(
    certs: tuple[CertAuthority, Issued, Path],
) -> None:
    _, issued, _ = certs
    t, _, _ = await start(issued, max_connections_per_ip=2)
    assert t.tls_local is not None
    # two idle TCP connections that never start a handshake take the source's whole budget
    idle = [await asyncio.open_connection(*t.tls_local) for _ in range(2)]

    await wait_until(lambda: t.connections == 2, timeout_s=WAIT_S, what="t.connections == 2")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.wait_for(
            asyncio.open_connection(*t.tls_local, ssl=client_context(issued.ca), server_hostname="127.0.0.1"),
            WAIT_S,
        )
    for _, w in idle:
        w.close()

    await wait_until(lambda: t.connections == 0, timeout_s=WAIT_S, what="t.connections == 0")
    reader, writer = await asyncio.open_connection(
        *t.tls_local, ssl=client_context(issued.ca), server_hostname="127.0.0.1"
    )
    writer.write(b"\r\n\r\n")
    assert await asyncio.wait_for(reader.readexactly(2), WAIT_S) == b"\r\n"
    writer.close()
    await t.stop()


async def test_handshake_that_never_comes_times_out(certs: tuple[CertAuthority, Issued, Path]) -> None:
    _, issued, _ = certs
    t, _, _ = await start(issued, handshake_timeout_s=0.2)
    assert t.tls_local is not None
    reader, writer = await asyncio.open_connection(*t.tls_local)
    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(reader.read(), WAIT_S) == b""
    writer.close()
    await wait_until(lambda: t.connections == 0, timeout_s=WAIT_S, what="t.connections == 0")
    await t.stop()


async def test_sni_picks_the_certificate_of_the_named_domain(
    certs: tuple[CertAuthority, Issued, Path],
) -> None:
    ca, issued, d = certs
    other = ca.issue(d, "tenant2.example.test", stem="tenant2")
    ctx = tls_server_context(
        issued.cert, issued.key, domains={"Tenant2.example.test": (other.cert, other.key)}
    )
    t = Transports(lambda _d, _s: None)
    await t.start_tls("127.0.0.1", 0, ctx)
    assert t.tls_local is not None
    strict = ssl.create_default_context(cafile=str(issued.ca))  # host names checked
    for name in ("tenant2.example.test", "pbx.example.test"):
        _, writer = await asyncio.open_connection(*t.tls_local, ssl=strict, server_hostname=name)
        peer = writer.get_extra_info("ssl_object").getpeercert()
        assert ("DNS", name) in peer["subjectAltName"]
        writer.close()
    await t.stop()


def test_unreadable_certificate_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="TLS certificate"):
        tls_server_context(tmp_path / "c.pem", tmp_path / "missing.key")
