"""``MediaBackend`` (telephony.md §9.3): what the call engine asks of media, and the inline implementation.

The B2BUA calls ``allocate`` when a call is accepted (our SDP on each leg points at the returned address),
``update`` once per leg whenever that leg's SDP is negotiated (answer, re-INVITE, transfer), ``stats`` for
diagnostics and the call record, and ``release`` when the call ends.

``InlineMediaBackend`` runs the relay on the current event loop (``media.mode = "inline"``: unit tests and the
smallest installs). The production shape — relays in worker processes driven over a unix socket with
length-prefixed JSON (telephony.md §2, §3.9) — comes later behind this same Protocol; so do play, record and
DTMF sending, which join the Protocol with the endpoint media. Nothing here keeps module-level state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from vpbx.clock import Clock, SystemClock
from vpbx.logs import get_logger
from vpbx.media.dtmf import Digit
from vpbx.media.relay import (
    MEDIA_TIMEOUT_S,
    Address,
    DigitHook,
    LegRef,
    PortAllocator,
    Relay,
    RelayLeg,
)

if TYPE_CHECKING:
    from vpbx.pbx.bus import SessionId

log = get_logger("vpbx.media.backend")

CHECK_INTERVAL_S = 0.5  # how often the inline backend looks for idle legs and unfinished digits

MediaTimeoutHook = Callable[[LegRef, float], None]
"""Called with the silent leg and for how long; the owner BYEs the call unless the leg is on hold."""


@dataclass(frozen=True, slots=True)
class MediaPorts:
    """Where each leg's phone must send RTP (our SDP's ``c=``/``m=``); RTCP goes to ``port + 1``."""

    a: Address
    b: Address


@dataclass(frozen=True, slots=True, kw_only=True)
class LegStats:
    local: Address
    remote: Address | None  # from SDP
    latched: Address | None  # where its packets actually come from
    codec_pt: int | None
    telephone_event_pt: int | None
    rx_packets: int
    rx_bytes: int
    tx_packets: int
    tx_bytes: int
    lost: int  # inbound, from sequence numbers
    invalid: int  # not RTP v2 / too short or too long / malformed header
    unknown_pt: int  # a payload type this leg did not negotiate (RTCP on the RTP port, comfort noise, …)
    unexpected_source: int  # valid packets from an address other than the latched one
    relatches: int
    dropped: int  # valid packets with nowhere to go
    send_errors: int
    rtcp_packets: int
    rtcp_fraction_lost: int | None  # the phone's own report about what we send it (RFC 3550 §6.4)
    rtcp_cumulative_lost: int | None
    rtcp_jitter: int | None
    idle_s: float


@dataclass(frozen=True, slots=True)
class SessionStats:
    session: SessionId
    a: LegStats
    b: LegStats


class MediaBackend(Protocol):
    async def allocate(self, session: SessionId) -> MediaPorts:
        """Reserve an RTP/RTCP port pair per leg; raises ``NoMediaPorts`` when the range is full."""
        ...

    async def update(
        self, leg: LegRef, remote: Address | None, codec_pt: int, telephone_event_pt: int | None
    ) -> None:
        """Apply a leg's negotiated SDP: the phone's RTP address (an IP), codec PT, telephone-event PT."""
        ...

    async def release(self, session: SessionId) -> None:
        """Free the session's ports; releasing twice is harmless."""
        ...

    async def stats(self, session: SessionId) -> SessionStats:
        """Counters per leg; raises ``NoMediaSession`` for an unknown session."""
        ...


def _addr(a: tuple[Any, ...] | None) -> Address | None:
    return None if a is None else Address(str(a[0]), int(a[1]))


def leg_stats(leg: RelayLeg, now: float, advertise_host: str) -> LegStats:
    report = leg.rtcp_report
    return LegStats(
        local=Address(advertise_host, leg.port),
        remote=leg.remote,
        latched=_addr(leg.latched),
        codec_pt=leg.codec_pt if leg.codec_pt >= 0 else None,
        telephone_event_pt=leg.te_pt if leg.te_pt >= 0 else None,
        rx_packets=leg.rx_packets,
        rx_bytes=leg.rx_bytes,
        tx_packets=leg.tx_packets,
        tx_bytes=leg.tx_bytes,
        lost=leg.lost,
        invalid=leg.invalid,
        unknown_pt=leg.unknown_pt,
        unexpected_source=leg.unexpected_source,
        relatches=leg.relatches,
        dropped=leg.dropped,
        send_errors=leg.send_errors,
        rtcp_packets=leg.rtcp_packets,
        rtcp_fraction_lost=report[0] if report else None,
        rtcp_cumulative_lost=report[1] if report else None,
        rtcp_jitter=report[2] if report else None,
        idle_s=leg.idle_for(now),
    )


class InlineMediaBackend:
    """The relay on the running loop; a watchdog reports silent legs and closes unfinished digits.

    ``ports`` is the configured ``--rtp-ports A-B`` range; sockets bind on ``bind_host`` and SDP advertises
    ``advertise_host``. ``on_media_timeout`` fires for each watched leg (one with a negotiated remote) silent
    for ``media_timeout_s``, then again after every further ``media_timeout_s`` of silence.
    """

    def __init__(
        self,
        *,
        ports: tuple[int, int],
        bind_host: str = "0.0.0.0",
        advertise_host: str = "127.0.0.1",
        clock: Clock | None = None,
        media_timeout_s: float = MEDIA_TIMEOUT_S,
        check_interval_s: float = CHECK_INTERVAL_S,
        on_media_timeout: MediaTimeoutHook | None = None,
        on_dtmf: DigitHook | None = None,
    ) -> None:
        self.allocator = PortAllocator(ports[0], ports[1], host=bind_host)
        self.advertise_host = advertise_host
        self.clock: Clock = clock or SystemClock()
        self.media_timeout_s = media_timeout_s
        self.check_interval_s = check_interval_s
        self.on_media_timeout = on_media_timeout
        self.on_dtmf = on_dtmf
        self._relay: Relay | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def relay(self) -> Relay:
        """The relay, created on the running loop at first use (and its watchdog started)."""
        if self._relay is None:
            loop = asyncio.get_running_loop()
            hook = self._dtmf if self.on_dtmf is not None else None
            self._relay = Relay(self.allocator, clock=self.clock, loop=loop, on_dtmf=hook)
            self._timer = loop.call_later(self.check_interval_s, self._tick)
        return self._relay

    async def allocate(self, session: SessionId) -> MediaPorts:
        rs = self.relay.open(session)
        return MediaPorts(Address(self.advertise_host, rs.a.port), Address(self.advertise_host, rs.b.port))

    async def update(
        self, leg: LegRef, remote: Address | None, codec_pt: int, telephone_event_pt: int | None
    ) -> None:
        self.relay.update(leg, remote, codec_pt, telephone_event_pt)

    async def release(self, session: SessionId) -> None:
        if self._relay is not None:
            self._relay.close(session)

    async def stats(self, session: SessionId) -> SessionStats:
        rs = self.relay.get(session)
        now = self.clock.monotonic()
        return SessionStats(
            session, leg_stats(rs.a, now, self.advertise_host), leg_stats(rs.b, now, self.advertise_host)
        )

    def check(self) -> list[LegRef]:
        """One watchdog round: report legs silent for ``media_timeout_s`` (re-armed), close stale digits."""
        if self._relay is None:
            return []
        now = self.clock.monotonic()
        fired: list[LegRef] = []
        for leg in self._relay.idle_legs(now, self.media_timeout_s):
            idle = leg.idle_for(now)
            leg.armed_at = now  # next report after another full period of silence
            fired.append(leg.ref)
            if self.on_media_timeout is not None:
                try:
                    self.on_media_timeout(leg.ref, idle)
                except Exception:
                    log.exception("media.timeout_hook_failed", session_id=leg.ref.session, leg=leg.ref.side)
        self._relay.poll_dtmf()
        return fired

    def _dtmf(self, leg: LegRef, digit: Digit) -> None:
        if self.on_dtmf is None:
            return
        try:
            self.on_dtmf(leg, digit)
        except Exception:  # a failing subscriber must not stall the drain loop
            log.exception("media.dtmf_hook_failed", session_id=leg.session, leg=leg.side)

    async def aclose(self) -> None:
        """Stop the watchdog and close every session."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._relay is not None:
            self._relay.close_all()
            self._relay = None

    def _tick(self) -> None:
        try:
            self.check()
        finally:
            if self._relay is not None:
                self._timer = asyncio.get_running_loop().call_later(self.check_interval_s, self._tick)
