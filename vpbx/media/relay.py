"""The RTP relay fast path (telephony.md §3.9): two legs per call, each with an RTP/RTCP socket pair.

Each RTP socket is read with ``loop.add_reader(fd)`` and a drain loop (``recvfrom_into`` one shared buffer
until ``BlockingIOError``), never ``DatagramProtocol``: the stdlib loop reads one datagram per wake-up there.
Per packet: version 2 and ≥ 12 octets; PT must be the leg's codec or telephone-event; symmetric latching
(send to the SDP address until valid packets arrive, then to their source; move only after ``LATCH_PACKETS``
consecutive valid packets from one new source, counting the others); header rewrite for the outgoing leg
(stable SSRC, re-based seq/timestamp); PT remap and A↔µ translation when the legs differ; telephone-event
forwarded with its PT remapped and peeked for digits; send. Nothing is logged and no object is built per
packet beyond the header fields.

A prompt can play to a leg (``Relay.play``; the pacing core is ``vpbx.media.player.Playback``): a timer per
playing leg sends its due frames through the leg's rewriter (so the phone sees one SSRC, re-based with the
marker bit when the prompt starts and again when bridged media resumes), and while it plays, media from the
other leg is not forwarded to that leg. The leg's own packets are still read, counted and peeked for digits
(IVR barge-in). ``on_play_done`` fires when a prompt has played out; ``stop_play`` and closing do not fire it.

A session can be recorded (``Relay.record_start``/``record_stop``; the core is ``vpbx.media.capture``): what
each leg sends is decoded and placed on the media clock as it passes, and full buffers go to the relay's one
``WavWriter`` thread. Closing a session stops its recording and finalises the file.

RTCP is read per leg for the peer's loss/jitter reports and never forwarded. Each leg keeps the time of its
last valid packet, so the owner can find dead calls (``Relay.idle_legs``; telephony.md §3.7 media timeout).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import secrets
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from vpbx.errors import MediaParseError, NoMediaPorts, NoMediaSession
from vpbx.logs import get_logger
from vpbx.media.amd import AmdDetector, AmdEvent, frame_rms
from vpbx.media.capture import Capture, Channels, RecordingResult, WavWriter
from vpbx.media.dtmf import Digit, DtmfReceiver
from vpbx.media.g711 import ALAW_TO_ULAW, ULAW_TO_ALAW
from vpbx.media.player import Playback, PromptAudio
from vpbx.media.rtp import (
    HEADER_FIELDS,
    MAX_DROPOUT,
    PT_PCMA,
    PT_PCMU,
    RTCP_PT_MAX,
    RTCP_PT_MIN,
    RTP_HEADER_SIZE,
    SEQ_MOD,
    LegRewriter,
    StreamState,
    parse_rtcp_report,
    payload_bounds,
)

if TYPE_CHECKING:
    from vpbx.clock import Clock
    from vpbx.pbx.bus import SessionId

log = get_logger("vpbx.media.relay")

RCVBUF_BYTES = 256 * 1024  # telephony.md §3.9: SO_RCVBUF per RTP socket
LATCH_PACKETS = 5  # telephony.md §3.9: consecutive valid packets from a new source before re-latching
MEDIA_TIMEOUT_S = 60.0  # telephony.md §3.7: no RTP for this long on an answered, non-held leg → BYE
DRAIN_BUDGET = 64  # datagrams per socket per wake-up, so one busy leg cannot starve the others
MAX_DATAGRAM = 2048  # larger datagrams (never G.711 at 20 ms) are dropped as invalid

Side = Literal["a", "b"]
SIDES: tuple[Side, Side] = ("a", "b")
_B0_VERSION_MASK = 0xC0
_B0_VERSION_2 = 0x80
_PT_MASK = 0x7F
_LAW_BY_PT = {PT_PCMA: "a", PT_PCMU: "u"}


class Address(NamedTuple):
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class LegRef:
    """One leg of a media session: ``a`` faces the caller, ``b`` the callee."""

    session: SessionId
    side: Side


class PortAllocator:
    """Even RTP ports (RTCP = RTP + 1) from ``first``–``last``, bound on ``host``.

    Allocation walks the range round-robin from where it stopped, so a released pair is reused only after the
    others were tried (late packets of an ended call rarely reach the next one); ports another process holds
    are skipped. Raises ``NoMediaPorts`` when no pair can be bound.
    """

    def __init__(self, first: int, last: int, *, host: str = "0.0.0.0") -> None:
        start = first + (first & 1)
        self._ports = list(range(start, last, 2))  # p + 1 <= last
        if not self._ports:
            raise ValueError(f"port range {first}-{last} holds no even/odd pair")
        self.host = host
        self._family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._used: set[int] = set()
        self._next = 0

    @property
    def capacity(self) -> int:
        return len(self._ports)

    @property
    def in_use(self) -> int:
        return len(self._used)

    def allocate(self) -> tuple[int, socket.socket, socket.socket]:
        """Bind a free pair: ``(rtp_port, rtp_socket, rtcp_socket)``, both non-blocking."""
        count = len(self._ports)
        for i in range(count):
            idx = (self._next + i) % count
            port = self._ports[idx]
            if port in self._used:
                continue
            pair = self._bind_pair(port)
            if pair is None:
                continue
            self._used.add(port)
            self._next = (idx + 1) % count
            return port, pair[0], pair[1]
        raise NoMediaPorts(f"no free RTP port pair in {self._ports[0]}-{self._ports[-1] + 1}")

    def release(self, port: int) -> None:
        self._used.discard(port)

    def _bind_pair(self, port: int) -> tuple[socket.socket, socket.socket] | None:
        socks: list[socket.socket] = []
        try:
            for p in (port, port + 1):
                s = socket.socket(self._family, socket.SOCK_DGRAM)
                socks.append(s)
                s.setblocking(False)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
                s.bind((self.host, p))
        except OSError:
            for s in socks:
                s.close()
            return None
        return socks[0], socks[1]


def _ip_address(addr: Address | None) -> Address | None:
    """SDP addresses must be IP literals: a host name would cost a DNS look-up per packet."""
    if addr is None:
        return None
    ipaddress.ip_address(addr.host)
    if not 0 < addr.port < 65536:
        raise ValueError(f"bad RTP port {addr.port}")
    return Address(addr.host, addr.port)


class RelayLeg:
    """One leg's sockets, negotiated payload types, latching state, rewriter and counters."""

    __slots__ = (
        "amd",
        "amd_at",
        "armed_at",
        "candidate",
        "candidate_count",
        "capture",
        "codec_pt",
        "dropped",
        "dtmf",
        "invalid",
        "last_rx_at",
        "latched",
        "peer",
        "play_timer",
        "playback",
        "port",
        "ref",
        "relatches",
        "remote",
        "rewriter",
        "rtcp_bytes",
        "rtcp_packets",
        "rtcp_report",
        "rtcp_sock",
        "rtp_sock",
        "rx_base",
        "rx_bytes",
        "rx_count",
        "rx_cycles",
        "rx_lost_before",
        "rx_max",
        "rx_packets",
        "rx_ssrc",
        "send_errors",
        "te_pt",
        "tx_bytes",
        "tx_packets",
        "unexpected_source",
        "unknown_pt",
        "watched",
        "xlate",
    )

    def __init__(self, ref: LegRef, port: int, rtp: socket.socket, rtcp: socket.socket, now: float) -> None:
        self.ref = ref
        self.port = port
        self.rtp_sock = rtp
        self.rtcp_sock = rtcp
        self.peer: RelayLeg = self
        self.remote: Address | None = None  # from SDP
        self.latched: tuple[Any, ...] | None = None  # where its packets really come from
        self.candidate: tuple[Any, ...] | None = None
        self.candidate_count = 0
        self.codec_pt = -1  # -1: not negotiated yet, forward any non-RTCP PT unchanged
        self.te_pt = -1
        self.xlate: bytes | None = None  # table for payloads going from this leg to its peer
        self.rewriter = LegRewriter(secrets.randbits(32))  # for packets we send to this leg's phone
        self.dtmf: DtmfReceiver | None = None
        self.playback: Playback | None = None  # a prompt playing to this leg's phone
        self.play_timer: asyncio.TimerHandle | None = None
        self.capture: Capture | None = None  # the session's recording, shared by both legs
        self.amd: AmdDetector | None = None  # answering-machine detection on what this leg's phone sends
        self.amd_at = now  # when the detector last heard of this leg (a packet, or the watchdog)
        self.watched = False  # armed for the media timeout once the leg has a negotiated remote
        self.armed_at = now
        self.last_rx_at = now
        self.rx_packets = self.rx_bytes = self.tx_packets = self.tx_bytes = 0
        self.invalid = self.unknown_pt = self.unexpected_source = self.relatches = 0
        self.dropped = self.send_errors = self.rtcp_packets = self.rtcp_bytes = 0
        self.rx_ssrc = -1
        self.rx_base = self.rx_max = self.rx_cycles = self.rx_count = self.rx_lost_before = 0
        self.rtcp_report: tuple[int, int, int] | None = None  # fraction lost, cumulative lost, jitter

    def idle_for(self, now: float) -> float:
        """Seconds since the last valid packet (or since the leg was armed, if later)."""
        return now - max(self.armed_at, self.last_rx_at)

    @property
    def lost(self) -> int:
        """Packets lost on the way in, from sequence numbers (RFC 3550 App. A.3), over every source so far."""
        if self.rx_ssrc < 0:
            return self.rx_lost_before
        expected = self.rx_cycles + self.rx_max - self.rx_base + 1
        return self.rx_lost_before + max(0, expected - self.rx_count)

    @property
    def destination(self) -> tuple[Any, ...] | None:
        return self.latched if self.latched is not None else self.remote


class RelaySession:
    __slots__ = ("a", "b", "capture", "rec_handle", "session")

    def __init__(self, session: SessionId, a: RelayLeg, b: RelayLeg) -> None:
        self.session = session
        self.a = a
        self.b = b
        self.capture: Capture | None = None
        self.rec_handle = 0
        a.peer = b
        b.peer = a

    def leg(self, side: Side) -> RelayLeg:
        return self.a if side == "a" else self.b

    def __iter__(self) -> Iterator[RelayLeg]:
        yield self.a
        yield self.b


DigitHook = Callable[[LegRef, Digit], None]
PlayDoneHook = Callable[[LegRef], None]
AmdHook = Callable[[LegRef, str], None]
"""Called with the leg and what answering-machine detection found on it (``vpbx.media.amd.AmdEvent``)."""
AMD_RATE = 8000  # G.711: one byte per sample
AMD_IDLE_S = 0.1  # a gap in a leg's packets longer than this counts as silence for its detector


class Relay:
    """Media sessions on one event loop: ports, readers, forwarding. Used by ``InlineMediaBackend``.

    ``clock`` gives the packet times (read once per wake-up, not per packet) that latching re-bases and the
    media timeout use. ``on_dtmf`` (optional) gets the digits peeked from each leg's telephone-events;
    ``on_play_done`` (optional) the legs whose prompt has played out.
    """

    def __init__(
        self,
        allocator: PortAllocator,
        *,
        clock: Clock,
        loop: asyncio.AbstractEventLoop | None = None,
        on_dtmf: DigitHook | None = None,
        on_play_done: PlayDoneHook | None = None,
        on_amd: AmdHook | None = None,
    ) -> None:
        self.allocator = allocator
        self.on_amd = on_amd
        self._clock = clock
        self._loop = loop or asyncio.get_running_loop()
        self._on_dtmf = on_dtmf
        self._on_play_done = on_play_done
        self._sessions: dict[str, RelaySession] = {}
        self._buf = bytearray(MAX_DATAGRAM)
        self._mv = memoryview(self._buf)
        self._writer: WavWriter | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[RelaySession]:
        return iter(list(self._sessions.values()))

    def get(self, session: SessionId) -> RelaySession:
        rs = self._sessions.get(session)
        if rs is None:
            raise NoMediaSession(session)
        return rs

    def open(self, session: SessionId) -> RelaySession:
        """Bind two port pairs and start reading them."""
        if session in self._sessions:
            return self._sessions[session]
        now = self._clock.monotonic()
        legs: list[RelayLeg] = []
        try:
            for side in SIDES:
                port, rtp, rtcp = self.allocator.allocate()
                legs.append(RelayLeg(LegRef(session, side), port, rtp, rtcp, now))
        except NoMediaPorts:
            for leg in legs:
                self._close_leg(leg, readers=False)
            raise
        rs = RelaySession(session, legs[0], legs[1])
        for leg in rs:
            if self._on_dtmf is not None:
                leg.dtmf = DtmfReceiver(self._clock)
            self._loop.add_reader(leg.rtp_sock.fileno(), self._drain_rtp, leg)
            self._loop.add_reader(leg.rtcp_sock.fileno(), self._drain_rtcp, leg)
        self._sessions[session] = rs
        return rs

    def update(
        self, leg_ref: LegRef, remote: Address | None, codec_pt: int, telephone_event_pt: int | None
    ) -> None:
        """Apply one leg's negotiated SDP: where to send, its codec PT and telephone-event PT (None: none).

        A changed address drops the latch (a re-INVITE or transfer points the leg at a new party) and re-bases
        the rewriter toward it; a known remote arms the leg's media timeout.
        """
        leg = self.get(leg_ref.session).leg(leg_ref.side)
        remote = _ip_address(remote)
        if not 0 <= codec_pt <= _PT_MASK or not 0 <= (telephone_event_pt or 0) <= _PT_MASK:
            raise ValueError("payload types are 0..127")
        if remote != leg.remote:
            leg.latched = None
            leg.candidate = None
            leg.candidate_count = 0
            leg.rewriter.rebase()
        leg.remote = remote
        leg.codec_pt = codec_pt
        leg.te_pt = -1 if telephone_event_pt is None else telephone_event_pt
        for x in (leg, leg.peer):
            src, dst = _LAW_BY_PT.get(x.codec_pt), _LAW_BY_PT.get(x.peer.codec_pt)
            x.xlate = None if src is None or dst is None or src == dst else _table(src)
        now = self._clock.monotonic()
        leg.watched = remote is not None
        leg.armed_at = now

    def play(self, leg_ref: LegRef, audio: PromptAudio, *, loop: bool = False) -> None:
        """Play ``audio`` to the leg's phone (replacing a prompt already playing there), from now.

        The leg must have negotiated PCMA or PCMU: the prompt goes out in that law, paced every 20 ms.
        """
        leg = self.get(leg_ref.session).leg(leg_ref.side)
        if leg.codec_pt not in _LAW_BY_PT:
            raise ValueError(f"leg {leg_ref.side} has no G.711 codec negotiated (PT {leg.codec_pt})")
        self._stop_play(leg)
        leg.playback = Playback(audio, start=self._clock.monotonic(), loop=loop)
        leg.rewriter.rebase()  # marker bit and continuous seq/timestamp toward the phone
        self._play_tick(leg)

    def stop_play(self, leg_ref: LegRef) -> bool:
        """Stop the leg's prompt (no ``on_play_done``); bridged media flows again. False if none played."""
        leg = self.get(leg_ref.session).leg(leg_ref.side)
        return self._stop_play(leg)

    def stream(self, leg_ref: LegRef) -> StreamState:
        """The position of the RTP stream this leg sends to its phone (``LegRewriter.stream``)."""
        return self.get(leg_ref.session).leg(leg_ref.side).rewriter.stream(self._clock.monotonic())

    def adopt_stream(self, leg_ref: LegRef, state: StreamState) -> None:
        """Continue ``state`` (another leg's stream to the same phone) on this leg: a phone moved here by
        an attended transfer keeps its SSRC and sequence, so its jitter buffer never sees packets as late."""
        self.get(leg_ref.session).leg(leg_ref.side).rewriter.adopt(state, self._clock.monotonic())

    def playing(self, leg_ref: LegRef) -> bool:
        return self.get(leg_ref.session).leg(leg_ref.side).playback is not None

    def _stop_play(self, leg: RelayLeg) -> bool:
        if leg.play_timer is not None:
            leg.play_timer.cancel()
            leg.play_timer = None
        if leg.playback is None:
            return False
        leg.playback = None
        leg.rewriter.rebase()  # the bridged source resumes with the marker bit
        return True

    def _play_tick(self, leg: RelayLeg) -> None:
        leg.play_timer = None
        playback = leg.playback
        if playback is None:
            return
        now = self._clock.monotonic()
        pt = leg.codec_pt
        for packet in playback.due(now, ulaw=pt == PT_PCMU):
            leg.rewriter.rewrite(packet, now, pt)
            dest = leg.destination
            if dest is None:
                leg.dropped += 1  # no address for the phone yet; the prompt's clock runs on
                continue
            try:
                leg.rtp_sock.sendto(packet, dest)
            except OSError:
                leg.send_errors += 1
                continue
            leg.tx_packets += 1
            leg.tx_bytes += len(packet)
        if not playback.finished(now):
            delay = max(0.0, playback.next_at - now)
            leg.play_timer = self._loop.call_later(delay, self._play_tick, leg)
            return
        leg.playback = None
        leg.rewriter.rebase()
        if self._on_play_done is not None:
            try:
                self._on_play_done(leg.ref)
            except Exception:  # a failing subscriber must not stop other legs' prompts
                log.exception("media.play_done_hook_failed", session_id=leg.ref.session, leg=leg.ref.side)

    # --- recording ------------------------------------------------------------------------------------

    @property
    def writer(self) -> WavWriter:
        """The relay's one writer thread (started at the first recording)."""
        if self._writer is None:
            self._writer = WavWriter()
        return self._writer

    def record_start(self, session: SessionId, path: Path, *, channels: Channels = "stereo") -> None:
        """Record what the legs send to ``path`` (a WAV: stereo A left / B right, or ``"a"``: the A-leg mono),
        from now on the media clock. ``ValueError`` if the session is already recording."""
        rs = self.get(session)
        if rs.capture is not None:
            raise ValueError(f"session {session} is already recording")
        capture = Capture(path, start=self._clock.monotonic(), channels=channels)
        rs.rec_handle = self.writer.open(path, capture.nchannels)
        rs.capture = capture
        rs.a.capture = rs.b.capture = capture

    def record_stop(self, session: SessionId) -> concurrent.futures.Future[RecordingResult] | None:
        """Stop the session's recording and finalise its file; the future resolves once the writer thread
        has closed it. None when the session was not recording."""
        return self._record_stop(self.get(session))

    def recording(self, session: SessionId) -> bool:
        return self.get(session).capture is not None

    def _record_stop(self, rs: RelaySession) -> concurrent.futures.Future[RecordingResult] | None:
        capture = rs.capture
        if capture is None:
            return None
        rs.capture = rs.a.capture = rs.b.capture = None
        capture.finish(self._clock.monotonic())
        writer = self.writer
        for chunk in capture.take_chunks():
            writer.write(rs.rec_handle, chunk)
        return writer.close(rs.rec_handle)

    def tick_recordings(self) -> None:
        """Emit the final frames of every recording (silence while nobody sends); call every ≤ 0.5 s."""
        now = self._clock.monotonic()
        for rs in self._sessions.values():
            if rs.capture is not None:
                rs.capture.advance(now)
                self._flush(rs)

    def _flush(self, rs: RelaySession) -> None:
        if rs.capture is not None and rs.capture.chunks:
            for chunk in rs.capture.take_chunks():
                self.writer.write(rs.rec_handle, chunk)

    def close(self, session: SessionId) -> bool:
        """Stop reading, close the sockets and free the ports; False if the session was not open.
        A recording still running is stopped and its file finalised."""
        rs = self._sessions.pop(session, None)
        if rs is None:
            return False
        future = self._record_stop(rs)
        if future is not None:
            future.add_done_callback(_log_unclaimed)
        for leg in rs:
            self._close_leg(leg, readers=True)
        return True

    def close_all(self) -> None:
        for rs in list(self._sessions.values()):
            self.close(rs.session)
        if self._writer is not None:
            self._writer.stop()
            self._writer = None

    def idle_legs(self, now: float, timeout_s: float) -> list[RelayLeg]:
        """Watched legs without a valid packet for ``timeout_s``."""
        return [
            leg
            for rs in self._sessions.values()
            for leg in rs
            if leg.watched and leg.idle_for(now) >= timeout_s
        ]

    def amd_start(self, leg_ref: LegRef, detector: AmdDetector) -> None:
        """Classify what the leg's phone sends from now (``on_amd`` gets the verdicts)."""
        leg = self.get(leg_ref.session).leg(leg_ref.side)
        leg.amd = detector
        leg.amd_at = self._clock.monotonic()

    def amd_stop(self, leg_ref: LegRef) -> bool:
        rs = self._sessions.get(leg_ref.session)
        if rs is None:
            return False
        leg = rs.leg(leg_ref.side)
        running, leg.amd = leg.amd is not None, None
        return running

    def poll_amd(self, now: float) -> None:
        """Missing packets are silence for the detectors (call about every 100 ms–1 s)."""
        for rs in list(self._sessions.values()):
            for leg in rs:
                if leg.amd is not None and now - leg.amd_at > AMD_IDLE_S:
                    events = leg.amd.idle(now - leg.amd_at)
                    leg.amd_at = now
                    self._report_amd(leg, events)

    def _feed_amd(self, leg: RelayLeg, n: int, pt: int, now: float) -> None:
        detector = leg.amd
        bounds = payload_bounds(self._buf, n)
        if detector is None or bounds is None:
            return
        rms = frame_rms(self._mv[bounds[0] : bounds[1]], pt)
        if rms is None:
            return
        if now - leg.amd_at > AMD_IDLE_S:  # packets stopped for a while before this one
            self._report_amd(leg, detector.idle(now - leg.amd_at))
        leg.amd_at = now
        self._report_amd(leg, detector.frame(rms, (bounds[1] - bounds[0]) / AMD_RATE))

    def _report_amd(self, leg: RelayLeg, events: list[AmdEvent]) -> None:
        if leg.amd is not None and leg.amd.done:
            leg.amd = None
        for event in events:
            if self.on_amd is not None:
                try:
                    self.on_amd(leg.ref, event)
                except Exception:  # a failing subscriber must not stall the drain loop
                    log.exception("media.amd_hook_failed", session_id=leg.ref.session, leg=leg.ref.side)

    def poll_dtmf(self) -> None:
        """Close digits whose end never came (call about every 100 ms–1 s)."""
        if self._on_dtmf is None:
            return
        for rs in self._sessions.values():
            for leg in rs:
                if leg.dtmf is not None and (digit := leg.dtmf.poll()) is not None:
                    self._on_dtmf(leg.ref, digit)

    def _close_leg(self, leg: RelayLeg, *, readers: bool) -> None:
        self._stop_play(leg)
        if readers:
            self._loop.remove_reader(leg.rtp_sock.fileno())
            self._loop.remove_reader(leg.rtcp_sock.fileno())
        leg.rtp_sock.close()
        leg.rtcp_sock.close()
        self.allocator.release(leg.port)

    # --- fast path --------------------------------------------------------------------------------

    def _drain_rtp(self, leg: RelayLeg) -> None:
        sock = leg.rtp_sock
        buf = self._buf
        forward = self._forward
        now = self._clock.monotonic()
        for _ in range(DRAIN_BUDGET):
            try:
                n, addr = sock.recvfrom_into(buf)
            except BlockingIOError:
                return
            except OSError:  # e.g. ICMP port unreachable from an earlier send, reported on this socket
                leg.send_errors += 1
                continue
            forward(leg, n, addr, now)

    def _forward(self, leg: RelayLeg, n: int, addr: tuple[Any, ...], now: float) -> None:
        buf = self._buf
        if n < RTP_HEADER_SIZE or n >= MAX_DATAGRAM or buf[0] & _B0_VERSION_MASK != _B0_VERSION_2:
            leg.invalid += 1
            return
        b1, seq, ts, ssrc = HEADER_FIELDS.unpack_from(buf, 1)
        pt = b1 & _PT_MASK
        if pt == leg.codec_pt:
            event = False
        elif pt == leg.te_pt:
            event = True
        elif leg.codec_pt < 0 and not RTCP_PT_MIN <= pt <= RTCP_PT_MAX:
            event = False  # not negotiated yet: pass through
        else:
            leg.unknown_pt += 1  # RTCP on the RTP port, comfort noise, anything not negotiated
            return

        # symmetric latching
        if addr != leg.latched:
            if leg.latched is None:
                leg.latched = addr
            elif addr == leg.candidate:
                leg.candidate_count += 1
                if leg.candidate_count < LATCH_PACKETS:
                    leg.unexpected_source += 1
                    return
                leg.latched = addr
                leg.candidate = None
                leg.candidate_count = 0
                leg.relatches += 1
            else:
                leg.candidate = addr
                leg.candidate_count = 1
                leg.unexpected_source += 1
                return
        elif leg.candidate is not None:
            leg.candidate = None  # "consecutive": a packet from the latched source resets the count
            leg.candidate_count = 0

        # receive statistics (RFC 3550 App. A.1/A.3, simplified)
        leg.rx_packets += 1
        leg.rx_bytes += n
        leg.last_rx_at = now
        if ssrc != leg.rx_ssrc:
            leg.rx_lost_before = leg.lost
            leg.rx_ssrc = ssrc
            leg.rx_base = leg.rx_max = seq
            leg.rx_cycles = 0
            leg.rx_count = 1
        else:
            leg.rx_count += 1
            delta = (seq - leg.rx_max) % SEQ_MOD
            if 0 < delta < MAX_DROPOUT:
                if seq < leg.rx_max:
                    leg.rx_cycles += SEQ_MOD
                leg.rx_max = seq

        capture = leg.capture
        if capture is not None and not event:
            bounds = payload_bounds(buf, n)
            if bounds is not None:
                capture.feed(leg.ref.side, self._mv[bounds[0] : bounds[1]], pt, ts, ssrc, now)
                if capture.chunks:
                    writer = self.writer
                    for chunk in capture.take_chunks():
                        writer.write(self._sessions[leg.ref.session].rec_handle, chunk)

        if leg.amd is not None and not event:
            self._feed_amd(leg, n, pt, now)

        peer = leg.peer
        if event and leg.dtmf is not None:
            self._peek_dtmf(leg, n, ts, ssrc)  # also while a prompt plays to this leg: barge-in
        if peer.playback is not None:
            leg.dropped += 1  # a prompt plays to the other phone: nothing of ours reaches it meanwhile
            return
        if event:
            out_pt = peer.te_pt if peer.codec_pt >= 0 else pt
            if out_pt < 0:
                leg.dropped += 1  # the other side did not negotiate telephone-event
                return
        else:
            out_pt = peer.codec_pt if peer.codec_pt >= 0 else pt
            if leg.xlate is not None:
                bounds = payload_bounds(buf, n)
                if bounds is None:
                    leg.invalid += 1
                    return
                start, end = bounds
                buf[start:end] = buf[start:end].translate(leg.xlate)

        dest = peer.latched if peer.latched is not None else peer.remote
        if dest is None:
            leg.dropped += 1  # the other side has neither an SDP address nor a latch yet
            return
        peer.rewriter.apply(buf, b1, seq, ts, ssrc, now, out_pt)
        try:
            peer.rtp_sock.sendto(self._mv[:n], dest)
        except OSError:
            peer.send_errors += 1
            return
        peer.tx_packets += 1
        peer.tx_bytes += n

    def _peek_dtmf(self, leg: RelayLeg, n: int, ts: int, ssrc: int) -> None:
        bounds = payload_bounds(self._buf, n)
        if bounds is None or leg.dtmf is None or self._on_dtmf is None:
            return
        try:
            digits = leg.dtmf.feed(self._mv[bounds[0] : bounds[1]], ts, ssrc)
        except MediaParseError:
            return
        for digit in digits:
            self._on_dtmf(leg.ref, digit)

    def _drain_rtcp(self, leg: RelayLeg) -> None:
        sock = leg.rtcp_sock
        buf = self._buf
        for _ in range(DRAIN_BUDGET):
            try:
                n, _addr = sock.recvfrom_into(buf)
            except BlockingIOError:
                return
            except OSError:
                continue
            leg.rtcp_packets += 1
            leg.rtcp_bytes += n
            try:
                block = parse_rtcp_report(buf, n)
            except MediaParseError:
                continue
            if block is not None:
                leg.rtcp_report = (block.fraction_lost, block.cumulative_lost, block.jitter)


def _log_unclaimed(future: concurrent.futures.Future[RecordingResult]) -> None:
    """A recording finalised by ``close`` (nobody waits for its result)."""
    error = future.exception()
    if error is not None:
        log.error("media.record_finalise_failed", error=str(error))


def _table(src_law: str) -> bytes:
    return ALAW_TO_ULAW if src_law == "a" else ULAW_TO_ALAW
