"""Prompts (telephony.md §3.10): uploads and text-to-speech, stored as 8 kHz mono s16 WAV plus G.711 payloads.

An uploaded WAV or MP3 is decoded, mixed down to mono, resampled to 8 kHz and peak-normalised by ``sox`` in a
subprocess, with a timeout; the PCM is padded to whole 20 ms frames and pre-encoded to A-law and µ-law, so
playing is slicing 160-octet frames. ``sox`` rather than an in-process decoder because uploads are untrusted
files: a decoder that crashes or spins on a crafted file takes down or stalls only a child we kill at the
deadline, never the server; its resampler is also the reference one. MP3 needs Debian's ``libsox-fmt-mp3``.

Files live in ``<data_dir>/prompts/`` named by the SHA-256 of the stored PCM (``<id>.wav``, ``<id>.pcma``,
``<id>.pcmu``), each written to a temporary file and renamed into place, the WAV last (a prompt whose WAV
exists is complete). The same audio uploaded twice is one prompt. A bad upload raises ``PromptError`` with a
stable ``reason`` and an English ``msgid`` the cabinet translates, and stores nothing.

Text-to-speech runs ``espeak-ng`` (Russian or English voice) and stores its output the same way; the prompt id
is remembered under ``tts/<sha256(voice, rate, text)>``, so the same phrase is synthesised once. Callers that
build audio of their own (the autoinformer's per-contact messages) store PCM with ``store_pcm`` under a key
of theirs and find it again with ``lookup``.
``system_phrase`` does that for the fixed phrases the call engine speaks (operators busy, call not allowed…).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
import os
import re
import tempfile
import wave
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal, NewType

from vpbx.errors import MediaError
from vpbx.logs import get_logger
from vpbx.media.g711 import SAMPLE_WIDTH, pcm_to_alaw, pcm_to_ulaw
from vpbx.media.rtp import FRAME_SAMPLES, G711_CLOCK_RATE

log = get_logger("vpbx.media.prompts")

PromptId = NewType("PromptId", str)
Voice = Literal["ru", "en"]
Tone = Literal["ringback", "moh"]

MAX_UPLOAD_BYTES = 32 * 1024 * 1024  # a 10-minute MP3 at 320 kbit/s is 24 MB
MAX_DURATION_S = 600.0  # 10 minutes
MIN_DURATION_S = 0.1  # shorter is an empty or broken file
CONVERT_TIMEOUT_S = 60.0  # sox on a 10-minute MP3 takes a few seconds on one core
TTS_TIMEOUT_S = 30.0  # espeak-ng speaks 1,000 characters in well under a second
MAX_TTS_CHARS = 1000  # the length of a voice menu's prompt text
TTS_RATE_WPM = 150  # espeak-ng's default 175 is fast over a phone line
TTS_RATE_RANGE = (80, 400)  # words per minute espeak-ng accepts
MAX_JOBS = 2  # conversions and syntheses at once (the box has few cores and calls come first)
NORMALISE_DB = -3.0  # peak level of stored prompts, dBFS
STDERR_LOG_CHARS = 500
TTS_VOICES: dict[Voice, str] = {"ru": "ru", "en": "en-us"}  # espeak-ng voice names
# espeak-ng voices callers may also name directly (the autoinformer's voice list, vpbx.autoinformer.schemas)
ESPEAK_VOICES = frozenset({"ru", "ru+f3", "ru+f4", "ru+m3", "en-us", "en-us+f3"})
PROMPT_DIR = "prompts"
TTS_DIR = "tts"
REF_DIR = "ref"

_ID_RE = re.compile(r"[0-9a-f]{64}")
_FRAME_BYTES = FRAME_SAMPLES * SAMPLE_WIDTH
_MAX_SAMPLES = int(MAX_DURATION_S * G711_CLOCK_RATE)


def N_(msgid: str) -> str:
    """Marks a message for the cabinet's catalog (vpbx/web/locale); translated where it is shown."""
    return msgid


class PromptError(MediaError):
    """An upload or text that cannot become a prompt; nothing was stored.

    ``reason`` is stable (``prompt-too-large``, ``prompt-too-long``, ``prompt-unsupported``,
    ``prompt-corrupt``, ``prompt-empty``, ``prompt-timeout``, ``prompt-missing``, ``tts-empty``,
    ``tts-too-long``, ``tts-voice``, ``tts-rate``, ``converter-failed``); ``msgid`` and ``params`` are the
    cabinet's message.
    """

    code = "prompt-invalid"

    def __init__(self, reason: str, msgid: str, **params: object) -> None:
        super().__init__(msgid.format(**params) if params else msgid, details={"reason": reason, **params})
        self.reason = reason
        self.msgid = msgid
        self.params = params


@dataclass(frozen=True, slots=True, kw_only=True)
class Prompt:
    """A stored prompt: its id (content hash), length and files."""

    id: PromptId
    duration_s: float
    wav: Path
    pcma: Path
    pcmu: Path


class SystemPhrase(StrEnum):
    """Phrases the call engine speaks itself; generated on first use in the caller's language."""

    OPERATORS_BUSY = "operators-busy"
    NOT_ALLOWED = "not-allowed"
    NO_SUCH_NUMBER = "no-such-number"
    INVALID_CHOICE = "invalid-choice"
    NO_INPUT = "no-input"
    GOODBYE = "goodbye"


SYSTEM_PHRASES: dict[SystemPhrase, dict[Voice, str]] = {
    SystemPhrase.OPERATORS_BUSY: {
        "ru": "Все операторы заняты. Пожалуйста, оставайтесь на линии.",
        "en": "All operators are busy. Please stay on the line.",
    },
    SystemPhrase.NOT_ALLOWED: {
        "ru": "Вам не разрешено звонить на этот номер.",
        "en": "You are not allowed to call this number.",
    },
    SystemPhrase.NO_SUCH_NUMBER: {
        "ru": "Набранный вами номер не существует.",
        "en": "The number you have dialled does not exist.",
    },
    SystemPhrase.INVALID_CHOICE: {
        "ru": "Неверный выбор. Попробуйте ещё раз.",
        "en": "Invalid choice. Please try again.",
    },
    SystemPhrase.NO_INPUT: {
        "ru": "Вы ничего не выбрали.",
        "en": "You have not made a choice.",
    },
    SystemPhrase.GOODBYE: {"ru": "До свидания.", "en": "Goodbye."},
}


# telephony.md §3.10: ringback is a 425 Hz cadence (1 s on, 4 s off); the platform's music on hold, used
# when a domain has no prompt of its own, is a slow four-note phrase (A4 C#5 E5 C#5), each note 0.5 s.
RINGBACK_HZ, RINGBACK_ON_S, RINGBACK_OFF_S = 425.0, 1.0, 4.0
MOH_NOTES_HZ = (440.0, 554.37, 659.25, 554.37)
MOH_NOTE_S, MOH_GAP_S = 0.5, 0.05
TONE_LEVEL = 0.3  # of full scale (about -10 dBFS)


def tone_pcm(kind: Tone) -> bytes:
    """One period of a platform tone as 8 kHz mono s16le PCM (whole 20 ms frames)."""
    rate = G711_CLOCK_RATE
    amp = TONE_LEVEL * 32767

    def note(hz: float, seconds: float) -> list[int]:
        return [int(amp * math.sin(2 * math.pi * hz * i / rate)) for i in range(int(seconds * rate))]

    samples: list[int] = []
    if kind == "ringback":
        samples += note(RINGBACK_HZ, RINGBACK_ON_S) + [0] * int(RINGBACK_OFF_S * rate)
    else:
        for hz in MOH_NOTES_HZ:
            samples += note(hz, MOH_NOTE_S) + [0] * int(MOH_GAP_S * rate)
    pcm = b"".join(s.to_bytes(2, "little", signed=True) for s in samples)
    return pcm + bytes(-len(pcm) % _FRAME_BYTES)


def sniff_format(data: bytes) -> Literal["wav", "mp3"] | None:
    """``wav`` (RIFF/WAVE), ``mp3`` (an ID3v2 tag or an MPEG audio frame sync) or None."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:3] == b"ID3":
        return "mp3"
    # MPEG audio frame header: 11 sync bits, a version other than "reserved", a layer other than "reserved"
    if len(data) >= 2 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0 and data[1] & 0x18 != 0x08:
        return "mp3" if data[1] & 0x06 else None
    return None


def wav_bytes(pcm: bytes) -> bytes:
    """8 kHz mono s16 little-endian WAV around ``pcm``."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(SAMPLE_WIDTH)
        w.setframerate(G711_CLOCK_RATE)
        w.writeframes(pcm)
    return buf.getvalue()


def read_payloads(prompt: Prompt) -> tuple[bytes, bytes]:
    """A stored prompt's A-law and µ-law payloads (blocking: call in a thread)."""
    try:
        return prompt.pcma.read_bytes(), prompt.pcmu.read_bytes()
    except FileNotFoundError:
        raise PromptError("prompt-missing", N_("The prompt file is missing")) from None


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def _run(argv: list[str], stdin: bytes, timeout_s: float) -> tuple[int, bytes, bytes]:
    """Run a tool with ``stdin``; kill it at the deadline. ``(returncode, stdout, stderr)``."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as e:  # not installed
        log.error("prompt.tool_missing", tool=argv[0], error=str(e))
        raise PromptError("converter-failed", N_("Audio conversion is not available on the server")) from None
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate(stdin)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        log.warning("prompt.tool_timeout", tool=argv[0], timeout_s=timeout_s)
        raise PromptError(
            "prompt-timeout",
            N_("The file took too long to convert (over {seconds} s)"),
            seconds=int(timeout_s),
        ) from None
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out, err


class PromptStore:
    """Converts uploads and text into stored prompts under ``root`` (``<data_dir>/prompts``)."""

    def __init__(
        self,
        root: Path,
        *,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        max_duration_s: float = MAX_DURATION_S,
        convert_timeout_s: float = CONVERT_TIMEOUT_S,
        tts_timeout_s: float = TTS_TIMEOUT_S,
        max_jobs: int = MAX_JOBS,
        sox: str = "sox",
        espeak: str = "espeak-ng",
    ) -> None:
        self.root = root.resolve()
        self.max_upload_bytes = max_upload_bytes
        self.max_duration_s = max_duration_s
        self.convert_timeout_s = convert_timeout_s
        self.tts_timeout_s = tts_timeout_s
        self.sox = sox
        self.espeak = espeak
        self._jobs = asyncio.Semaphore(max_jobs)
        self._tts_inflight: dict[str, asyncio.Future[Prompt]] = {}
        self._tones: dict[Tone, Prompt] = {}

    # --- reading --------------------------------------------------------------------------------------
    def paths(self, prompt_id: str) -> tuple[Path, Path, Path]:
        if not _ID_RE.fullmatch(prompt_id):
            raise ValueError(f"not a prompt id: {prompt_id!r}")
        base = self.root / prompt_id
        return base.with_suffix(".wav"), base.with_suffix(".pcma"), base.with_suffix(".pcmu")

    def get(self, prompt_id: str) -> Prompt:
        """A stored prompt; ``PromptError`` (``prompt-missing``) when it is not (completely) stored."""
        wav, pcma, pcmu = self.paths(prompt_id)
        try:
            if not wav.is_file():
                raise FileNotFoundError(wav)
            samples = pcma.stat().st_size
            pcmu.stat()
        except FileNotFoundError:
            raise PromptError("prompt-missing", N_("The prompt file is missing")) from None
        return Prompt(
            id=PromptId(prompt_id),
            duration_s=samples / G711_CLOCK_RATE,
            wav=wav,
            pcma=pcma,
            pcmu=pcmu,
        )

    # --- uploads --------------------------------------------------------------------------------------
    async def upload(self, data: bytes) -> Prompt:
        """Convert an uploaded WAV or MP3 and store it; ``PromptError`` for anything else."""
        if len(data) > self.max_upload_bytes:
            raise PromptError(
                "prompt-too-large",
                N_("The file is too large (at most {mb} MB)"),
                mb=self.max_upload_bytes // (1024 * 1024),
            )
        kind = sniff_format(data)
        if kind is None:
            raise PromptError("prompt-unsupported", N_("Unsupported file: upload a WAV or MP3 file"))
        pcm = await self._decode(kind, data, self.convert_timeout_s)
        return await self._store(pcm)

    async def _decode(self, kind: str, data: bytes, timeout_s: float) -> bytes:
        # trim just past the limit, so a long file costs no more than a legal one and is still recognised
        argv = [
            self.sox,
            "-V1",
            "--no-show-progress",
            "-D",  # no dither: it is random noise, and the same upload must give the same prompt id
            "-R",  # repeatable: no other randomness either
            "-t",
            kind,
            "-",
            "-t",
            "raw",
            "-r",
            str(G711_CLOCK_RATE),
            "-c",
            "1",
            "-b",
            "16",
            "-e",
            "signed-integer",
            "-L",
            "-",
            "trim",
            "0",
            f"{self.max_duration_s + 1:g}",
            "channels",
            "1",
            "rate",
            str(G711_CLOCK_RATE),
            "gain",
            "-n",
            f"{NORMALISE_DB:g}",
        ]
        async with self._jobs:
            rc, pcm, err = await _run(argv, data, timeout_s)
        if rc != 0:
            log.info(
                "prompt.decode_failed",
                format=kind,
                rc=rc,
                stderr=err[:STDERR_LOG_CHARS].decode(errors="replace"),
            )
            raise PromptError(
                "prompt-corrupt", N_("The file is damaged or not a real {format} file"), format=kind.upper()
            )
        pcm = pcm[: len(pcm) - len(pcm) % SAMPLE_WIDTH]
        samples = len(pcm) // SAMPLE_WIDTH
        if samples < MIN_DURATION_S * G711_CLOCK_RATE:
            raise PromptError("prompt-empty", N_("The file holds no audio"))
        if samples > self.max_duration_s * G711_CLOCK_RATE:
            raise PromptError(
                "prompt-too-long",
                N_("The recording is too long (at most {minutes} min)"),
                minutes=round(self.max_duration_s / 60),
            )
        return pcm

    async def _store(self, pcm: bytes) -> Prompt:
        pcm += bytes(-len(pcm) % _FRAME_BYTES)  # whole 20 ms frames
        return await asyncio.to_thread(self._write, pcm)

    def _write(self, pcm: bytes) -> Prompt:
        prompt_id = hashlib.sha256(pcm).hexdigest()
        wav, pcma, pcmu = self.paths(prompt_id)
        if not wav.is_file():  # content-addressed: an existing prompt is the same audio
            self.root.mkdir(parents=True, exist_ok=True)
            _write_atomic(pcma, pcm_to_alaw(pcm))
            _write_atomic(pcmu, pcm_to_ulaw(pcm))
            _write_atomic(wav, wav_bytes(pcm))
            log.info(
                "prompt.stored", prompt_id=prompt_id, duration_s=len(pcm) / SAMPLE_WIDTH / G711_CLOCK_RATE
            )
        return self.get(prompt_id)

    # --- text-to-speech -------------------------------------------------------------------------------
    @staticmethod
    def tts_key(text: str, voice: Voice | str, rate_wpm: int) -> str:
        return hashlib.sha256(f"{voice}\0{rate_wpm}\0{text}".encode()).hexdigest()

    async def tts(
        self, text: str, *, voice: Voice | str = "ru", rate_wpm: int = TTS_RATE_WPM, rate: float | None = None
    ) -> Prompt:
        """``text`` spoken by espeak-ng as a stored prompt; synthesised once per (voice, rate, text).

        ``voice`` is ``ru``/``en`` or an espeak-ng voice of ``ESPEAK_VOICES`` (``ru+f3``…); ``rate``, when
        given, is a factor of the default speed (0.5–2.0, clamped to what espeak-ng accepts) and wins over
        ``rate_wpm``."""
        if rate is not None:
            rate_wpm = min(max(round(TTS_RATE_WPM * rate), TTS_RATE_RANGE[0]), TTS_RATE_RANGE[1])
        text = " ".join(text.split())
        if not text:
            raise PromptError("tts-empty", N_("Enter the text to speak"))
        if len(text) > MAX_TTS_CHARS:
            raise PromptError(
                "tts-too-long", N_("The text is too long (at most {n} characters)"), n=MAX_TTS_CHARS
            )
        if voice not in TTS_VOICES and voice not in ESPEAK_VOICES:
            raise PromptError("tts-voice", N_("Unknown voice"))
        if not TTS_RATE_RANGE[0] <= rate_wpm <= TTS_RATE_RANGE[1]:
            raise PromptError(
                "tts-rate",
                N_("Speech rate must be {low} to {high} words per minute"),
                low=TTS_RATE_RANGE[0],
                high=TTS_RATE_RANGE[1],
            )
        key = self.tts_key(text, voice, rate_wpm)
        cached = await asyncio.to_thread(self._cached_tts, key)
        if cached is not None:
            return cached
        inflight = self._tts_inflight.get(key)
        if inflight is not None:  # the same phrase asked twice at once: synthesise it once
            return await asyncio.shield(inflight)
        future: asyncio.Future[Prompt] = asyncio.get_running_loop().create_future()
        self._tts_inflight[key] = future
        try:
            prompt = await self._synthesise(text, voice, rate_wpm, key)
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        else:
            future.set_result(prompt)
            return prompt
        finally:
            del self._tts_inflight[key]

    async def system_phrase(self, phrase: SystemPhrase, voice: Voice = "ru") -> Prompt:
        """One of the engine's fixed phrases, generated on first use."""
        return await self.tts(SYSTEM_PHRASES[phrase][voice], voice=voice)

    async def tone(self, kind: Tone) -> Prompt:
        """A platform tone (ringback, music on hold) as a stored prompt; made and stored once."""
        cached = self._tones.get(kind)
        if cached is not None:
            return cached
        pcm = await asyncio.to_thread(tone_pcm, kind)
        prompt = self._tones[kind] = await self._store(pcm)
        return prompt

    # --- audio built by callers --------------------------------------------------------------------------
    async def read_pcm(self, prompt_id: str) -> bytes:
        """A stored prompt's 8 kHz mono s16le PCM."""
        prompt = self.get(prompt_id)
        return await asyncio.to_thread(_wav_frames, prompt.wav)

    async def store_pcm(self, pcm: bytes, *, key: str | None = None) -> Prompt:
        """Store 8 kHz mono s16le PCM as a prompt (padded to whole frames); remembered under ``key`` (a
        SHA-256 hex digest of the caller's inputs) when given, for ``lookup``."""
        if key is not None and not _ID_RE.fullmatch(key):
            raise ValueError(f"not a key: {key!r}")
        if len(pcm) // SAMPLE_WIDTH > _MAX_SAMPLES:
            raise PromptError(
                "prompt-too-long",
                N_("The recording is too long (at most {minutes} min)"),
                minutes=round(self.max_duration_s / 60),
            )
        prompt = await self._store(pcm[: len(pcm) - len(pcm) % SAMPLE_WIDTH])
        if key is not None:
            await asyncio.to_thread(_write_ref, self.root / REF_DIR / key, prompt.id)
        return prompt

    async def lookup(self, key: str) -> Prompt | None:
        """The prompt stored under ``key`` by ``store_pcm``, if it is still complete."""
        if not _ID_RE.fullmatch(key):
            raise ValueError(f"not a key: {key!r}")
        return await asyncio.to_thread(self._cached_ref, self.root / REF_DIR / key)

    def _cached_ref(self, ref: Path) -> Prompt | None:
        try:
            return self.get(ref.read_text().strip())
        except (OSError, ValueError, PromptError):
            return None

    def _cached_tts(self, key: str) -> Prompt | None:
        ref = self.root / TTS_DIR / key
        try:
            prompt_id = ref.read_text().strip()
            return self.get(prompt_id)
        except (OSError, ValueError, PromptError):
            return None

    async def _synthesise(self, text: str, voice: Voice | str, rate_wpm: int, key: str) -> Prompt:
        espeak_voice = TTS_VOICES[voice] if voice in TTS_VOICES else voice
        argv = [self.espeak, "-v", espeak_voice, "-s", str(rate_wpm), "-b", "1", "--stdin", "--stdout"]
        async with self._jobs:
            rc, wav, err = await _run(argv, text.encode(), self.tts_timeout_s)
        if rc != 0 or sniff_format(wav) != "wav":
            log.error("prompt.tts_failed", rc=rc, stderr=err[:STDERR_LOG_CHARS].decode(errors="replace"))
            raise PromptError("converter-failed", N_("Speech synthesis failed"))
        pcm = await self._decode("wav", wav, self.convert_timeout_s)
        prompt = await self._store(pcm)
        ref = self.root / TTS_DIR / key
        await asyncio.to_thread(_write_ref, ref, prompt.id)
        return prompt


def _wav_frames(path: Path) -> bytes:
    with wave.open(str(path), "rb") as w:
        return w.readframes(w.getnframes())


def _write_ref(ref: Path, prompt_id: str) -> None:
    ref.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(ref, prompt_id.encode())
