"""G.711 (ITU-T G.711, RFC 3551 §4.5.14): A-law ↔ µ-law byte tables and G.711 ↔ 16-bit PCM.

Between legs on different laws the relay maps payload bytes through a 256-byte table with ``bytes.translate``
(telephony.md §3.8): same length, no PCM step. The tables equal decoding to 16-bit PCM and re-encoding with
the standard segment coder (what ``audioop`` does); 240 of the 256 codes of each law survive a round trip,
the other 16 share their image with a neighbour.

PCM conversion (recorder, prompts) uses stdlib ``audioop`` while it exists: it warns on import in 3.11 and is
gone in 3.13, so it is imported under ``warnings.catch_warnings()``. ``TableG711`` is the pure fallback with
the same results, chosen automatically when ``audioop`` is missing and compared against it in the tests. PCM
is signed 16-bit in native byte order (little-endian on every platform we support), as ``audioop`` and
``wave`` use it.
"""

from __future__ import annotations

import warnings
from array import array
from functools import cache
from types import ModuleType
from typing import Protocol

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop as _audioop

        AUDIOOP: ModuleType | None = _audioop
    except ImportError:  # Python ≥ 3.13
        AUDIOOP = None

SAMPLE_WIDTH = 2  # bytes per PCM sample (s16)
_ALAW_SEG_END = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)  # 13-bit magnitudes (G.711 Table 1)
_ULAW_SEG_END = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)  # 14-bit biased magnitudes (Table 2)
_ULAW_BIAS = 0x84  # 132 = 33 << 2: µ-law bias on the 16-bit scale
_ULAW_CLIP = 32635
_ALAW_XOR = 0x55  # A-law transmits with even bits inverted (G.711 §3.3)


def alaw_decode(code: int) -> int:
    """One A-law code to its 16-bit linear reconstruction value."""
    a = code ^ _ALAW_XOR
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    else:
        t = (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


def ulaw_decode(code: int) -> int:
    """One µ-law code to its 16-bit linear reconstruction value."""
    u = ~code & 0xFF
    t = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    return _ULAW_BIAS - t if u & 0x80 else t - _ULAW_BIAS


def _segment(value: int, ends: tuple[int, ...]) -> int:
    for i, end in enumerate(ends):
        if value <= end:
            return i
    return len(ends)


def alaw_encode(sample: int) -> int:
    """One signed 16-bit sample to A-law (13-bit segment coder)."""
    v = sample >> 3
    if v >= 0:
        mask = 0xD5
    else:
        mask = _ALAW_XOR
        v = -v - 1
    seg = _segment(v, _ALAW_SEG_END)
    if seg >= 8:
        return 0x7F ^ mask
    quant = (v >> 1) if seg < 2 else (v >> seg)
    return ((seg << 4) | (quant & 0x0F)) ^ mask


def ulaw_encode(sample: int) -> int:
    """One signed 16-bit sample to µ-law (14-bit segment coder with bias)."""
    v = sample >> 2
    if v < 0:
        v = -v
        mask = 0x7F
    else:
        mask = 0xFF
    v = min(v, _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = _segment(v, _ULAW_SEG_END)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((v >> (seg + 1)) & 0x0F)) ^ mask


ALAW_TO_ULAW: bytes = bytes(ulaw_encode(alaw_decode(c)) for c in range(256))
ULAW_TO_ALAW: bytes = bytes(alaw_encode(ulaw_decode(c)) for c in range(256))


def alaw_to_ulaw(payload: bytes | bytearray) -> bytes:
    return bytes(payload).translate(ALAW_TO_ULAW)


def ulaw_to_alaw(payload: bytes | bytearray) -> bytes:
    return bytes(payload).translate(ULAW_TO_ALAW)


class G711Codec(Protocol):
    """G.711 ↔ PCM s16 (native byte order)."""

    def alaw_to_pcm(self, data: bytes) -> bytes: ...
    def ulaw_to_pcm(self, data: bytes) -> bytes: ...
    def pcm_to_alaw(self, pcm: bytes) -> bytes: ...
    def pcm_to_ulaw(self, pcm: bytes) -> bytes: ...


class AudioopG711:
    """The C path: stdlib ``audioop`` (Python ≤ 3.12)."""

    def __init__(self) -> None:
        if AUDIOOP is None:
            raise RuntimeError("audioop is not available on this Python")
        self._a = AUDIOOP

    def alaw_to_pcm(self, data: bytes) -> bytes:
        out: bytes = self._a.alaw2lin(data, SAMPLE_WIDTH)
        return out

    def ulaw_to_pcm(self, data: bytes) -> bytes:
        out: bytes = self._a.ulaw2lin(data, SAMPLE_WIDTH)
        return out

    def pcm_to_alaw(self, pcm: bytes) -> bytes:
        out: bytes = self._a.lin2alaw(pcm, SAMPLE_WIDTH)
        return out

    def pcm_to_ulaw(self, pcm: bytes) -> bytes:
        out: bytes = self._a.lin2ulaw(pcm, SAMPLE_WIDTH)
        return out


@cache
def _decode_table(law: str) -> tuple[bytes, ...]:
    """256 two-byte PCM samples, one per code."""
    decode = alaw_decode if law == "a" else ulaw_decode
    return tuple(array("h", (decode(c),)).tobytes() for c in range(256))


@cache
def _encode_table(law: str) -> bytes:
    """65,536 codes indexed by the sample's unsigned 16-bit pattern (64 KiB, built on first use)."""
    encode = alaw_encode if law == "a" else ulaw_encode
    return bytes(encode(s - 0x10000 if s >= 0x8000 else s) for s in range(0x10000))


class TableG711:
    """The pure path: table look-ups, for Pythons without ``audioop`` (3.13+) and as its test oracle."""

    def alaw_to_pcm(self, data: bytes) -> bytes:
        table = _decode_table("a")
        return b"".join([table[c] for c in data])

    def ulaw_to_pcm(self, data: bytes) -> bytes:
        table = _decode_table("u")
        return b"".join([table[c] for c in data])

    def pcm_to_alaw(self, pcm: bytes) -> bytes:
        return self._encode(pcm, _encode_table("a"))

    def pcm_to_ulaw(self, pcm: bytes) -> bytes:
        return self._encode(pcm, _encode_table("u"))

    @staticmethod
    def _encode(pcm: bytes, table: bytes) -> bytes:
        if len(pcm) % SAMPLE_WIDTH:
            raise ValueError("PCM length must be a whole number of 16-bit samples")
        return bytes([table[s] for s in memoryview(pcm).cast("B").cast("H")])


def default_codec() -> G711Codec:
    """``audioop`` when present, else the tables."""
    return AudioopG711() if AUDIOOP is not None else TableG711()


_CODEC: G711Codec = default_codec()  # stateless; chosen once at import


def alaw_to_pcm(data: bytes) -> bytes:
    return _CODEC.alaw_to_pcm(data)


def ulaw_to_pcm(data: bytes) -> bytes:
    return _CODEC.ulaw_to_pcm(data)


def pcm_to_alaw(pcm: bytes) -> bytes:
    return _CODEC.pcm_to_alaw(pcm)


def pcm_to_ulaw(pcm: bytes) -> bytes:
    return _CODEC.pcm_to_ulaw(pcm)
