"""Loopback ports for peers, and waiting for a SIP server to answer.

Every peer binds 127.0.0.1 only. Ports are picked at random below the kernel's ephemeral range
(32768–60999 on Debian), so they never collide with the source ports that clients such as sipsak get
from the kernel, and each pick is checked by binding it for both UDP and TCP.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import uuid
from collections.abc import Awaitable, Callable

LOOPBACK = "127.0.0.1"
PORT_RANGE = (20000, 32000)  # below net.ipv4.ip_local_port_range
_PICK_ATTEMPTS = 200
PROBE_INTERVAL_S = 0.05


class PortsUnavailable(RuntimeError):
    pass


def require_loopback(host: str) -> str:
    """Refuse any address outside 127.0.0.0/8: peers and load never leave this machine."""
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"peers talk to loopback only, not {host}")
    return host


def _bindable(port: int, host: str = LOOPBACK) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_port_block(count: int = 1, *, rng: random.Random | None = None) -> int:
    """The first of ``count`` consecutive ports that are free for UDP and TCP on 127.0.0.1."""
    pick = rng or random.SystemRandom()
    lo, hi = PORT_RANGE
    for _ in range(_PICK_ATTEMPTS):
        base = pick.randrange(lo, hi - count)
        if all(_bindable(base + i) for i in range(count)):
            return base
    raise PortsUnavailable(f"no block of {count} free ports in {lo}-{hi}")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (each one free for UDP and TCP)."""
    ports: list[int] = []
    while len(ports) < n:
        p = free_port_block(1)
        if p not in ports:
            ports.append(p)
    return ports


async def wait_until(
    check: Callable[[], bool | Awaitable[bool]], *, timeout_s: float, what: str, interval_s: float = 0.05
) -> None:
    """Poll ``check`` until it is true; ``TimeoutError`` naming ``what`` after ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                result = check()
                if not isinstance(result, bool):
                    result = await result
                if result:
                    return
                await asyncio.sleep(interval_s)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}") from None


def _options_request(host: str, port: int, local_port: int) -> bytes:
    tag = uuid.uuid4().hex[:10]
    lines = [
        f"OPTIONS sip:{host}:{port} SIP/2.0",
        f"Via: SIP/2.0/UDP {LOOPBACK}:{local_port};branch=z9hG4bK{uuid.uuid4().hex};rport",
        "Max-Forwards: 70",
        f"From: <sip:probe@{LOOPBACK}>;tag={tag}",
        f"To: <sip:{host}:{port}>",
        f"Call-ID: {uuid.uuid4().hex}@{LOOPBACK}",
        "CSeq: 1 OPTIONS",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


class _FirstDatagram(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if not self.received.done():
            self.received.set_result(data)


async def wait_sip_ready(host: str, port: int, *, timeout_s: float = 10.0) -> bytes:
    """Send OPTIONS over UDP every 50 ms until any SIP response arrives; return its first line."""
    require_loopback(host)
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_FirstDatagram, local_addr=(LOOPBACK, 0))
    try:
        local_port = transport.get_extra_info("sockname")[1]
        async with asyncio.timeout(timeout_s):
            while not proto.received.done():
                transport.sendto(_options_request(host, port, local_port), (host, port))
                await asyncio.wait({proto.received}, timeout=PROBE_INTERVAL_S)
        data = proto.received.result()
    except TimeoutError:
        raise TimeoutError(f"no SIP answer from {host}:{port} within {timeout_s} s") from None
    finally:
        transport.close()
    if not data.startswith(b"SIP/2.0 "):
        raise RuntimeError(f"not a SIP response from {host}:{port}: {data[:60]!r}")
    return data.split(b"\r\n", 1)[0]
