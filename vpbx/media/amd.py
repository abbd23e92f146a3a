"""Answering-machine detection (autoinformer.md §3.5): an energy classifier over the first seconds of a call.

Pure and clock-free: the relay feeds it the energy of each G.711 frame the answered party sends (``frame``)
and, from its watchdog, the time when no packet came (``idle``: missing audio counts as silence). Frames are
voiced when their RMS is over ``VOICE_RMS``. The rules, in the order they can fire:

* no voice for ``initial_silence_s`` from the answer → ``machine`` (a machine that waits before its
  greeting; a person says something);
* a voiced run (short pauses inside it count) longer than ``greeting_s`` → ``machine`` (a recorded greeting
  is longer than «Алло?»);
* voice, then ``after_greeting_silence_s`` of silence, the greeting no longer than ``greeting_s`` →
  ``human`` (someone said hello and waits);
* ``analysis_s`` without a decision → ``unknown``.

After ``machine`` the detector keeps listening when asked (``until_greeting_end``) and reports
``greeting_end`` at the first ``after_greeting_silence_s`` of silence after voice (where a message left on a
machine should start), or when ``greeting_wait_s`` has passed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from vpbx.media.g711 import alaw_decode, ulaw_decode

VOICE_RMS = 600.0  # of 32767 (about -35 dBFS): a frame over this is voiced
EPS = 1e-6  # frame times add up in floating point: 40 × 0.02 s is a hair under 0.8 s
GREETING_WAIT_S = 20.0  # after "machine", the end of the greeting is awaited this long at most
PT_PCMU, PT_PCMA = 0, 8

AmdEvent = Literal["human", "machine", "unknown", "greeting_end"]

_SQUARES = {
    PT_PCMA: tuple(float(alaw_decode(c)) ** 2 for c in range(256)),
    PT_PCMU: tuple(float(ulaw_decode(c)) ** 2 for c in range(256)),
}


def frame_rms(payload: bytes | bytearray | memoryview, pt: int) -> float | None:
    """The RMS of a G.711 payload (PT 8 or 0), None for another payload type or an empty one."""
    squares = _SQUARES.get(pt)
    if squares is None or len(payload) == 0:
        return None
    return math.sqrt(sum(map(squares.__getitem__, payload)) / len(payload))


@dataclass(slots=True, kw_only=True)
class AmdDetector:
    analysis_s: float
    initial_silence_s: float
    greeting_s: float
    after_greeting_silence_s: float
    until_greeting_end: bool = False
    greeting_wait_s: float = GREETING_WAIT_S
    voice_rms: float = VOICE_RMS
    elapsed: float = 0.0  # seconds of audio (or of missing audio) seen since the answer
    voice_start: float | None = None  # when the current voiced run began
    voice_end: float | None = None  # the last voiced frame's end
    decided: AmdEvent | None = None
    done: bool = False  # nothing more to report

    def frame(self, rms: float, duration_s: float) -> list[AmdEvent]:
        """One frame of ``duration_s`` with this RMS; the events it decides."""
        voiced = rms >= self.voice_rms
        start = self.elapsed
        self.elapsed += duration_s
        if voiced:
            if self.voice_start is None or (
                self.voice_end is not None and start - self.voice_end > self.after_greeting_silence_s
            ):
                self.voice_start = start
            self.voice_end = self.elapsed
        return self._decide()

    def idle(self, seconds: float) -> list[AmdEvent]:
        """No packet for ``seconds`` (the watchdog's view): silence."""
        if seconds <= 0:
            return []
        self.elapsed += seconds
        return self._decide()

    def _decide(self) -> list[AmdEvent]:
        if self.done:
            return []
        out: list[AmdEvent] = []
        now = self.elapsed + EPS
        silent_for = now - self.voice_end if self.voice_end is not None else now
        if self.decided is None:
            verdict: AmdEvent | None = None
            if self.voice_start is None and now >= self.initial_silence_s:
                verdict = "machine"
            elif self.voice_start is not None and self.voice_end is not None:
                talk = self.voice_end - self.voice_start
                if talk > self.greeting_s:
                    verdict = "machine"
                elif silent_for >= self.after_greeting_silence_s:
                    verdict = "human"
            if verdict is None and now >= self.analysis_s:
                verdict = "unknown"
            if verdict is None:
                return out
            self.decided = verdict
            out.append(verdict)
            if verdict != "machine" or not self.until_greeting_end:
                self.done = True
                return out
        # a machine: its greeting ends at the first long silence after voice
        if (self.voice_end is not None and silent_for >= self.after_greeting_silence_s) or (
            now >= self.greeting_wait_s
        ):
            self.done = True
            out.append("greeting_end")
        return out


__all__ = ["VOICE_RMS", "AmdDetector", "AmdEvent", "frame_rms"]
