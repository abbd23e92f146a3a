"""ICMP errors of our UDP datagrams, read from the Linux socket error queue (RFC 3261 §18.4; pure).

An unconnected UDP socket learns of an ICMP error only with ``IP_RECVERR`` (``IPV6_RECVERR``) set: the
kernel then queues one entry per error, read with ``recvmsg(..., MSG_ERRQUEUE)``. Its ``msg_name`` is the
address the failed datagram was sent to, its ancillary data a ``struct sock_extended_err`` (linux/errqueue.h)
followed by the offender's address. ``parse_error`` turns one such entry into the destination that failed,
or None when the error is one RFC 3261 §18.4 says to ignore (source quench, TTL exceeded, "fragmentation
needed", a local error). ICMP is not authenticated: what is learned here fails only the transactions to that
exact address and port, nothing else (telephony.md §3.3).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

# --- linux/in.h, linux/in6.h, linux/errqueue.h ------------------------------------------------------------
SOL_IP = 0
SOL_IPV6 = 41
IP_RECVERR = 11  # setsockopt(SOL_IP, IP_RECVERR, 1): queue ICMP errors; cmsg type of an IPv4 entry
IPV6_RECVERR = 25  # the same for IPv6
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
EXTENDED_ERR = struct.Struct("=IBBBBII")  # ee_errno, ee_origin, ee_type, ee_code, ee_pad, ee_info, ee_data

# --- RFC 3261 §18.4: host, network, port or protocol unreachable and parameter problem fail the send --------
ICMP_DEST_UNREACH = 3  # RFC 792
ICMP_PARAMETERPROB = 12
ICMP_FATAL_UNREACH = frozenset({0, 1, 2, 3})  # net, host, protocol, port (4, "frag needed", is PMTU: ignored)
ICMP6_DST_UNREACH = 1  # RFC 4443 §3.1
ICMP6_PARAM_PROB = 4
ICMP6_FATAL_UNREACH = frozenset({0, 3, 4})  # no route, address unreachable, port unreachable


@dataclass(frozen=True, slots=True)
class IcmpError:
    """A datagram we sent to ``host``:``port`` drew a fatal ICMP error (``errno`` as the kernel maps it)."""

    host: str
    port: int
    errno: int
    icmp_type: int
    icmp_code: int


def parse_error(address: object, ancillary: Iterable[tuple[int, int, bytes]]) -> IcmpError | None:
    """One error-queue entry (``recvmsg``'s address and ancillary data) → the failed destination, or None."""
    if not isinstance(address, tuple) or len(address) < 2:
        return None
    host, port = address[0], address[1]
    if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536:
        return None
    for level, kind, data in ancillary:
        if (level, kind) not in ((SOL_IP, IP_RECVERR), (SOL_IPV6, IPV6_RECVERR)):
            continue
        if len(data) < EXTENDED_ERR.size:
            return None
        errno, origin, icmp_type, code, _pad, _info, _data = EXTENDED_ERR.unpack_from(data)
        if _fatal(origin, icmp_type, code):
            return IcmpError(host, port, errno, icmp_type, code)
        return None
    return None


def _fatal(origin: int, icmp_type: int, code: int) -> bool:
    if origin == SO_EE_ORIGIN_ICMP:
        return icmp_type == ICMP_PARAMETERPROB or (
            icmp_type == ICMP_DEST_UNREACH and code in ICMP_FATAL_UNREACH
        )
    if origin == SO_EE_ORIGIN_ICMP6:
        return icmp_type == ICMP6_PARAM_PROB or (
            icmp_type == ICMP6_DST_UNREACH and code in ICMP6_FATAL_UNREACH
        )
    return False  # SO_EE_ORIGIN_LOCAL (EMSGSIZE…), timestamps, zero-copy notifications
