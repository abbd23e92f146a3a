"""Asyncio adapters for SIP over UDP and TCP: thin, they only move bytes (telephony.md §3.2).

Every received message goes to one callback with its source flow; replies go back through ``send`` to a
``Destination`` — over UDP to the address, over TCP on the connection the request came in on.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from vpbx.logs import get_logger
from vpbx.sip.flow import Destination
from vpbx.sip.framing import PONG, Frame, FramingError, Ping, StreamFramer

log = get_logger("vpbx.sip.transport")

MAX_UDP = 65_507
TCP_IDLE_TIMEOUT_S = 600.0  # a registered TCP phone refreshes (or CRLF-pings) well within this
MAX_CONNECTIONS_PER_IP = 64
MAX_CONNECTIONS = 10_000
WRITE_BUFFER_HIGH = 256 * 1024  # a peer that does not read loses its connection instead of our memory

Receiver = Callable[[bytes, Destination], None]
ErrorReply = Callable[[bytes, int, str, Destination], None]


class UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, receive: Receiver) -> None:
        self._receive = receive
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # CPython's selector datagram transport does not subclass DatagramTransport: no isinstance check
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if data.strip(b"\r\n") == b"":
            return  # CRLF keep-alive datagrams are ignored (telephony.md §3.2)
        try:
            self._receive(data, Destination("udp", str(addr[0]), int(addr[1])))
        except Exception:  # one bad message must never stop the listener
            log.exception("udp.receive_failed", source=str(addr[0]))

    def error_received(self, exc: Exception) -> None:
        log.info("udp.error", error=type(exc).__name__)


@dataclass
class _Conn:
    conn_id: int
    peer: tuple[str, int]
    transport: asyncio.Transport
    framer: StreamFramer = field(default_factory=StreamFramer)
    idle: asyncio.TimerHandle | None = None


class TcpServerProtocol(asyncio.Protocol):
    def __init__(self, owner: Transports) -> None:
        self._owner = owner
        self._conn: _Conn | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        peer = transport.get_extra_info("peername") or ("?", 0)
        self._conn = self._owner._register(transport, (str(peer[0]), int(peer[1])))
        if self._conn is None:
            transport.abort()

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if conn is None:
            return
        self._owner._touch(conn)
        source = Destination("tcp", conn.peer[0], conn.peer[1], conn.conn_id)
        for event in conn.framer.feed(data):
            if isinstance(event, Frame):
                try:
                    self._owner.receive(event.data, source)
                except Exception:
                    log.exception("tcp.receive_failed", source=conn.peer[0])
            elif isinstance(event, Ping):
                conn.transport.write(PONG)
            elif isinstance(event, FramingError):
                self._owner.framing_error(conn, event)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._owner._forget(self._conn)
            self._conn = None


class Transports:
    """The node's SIP listeners (UDP and TCP on one port) and the way out for every message."""

    def __init__(
        self,
        receive: Receiver,
        *,
        on_framing_error: ErrorReply | None = None,
        on_closed: Callable[[Destination], None] | None = None,
        idle_timeout_s: float = TCP_IDLE_TIMEOUT_S,
    ) -> None:
        self.receive = receive
        self._on_framing_error = on_framing_error
        self._on_closed = on_closed  # e.g. the registrar: bindings on this flow can no longer be reached
        self._idle_timeout_s = idle_timeout_s
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._conns: dict[int, _Conn] = {}
        self._per_ip: dict[str, int] = {}
        self._ids = itertools.count(1)
        self.local: tuple[str, int] = ("", 0)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on UDP and TCP; port 0 picks a free UDP port and uses the same number for TCP."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: UdpProtocol(self.receive), local_addr=(host, port)
        )
        self._udp = transport
        sock = transport.get_extra_info("sockname")
        self.local = (str(sock[0]), int(sock[1]))
        self._tcp = await loop.create_server(
            lambda: TcpServerProtocol(self), host, self.local[1], reuse_address=True
        )
        log.info("sip.listening", host=self.local[0], port=self.local[1], transports="udp,tcp")
        return self.local

    async def stop(self) -> None:
        if self._tcp is not None:
            self._tcp.close()
            for conn in list(self._conns.values()):
                conn.transport.abort()
            await self._tcp.wait_closed()
            self._tcp = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    def send(self, data: bytes, dest: Destination) -> bool:
        """Queue ``data`` for ``dest``; False when the flow is gone (a closed TCP connection)."""
        if dest.transport == "udp":
            if self._udp is None or len(data) > MAX_UDP:
                return False
            self._udp.sendto(data, (dest.host, dest.port))
            return True
        if dest.conn_id is not None:
            conn = self._conns.get(dest.conn_id)
            if conn is None or conn.transport.is_closing():
                return False
            if conn.transport.get_write_buffer_size() > WRITE_BUFFER_HIGH:
                log.warning("tcp.slow_reader", peer=conn.peer[0])
                conn.transport.abort()
                return False
            conn.transport.write(data)
            return True
        return False  # outbound TCP connections arrive with trunks

    @property
    def connections(self) -> int:
        return len(self._conns)

    # --- connection bookkeeping (called by the protocols) ---

    def _register(self, transport: asyncio.Transport, peer: tuple[str, int]) -> _Conn | None:
        if len(self._conns) >= MAX_CONNECTIONS or self._per_ip.get(peer[0], 0) >= MAX_CONNECTIONS_PER_IP:
            log.warning("tcp.refused", peer=peer[0], reason="connection-limit")
            return None
        conn = _Conn(next(self._ids), peer, transport)
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self._conns[conn.conn_id] = conn
        self._per_ip[peer[0]] = self._per_ip.get(peer[0], 0) + 1
        self._touch(conn)
        return conn

    def _touch(self, conn: _Conn) -> None:
        if conn.idle is not None:
            conn.idle.cancel()
        conn.idle = asyncio.get_running_loop().call_later(self._idle_timeout_s, conn.transport.close)

    def _forget(self, conn: _Conn) -> None:
        if conn.idle is not None:
            conn.idle.cancel()
        if self._conns.pop(conn.conn_id, None) is not None:
            left = self._per_ip.get(conn.peer[0], 1) - 1
            if left:
                self._per_ip[conn.peer[0]] = left
            else:
                self._per_ip.pop(conn.peer[0], None)
            if self._on_closed is not None:
                self._on_closed(Destination("tcp", conn.peer[0], conn.peer[1], conn.conn_id))

    def framing_error(self, conn: _Conn, error: FramingError) -> None:
        log.info("tcp.framing_error", peer=conn.peer[0], reason=error.reason)
        if self._on_framing_error is not None:
            self._on_framing_error(
                b"", error.status, error.reason, Destination("tcp", conn.peer[0], conn.peer[1], conn.conn_id)
            )
        conn.transport.close()
