"""The domain's audio library («Аудиофайлы», autoinformer.md §2, §3.1): uploads converted at once to 8 kHz
mono prompts through the PromptStore, listed, fetched by ``file_id`` (``id.hex``) within the domain only, and
deleted unless a campaign that can still play them uses them.

Accepted: WAV holding PCM 8/16-bit, A-law or µ-law, any rate, mono or stereo; or MP3. At most 20 MB through
the cabinet and 10 MiB through the API, and 10 minutes. A refused upload raises ``AudioRejected`` with exactly
one ``reason``: ``unsupported_format``, ``too_large``, ``too_long`` or ``decode_failed``; nothing is stored.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.autoinformer.schemas import FINAL_CAMPAIGN
from vpbx.errors import Conflict, NotFound, VpbxError
from vpbx.media.prompts import PromptError, PromptStore, sniff_format
from vpbx.store.models import AiAudioFile, AiCampaign

Reason = Literal["unsupported_format", "too_large", "too_long", "decode_failed"]
Channel = Literal["cabinet", "api"]

MAX_BYTES: dict[Channel, int] = {"cabinet": 20_000_000, "api": 10 * 1024 * 1024}  # §3.1, §9
MAX_DURATION_S = 600.0  # 10 minutes
MAX_NAME = 255
# WAVE format tags (RFC 2361): PCM, A-law, µ-law; WAVE_FORMAT_EXTENSIBLE names its real tag in a sub-format
WAVE_PCM, WAVE_ALAW, WAVE_MULAW, WAVE_EXTENSIBLE = 0x0001, 0x0006, 0x0007, 0xFFFE
WAV_BITS = {WAVE_PCM: (8, 16), WAVE_ALAW: (8,), WAVE_MULAW: (8,)}
MAX_WAV_CHUNKS = 64  # chunks looked at before "fmt " must have appeared

_PROMPT_REASONS: dict[str, Reason] = {
    "prompt-too-large": "too_large",
    "prompt-unsupported": "unsupported_format",
    "prompt-too-long": "too_long",
}


class AudioRejected(VpbxError):
    """An upload the library refuses; ``reason`` is one of §3.1's four."""

    code = "audio-invalid"

    def __init__(self, reason: Reason, message: str = "") -> None:
        super().__init__(message or reason, details={"reason": reason})
        self.reason: Reason = reason


class AudioInUse(Conflict):
    """The file is used by a campaign that may still play it."""

    code = "audio-in-use"

    def __init__(self, file_id: str, campaigns: list[str]) -> None:
        super().__init__(
            "The audio file is used by a campaign", details={"file_id": file_id, "campaigns": campaigns}
        )
        self.campaigns = campaigns


def check_wav(data: bytes) -> None:
    """Refuse a WAV whose codec or layout the library does not take (before any conversion runs)."""
    if len(data) < 12:
        raise AudioRejected("decode_failed", "truncated RIFF header")
    pos = 12
    for _ in range(MAX_WAV_CHUNKS):
        if pos + 8 > len(data):
            break
        chunk_id, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if chunk_id == b"fmt ":
            if size < 16 or pos + 8 + 16 > len(data):
                raise AudioRejected("decode_failed", "short fmt chunk")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, pos + 8)
            if tag == WAVE_EXTENSIBLE:
                if size < 40 or pos + 8 + 26 > len(data):
                    raise AudioRejected("decode_failed", "short extensible fmt chunk")
                tag = struct.unpack_from("<H", data, pos + 8 + 24)[0]  # the sub-format GUID's first field
            if tag not in WAV_BITS or bits not in WAV_BITS[tag]:
                raise AudioRejected("unsupported_format", f"WAV format {tag:#06x}, {bits} bits")
            if channels not in (1, 2):
                raise AudioRejected("unsupported_format", f"{channels} channels")
            if rate == 0:
                raise AudioRejected("decode_failed", "sample rate 0")
            return
        pos += 8 + size + (size & 1)
    raise AudioRejected("decode_failed", "no fmt chunk")


async def upload(
    s: AsyncSession,
    store: PromptStore,
    domain_id: uuid.UUID,
    name: str,
    data: bytes,
    *,
    channel: Channel = "cabinet",
) -> AiAudioFile:
    """Convert and add an upload to the library (the caller commits); ``AudioRejected`` when refused."""
    if len(data) > MAX_BYTES[channel]:
        raise AudioRejected("too_large")
    kind = sniff_format(data)
    if kind is None:
        raise AudioRejected("unsupported_format")
    if kind == "wav":
        check_wav(data)
    try:
        prompt = await store.upload(data)
    except PromptError as e:
        raise AudioRejected(_PROMPT_REASONS.get(e.reason, "decode_failed"), e.message) from None
    if prompt.duration_s > MAX_DURATION_S:
        raise AudioRejected("too_long")
    row = AiAudioFile(
        domain_id=domain_id,
        name=(" ".join(name.split()) or "audio")[:MAX_NAME],
        duration_ms=round(prompt.duration_s * 1000),
        original_format=kind,
        size_bytes=len(data),
        prompt_id=prompt.id,
    )
    s.add(row)
    await s.flush()
    return row


async def list_files(s: AsyncSession, domain_id: uuid.UUID) -> list[AiAudioFile]:
    rows = await s.scalars(
        select(AiAudioFile)
        .where(AiAudioFile.domain_id == domain_id)
        .order_by(AiAudioFile.created_at.desc(), AiAudioFile.name)
    )
    return list(rows)


async def get_file(s: AsyncSession, domain_id: uuid.UUID, file_id: str) -> AiAudioFile:
    """A file of the domain by its ``file_id``; ``NotFound`` for another domain's or a malformed id."""
    try:
        fid = uuid.UUID(hex=file_id)
    except ValueError:
        raise NotFound("audio file", file_id) from None
    row = await s.scalar(select(AiAudioFile).where(AiAudioFile.id == fid, AiAudioFile.domain_id == domain_id))
    if row is None:
        raise NotFound("audio file", file_id)
    return row


def _file_ids(value: Any) -> Iterator[str]:
    """Every ``file_id`` in a campaign's settings (message segments and DTMF confirmation segments)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "file_id" and isinstance(v, str):
                yield v
            else:
                yield from _file_ids(v)
    elif isinstance(value, list):
        for v in value:
            yield from _file_ids(v)


async def campaigns_using(s: AsyncSession, domain_id: uuid.UUID, file_id: str) -> list[AiCampaign]:
    """The domain's campaigns not yet completed or stopped whose settings use the file."""
    rows = await s.scalars(
        select(AiCampaign).where(AiCampaign.domain_id == domain_id, AiCampaign.status.not_in(FINAL_CAMPAIGN))
    )
    return [c for c in rows if file_id in set(_file_ids(c.settings))]


async def delete_file(s: AsyncSession, domain_id: uuid.UUID, file_id: str) -> None:
    """Remove a file from the library; ``AudioInUse`` while a non-final campaign uses it. The stored prompt
    stays: prompts are content-addressed and may be shared."""
    row = await get_file(s, domain_id, file_id)
    users = await campaigns_using(s, domain_id, row.id.hex)
    if users:
        raise AudioInUse(row.id.hex, [c.name for c in users])
    await s.delete(row)
    await s.flush()
