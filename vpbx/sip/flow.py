"""Where a SIP message came from or goes to: the transport flow (telephony.md §3.2)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Destination:
    """A transport flow: ``conn_id`` names the TCP/TLS connection a reply must go back on (RFC 3261 §18.2.2)."""

    transport: str  # "udp", "tcp", "tls"
    host: str
    port: int
    conn_id: int | None = None
