"""RFC 4733 telephone-events: payload parse/build and the receiver that turns packets into digits.

Receiving (telephony.md §3.8): a new event timestamp starts a digit, the E bit ends it, the end packet's
retransmissions (three by RFC 4733 §2.5.1.4) are ignored, and a digit whose end never arrives is closed once
no packet of it came for ``timeout_s`` (1 s) on the receiver's clock — call ``poll()`` to notice that. A
digit is reported when it closes, with ``ended`` telling whether its end packet was seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vpbx.errors import MediaParseError

if TYPE_CHECKING:
    from vpbx.clock import Clock

EVENT_PAYLOAD_SIZE = 4  # RFC 4733 §2.3: event (8) | E R volume (1+1+6) | duration (16)
END_BIT = 0x80  # RFC 4733 §2.3.2
RESERVED_BIT = 0x40  # RFC 4733 §2.3.3: sent as 0, ignored on receipt
VOLUME_MASK = 0x3F  # RFC 4733 §2.3.4: power level in -dBm0, 0–63
MAX_DURATION = 0xFFFF  # RFC 4733 §2.3.5: timestamp units
# an event packet this long after the last digit ended starts a new digit whatever its timestamp (see
# ``_restarts``): senders that do not advance event timestamps (replayed recordings, some gateways) would
# otherwise lose every later digit; an end packet's retransmissions come within tens of milliseconds
RESTART_GAP_S = 0.5
DTMF_EVENTS = "0123456789*#ABCD"  # RFC 4733 §3.2: event codes 0–15
END_RETRANSMISSIONS = 3  # RFC 4733 §2.5.1.4: the final packet is sent three times
DIGIT_TIMEOUT_S = 1.0  # telephony.md §3.8: a digit with no end is closed after this long without packets
DIGIT_DURATION_MS = 100  # telephony.md §3.8: what we send
DIGIT_VOLUME = 10  # telephony.md §3.8: -10 dBm0
PACKET_INTERVAL_MS = 20  # telephony.md §3.8: duration grows every 20 ms
CLOCK_RATE = 8000  # telephone-event/8000 (RFC 4733 §7.1.1)

_TS_MOD = 1 << 32


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    event: int
    end: bool
    volume: int
    duration: int

    @property
    def digit(self) -> str | None:
        """The DTMF character, or None for the other events of RFC 4733 §3.2 / RFC 4734."""
        return DTMF_EVENTS[self.event] if self.event < len(DTMF_EVENTS) else None


def parse_event(data: bytes | bytearray | memoryview) -> DtmfEvent:
    """RFC 4733 §2.3; extra octets (a redundancy-free payload has none) are ignored."""
    if len(data) < EVENT_PAYLOAD_SIZE:
        raise MediaParseError("dtmf-short", f"need {EVENT_PAYLOAD_SIZE} bytes, got {len(data)}")
    flags = data[1]
    return DtmfEvent(
        event=data[0],
        end=bool(flags & END_BIT),
        volume=flags & VOLUME_MASK,
        duration=(data[2] << 8) | data[3],
    )


def event_code(digit: str) -> int:
    """``"0"``–``"9"``, ``"*"``, ``"#"``, ``"A"``–``"D"`` (any case) to the RFC 4733 §3.2 code."""
    code = DTMF_EVENTS.find(digit.upper()) if len(digit) == 1 else -1
    if code < 0:
        raise ValueError(f"not a DTMF digit: {digit!r}")
    return code


def build_event(digit: str, *, end: bool = False, volume: int = DIGIT_VOLUME, duration: int = 0) -> bytes:
    """One 4-byte telephone-event payload for a DTMF ``digit``."""
    if not 0 <= volume <= VOLUME_MASK:
        raise ValueError(f"volume {volume} out of 0..{VOLUME_MASK}")
    if not 0 <= duration <= MAX_DURATION:
        raise ValueError(f"duration {duration} out of 0..{MAX_DURATION}")
    flags = (END_BIT if end else 0) | volume
    return bytes((event_code(digit), flags, duration >> 8, duration & 0xFF))


def digit_payloads(
    digit: str,
    *,
    duration_ms: int = DIGIT_DURATION_MS,
    volume: int = DIGIT_VOLUME,
    interval_ms: int = PACKET_INTERVAL_MS,
) -> list[bytes]:
    """The payloads that send one digit (§3.8): duration growing every ``interval_ms``, the end ×3.

    All go out with the event's one timestamp; the caller sets the marker bit on the first packet only.
    """
    step = CLOCK_RATE * interval_ms // 1000
    total = CLOCK_RATE * duration_ms // 1000
    out = [build_event(digit, volume=volume, duration=d) for d in range(step, total, step)]
    out.extend(
        build_event(digit, end=True, volume=volume, duration=total) for _ in range(END_RETRANSMISSIONS)
    )
    return out


@dataclass(frozen=True, slots=True)
class Digit:
    digit: str
    timestamp: int  # RTP timestamp of the event: its start
    duration: int  # timestamp units, as last reported by the sender
    ended: bool  # False: closed by timeout or by the next event, its end packet never came


class DtmfReceiver:
    """Digits from one leg's telephone-event packets (RFC 4733 §2.5.2, telephony.md §3.8)."""

    __slots__ = ("_clock", "_code", "_duration", "_last_at", "_last_ts", "_open", "_ssrc", "timeout_s")

    def __init__(self, clock: Clock, *, timeout_s: float = DIGIT_TIMEOUT_S) -> None:
        self._clock = clock
        self.timeout_s = timeout_s
        self._ssrc = -1
        self._last_ts = -1  # timestamp of the latest event seen (open or closed); -1 = none yet
        self._open = False
        self._code = 0
        self._duration = 0
        self._last_at = 0.0

    @property
    def pending(self) -> str | None:
        """The digit in progress, if any."""
        return DTMF_EVENTS[self._code] if self._open else None

    def feed(
        self, payload: bytes | bytearray | memoryview, timestamp: int, ssrc: int = 0
    ) -> tuple[Digit, ...]:
        """One telephone-event packet; returns the digits it closed (usually none). Raises MediaParseError."""
        ev = parse_event(payload)
        if ev.event >= len(DTMF_EVENTS):
            return ()  # other events (flash, tones) are not digits
        now = self._clock.monotonic()
        closed: tuple[Digit, ...] = ()
        if ssrc != self._ssrc:  # a new source has its own timestamp base
            closed = self._close(ended=False)
            self._ssrc = ssrc
            self._last_ts = -1
        elif self._last_ts >= 0 and not self._restarts(ev, now):
            if timestamp == self._last_ts:
                if not self._open:
                    return closed  # an end retransmission, or a late packet of a digit already closed
                self._duration = max(self._duration, ev.duration)
                self._last_at = now
                return self._close(ended=True) if ev.end else closed
            if (timestamp - self._last_ts) % _TS_MOD >= _TS_MOD // 2:
                return closed  # a late packet of an earlier event
            closed = self._close(ended=False)  # the next event started before this one's end arrived
        self._last_ts = timestamp
        self._code = ev.event
        self._duration = ev.duration
        self._last_at = now
        self._open = True
        if ev.end:  # every packet before the end was lost
            closed += self._close(ended=True)
        return closed

    def _restarts(self, ev: DtmfEvent, now: float) -> bool:
        """A packet well after the last digit ended that begins an event (or names another digit) is a new
        digit even if its timestamp says otherwise; a late end packet of the same digit is not."""
        if self._open or now - self._last_at < RESTART_GAP_S:
            return False
        return not ev.end or ev.event != self._code

    def poll(self) -> Digit | None:
        """Close the open digit if no packet of it came for ``timeout_s``; call it periodically."""
        if self._open and self._clock.monotonic() - self._last_at >= self.timeout_s:
            return self._close(ended=False)[0]
        return None

    def _close(self, *, ended: bool) -> tuple[Digit, ...]:
        if not self._open:
            return ()
        self._open = False
        return (Digit(DTMF_EVENTS[self._code], self._last_ts, self._duration, ended),)
