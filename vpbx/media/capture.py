"""Call capture for recording (telephony.md §3.10): what the legs send, as 8 kHz s16 WAV on the media clock.

``Capture`` is the sans-I/O core for one session. Each leg's G.711 payloads are decoded to PCM and placed by
their RTP timestamp: the first packet of a source anchors its timestamp to the media clock at arrival (to
the start of that 20 ms frame), the following ones land ``timestamp − anchor`` samples later. A packet that
lands more than ``RESYNC_S`` away from its arrival time (a new SSRC, a sender clock that drifted, a timestamp
jump) re-anchors its leg. Samples older than ``LAG_S`` are final: they leave as whole 20 ms frames, with
silence where a leg sent nothing (loss, hold, a gap), interleaved as stereo (A-leg left, B-leg right) or, for
``channels="a"``, as the A-leg alone. Output collects into ``CHUNK_BYTES`` buffers handed to a ``WavWriter``.

``WavWriter`` is the one writer thread of a relay (per media worker): it opens, appends to and finalises the
WAV files, so the event loop never touches the disk. Finalising resolves a ``concurrent.futures.Future``
with the file's ``RecordingResult``.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vpbx.logs import get_logger
from vpbx.media.g711 import AUDIOOP as _AUDIOOP
from vpbx.media.g711 import SAMPLE_WIDTH, alaw_to_pcm, ulaw_to_pcm
from vpbx.media.rtp import FRAME_SAMPLES, PT_PCMA, PT_PCMU, TS_MOD

log = get_logger("vpbx.media.capture")

SAMPLE_RATE = 8000  # telephony.md §3.10: 8 kHz s16
FRAME_BYTES = FRAME_SAMPLES * SAMPLE_WIDTH  # 20 ms of one channel
LAG_S = 0.2  # samples this old are final (reordered or late packets within it still land in place)
RESYNC_S = 0.12  # a packet landing further than this from its arrival time re-anchors its leg
EMIT_BATCH_FRAMES = 10  # on the packet path, emit only when this many frames are final (one 200 ms step)
CHUNK_BYTES = 64 * 1024  # telephony.md §3.10: full buffers to the writer thread
_HALF_TS = TS_MOD // 2
# the C decoders straight on the packet's memoryview (no copy); None on Pythons without audioop
_ALAW2LIN = getattr(_AUDIOOP, "alaw2lin", None)
_ULAW2LIN = getattr(_AUDIOOP, "ulaw2lin", None)
_LAG = int(LAG_S * SAMPLE_RATE)
_RESYNC = int(RESYNC_S * SAMPLE_RATE)

Channels = Literal["stereo", "a"]
CHANNELS: tuple[Channels, Channels] = ("stereo", "a")


@dataclass(frozen=True, slots=True)
class RecordingResult:
    """A finalised WAV: where, how long, how many 20 ms frames (per channel)."""

    path: Path
    duration_s: float
    frames: int
    channels: int = 2


class _Track:
    """One leg's PCM from ``Capture.base`` on, zeros (silence) where nothing arrived."""

    __slots__ = ("anchor_pos", "anchor_ts", "pcm", "resyncs", "ssrc")

    def __init__(self) -> None:
        self.pcm = bytearray()
        self.ssrc = -1
        self.anchor_ts = 0
        self.anchor_pos = 0
        self.resyncs = 0


class Capture:
    """One session's recording: feed payloads with the media time, take the finished chunks out."""

    __slots__ = ("_a", "_b", "_chunk", "base", "channels", "chunks", "frames", "path", "start")

    def __init__(self, path: Path, *, start: float, channels: Channels = "stereo") -> None:
        if channels not in CHANNELS:
            raise ValueError(f"channels must be 'stereo' or 'a', not {channels!r}")
        self.path = path
        self.channels: Channels = channels
        self.start = start
        self.base = 0  # the sample position (since start) of the first sample not yet emitted
        self.frames = 0  # 20 ms frames emitted
        self._a = _Track()
        self._b = _Track()
        self._chunk = bytearray()
        self.chunks: list[bytes] = []  # full buffers waiting for the writer

    @property
    def nchannels(self) -> int:
        return 2 if self.channels == "stereo" else 1

    def _position(self, now: float) -> int:
        return int((now - self.start) * SAMPLE_RATE)

    def feed(self, side: str, payload: bytes | memoryview, pt: int, ts: int, ssrc: int, now: float) -> None:
        """A payload the leg ``side`` sent (``pt`` PCMA or PCMU; anything else is ignored)."""
        if side == "a":
            track = self._a
        elif self.channels == "a":
            return
        else:
            track = self._b
        if pt == PT_PCMA:
            pcm = _ALAW2LIN(payload, SAMPLE_WIDTH) if _ALAW2LIN else alaw_to_pcm(bytes(payload))
        elif pt == PT_PCMU:
            pcm = _ULAW2LIN(payload, SAMPLE_WIDTH) if _ULAW2LIN else ulaw_to_pcm(bytes(payload))
        else:
            return
        arrival = self._position(now)
        if ssrc != track.ssrc:
            track.ssrc = ssrc
            pos = track.anchor_pos = arrival - arrival % FRAME_SAMPLES
            track.anchor_ts = ts
        else:
            delta = (ts - track.anchor_ts) % TS_MOD
            if delta >= _HALF_TS:
                delta -= TS_MOD
            pos = track.anchor_pos + delta
            if abs(pos - arrival) > _RESYNC:
                track.resyncs += 1
                pos = track.anchor_pos = arrival - arrival % FRAME_SAMPLES
                track.anchor_ts = ts
        offset = (pos - self.base) * SAMPLE_WIDTH
        if offset < 0:  # final already: drop what is too late, keep the rest
            pcm = pcm[-offset:]
            offset = 0
            if not pcm:
                return
        buf = track.pcm
        size = len(buf)
        if offset == size:  # the usual case: the next frame in order
            buf += pcm
        else:
            end = offset + len(pcm)
            if end > size:
                buf.extend(bytes(end - size))
            buf[offset:end] = pcm
        if arrival - _LAG - self.base >= EMIT_BATCH_FRAMES * FRAME_SAMPLES:
            self.advance(now)

    def advance(self, now: float) -> None:
        """Emit every whole frame older than ``LAG_S`` (silence where nothing arrived)."""
        self._emit((self._position(now) - _LAG - self.base) // FRAME_SAMPLES)

    def finish(self, now: float) -> None:
        """Emit everything up to ``now`` (and whatever arrived for later), rounded up to a whole frame."""
        upto = max(self._position(now) - self.base, len(self._a.pcm) // 2, len(self._b.pcm) // 2)
        self._emit(-(-upto // FRAME_SAMPLES))
        if self._chunk:
            self.chunks.append(bytes(self._chunk))
            self._chunk = bytearray()

    def _emit(self, frames: int) -> None:
        if frames <= 0:
            return
        size = frames * FRAME_BYTES
        a = _take(self._a.pcm, size)
        if self.channels == "stereo":
            b = _take(self._b.pcm, size)
            self._chunk += interleave(a, b)
        else:
            self._chunk += a
        self.base += frames * FRAME_SAMPLES
        self.frames += frames
        if len(self._chunk) >= CHUNK_BYTES:
            self.chunks.append(bytes(self._chunk))
            self._chunk = bytearray()

    def take_chunks(self) -> list[bytes]:
        out, self.chunks = self.chunks, []
        return out

    @property
    def duration_s(self) -> float:
        return self.frames * FRAME_SAMPLES / SAMPLE_RATE


def _take(buf: bytearray, size: int) -> bytes:
    out = bytes(buf[:size])
    del buf[:size]
    if len(out) < size:
        out += bytes(size - len(out))
    return out


def interleave(left: bytes, right: bytes) -> bytes:
    """Two s16 mono buffers of equal length as one stereo buffer (L R L R …)."""
    if _AUDIOOP is not None:
        return bytes(
            _AUDIOOP.add(_AUDIOOP.tostereo(left, 2, 1, 0), _AUDIOOP.tostereo(right, 2, 0, 1), SAMPLE_WIDTH)
        )
    out = bytearray(len(left) * 2)
    lv, rv, ov = memoryview(left).cast("h"), memoryview(right).cast("h"), memoryview(out).cast("h")
    ov[0::2] = lv
    ov[1::2] = rv
    return bytes(out)


class _Open:
    __slots__ = ("file", "frames", "path")

    def __init__(self, path: Path, file: wave.Wave_write) -> None:
        self.path = path
        self.file = file
        self.frames = 0


_Job = tuple[str, int, object]


class WavWriter:
    """One thread that owns every open recording file of a relay; calls return at once."""

    def __init__(self, name: str = "media-recorder") -> None:
        self._name = name
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._next = 0
        self._files: dict[int, _Open] = {}  # touched by the writer thread only
        self._failed: dict[int, BaseException] = {}

    def open(self, path: Path, channels: int) -> int:
        """Start a WAV file (parent directories made); returns its handle for ``write``/``close``."""
        self._ensure_thread()
        self._next += 1
        handle = self._next
        self._queue.put(("open", handle, (path, channels)))
        return handle

    def write(self, handle: int, data: bytes) -> None:
        self._queue.put(("write", handle, data))

    def close(self, handle: int) -> concurrent.futures.Future[RecordingResult]:
        """Finalise the header; the future gets the result (or the error the file met)."""
        future: concurrent.futures.Future[RecordingResult] = concurrent.futures.Future()
        self._ensure_thread()
        self._queue.put(("close", handle, future))
        return future

    def stop(self, timeout_s: float = 5.0) -> None:
        """Finish the queued work and end the thread (files still open are finalised)."""
        thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        thread.join(timeout_s)
        self._thread = None

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                for handle in list(self._files):
                    self._finalise(handle)
                return
            kind, handle, arg = job
            try:
                if kind == "open" and isinstance(arg, tuple):
                    self._open(handle, Path(arg[0]), int(arg[1]))
                elif kind == "write" and isinstance(arg, bytes):
                    self._write(handle, arg)
                elif kind == "close" and isinstance(arg, concurrent.futures.Future):
                    self._close(handle, arg)
            except Exception as e:  # a file's failure is reported when it closes; the thread carries on
                log.error("media.record_write_failed", error=str(e), op=kind)
                self._failed.setdefault(handle, e)
                self._drop(handle)

    def _open(self, handle: int, path: Path, channels: int) -> None:
        os.makedirs(path.parent, exist_ok=True)
        w = wave.open(str(path), "wb")
        w.setnchannels(channels)
        w.setsampwidth(SAMPLE_WIDTH)
        w.setframerate(SAMPLE_RATE)
        self._files[handle] = _Open(path, w)

    def _write(self, handle: int, data: bytes) -> None:
        f = self._files.get(handle)
        if f is None:
            return  # failed earlier
        f.file.writeframesraw(data)
        f.frames += len(data) // (SAMPLE_WIDTH * f.file.getnchannels())

    def _close(self, handle: int, future: concurrent.futures.Future[RecordingResult]) -> None:
        error = self._failed.pop(handle, None)
        if error is not None:
            future.set_exception(error)
            return
        try:
            result = self._finalise(handle)
        except Exception as e:
            future.set_exception(e)
            return
        if result is None:
            future.set_exception(RuntimeError(f"recording {handle} was never opened"))
        else:
            future.set_result(result)

    def _finalise(self, handle: int) -> RecordingResult | None:
        f = self._files.pop(handle, None)
        if f is None:
            return None
        channels = f.file.getnchannels()
        f.file.close()  # patches the RIFF and data sizes
        samples = f.frames
        return RecordingResult(
            path=f.path,
            duration_s=samples / SAMPLE_RATE,
            frames=samples // FRAME_SAMPLES,
            channels=channels,
        )

    def _drop(self, handle: int) -> None:
        f = self._files.pop(handle, None)
        if f is not None:
            try:
                f.file.close()
            except Exception:
                pass
