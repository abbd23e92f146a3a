"""Audio for the phones: make a tone with sox, read what arrived, find its frequency (telephony.md §7.4).

Analysis is pure Python (no numpy): a radix-2 FFT with a Hann window finds the dominant frequency, and the
Goertzel filter measures the power at one frequency. Both need well under a second for a few seconds of
8 kHz audio.
"""

from __future__ import annotations

import asyncio
import cmath
import math
import struct
from dataclasses import dataclass
from pathlib import Path

SOX = "sox"
SOX_TIMEOUT_S = 30.0
DEFAULT_RATE = 8000
FFT_SIZE = 8192  # 8192 samples at 8 kHz: ~1 Hz bins, one second of audio
TONE_TOLERANCE = 0.05  # ±5 %, telephony.md §7.4


async def make_tone(path: Path, frequency_hz: float, seconds: float, *, rate: int = DEFAULT_RATE) -> Path:
    """A mono 16-bit WAV sine made by ``sox`` (baresip's ``aufile`` plays 8 kHz mono S16 only)."""
    await _sox("-n", *_format(rate), str(path), "synth", str(seconds), "sine", str(frequency_hz))
    return path


async def make_silence(path: Path, seconds: float, *, rate: int = DEFAULT_RATE) -> Path:
    await _sox("-n", *_format(rate), str(path), "trim", "0", str(seconds))
    return path


def _format(rate: int) -> tuple[str, ...]:
    return ("-r", str(rate), "-c", "1", "-b", "16", "-e", "signed-integer")


async def _sox(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        SOX, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(SOX_TIMEOUT_S):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"sox {' '.join(args)} failed: {out.decode(errors='replace')}")


@dataclass(frozen=True, slots=True)
class Pcm:
    rate: int
    samples: tuple[float, ...]  # mono, scaled to -1.0 … 1.0

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate

    def window(self, start_s: float, length_s: float) -> Pcm:
        a = int(start_s * self.rate)
        return Pcm(self.rate, self.samples[a : a + int(length_s * self.rate)])


def parse_wav(data: bytes) -> Pcm:
    """16-bit PCM WAV → mono samples. A ``data`` chunk whose size says 0 or runs past the end (a file still
    being written, as baresip's ``sndfile`` leaves it until the call ends) is read to the end of the file."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    pos, channels, rate, bits = 12, 0, 0, 0
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if chunk == b"fmt ":
            fmt, channels, rate = struct.unpack_from("<HHI", data, body)
            bits = struct.unpack_from("<H", data, body + 14)[0]
            if fmt not in (1, 0xFFFE) or bits != 16:
                raise ValueError(f"only 16-bit PCM is supported (format {fmt}, {bits} bits)")
        elif chunk == b"data":
            if not rate:
                raise ValueError("data chunk before fmt chunk")
            end = len(data) if size == 0 or body + size > len(data) else body + size
            frame = 2 * channels
            raw = data[body : body + (end - body) // frame * frame]
            values = struct.unpack(f"<{len(raw) // 2}h", raw)
            mono = values[::channels] if channels > 1 else values
            return Pcm(rate, tuple(v / 32768.0 for v in mono))
        pos = body + size + (size & 1)
    raise ValueError("no data chunk")


def read_wav(path: Path) -> Pcm:
    return parse_wav(path.read_bytes())


def rms(samples: tuple[float, ...] | list[float]) -> float:
    return math.sqrt(sum(s * s for s in samples) / len(samples)) if samples else 0.0


def goertzel_power(pcm: Pcm, frequency_hz: float) -> float:
    """Normalised power of ``frequency_hz`` in ``pcm`` (a full-scale sine at that frequency gives ~0.25)."""
    n = len(pcm.samples)
    if n == 0:
        return 0.0
    coeff = 2.0 * math.cos(2.0 * math.pi * frequency_hz / pcm.rate)
    s1 = s2 = 0.0
    for x in pcm.samples:
        s1, s2 = x + coeff * s1 - s2, s1
    power = s1 * s1 + s2 * s2 - coeff * s1 * s2
    return power / (n * n)


def _fft(values: list[complex]) -> list[complex]:
    """Iterative radix-2 Cooley-Tukey; ``len(values)`` must be a power of two."""
    n = len(values)
    a = values[:]
    j = 0
    for i in range(1, n):  # bit-reversal permutation
        bit = n >> 1
        while j & bit:
            j ^= bit
            bit >>= 1
        j |= bit
        if i < j:
            a[i], a[j] = a[j], a[i]
    size = 2
    while size <= n:
        step = cmath.exp(-2j * math.pi / size)
        half = size // 2
        for start in range(0, n, size):
            w = 1 + 0j
            for k in range(start, start + half):
                t = w * a[k + half]
                a[k + half] = a[k] - t
                a[k] += t
                w *= step
        size *= 2
    return a


def dominant_frequency(pcm: Pcm, *, min_hz: float = 50.0) -> float:
    """The strongest frequency above ``min_hz`` (Hann-windowed FFT, parabolic peak interpolation)."""
    n = 1
    while n * 2 <= min(len(pcm.samples), FFT_SIZE):
        n *= 2
    if n < 256:
        raise ValueError(f"too little audio to analyse ({len(pcm.samples)} samples)")
    mid = (len(pcm.samples) - n) // 2  # the middle of the recording, away from the call's edges
    chunk = pcm.samples[mid : mid + n]
    windowed = [complex(x * (0.5 - 0.5 * math.cos(2 * math.pi * i / (n - 1)))) for i, x in enumerate(chunk)]
    spectrum = [abs(c) for c in _fft(windowed)[: n // 2]]
    lo = max(1, math.ceil(min_hz * n / pcm.rate))
    k = max(range(lo, n // 2 - 1), key=spectrum.__getitem__)
    a, b, c = (math.log(spectrum[i] + 1e-12) for i in (k - 1, k, k + 1))
    denom = a - 2 * b + c
    offset = 0.5 * (a - c) / denom if denom else 0.0
    return (k + offset) * pcm.rate / n


def is_tone(pcm: Pcm, frequency_hz: float, *, tolerance: float = TONE_TOLERANCE) -> bool:
    """The dominant frequency is within ``tolerance`` of ``frequency_hz``."""
    return abs(dominant_frequency(pcm) - frequency_hz) <= tolerance * frequency_hz
