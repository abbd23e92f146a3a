"""The prompt player (telephony.md §3.9, §3.10): a prompt's G.711 frames as RTP, paced on absolute deadlines.

``Playback`` is the sans-I/O core: given the time, it says which 20 ms frames are due (the n-th frame is due
at ``start + n × 20 ms``, never after a chain of ``sleep(0.02)``, so lateness does not accumulate) and builds
them as RTP packets of its own source (random SSRC, sequence number and timestamp, marker on the first). The
relay sends them through the leg's ``LegRewriter``, which maps that source onto the leg's one stable SSRC and
re-bases sequence number and timestamp, with the marker bit, when the source changes (prompt → bridge).

After a stall longer than ``MAX_BURST`` frames the overdue frames are skipped, not sent in a burst: the
timestamp moves on by the skipped frames (the receiver hears a gap, as after loss) and the sequence number
does not (nothing was lost on the wire).

``AudioCache`` loads a stored prompt's ``.pcma``/``.pcmu`` payloads off the event loop and keeps the most
recently used ones up to a byte budget; prompts are named by content hash, so an entry never goes stale.
"""

from __future__ import annotations

import asyncio
import secrets
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vpbx.media.rtp import FRAME_SAMPLES, PT_PCMA, PT_PCMU, RTP_HEADER_SIZE, RTP_VERSION, SEQ_MOD, TS_MOD

if TYPE_CHECKING:
    from vpbx.media.prompts import Prompt

FRAME_S = 0.02  # telephony.md §3.8: ptime 20
FRAME_BYTES = FRAME_SAMPLES  # one G.711 octet per sample
MAX_BURST = 10  # frames sent at once to catch up after a stall (200 ms); beyond that they are skipped
DUE_SLACK_S = 0.001  # a timer may fire a hair before its deadline; the frame is still due
CACHE_BYTES = 64 * 1024 * 1024  # payload bytes kept per process (both laws): about 70 min of prompts
SILENCE_ALAW = 0xD5  # G.711 A-law code for 0
SILENCE_ULAW = 0xFF  # G.711 µ-law code for 0

_HEADER = struct.Struct("!BBHII")
_MARKER = 0x80


@dataclass(frozen=True, slots=True)
class PromptAudio:
    """A prompt's payload in both laws, a whole number of 20 ms frames (the last one padded with silence)."""

    alaw: bytes
    ulaw: bytes

    def __post_init__(self) -> None:
        if len(self.alaw) != len(self.ulaw):
            raise ValueError("A-law and µ-law payloads differ in length")
        pad = -len(self.alaw) % FRAME_BYTES
        if pad:
            object.__setattr__(self, "alaw", self.alaw + bytes([SILENCE_ALAW]) * pad)
            object.__setattr__(self, "ulaw", self.ulaw + bytes([SILENCE_ULAW]) * pad)

    @property
    def frames(self) -> int:
        return len(self.alaw) // FRAME_BYTES

    @property
    def duration_s(self) -> float:
        return self.frames * FRAME_S


class Playback:
    """Which frames of one prompt are due when, as RTP packets of the playback's own source."""

    __slots__ = ("_first", "_seq", "_ts", "audio", "loop", "position", "sent", "skipped", "ssrc", "start")

    def __init__(
        self,
        audio: PromptAudio,
        *,
        start: float,
        loop: bool = False,
        ssrc: int | None = None,
        seq: int | None = None,
        ts: int | None = None,
    ) -> None:
        if loop and audio.frames == 0:
            raise ValueError("cannot loop an empty prompt")
        self.audio = audio
        self.loop = loop
        self.start = start
        self.position = (
            0  # frames consumed (sent or skipped): the next frame is due at start + position × 20 ms
        )
        self.sent = 0
        self.skipped = 0
        # RFC 3550 §5.1: random initial values; the leg's rewriter re-bases them anyway when it already sent
        self.ssrc = secrets.randbits(32) if ssrc is None else ssrc % TS_MOD
        self._seq = secrets.randbits(16) if seq is None else seq % SEQ_MOD
        self._ts = secrets.randbits(32) if ts is None else ts % TS_MOD
        self._first = True

    @property
    def next_at(self) -> float:
        """When the next frame is due (or, once exhausted, when the last frame has finished playing)."""
        return self.start + self.position * FRAME_S

    @property
    def exhausted(self) -> bool:
        """Every frame was sent or skipped (never, when looping)."""
        return not self.loop and self.position >= self.audio.frames

    def finished(self, now: float) -> bool:
        """Exhausted, and the last frame's 20 ms are over: the prompt has played out."""
        return self.exhausted and now + DUE_SLACK_S >= self.next_at

    def due(self, now: float, *, ulaw: bool) -> list[bytearray]:
        """The packets to send at ``now`` (oldest first), in the law the leg negotiated."""
        target = int((now - self.start + DUE_SLACK_S) / FRAME_S) + 1  # frames that should be out by now
        if not self.loop:
            target = min(target, self.audio.frames)
        behind = target - self.position
        if behind <= 0:
            return []
        if behind > MAX_BURST:  # a stall: skip to the present instead of a long burst
            skip = behind - 1
            self.position += skip
            self.skipped += skip
            self._ts = (self._ts + skip * FRAME_SAMPLES) % TS_MOD
            behind = 1
        payload = self.audio.ulaw if ulaw else self.audio.alaw
        pt = PT_PCMU if ulaw else PT_PCMA
        frames = self.audio.frames
        out: list[bytearray] = []
        for _ in range(behind):
            i = self.position % frames
            packet = bytearray(RTP_HEADER_SIZE + FRAME_BYTES)
            b1 = pt | (_MARKER if self._first else 0)
            _HEADER.pack_into(packet, 0, RTP_VERSION << 6, b1, self._seq, self._ts, self.ssrc)
            packet[RTP_HEADER_SIZE:] = payload[i * FRAME_BYTES : (i + 1) * FRAME_BYTES]
            out.append(packet)
            self._first = False
            self._seq = (self._seq + 1) % SEQ_MOD
            self._ts = (self._ts + FRAME_SAMPLES) % TS_MOD
            self.position += 1
            self.sent += 1
        return out


class AudioCache:
    """Stored prompts' payloads by prompt id, least recently used dropped beyond ``max_bytes``."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, PromptAudio] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def load(self, prompt: Prompt) -> PromptAudio:
        """The prompt's audio, read from its files in a thread on first use (the loop never waits on disk)."""
        audio = self._entries.get(prompt.id)
        if audio is not None:
            self._entries.move_to_end(prompt.id)
            return audio
        from vpbx.media.prompts import read_payloads

        alaw, ulaw = await asyncio.to_thread(read_payloads, prompt)
        audio = PromptAudio(alaw, ulaw)
        size = 2 * len(audio.alaw)
        if size <= self.max_bytes:
            self._entries[prompt.id] = audio
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self._bytes -= 2 * len(old.alaw)
        return audio
