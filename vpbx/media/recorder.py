"""Recording files (telephony.md §3.10, §9.3): WAV → MP3 in a process pool, and where recordings live.

``encode_mp3`` reads a finalised recording WAV (stereo A/B or mono), mixes it down to mono and encodes it
with LAME (``lameenc``) at 32 kbit/s CBR, 8 kHz. It then walks the MP3's frame headers to measure what it
wrote and refuses a file whose length differs from the WAV's (a truncated encode must never be marked
ready). It writes ``<mp3>.part`` and renames, so a reader never sees half a file.

``Mp3Encoder`` runs ``encode_mp3`` in a bounded ``ProcessPoolExecutor`` (started at the first job, shut down
by ``aclose``), so encoding never competes with the event loop for the GIL.

``RecordingStore`` (telephony.md §9.3) hides where files are: ``LocalRecordingStore`` keeps them under
``<data_dir>/recordings/<domain_id>/YYYY/MM/``; rows hold the path relative to that root. An object store
or NFS can replace it later without touching the rows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import multiprocessing
import os
import uuid
import wave
from pathlib import Path, PurePosixPath
from typing import Protocol

from vpbx.errors import RecordingFailed
from vpbx.logs import get_logger
from vpbx.media.g711 import SAMPLE_WIDTH

log = get_logger("vpbx.media.recorder")

RECORDING_DIR = "recordings"  # under the data directory
MP3_BITRATE_KBPS = 32  # telephony.md §3.10: mono, 32 kbit/s CBR
MP3_SAMPLE_RATE = 8000
LAME_QUALITY = 5  # 2 = best … 7 = fastest; 5 is LAME's default speed/quality balance
READ_FRAMES = 8000 * 30  # WAV frames read and encoded per step (30 s)
DURATION_TOLERANCE_S = 0.5  # the MP3 may run longer by LAME's delay and padding, never shorter
ENCODE_WORKERS = 2  # processes in the pool; a 1-hour call encodes in a few seconds (bench/recording_bench.py)
ENCODE_TIMEOUT_S = 50.0  # telephony.md §3.10: the MP3 is ready within 60 s of `end`

# MPEG audio frame header (ISO 11172-3 §2.4.2.3, 13818-3; "2.5" is the 8 kHz extension)
_BITRATES_V1_L3 = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_BITRATES_V2_L3 = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}  # by version


def mp3_duration(data: bytes) -> float:
    """Seconds of audio in an MPEG layer III stream, by walking its frame headers (ID3v2 skipped)."""
    pos = 0
    if data[:3] == b"ID3" and len(data) >= 10:
        size = (data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9]
        pos = 10 + size
    seconds = 0.0
    n = len(data)
    while pos + 4 <= n:
        h = int.from_bytes(data[pos : pos + 4], "big")
        if h >> 21 != 0x7FF:
            pos += 1  # not a frame: resync
            continue
        version = (h >> 19) & 3  # 3 = MPEG-1, 2 = MPEG-2, 0 = MPEG-2.5, 1 reserved
        layer = (h >> 17) & 3  # 1 = layer III
        bitrate_index = (h >> 12) & 0xF
        rate_index = (h >> 10) & 3
        padding = (h >> 9) & 1
        if version == 1 or layer != 1 or bitrate_index in (0, 15) or rate_index == 3:
            pos += 1
            continue
        rate = _SAMPLE_RATES[version][rate_index]
        if version == 3:
            kbps, samples, coeff = _BITRATES_V1_L3[bitrate_index], 1152, 144
        else:
            kbps, samples, coeff = _BITRATES_V2_L3[bitrate_index], 576, 72
        size = coeff * kbps * 1000 // rate + padding
        if size < 4:
            pos += 1
            continue
        seconds += samples / rate
        pos += size
    return seconds


def encode_mp3(wav: Path, mp3: Path, *, quality: int = LAME_QUALITY) -> float:
    """Encode a recording WAV (8 kHz s16, mono or stereo) to a mono 32 kbit/s CBR MP3; its duration in s.

    ``RecordingFailed`` when the WAV is not what we write or the MP3 comes out shorter than the WAV.
    """
    import lameenc

    from vpbx.media.g711 import AUDIOOP

    part = mp3.with_name(mp3.name + ".part")
    try:
        with wave.open(str(wav), "rb") as w:
            channels, width, rate, frames = (
                w.getnchannels(),
                w.getsampwidth(),
                w.getframerate(),
                w.getnframes(),
            )
            if width != SAMPLE_WIDTH or rate != MP3_SAMPLE_RATE or channels not in (1, 2):
                raise RecordingFailed(
                    f"{wav.name}: expected 8 kHz s16 mono/stereo, got {channels}×{width}@{rate}"
                )
            encoder = lameenc.Encoder()
            encoder.set_bit_rate(MP3_BITRATE_KBPS)
            encoder.set_in_sample_rate(MP3_SAMPLE_RATE)
            encoder.set_out_sample_rate(MP3_SAMPLE_RATE)
            encoder.set_channels(1)
            encoder.set_quality(quality)
            mp3.parent.mkdir(parents=True, exist_ok=True)
            read = 0
            with open(part, "wb") as out:
                while True:
                    block = w.readframes(READ_FRAMES)
                    if not block:
                        break
                    whole = len(block) // (SAMPLE_WIDTH * channels)
                    block = block[: whole * SAMPLE_WIDTH * channels]  # a file cut inside a frame
                    read += whole
                    if channels == 2:
                        block = _mixdown(block, AUDIOOP)
                    out.write(encoder.encode(block))
                out.write(encoder.flush())
                out.flush()
                os.fsync(out.fileno())
        wav_s = frames / MP3_SAMPLE_RATE
        if read != frames:
            raise RecordingFailed(f"{wav.name}: header says {frames} frames, {read} were there")
        mp3_s = mp3_duration(part.read_bytes())
        if not wav_s - DURATION_TOLERANCE_S <= mp3_s <= wav_s + DURATION_TOLERANCE_S + 0.2:
            raise RecordingFailed(f"{mp3.name}: {mp3_s:.2f} s of MP3 for {wav_s:.2f} s of WAV")
        os.replace(part, mp3)
    except (OSError, EOFError, wave.Error) as e:
        part.unlink(missing_ok=True)
        raise RecordingFailed(f"{wav.name}: {e}") from e
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return wav_s


WAV_HEADER = 44  # what ``wave`` writes: RIFF, fmt (16 octets), then the data chunk's header


def repair_wav(path: Path) -> int:
    """Give a WAV whose writer never finalised it (the process was killed) the sizes its data has; frames.

    ``RecordingFailed`` when the file does not start with the header ``wave`` writes."""
    try:
        with open(path, "r+b") as f:
            head = f.read(WAV_HEADER)
            if (
                len(head) < WAV_HEADER
                or head[:4] != b"RIFF"
                or head[8:12] != b"WAVE"
                or head[36:40] != b"data"
            ):
                raise RecordingFailed(f"{path.name}: not a WAV this recorder wrote")
            channels = int.from_bytes(head[22:24], "little")
            if channels not in (1, 2):
                raise RecordingFailed(f"{path.name}: {channels} channels")
            block = SAMPLE_WIDTH * channels
            size = os.fstat(f.fileno()).st_size - WAV_HEADER
            size -= size % block
            f.truncate(WAV_HEADER + size)
            f.seek(4)
            f.write((WAV_HEADER - 8 + size).to_bytes(4, "little"))
            f.seek(40)
            f.write(size.to_bytes(4, "little"))
    except OSError as e:
        raise RecordingFailed(f"{path.name}: {e}") from e
    return size // block


def _mixdown(stereo: bytes, audioop: object) -> bytes:
    """(L + R) / 2 per frame: the two parties of a call in one mono track."""
    if audioop is not None:
        return bytes(audioop.tomono(stereo, SAMPLE_WIDTH, 0.5, 0.5))  # type: ignore[attr-defined]
    v = memoryview(stereo).cast("h")
    out = bytearray(len(stereo) // 2)
    o = memoryview(out).cast("h")
    for i in range(len(o)):
        o[i] = (v[2 * i] + v[2 * i + 1]) // 2
    return bytes(out)


class Mp3Encoder:
    """``encode_mp3`` in a bounded process pool, from async code; ``aclose`` shuts the pool down."""

    def __init__(self, *, workers: int = ENCODE_WORKERS, timeout_s: float = ENCODE_TIMEOUT_S) -> None:
        self.workers = workers
        self.timeout_s = timeout_s
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            # forkserver: never fork the serving process itself (its threads and loop must not be copied)
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("forkserver")
            )
        return self._pool

    async def encode(self, wav: Path, mp3: Path) -> float:
        """The MP3's duration; ``RecordingFailed`` when encoding failed or took longer than ``timeout_s``."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor(), encode_mp3, wav, mp3)
        try:
            async with asyncio.timeout(self.timeout_s):
                return await future
        except TimeoutError:
            raise RecordingFailed(f"{wav.name}: not encoded within {self.timeout_s:g} s") from None
        except concurrent.futures.process.BrokenProcessPool as e:
            self._pool = None  # a worker died: the next job gets a fresh pool
            raise RecordingFailed(f"{wav.name}: the encoder process died") from e

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)


class RecordingStore(Protocol):
    """Where recordings live (telephony.md §9.3); rows keep the ``relative`` names this hands out."""

    def new_name(self, domain_id: uuid.UUID, session_id: str, when: dt.datetime) -> str:
        """The relative name of a new recording's MP3 (its WAV is ``wav_path`` of it)."""
        ...

    def path(self, relative: str) -> Path:
        """The local file behind a relative name; ``ValueError`` for a name outside the store."""
        ...

    def wav_path(self, relative: str) -> Path: ...

    def delete(self, relative: str) -> None:
        """Remove the MP3 and a leftover WAV; a missing file is not an error."""
        ...


class LocalRecordingStore:
    """Files under ``root`` (``<data_dir>/recordings``): ``<domain_id>/YYYY/MM/<session_id>.mp3``."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def new_name(self, domain_id: uuid.UUID, session_id: str, when: dt.datetime) -> str:
        safe = "".join(c for c in session_id if c.isalnum() or c in "-_")[:64] or uuid.uuid4().hex
        return f"{domain_id}/{when:%Y}/{when:%m}/{safe}.mp3"

    def path(self, relative: str) -> Path:
        rel = PurePosixPath(relative)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"not a recording name: {relative!r}")
        return self.root.joinpath(*rel.parts)

    def wav_path(self, relative: str) -> Path:
        return self.path(relative).with_suffix(".wav")

    def delete(self, relative: str) -> None:
        for p in (self.path(relative), self.wav_path(relative)):
            p.unlink(missing_ok=True)
