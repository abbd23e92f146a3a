"""The asyncio adapters on loopback: datagrams and stream messages arrive whole; replies find their flow."""

from __future__ import annotations

import asyncio
import socket

from vpbx.sip.flow import Destination
from vpbx.sip.transport import Transports

MSG = b"OPTIONS sip:x@y SIP/2.0\r\nCall-ID: 1\r\nContent-Length: 0\r\n\r\n"


async def start() -> tuple[Transports, asyncio.Queue[tuple[bytes, Destination]]]:
    got: asyncio.Queue[tuple[bytes, Destination]] = asyncio.Queue()
    t = Transports(lambda data, src: got.put_nowait((data, src)))
    await t.start("127.0.0.1", 0)
    return t, got


async def test_udp_round_trip() -> None:
    t, got = await start()
    loop = asyncio.get_running_loop()
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            replies.put_nowait(data)

    client, _ = await loop.create_datagram_endpoint(Client, remote_addr=t.local)
    client.sendto(b"\r\n\r\n")  # keep-alive: ignored
    client.sendto(MSG)
    data, src = await asyncio.wait_for(got.get(), 2)
    assert data == MSG and src.transport == "udp" and src.host == "127.0.0.1"
    assert t.send(b"SIP/2.0 200 OK\r\n\r\n", src)
    assert await asyncio.wait_for(replies.get(), 2) == b"SIP/2.0 200 OK\r\n\r\n"
    client.close()
    await t.stop()


async def test_tcp_frames_pings_and_replies_on_the_same_connection() -> None:
    got: asyncio.Queue[tuple[bytes, Destination]] = asyncio.Queue()
    closed: asyncio.Queue[Destination] = asyncio.Queue()
    t = Transports(lambda data, src: got.put_nowait((data, src)), on_closed=closed.put_nowait)
    await t.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*t.local)
    writer.write(b"\r\n\r\n" + MSG[:20])
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(2), 2) == b"\r\n"  # PONG
    writer.write(MSG[20:] + MSG)
    first, src = await asyncio.wait_for(got.get(), 2)
    second, _ = await asyncio.wait_for(got.get(), 2)
    assert first == second == MSG and src.transport == "tcp" and src.conn_id is not None
    assert t.send(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", src)
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)).startswith(b"SIP/2.0 200")
    writer.close()
    await writer.wait_closed()
    assert (await asyncio.wait_for(closed.get(), 2)) == src
    assert t.connections == 0
    assert not t.send(b"x", src)  # the flow is gone
    await t.stop()


async def test_tcp_framing_error_closes_the_connection() -> None:
    errors: list[tuple[int, str]] = []
    t = Transports(lambda _d, _s: None, on_framing_error=lambda _d, st, r, _s: errors.append((st, r)))
    await t.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*t.local)
    writer.write(b"OPTIONS sip:x SIP/2.0\r\nCall-ID: 1\r\n\r\n")  # no Content-Length on a stream
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 2) == b""  # closed by the server
    assert errors == [(400, "missing-content-length")]
    writer.close()
    await t.stop()


async def test_idle_tcp_connection_is_closed() -> None:
    t = Transports(lambda _d, _s: None, idle_timeout_s=0.05)
    await t.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*t.local)
    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()
    await t.stop()


async def test_a_request_over_tcp_to_an_address_opens_one_connection_and_reuses_it() -> None:
    got: asyncio.Queue[tuple[bytes, Destination]] = asyncio.Queue()
    closed: asyncio.Queue[Destination] = asyncio.Queue()
    t = Transports(lambda data, src: got.put_nowait((data, src)), on_closed=closed.put_nowait)
    await t.start("127.0.0.1", 0)
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def carrier(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.put_nowait((reader, writer))

    server = await asyncio.start_server(carrier, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dest = Destination("tcp", "127.0.0.1", port)
    assert t.send(MSG, dest) and t.send(MSG, dest)  # the second waits for the connection being opened
    reader, writer = await asyncio.wait_for(accepted.get(), 2)
    assert await asyncio.wait_for(reader.readexactly(2 * len(MSG)), 2) == MSG + MSG
    assert t.send(MSG, dest)  # and later ones go on the same connection
    assert await asyncio.wait_for(reader.readexactly(len(MSG)), 2) == MSG
    assert accepted.empty() and t.connections == 1
    writer.write(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n")  # the carrier answers on it
    data, src = await asyncio.wait_for(got.get(), 2)
    assert data.startswith(b"SIP/2.0 200") and src.transport == "tcp" and src.conn_id is not None
    writer.close()
    await writer.wait_closed()
    assert await asyncio.wait_for(closed.get(), 2) == src
    assert t.send(MSG, dest)  # closed by the carrier: the next request opens a new one
    reader2, writer2 = await asyncio.wait_for(accepted.get(), 2)
    assert await asyncio.wait_for(reader2.readexactly(len(MSG)), 2) == MSG
    writer2.close()
    server.close()
    await t.stop()


async def test_a_refused_tcp_connection_fails_what_was_queued() -> None:
    t, _ = await start()
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    failed: asyncio.Queue[str] = asyncio.Queue()
    dest = Destination("tcp", "127.0.0.1", port)
    assert t.send(MSG, dest, lambda: failed.put_nowait("first"))
    assert t.send(MSG, dest, lambda: failed.put_nowait("second"))
    assert [await asyncio.wait_for(failed.get(), 2) for _ in range(2)] == ["first", "second"]
    assert t.connections == 0
    assert not t.send(MSG, Destination("tls", "127.0.0.1", port))  # we open no TLS connections
    await t.stop()
