"""Where a SIP message came from or goes to: the transport flow (telephony.md §3.2)."""

from __future__ import annotations

from dataclasses import dataclass

# RFC 3261 §17.1.1.2, §17.2.1: timers D, I, J and K are zero over these, and nothing is retransmitted.
RELIABLE_TRANSPORTS = frozenset({"tcp", "tls", "sctp", "ws", "wss"})


@dataclass(frozen=True, slots=True)
class Destination:
    """A transport flow; ``conn_id`` names the TCP/TLS connection a reply goes back on (RFC 3261 §18.2.2)."""

    transport: str  # "udp", "tcp", "tls"
    host: str
    port: int
    conn_id: int | None = None

    @property
    def reliable(self) -> bool:
        """True for stream transports: the transaction layer does not retransmit over them."""
        return self.transport.lower() in RELIABLE_TRANSPORTS
