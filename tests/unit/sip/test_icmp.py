"""ICMP errors of our UDP datagrams: the error-queue entry on bytes, then the real thing on loopback."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from vpbx.sip.flow import Destination
from vpbx.sip.icmp import (
    EXTENDED_ERR,
    IP_RECVERR,
    IPV6_RECVERR,
    SO_EE_ORIGIN_ICMP,
    SO_EE_ORIGIN_ICMP6,
    SOL_IP,
    SOL_IPV6,
    IcmpError,
    parse_error,
)
from vpbx.sip.transport import Transports, drain_errors

ECONNREFUSED = 111
EHOSTUNREACH = 113
SO_EE_ORIGIN_LOCAL = 1
EMSGSIZE = 90


def entry(origin: int, icmp_type: int, code: int, errno: int = ECONNREFUSED) -> bytes:
    """struct sock_extended_err and the offender's sockaddr_in behind it, as the kernel writes them."""
    offender = (
        struct.pack("=H", socket.AF_INET) + struct.pack("!H", 0) + socket.inet_aton("127.0.0.1") + bytes(8)
    )
    return EXTENDED_ERR.pack(errno, origin, icmp_type, code, 0, 0, 0) + offender


def test_port_unreachable_names_the_destination() -> None:
    got = parse_error(("192.0.2.30", 5062), [(SOL_IP, IP_RECVERR, entry(SO_EE_ORIGIN_ICMP, 3, 3))])
    assert got == IcmpError("192.0.2.30", 5062, ECONNREFUSED, 3, 3)


def test_host_unreachable_and_parameter_problem_fail_the_send() -> None:
    host = entry(SO_EE_ORIGIN_ICMP, 3, 1, EHOSTUNREACH)
    assert parse_error(("192.0.2.30", 5060), [(SOL_IP, IP_RECVERR, host)]) is not None
    problem = entry(SO_EE_ORIGIN_ICMP, 12, 0)
    assert parse_error(("192.0.2.30", 5060), [(SOL_IP, IP_RECVERR, problem)]) is not None


def test_icmpv6_port_unreachable() -> None:
    data = EXTENDED_ERR.pack(ECONNREFUSED, SO_EE_ORIGIN_ICMP6, 1, 4, 0, 0, 0) + bytes(28)
    got = parse_error(("2001:db8::7", 5060, 0, 0), [(SOL_IPV6, IPV6_RECVERR, data)])
    assert got == IcmpError("2001:db8::7", 5060, ECONNREFUSED, 1, 4)


@pytest.mark.parametrize(
    ("origin", "icmp_type", "code"),
    [
        (SO_EE_ORIGIN_ICMP, 11, 0),  # TTL exceeded: RFC 3261 §18.4 says ignore
        (SO_EE_ORIGIN_ICMP, 4, 0),  # source quench: ignore
        (SO_EE_ORIGIN_ICMP, 3, 4),  # fragmentation needed: path MTU, not a dead peer
        (SO_EE_ORIGIN_ICMP6, 3, 0),  # ICMPv6 time exceeded
        (SO_EE_ORIGIN_ICMP6, 2, 0),  # ICMPv6 packet too big
        (SO_EE_ORIGIN_LOCAL, 0, 0),  # a local error (EMSGSIZE), no ICMP at all
    ],
)
def test_errors_to_ignore(origin: int, icmp_type: int, code: int) -> None:
    data = entry(origin, icmp_type, code, EMSGSIZE if origin == SO_EE_ORIGIN_LOCAL else ECONNREFUSED)
    assert parse_error(("192.0.2.30", 5060), [(SOL_IP, IP_RECVERR, data)]) is None


def test_broken_entries_give_nothing() -> None:
    good = entry(SO_EE_ORIGIN_ICMP, 3, 3)
    assert parse_error(("192.0.2.30", 5060), [(SOL_IP, IP_RECVERR, good[:15])]) is None  # short struct
    assert parse_error(("192.0.2.30", 5060), [(SOL_IP, 8, good)]) is None  # another cmsg (IP_TTL)
    assert parse_error(("192.0.2.30", 5060), []) is None
    assert parse_error(None, [(SOL_IP, IP_RECVERR, good)]) is None  # no msg_name
    assert parse_error(("192.0.2.30", 0), [(SOL_IP, IP_RECVERR, good)]) is None


def closed_udp_port() -> int:
    """A loopback UDP port nobody listens on: the kernel answers a datagram to it with ICMP."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_loopback_port_unreachable_reaches_on_unreachable() -> None:
    errors: asyncio.Queue[IcmpError] = asyncio.Queue()
    t = Transports(lambda *_: None, on_unreachable=errors.put_nowait)
    await t.start("127.0.0.1", 0)
    try:
        port = closed_udp_port()
        assert t.send(b"OPTIONS sip:102@127.0.0.1 SIP/2.0\r\n\r\n", Destination("udp", "127.0.0.1", port))
        error = await asyncio.wait_for(errors.get(), 5)
        assert (error.host, error.port, error.icmp_type, error.icmp_code) == ("127.0.0.1", port, 3, 3)
    finally:
        await t.stop()


async def test_a_datagram_after_a_failed_one_still_goes_out() -> None:
    """The kernel fails the next sendto with the pending ICMP error and drops it: we send it again."""
    errors: asyncio.Queue[IcmpError] = asyncio.Queue()
    t = Transports(lambda *_: None, on_unreachable=errors.put_nowait)
    await t.start("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    got: asyncio.Queue[bytes] = asyncio.Queue()

    class Phone(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            got.put_nowait(data)

    phone, _ = await loop.create_datagram_endpoint(Phone, local_addr=("127.0.0.1", 0))
    alive = phone.get_extra_info("sockname")
    try:
        dead = closed_udp_port()
        t.send(b"INVITE dead", Destination("udp", "127.0.0.1", dead))
        t.send(b"INVITE alive", Destination("udp", "127.0.0.1", int(alive[1])))  # same tick: a fork
        assert await asyncio.wait_for(got.get(), 5) == b"INVITE alive"
        assert (await asyncio.wait_for(errors.get(), 5)).port == dead
        assert errors.empty()
    finally:
        phone.close()
        await t.stop()


async def test_without_a_listener_for_errors_nothing_is_read() -> None:
    t = Transports(lambda *_: None)
    await t.start("127.0.0.1", 0)
    try:
        port = closed_udp_port()
        assert t.send(b"OPTIONS x", Destination("udp", "127.0.0.1", port))
        assert t.send(b"OPTIONS y", Destination("udp", "127.0.0.1", port))
        await asyncio.sleep(0.05)  # an ICMP, if any, would be handled here; nothing must break
    finally:
        await t.stop()


def test_the_error_queue_is_read_in_bounded_batches_to_the_end() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setsockopt(SOL_IP, IP_RECVERR, 1)
        dead = closed_udp_port()
        for _ in range(10):
            try:
                sock.sendto(b"x", ("127.0.0.1", dead))
            except ConnectionRefusedError:  # the previous one's ICMP fails this sendto: send it again
                sock.sendto(b"x", ("127.0.0.1", dead))
        first, more = drain_errors(sock, limit=4)
        assert len(first) == 4 and more
        rest: list[IcmpError] = []
        for _ in range(10):
            batch, more = drain_errors(sock, limit=4)
            rest += batch
            if not more:
                break
        assert not more and len(first) + len(rest) == 10
        assert {(e.host, e.port) for e in first + rest} == {("127.0.0.1", dead)}
        assert drain_errors(sock) == ([], False)
