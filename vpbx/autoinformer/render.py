"""A contact's message as one prompt (autoinformer.md §3.1): variables filled in, TTS spoken, files joined.

``{name}`` is replaced by the contact's value; ``{name:format}`` speaks it as a ``number`` (Russian words),
``money`` (roubles and kopecks in words), ``date`` (``DD.MM.YYYY`` → «двадцатое июня две тысячи двадцать
пятого года») or ``digits`` (one digit at a time). ``{phone}`` is the contact's first number. A value that
does not parse for its format is spoken as written: a call with an odd value beats no call.

Every TTS segment is spoken by espeak-ng through the PromptStore in its segment's voice and rate, every file
segment is the library file's converted prompt, and the PCM of all of them is joined into ONE stored prompt
(the player plays one prompt; ``repeat`` is the player's). The prompt is remembered under the SHA-256 of
(text with values, voice, rate, file ids) of every segment, so equal messages are rendered once.
``render_contact`` counts failures on the contact; the third ends it as ``error``/``tts_failed``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from num2words import num2words
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.autoinformer.schemas import MAX_VALUE_CHARS, VARIABLE_RE, VOICES, Segment, spec_of
from vpbx.errors import VpbxError
from vpbx.logs import get_logger
from vpbx.media.prompts import PromptError, PromptStore
from vpbx.store.models import AiAudioFile, AiCampaign, AiContact

log = get_logger("vpbx.autoinformer.render")

MAX_RENDER_FAILURES = 3  # §3.1: after the third failed render the contact is never dialled
RENDER_VERSION = "1"  # part of the cache key: bump when the rendering itself changes
SAMPLE_PHONE = "79161234567"

_MONTHS = (
    "января",
    "февраля",
    "марта",
    "апреля",
    "мая",
    "июня",
    "июля",
    "августа",
    "сентября",
    "октября",
    "ноября",
    "декабря",
)
_DIGITS = ("ноль", "один", "два", "три", "четыре", "пять", "шесть", "семь", "восемь", "девять")
_NUMBER_RE = re.compile(r"[-+]?\d+(?:[.,]\d+)?")
_SPACES = str.maketrans("", "", " \u00a0\u202f'")


class RenderError(VpbxError):
    """A message that cannot be rendered for a contact (a value missing or too long)."""

    code = "render-failed"


class AudioUnavailable(VpbxError):
    """A file segment's audio is no longer in the domain's library (the campaign's ``audio_unavailable``)."""

    code = "audio-unavailable"

    def __init__(self, file_id: str) -> None:
        super().__init__("Audio file unavailable", details={"file_id": file_id})
        self.file_id = file_id


# --- values ---------------------------------------------------------------------------------------------


def _decimal(value: str) -> Decimal | None:
    text = value.strip().translate(_SPACES)
    if not _NUMBER_RE.fullmatch(text):
        return None
    try:
        return Decimal(text.replace(",", "."))
    except InvalidOperation:
        return None


def say_number(value: str) -> str:
    d = _decimal(value)
    if d is None:
        return value
    if d == d.to_integral_value():
        return str(num2words(int(d), lang="ru"))
    return str(num2words(d, lang="ru"))


def say_money(value: str) -> str:
    """``1 234,50`` → «одна тысяча двести тридцать четыре рубля, пятьдесят копеек»; whole roubles without
    «ноль копеек»."""
    d = _decimal(value)
    if d is None:
        return value
    d = d.quantize(Decimal("0.01"))
    words = str(num2words(d, lang="ru", to="currency", currency="RUB"))
    if d == d.to_integral_value():
        words = words.rsplit(",", 1)[0]
    return words


def say_date(value: str, case: str = "n") -> str:
    """``20.06.2025`` → «двадцатое июня две тысячи двадцать пятого года»; ``case`` ``g`` (after «до», «с»…)
    gives «двадцатого июня…», ``d`` (after «к») «двадцатому июня…»."""
    try:
        day = dt.datetime.strptime(value.strip(), "%d.%m.%Y").replace(tzinfo=dt.UTC).date()
    except ValueError:
        return value
    ordinal = num2words(day.day, lang="ru", to="ordinal", gender="n", case=case)
    year = num2words(day.year, lang="ru", to="ordinal", case="g")
    return f"{ordinal} {_MONTHS[day.month - 1]} {year} года"


def say_digits(value: str) -> str:
    """``12-34`` → «один два три четыре»: every digit on its own (letters are kept)."""
    words = [_DIGITS[int(ch)] if ch.isascii() and ch.isdigit() else ch for ch in value if not ch.isspace()]
    words = [w for w in words if w not in "-()+."]
    return " ".join(words) if words else value


FORMATS = {"number": say_number, "money": say_money, "date": say_date, "digits": say_digits}
# the case a date takes after a preposition: «оплатите до двадцатого июня», «к двадцатому июня»
GENITIVE_BEFORE = frozenset({"до", "с", "со", "от", "после", "около", "для", "начиная", "кроме"})
DATIVE_BEFORE = frozenset({"к", "ко"})
_LAST_WORD = re.compile(r"(\w+)\W*$")


def _date_case(before: str) -> str:
    m = _LAST_WORD.search(before[-40:])
    word = m[1].lower() if m else ""
    if word in GENITIVE_BEFORE:
        return "g"
    if word in DATIVE_BEFORE:
        return "d"
    return "n"


def substitute(text: str, values: Mapping[str, str], *, phone: str) -> str:
    """``text`` with every ``{name}``/``{name:format}`` replaced; ``RenderError`` names a missing value."""

    def one(m: re.Match[str]) -> str:
        name, fmt = m[1], m[2]
        value = phone if name == "phone" else values.get(name)
        if value is None or not value.strip():
            raise RenderError(f"no value for {{{name}}}", details={"variable": name, "reason": "missing"})
        if len(value) > MAX_VALUE_CHARS:
            raise RenderError(f"{{{name}}} is too long", details={"variable": name, "reason": "too_long"})
        if fmt == "date":
            return say_date(value, _date_case(m.string[: m.start()]))
        return FORMATS[fmt](value) if fmt else value

    return VARIABLE_RE.sub(one, text)


def sample_values(text: str) -> dict[str, str]:
    """Sample values for a preview: what each variable's format expects."""
    samples = {
        "number": "1234",
        "money": "1234.50",
        "date": dt.datetime.now(dt.UTC).strftime("%d.%m.%Y"),
        "digits": "1234",
    }
    out: dict[str, str] = {}
    for m in VARIABLE_RE.finditer(text):
        out.setdefault(m[1], samples[m[2]] if m[2] else m[1])
    return out


# --- rendering ------------------------------------------------------------------------------------------


def _parts(
    segments: Sequence[Segment], values: Mapping[str, str], phone: str
) -> list[tuple[str, str, str, float]]:
    """(type, text with values or file id, espeak voice, rate) per segment."""
    out: list[tuple[str, str, str, float]] = []
    for seg in segments:
        if seg.type == "file":
            out.append(("file", seg.file_id or "", "", 1.0))
        else:
            out.append(("tts", substitute(seg.text or "", values, phone=phone), VOICES[seg.voice], seg.rate))
    return out


def render_key(parts: Sequence[tuple[str, str, str, float]]) -> str:
    blob = json.dumps([RENDER_VERSION, *parts], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


async def _file_prompts(s: AsyncSession, domain_id: uuid.UUID, file_ids: Sequence[str]) -> dict[str, str]:
    ids: list[uuid.UUID] = []
    for f in file_ids:
        try:
            ids.append(uuid.UUID(hex=f))
        except ValueError:
            raise AudioUnavailable(f) from None
    rows = await s.execute(
        select(AiAudioFile.id, AiAudioFile.prompt_id).where(
            AiAudioFile.domain_id == domain_id, AiAudioFile.id.in_(ids)
        )
    )
    found = {r.id.hex: r.prompt_id for r in rows}
    for f in file_ids:
        if f not in found:
            raise AudioUnavailable(f)
    return found


async def render_segments(
    s: AsyncSession,
    store: PromptStore,
    domain_id: uuid.UUID,
    segments: Sequence[Segment],
    values: Mapping[str, str],
    *,
    phone: str,
) -> tuple[str, str]:
    """Render ``segments`` with ``values`` into one stored prompt: ``(prompt_id, render_key)``.
    ``RenderError`` (a value), ``AudioUnavailable`` (a file), ``PromptError`` (TTS or storage)."""
    parts = _parts(segments, values, phone)
    key = render_key(parts)
    cached = await store.lookup(key)
    if cached is not None:
        return cached.id, key
    files = await _file_prompts(s, domain_id, [text for kind, text, _, _ in parts if kind == "file"])
    pcm: list[bytes] = []
    for kind, text, voice, rate in parts:
        if kind == "file":
            try:
                pcm.append(await store.read_pcm(files[text]))
            except (PromptError, ValueError):
                raise AudioUnavailable(text) from None
        else:
            prompt = await store.tts(text, voice=voice, rate=rate)
            pcm.append(await store.read_pcm(prompt.id))
    prompt = await store.store_pcm(b"".join(pcm), key=key)
    return prompt.id, key


async def render_contact(
    s: AsyncSession, store: PromptStore, campaign: AiCampaign, contact: AiContact
) -> str | None:
    """The prompt id of the contact's whole message, rendered now or found in the cache. On failure the
    contact's ``render_failures`` grows; the third failure sets it ``error``/``tts_failed`` (the caller
    commits, and sends ``number_finished`` for it); None then and on any failure. ``AudioUnavailable`` is
    raised, not counted: it is the campaign's problem (``audio_unavailable``), not the contact's."""
    spec = spec_of(campaign)
    phone = contact.phones[0] if contact.phones else ""
    try:
        prompt_id, key = await render_segments(
            s, store, campaign.domain_id, spec.message.segments, contact.variables, phone=phone
        )
    except (RenderError, PromptError) as e:
        _failed(campaign, contact, e)
        return None
    contact.render_hash = key
    return prompt_id


async def render_keys(
    s: AsyncSession, store: PromptStore, campaign: AiCampaign, contact: AiContact
) -> dict[str, str] | None:
    """Key → prompt id of each DTMF action's TTS segment (§3.5: the confirmation of ``confirm``/``opt_out``,
    the «оператор недоступен» of ``connect``), spoken with the contact's values. The cache keys them like a
    message, so a text without variables is spoken once for the whole campaign. Library file segments are
    not here: the dispatcher plays their converted prompt as it is. A failure counts like the message's
    (None); ``AudioUnavailable`` cannot happen (no files)."""
    spec = spec_of(campaign)
    phone = contact.phones[0] if contact.phones else ""
    out: dict[str, str] = {}
    for digit, act in sorted(spec.dtmf.actions.items()):
        if act.segment is None or act.segment.type != "tts":
            continue
        try:
            out[digit], _ = await render_segments(
                s, store, campaign.domain_id, [act.segment], contact.variables, phone=phone
            )
        except (RenderError, PromptError) as e:
            _failed(campaign, contact, e)
            return None
    return out


def _failed(campaign: AiCampaign, contact: AiContact, e: VpbxError) -> None:
    """One more failed render of the contact; the third ends it as ``error``/``tts_failed``."""
    contact.render_failures += 1
    log.warning(
        "autoinformer.render_failed",
        campaign_id=campaign.id.hex,
        contact_id=contact.id.hex,
        failures=contact.render_failures,
        error=e.message,
    )
    if contact.render_failures >= MAX_RENDER_FAILURES:
        contact.status = "error"
        contact.detail = "tts_failed"
        contact.next_attempt_at = None
        contact.updated_at = dt.datetime.now(dt.UTC)


async def preview(
    s: AsyncSession,
    store: PromptStore,
    domain_id: uuid.UUID,
    text: str,
    *,
    voice: str = "female_1",
    rate: float = 1.0,
    values: Mapping[str, str] | None = None,
) -> str:
    """One TTS text spoken with sample values (the cabinet's «Прослушать»): the prompt id.
    ``pydantic.ValidationError`` for a bad text/voice/rate, ``PromptError`` when speech fails."""
    seg = Segment(type="tts", text=text, voice=voice, rate=rate)
    filled: dict[str, Any] = {**sample_values(text), **(values or {})}
    prompt_id, _ = await render_segments(s, store, domain_id, [seg], filled, phone=SAMPLE_PHONE)
    return prompt_id
