"""Asyncio adapters for SIP over UDP, TCP and TLS: thin, they only move bytes (telephony.md §3.2).

Every received message goes to one callback with its source flow; replies go back through ``send`` to a
``Destination`` — over UDP to the address, over TCP and TLS on the connection the request came in on. A new
request over TCP to an address (a trunk's carrier) opens a connection to it, or reuses the one we opened
before (RFC 3261 §18.1.1); what is sent while it opens is queued, and a failed connect is reported to the
sender's ``on_error``, so the transaction fails at once instead of timing out.

Over UDP the socket asks the kernel for ICMP errors (``IP_RECVERR``, Linux): asyncio reports one to
``error_received`` without its address, so the protocol then reads the socket's error queue, which names the
destination each failed datagram went to, and hands those to ``on_unreachable`` (RFC 3261 §18.4): a phone
that is gone fails its transactions at once instead of after Timer B.

TLS is stdlib ``ssl`` over memory BIOs inside the stream protocol: a TLS connection is counted against the
connection caps as soon as it is accepted, before its handshake, so a flood of half-open handshakes meets the
same per-IP cap as TCP; a failed or slow handshake is logged at info and closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast

from vpbx.errors import ConfigError
from vpbx.logs import get_logger
from vpbx.sip.flow import Destination
from vpbx.sip.framing import PONG, Frame, FramingError, Ping, StreamFramer
from vpbx.sip.icmp import IP_RECVERR, IPV6_RECVERR, SOL_IP, SOL_IPV6, IcmpError, parse_error

log = get_logger("vpbx.sip.transport")

MAX_UDP = 65_507
TCP_IDLE_TIMEOUT_S = 600.0  # a registered TCP phone refreshes (or CRLF-pings) well within this
TLS_HANDSHAKE_TIMEOUT_S = 10.0  # a connection that has not finished its handshake by then is closed
MAX_CONNECTIONS_PER_IP = 64  # TCP and TLS together: the budget is memory per source (telephony.md §3.2)
MAX_CONNECTIONS = 10_000
WRITE_BUFFER_HIGH = 256 * 1024  # a peer that does not read loses its connection instead of our memory
CONNECT_TIMEOUT_S = 5.0  # an outbound TCP connection not up by then fails what was queued for it
MAX_QUEUED = 64  # messages held for one connection being opened
MAX_ERRQUEUE_READS = 64  # error-queue entries read per error_received: the queue is drained, never looped on
ERRQUEUE_BUFFER = 512  # the failed datagram's head (ignored) and, in ancillary data, the extended error

Receiver = Callable[[bytes, Destination], None]
Unreachable = Callable[[IcmpError], None]
ErrorReply = Callable[[bytes, int, str, Destination], None]


def tls_server_context(
    cert: str | Path, key: str | Path, *, domains: Mapping[str, tuple[str | Path, str | Path]] | None = None
) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 at least) with the default certificate and key (PEM files).

    ``domains`` maps a SIP domain to its own certificate and key: a client that names that domain in SNI
    gets that certificate, any other client the default one (telephony.md §3.2).
    """
    ctx = _context(cert, key)
    per_domain = {name.lower().rstrip("."): _context(c, k) for name, (c, k) in (domains or {}).items()}
    if per_domain:

        def choose(sock: ssl.SSLObject, server_name: str | None, _default: ssl.SSLContext) -> None:
            chosen = per_domain.get((server_name or "").lower().rstrip("."))
            if chosen is not None:
                sock.context = chosen
            # an unknown name keeps the default certificate: phones that send none must still connect

        ctx.sni_callback = choose
    return ctx


def domain_certificates(directory: str | Path) -> dict[str, tuple[Path, Path]]:
    """SIP domain → (certificate, key): each ``<domain>.pem`` in ``directory`` with its ``<domain>.key``."""
    found: dict[str, tuple[Path, Path]] = {}
    for cert in sorted(Path(directory).glob("*.pem")):
        key = cert.with_suffix(".key")
        if not key.is_file():
            raise ConfigError(f"the TLS certificate {cert} has no key {key}", details={"cert": str(cert)})
        found[cert.stem.lower()] = (cert, key)
    return found


def _context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(
            f"cannot load the TLS certificate {cert} with key {key}: {e}", details={"cert": str(cert)}
        ) from e
    return ctx


class UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, receive: Receiver, on_unreachable: Unreachable | None = None) -> None:
        self._receive = receive
        self._on_unreachable = on_unreachable
        self._errqueue: socket.socket | None = None  # a duplicate of the socket, to read its error queue
        self.transport: asyncio.DatagramTransport | None = None
        self.errors = 0  # error_received calls: one during a sendto means that datagram was not sent

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # CPython's selector datagram transport does not subclass DatagramTransport: no isinstance check
        self.transport = cast(asyncio.DatagramTransport, transport)
        if self._on_unreachable is not None:
            self._errqueue = _recverr_socket(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._errqueue is not None:
            self._errqueue.close()
            self._errqueue = None

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if data.strip(b"\r\n") == b"":
            return  # CRLF keep-alive datagrams are ignored (telephony.md §3.2)
        try:
            self._receive(data, Destination("udp", str(addr[0]), int(addr[1])))
        except Exception:  # one bad message must never stop the listener
            log.exception("udp.receive_failed", source=str(addr[0]))

    def error_received(self, exc: Exception) -> None:
        self.errors += 1
        log.info("udp.error", error=type(exc).__name__)
        self._drain()

    def _drain(self) -> None:
        if self._errqueue is None or self._on_unreachable is None:
            return
        errors, more = drain_errors(self._errqueue)
        if more:  # a queue left non-empty keeps the socket in EPOLLERR: the loop would spin, so read on soon
            asyncio.get_running_loop().call_soon(self._drain)
        for error in errors:
            log.info(
                "udp.unreachable",
                peer=error.host,
                port=error.port,
                icmp=f"{error.icmp_type}/{error.icmp_code}",
            )
            try:
                self._on_unreachable(error)
            except Exception:
                log.exception("udp.unreachable_failed", peer=error.host)


def _recverr_socket(transport: asyncio.BaseTransport) -> socket.socket | None:
    """Turn on ICMP error reporting for the endpoint's socket; a duplicate of it to read the error queue.

    None where that cannot be done (not Linux, or a loop that hides its socket): errors then only time out.
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(SOL_IPV6, IPV6_RECVERR, 1)
            with contextlib.suppress(OSError):  # a dual-stack socket also hears of its IPv4 peers
                sock.setsockopt(SOL_IP, IP_RECVERR, 1)
        else:
            sock.setsockopt(SOL_IP, IP_RECVERR, 1)
        dup = socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
    except (OSError, AttributeError) as e:
        log.info("udp.no_icmp_errors", error=type(e).__name__)
        return None
    dup.setblocking(False)
    return dup


def drain_errors(sock: socket.socket, limit: int = MAX_ERRQUEUE_READS) -> tuple[list[IcmpError], bool]:
    """Read up to ``limit`` entries of ``sock``'s error queue (non-blocking): the fatal ICMP errors, and
    whether entries may be left (``limit`` read without reaching the end)."""
    found: list[IcmpError] = []
    flags = socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT
    for _ in range(limit):
        try:
            _data, ancillary, _flags, address = sock.recvmsg(ERRQUEUE_BUFFER, ERRQUEUE_BUFFER, flags)
        except (BlockingIOError, InterruptedError):
            return found, False  # the queue is empty
        except OSError as e:
            log.info("udp.errqueue_failed", error=type(e).__name__)
            return found, False
        error = parse_error(address, ancillary)
        if error is not None:
            found.append(error)
    return found, True


class _Stream(Protocol):
    """What a connection needs of its transport: asyncio's (TCP) or ``_TlsTransport`` on top of it."""

    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def is_closing(self) -> bool: ...
    def get_write_buffer_size(self) -> int: ...


@dataclass
class _Dialing:
    """An outbound TCP connection being opened: what to send once it is up, whom to tell if it fails."""

    queued: list[bytes] = field(default_factory=list)
    failed: list[Callable[[], None]] = field(default_factory=list)


@dataclass
class _Conn:
    conn_id: int
    peer: tuple[str, int]
    transport: _Stream
    name: str = "tcp"  # "tcp" or "tls": the flow's transport
    framer: StreamFramer = field(default_factory=StreamFramer)
    idle: asyncio.TimerHandle | None = None
    ready: bool = True  # False while a TLS handshake is under way: nothing is sent before it ends

    @property
    def flow(self) -> Destination:
        return Destination(self.name, self.peer[0], self.peer[1], self.conn_id)


class _TlsTransport:
    """TLS over an accepted TCP transport with ``ssl.SSLObject`` and memory BIOs (no ``start_tls``).

    Bytes from the socket go in through ``feed``, which returns the plaintext; ``write`` encrypts. Doing the
    TLS here, not in the event loop, keeps the handshake under our own timeout and logging and behaves the
    same on asyncio and uvloop (uvloop hands over bytes read before ``start_tls`` could take the socket).
    """

    def __init__(self, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
        self.raw = raw
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out, server_side=True)
        self.handshaken = False
        self.peer_closed = False

    def feed(self, data: bytes) -> bytes:
        """Take bytes from the peer; the application data they complete (b"" while handshaking).

        Raises ``ssl.SSLError`` for a broken handshake or record; after close_notify ``peer_closed`` is set.
        """
        self._in.write(data)
        try:
            if not self.handshaken:
                try:
                    self._ssl.do_handshake()
                except ssl.SSLWantReadError:
                    return b""
                self.handshaken = True
            chunks = []
            while True:
                try:
                    chunk = self._ssl.read(MAX_UDP)
                except ssl.SSLWantReadError:
                    break
                if not chunk:  # close_notify: ``read`` gives b"" at the end of the TLS stream
                    self.peer_closed = True
                    break
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            self._flush()  # handshake messages, alerts, session tickets

    @property
    def version(self) -> str | None:
        return self._ssl.version()

    def write(self, data: bytes) -> None:
        if self.raw.is_closing():
            return
        self._ssl.write(data)
        self._flush()

    def close(self) -> None:
        if self.handshaken and not self.raw.is_closing():
            with contextlib.suppress(ssl.SSLError):
                self._ssl.unwrap()  # close_notify; the peer's answer is not awaited
            self._flush()
        self.raw.close()

    def abort(self) -> None:
        self.raw.abort()

    def is_closing(self) -> bool:
        return self.raw.is_closing()

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size()

    def _flush(self) -> None:
        pending = self._out.read()
        if pending and not self.raw.is_closing():
            self.raw.write(pending)


class StreamProtocol(asyncio.Protocol):
    """One accepted TCP or TLS connection: framing, keep-alive pongs, and its place in the bookkeeping."""

    def __init__(self, owner: Transports, tls: ssl.SSLContext | None = None) -> None:
        self._owner = owner
        self._context = tls
        self._tls: _TlsTransport | None = None
        self._conn: _Conn | None = None
        self._handshake_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        peer = raw.get_extra_info("peername") or ("?", 0)
        name = "tls" if self._context is not None else "tcp"
        stream: _Stream = raw
        if self._context is not None:
            stream = self._tls = _TlsTransport(raw, self._context)
        # counted before any handshake: a flood of half-open TLS connections meets the per-IP cap
        self._conn = self._owner._register(stream, (str(peer[0]), int(peer[1])), name)
        if self._conn is None:
            raw.abort()
            return
        raw.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        if self._tls is not None:
            self._conn.ready = False
            self._handshake_timer = asyncio.get_running_loop().call_later(
                self._owner._handshake_timeout_s, self._handshake_timeout
            )

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if conn is None:
            return
        if self._tls is not None:
            try:
                data = self._tls.feed(data)
            except ssl.SSLError as e:  # the peer's fault, never ours: log, close, carry on
                if conn.ready:
                    log.info("tls.error", peer=conn.peer[0], reason=str(e.reason or e)[:120])
                    self._tls.abort()
                else:
                    log.info("tls.handshake_failed", peer=conn.peer[0], reason=str(e.reason or e)[:120])
                    self._tls.raw.close()  # after the alert that feed() queued
                return
            if not conn.ready and self._tls.handshaken:
                conn.ready = True
                if self._handshake_timer is not None:
                    self._handshake_timer.cancel()
                log.debug("tls.established", peer=conn.peer[0], version=self._tls.version)
            if self._tls.peer_closed:
                self._tls.close()  # answer close_notify; what came before it is still handled below
            if not data:
                return
        self._owner._touch(conn)
        source = conn.flow
        for event in conn.framer.feed(data):
            if isinstance(event, Frame):
                try:
                    self._owner.receive(event.data, source)
                except Exception:
                    log.exception(f"{conn.name}.receive_failed", source=conn.peer[0])
            elif isinstance(event, Ping):
                conn.transport.write(PONG)  # RFC 5626 §4.4.1: a double-CRLF ping gets a single CRLF
            elif isinstance(event, FramingError):
                self._owner.framing_error(conn, event)

    def _handshake_timeout(self) -> None:
        if self._conn is not None and not self._conn.ready:
            log.info("tls.handshake_failed", peer=self._conn.peer[0], reason="timeout")
            self._conn.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        if self._conn is not None:
            self._owner._forget(self._conn)
            self._conn = None


class Transports:
    """The SIP listeners (UDP and TCP on one port, TLS on its own) and the way out for every message."""

    def __init__(
        self,
        receive: Receiver,
        *,
        on_framing_error: ErrorReply | None = None,
        on_closed: Callable[[Destination], None] | None = None,
        on_unreachable: Unreachable | None = None,
        idle_timeout_s: float = TCP_IDLE_TIMEOUT_S,
        max_connections_per_ip: int = MAX_CONNECTIONS_PER_IP,
        handshake_timeout_s: float = TLS_HANDSHAKE_TIMEOUT_S,
    ) -> None:
        self.receive = receive
        self._on_framing_error = on_framing_error
        self._on_closed = on_closed  # e.g. the registrar: bindings on this flow can no longer be reached
        self._unreachable = on_unreachable  # the transactions: a UDP destination answered with ICMP
        self._idle_timeout_s = idle_timeout_s
        self._max_per_ip = max_connections_per_ip
        self._handshake_timeout_s = handshake_timeout_s
        self._udp: asyncio.DatagramTransport | None = None
        self._udp_protocol: UdpProtocol | None = None
        self._tcp: asyncio.Server | None = None
        self._tls: asyncio.Server | None = None
        self._conns: dict[int, _Conn] = {}
        self._per_ip: dict[str, int] = {}
        self._outbound: dict[tuple[str, int], int] = {}  # (host, port) → the TCP connection we opened there
        self._dialing: dict[tuple[str, int], _Dialing] = {}
        self._dials: set[asyncio.Task[None]] = set()
        self.connect_timeout_s = CONNECT_TIMEOUT_S
        self._ids = itertools.count(1)
        self.local: tuple[str, int] = ("", 0)
        self.tls_local: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on UDP and TCP; port 0 picks a free UDP port and uses the same number for TCP."""
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: UdpProtocol(self.receive, self._unreachable), local_addr=(host, port)
        )
        self._udp = transport
        self._udp_protocol = protocol
        sock = transport.get_extra_info("sockname")
        self.local = (str(sock[0]), int(sock[1]))
        self._tcp = await loop.create_server(
            lambda: StreamProtocol(self), host, self.local[1], reuse_address=True
        )
        log.info("sip.listening", host=self.local[0], port=self.local[1], transports="udp,tcp")
        return self.local

    async def start_tls(self, host: str, port: int, context: ssl.SSLContext) -> tuple[str, int]:
        """Listen for SIP over TLS (port 0: a free one); framing and limits as over TCP."""
        loop = asyncio.get_running_loop()
        self._tls = await loop.create_server(
            lambda: StreamProtocol(self, context), host, port, reuse_address=True
        )
        sock = self._tls.sockets[0].getsockname()
        self.tls_local = (str(sock[0]), int(sock[1]))
        log.info("sip.listening", host=self.tls_local[0], port=self.tls_local[1], transports="tls")
        return self.tls_local

    async def stop(self) -> None:
        for task in list(self._dials):
            task.cancel()
        await asyncio.gather(*self._dials, return_exceptions=True)
        servers = [s for s in (self._tcp, self._tls) if s is not None]
        for server in servers:
            server.close()
        for conn in list(self._conns.values()):
            conn.transport.abort()
        for server in servers:
            await server.wait_closed()
        self._tcp = self._tls = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    def send(self, data: bytes, dest: Destination, on_error: Callable[[], None] | None = None) -> bool:
        """Queue ``data`` for ``dest``; False when the flow is gone (a closed TCP or TLS connection).

        Over TCP to an address without a connection, one is opened: True means queued, and ``on_error`` is
        called if the connection cannot be made."""
        if dest.transport == "udp":
            if self._udp is None or len(data) > MAX_UDP:
                return False
            protocol = self._udp_protocol
            errors = protocol.errors if protocol is not None else 0
            self._udp.sendto(data, (dest.host, dest.port))
            if protocol is not None and protocol.errors != errors:
                # The kernel fails a sendto with the pending ICMP error of an earlier datagram (IP_RECVERR;
                # on loopback the ICMP comes back within the earlier sendto) and drops this one: the error
                # is consumed now, so the second try goes out.
                self._udp.sendto(data, (dest.host, dest.port))
            return True
        if dest.conn_id is not None:
            conn = self._conns.get(dest.conn_id)
            if conn is None or not conn.ready or conn.transport.is_closing():
                return False
            if conn.transport.get_write_buffer_size() > WRITE_BUFFER_HIGH:
                log.warning(f"{conn.name}.slow_reader", peer=conn.peer[0])
                conn.transport.abort()
                return False
            conn.transport.write(data)
            return True
        if dest.transport.lower() != "tcp":
            return False  # we open no TLS connections (trunks are UDP or TCP)
        return self._send_outbound(data, (dest.host, dest.port), on_error)

    def _send_outbound(self, data: bytes, peer: tuple[str, int], on_error: Callable[[], None] | None) -> bool:
        conn_id = self._outbound.get(peer)
        conn = self._conns.get(conn_id) if conn_id is not None else None
        if conn is not None and not conn.transport.is_closing():
            if conn.transport.get_write_buffer_size() > WRITE_BUFFER_HIGH:
                log.warning("tcp.slow_reader", peer=peer[0])
                conn.transport.abort()
                return False
            conn.transport.write(data)
            return True
        if self._tcp is None:
            return False  # not listening: no Via we could name
        dialing = self._dialing.get(peer)
        if dialing is None:
            dialing = self._dialing[peer] = _Dialing()
            task = asyncio.get_running_loop().create_task(self._dial(peer, dialing), name="sip-tcp-connect")
            self._dials.add(task)
            task.add_done_callback(self._dials.discard)
        elif len(dialing.queued) >= MAX_QUEUED:
            return False
        dialing.queued.append(data)
        if on_error is not None:
            dialing.failed.append(on_error)
        return True

    async def _dial(self, peer: tuple[str, int], dialing: _Dialing) -> None:
        loop = asyncio.get_running_loop()
        conn: _Conn | None = None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, protocol = await loop.create_connection(lambda: StreamProtocol(self), peer[0], peer[1])
            conn = protocol._conn
        except (OSError, TimeoutError) as e:
            log.info("tcp.connect_failed", peer=peer[0], port=peer[1], error=type(e).__name__)
        finally:
            self._dialing.pop(peer, None)
        if conn is None:  # refused, timed out, or over the connection caps
            for fail in dialing.failed:
                fail()
            return
        log.debug("tcp.connected", peer=peer[0], port=peer[1])
        self._outbound[peer] = conn.conn_id
        for data in dialing.queued:
            conn.transport.write(data)

    @property
    def connections(self) -> int:
        return len(self._conns)

    # --- connection bookkeeping (called by the protocols) ---

    def _register(self, transport: _Stream, peer: tuple[str, int], name: str) -> _Conn | None:
        if len(self._conns) >= MAX_CONNECTIONS or self._per_ip.get(peer[0], 0) >= self._max_per_ip:
            log.warning(f"{name}.refused", peer=peer[0], reason="connection-limit")
            return None
        conn = _Conn(next(self._ids), peer, transport, name)
        self._conns[conn.conn_id] = conn
        self._per_ip[peer[0]] = self._per_ip.get(peer[0], 0) + 1
        self._touch(conn)
        return conn

    def _touch(self, conn: _Conn) -> None:
        if conn.idle is not None:
            conn.idle.cancel()
        conn.idle = asyncio.get_running_loop().call_later(self._idle_timeout_s, self._idle, conn)

    @staticmethod
    def _idle(conn: _Conn) -> None:
        conn.transport.close()

    def _forget(self, conn: _Conn) -> None:
        if conn.idle is not None:
            conn.idle.cancel()
        if self._outbound.get(conn.peer) == conn.conn_id:
            del self._outbound[conn.peer]
        if self._conns.pop(conn.conn_id, None) is not None:
            left = self._per_ip.get(conn.peer[0], 1) - 1
            if left:
                self._per_ip[conn.peer[0]] = left
            else:
                self._per_ip.pop(conn.peer[0], None)
            if self._on_closed is not None:
                self._on_closed(conn.flow)

    def framing_error(self, conn: _Conn, error: FramingError) -> None:
        log.info(f"{conn.name}.framing_error", peer=conn.peer[0], reason=error.reason)
        if self._on_framing_error is not None:
            self._on_framing_error(b"", error.status, error.reason, conn.flow)
        conn.transport.close()
