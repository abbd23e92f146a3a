"""Voice menus («Голосовые меню»): a greeting, keys, what happens on silence; validation and stored prompts.

A menu's greeting is an uploaded recording (WAV or MP3) or text spoken by espeak-ng in Russian or English;
both become prompts of ``vpbx.media.prompts`` and the menu keeps the prompt id. Prompts are content-addressed
and shared on disk, so each domain that stores one gets a ``DomainPrompt`` row: the cabinet serves a prompt
only to a domain that owns it. Up to 12 keys (``1``-``9``, ``0``, ``*``, ``#``) each send the call somewhere;
the timeout action (after the last repeat of the greeting) is a key row ``t``. A timeout that leads, without
any key pressed, back to the same menu is a loop the domain-wide check refuses (``routing.assert_no_loops``);
keys may lead back (a caller's «0 — back to the main menu» is the caller's choice, not a loop).

What the call engine reads is ``vpbx.pbx.ivr_plan.MenuPlan``, never these rows.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.errors import FieldError, NotFound, ValidationFailed
from vpbx.media.prompts import PromptError, Voice
from vpbx.pbx.actions import ActionInput, is_target, validate_action
from vpbx.pbx.validation import N_, Check
from vpbx.store.models import DomainPrompt, VoiceMenu, VoiceMenuKey
from vpbx.store.paging import Page, like_pattern, paginate

if TYPE_CHECKING:
    from vpbx.media.prompts import PromptStore

MAX_NAME = 64
MAX_PROMPT = 1000
MAX_FILE_NAME = 255
KEYS = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "*", "#")  # the order the cabinet shows them
TIMEOUT_KEY = "t"
KEY_ACTIONS = ("user", "group", "menu", "voicemail", "external", "repeat", "extension", "hangup")
TIMEOUT_ACTIONS = ("user", "group", "menu", "voicemail", "external", "hangup")
GREETING_SOURCES = ("text", "upload")
VOICES: tuple[Voice, ...] = ("ru", "en")
DEFAULT_REPEAT = 2
REPEAT_RANGE = (1, 10)
DEFAULT_DIGIT_TIMEOUT_S = 5
DIGIT_TIMEOUT_RANGE = (1, 60)
_NO_TARGET = ("repeat", "extension", "hangup")


@dataclass(kw_only=True)
class KeyInput:
    key: str
    target: ActionInput


@dataclass(kw_only=True)
class MenuInput:
    name: str
    greeting_source: str = "text"
    prompt_text: str = ""  # the greeting's text (source "text")
    greeting_voice: str = "ru"
    upload: bytes | None = None  # a new recording (source "upload"); without one an upload menu keeps its own
    greeting_file_name: str = ""
    invalid_text: str = ""  # empty: the system phrase «Неверный выбор» in the greeting's voice
    repeat_count: str | int = DEFAULT_REPEAT
    digit_timeout_s: str | int = DEFAULT_DIGIT_TIMEOUT_S
    keys: list[KeyInput] = field(default_factory=list)
    timeout: ActionInput = field(default_factory=lambda: ActionInput(action="hangup"))


@dataclass(frozen=True, slots=True, kw_only=True)
class _Key:
    key: str
    action: str
    user_id: uuid.UUID | None = None
    group_id: uuid.UUID | None = None
    menu_id: uuid.UUID | None = None
    number: str | None = None


def _key_field(i: int, name: str) -> str:
    return f"keys.{i}.{name}"


async def _check_target(
    c: Check,
    s: AsyncSession,
    domain_id: uuid.UUID,
    key: str,
    data: ActionInput,
    kinds: tuple[str, ...],
    prefix: str,
) -> _Key | None:
    kind = c.choice(prefix + "action", data.action, kinds)
    if kind is None:
        return None
    if kind in _NO_TARGET:
        return _Key(key=key, action=kind)
    action = await validate_action(c, s, domain_id, data, prefix)
    if action is None:
        return None
    return _Key(
        key=key,
        action=kind,
        user_id=action.user_id,
        group_id=action.group_id,
        menu_id=action.menu_id,
        number=action.number,
    )


async def _validate(
    s: AsyncSession, domain_id: uuid.UUID, d: MenuInput, current: VoiceMenu | None
) -> tuple[Check, list[_Key]]:
    c = Check()
    d.name = c.text("name", d.name, max_len=MAX_NAME)
    if not c.has("name"):
        taken = await s.scalar(
            select(VoiceMenu.id).where(VoiceMenu.domain_id == domain_id, VoiceMenu.name == d.name)
        )
        if taken is not None and (current is None or taken != current.id):
            c.add("name", N_("A voice menu with this name already exists"))
    source = c.choice("greeting_source", d.greeting_source, GREETING_SOURCES)
    c.choice("greeting_voice", d.greeting_voice, VOICES)
    d.prompt_text = c.text("prompt_text", d.prompt_text, max_len=MAX_PROMPT, required=source == "text")
    if source == "upload" and not d.upload and (current is None or current.greeting_source != "upload"):
        c.add("greeting_file", N_("Choose a WAV or MP3 file"))
    d.greeting_file_name = d.greeting_file_name.strip()[-MAX_FILE_NAME:]
    d.invalid_text = c.text("invalid_text", d.invalid_text, max_len=MAX_PROMPT, required=False)
    d.repeat_count = c.integer("repeat_count", d.repeat_count, lo=REPEAT_RANGE[0], hi=REPEAT_RANGE[1])
    d.digit_timeout_s = c.integer(
        "digit_timeout_s", d.digit_timeout_s, lo=DIGIT_TIMEOUT_RANGE[0], hi=DIGIT_TIMEOUT_RANGE[1]
    )
    checked: list[_Key] = []
    seen: set[str] = set()
    for i, k in enumerate(d.keys):
        key = k.key.strip()
        if key not in KEYS:
            c.add(_key_field(i, "key"), N_("A key is a digit, * or #"))
            continue
        if key in seen:
            c.add(_key_field(i, "key"), N_("Key {key} is used twice"), key=key)
            continue
        seen.add(key)
        got = await _check_target(c, s, domain_id, key, k.target, KEY_ACTIONS, f"keys.{i}.")
        if got is not None:
            checked.append(got)
    timeout = await _check_target(c, s, domain_id, TIMEOUT_KEY, d.timeout, TIMEOUT_ACTIONS, "timeout_")
    if timeout is not None and timeout.action != "hangup":
        checked.append(timeout)
    return c, checked


async def record_prompt(s: AsyncSession, domain_id: uuid.UUID, prompt_id: str, source: str) -> None:
    """Note that this domain stored ``prompt_id``, so the cabinet may serve it to the domain."""
    found = await s.scalar(
        select(DomainPrompt.id).where(
            DomainPrompt.domain_id == domain_id, DomainPrompt.prompt_id == prompt_id
        )
    )
    if found is None:
        s.add(DomainPrompt(domain_id=domain_id, prompt_id=prompt_id, source=source))
        await s.flush()


async def owns_prompt(s: AsyncSession, domain_id: uuid.UUID, prompt_id: str) -> bool:
    found = await s.scalar(
        select(DomainPrompt.id).where(
            DomainPrompt.domain_id == domain_id, DomainPrompt.prompt_id == prompt_id
        )
    )
    return found is not None


async def speak(
    s: AsyncSession,
    domain_id: uuid.UUID,
    prompts: PromptStore,
    text: str,
    voice: str,
    *,
    field: str = "prompt_text",
) -> str:
    """``text`` as this domain's prompt (synthesised once, then cached); ``ValidationFailed`` on ``field``
    for bad text."""
    v: Voice = "en" if voice == "en" else "ru"
    try:
        prompt = await prompts.tts(text, voice=v)
    except PromptError as e:
        raise ValidationFailed([FieldError(field, e.msgid, dict(e.params))]) from None
    await record_prompt(s, domain_id, prompt.id, "tts")
    return prompt.id


async def store_upload(
    s: AsyncSession, domain_id: uuid.UUID, prompts: PromptStore | None, data: bytes
) -> str:
    """An uploaded WAV or MP3 greeting as this domain's prompt; a bad one (or no prompt store) raises
    ``ValidationFailed`` on ``greeting_file`` and stores nothing."""
    if prompts is None:
        raise ValidationFailed.one("greeting_file", N_("Audio conversion is not available on the server"))
    try:
        prompt = await prompts.upload(data)
    except PromptError as e:
        raise ValidationFailed([FieldError("greeting_file", e.msgid, dict(e.params))]) from None
    await record_prompt(s, domain_id, prompt.id, "upload")
    return prompt.id


async def _store_prompts(
    s: AsyncSession, domain_id: uuid.UUID, m: VoiceMenu, d: MenuInput, prompts: PromptStore | None
) -> None:
    """Convert the upload or speak the texts into prompts; a bad upload stores nothing and names the field."""
    if d.greeting_source == "upload":
        if d.upload:
            m.greeting_prompt_id = await store_upload(s, domain_id, prompts, d.upload)
            m.greeting_file_name = d.greeting_file_name or None
    else:
        m.greeting_file_name = None
        # without a prompt store (the demo seed) the plan speaks the text on first use
        m.greeting_prompt_id = (
            await speak(s, domain_id, prompts, d.prompt_text, d.greeting_voice) if prompts else None
        )
    if d.invalid_text and prompts is not None:
        m.invalid_prompt_id = await speak(
            s, domain_id, prompts, d.invalid_text, d.greeting_voice, field="invalid_text"
        )
    else:
        m.invalid_prompt_id = None


def _apply(m: VoiceMenu, d: MenuInput, keys: list[_Key]) -> None:
    m.name = d.name
    m.greeting_source = d.greeting_source
    m.prompt_text = d.prompt_text
    m.greeting_voice = d.greeting_voice
    m.invalid_text = d.invalid_text
    m.repeat_count = int(d.repeat_count)
    m.digit_timeout_s = int(d.digit_timeout_s)
    # keep the rows of keys that stay, so the (menu, key) pair is never deleted and re-inserted in one flush
    existing = {k.key: k for k in m.keys}
    rows: list[VoiceMenuKey] = []
    for k in keys:
        row = existing.get(k.key) or VoiceMenuKey(key=k.key)
        row.action = k.action
        row.target_user_id, row.target_group_id, row.target_menu_id = k.user_id, k.group_id, k.menu_id
        row.target_number = k.number
        rows.append(row)
    m.keys = rows


async def _assert_no_loops(s: AsyncSession, domain_id: uuid.UUID) -> None:
    """The domain-wide loop check, its error shown on the timeout action of the menu form."""
    from vpbx.pbx import routing  # routing lists menus for its forms

    try:
        await routing.assert_no_loops(s, domain_id)
    except ValidationFailed as e:
        raise ValidationFailed(
            [
                FieldError(
                    "timeout_action",
                    N_("This timeout action makes a routing loop: {path}"),
                    {"path": x.params.get("path", "…")},
                )
                for x in e.errors
            ]
        ) from None


async def create_menu(
    s: AsyncSession, domain_id: uuid.UUID, data: MenuInput, prompts: PromptStore | None = None
) -> VoiceMenu:
    """Create a menu; on ``ValidationFailed`` (a bad upload or a loop included) the caller rolls back."""
    c, keys = await _validate(s, domain_id, data, None)
    c.done()
    m = VoiceMenu(domain_id=domain_id, keys=[])
    await _store_prompts(s, domain_id, m, data, prompts)
    _apply(m, data, keys)
    s.add(m)
    await s.flush()
    await _assert_no_loops(s, domain_id)
    return m


async def update_menu(
    s: AsyncSession,
    domain_id: uuid.UUID,
    menu_id: uuid.UUID,
    data: MenuInput,
    prompts: PromptStore | None = None,
) -> VoiceMenu:
    """Update a menu; on ``ValidationFailed`` (a bad upload or a loop included) the caller rolls back."""
    m = await get_menu(s, domain_id, menu_id)
    c, keys = await _validate(s, domain_id, data, m)
    c.done()
    await _store_prompts(s, domain_id, m, data, prompts)
    _apply(m, data, keys)
    await s.flush()
    await _assert_no_loops(s, domain_id)
    return m


async def delete_menu(s: AsyncSession, domain_id: uuid.UUID, menu_id: uuid.UUID) -> None:
    m = await get_menu(s, domain_id, menu_id)
    if await is_target(s, domain_id, "menu", m.id):
        raise ValidationFailed.one(
            "id",
            N_("The voice menu is used by a routing rule, a group or another menu; change it first"),
        )
    await s.delete(m)
    await s.flush()


async def get_menu(s: AsyncSession, domain_id: uuid.UUID, menu_id: uuid.UUID) -> VoiceMenu:
    m: VoiceMenu | None = await s.scalar(
        select(VoiceMenu).where(VoiceMenu.domain_id == domain_id, VoiceMenu.id == menu_id)
    )
    if m is None:
        raise NotFound("menu", menu_id)
    return m


def sorted_keys(m: VoiceMenu) -> list[VoiceMenuKey]:
    """The menu's keys in keypad order, without the timeout row."""
    return sorted((k for k in m.keys if k.key in KEYS), key=lambda k: KEYS.index(k.key))


def timeout_key(m: VoiceMenu) -> VoiceMenuKey | None:
    return next((k for k in m.keys if k.key == TIMEOUT_KEY), None)


async def list_menus(s: AsyncSession, domain_id: uuid.UUID, q: str = "", page: int = 1) -> Page[VoiceMenu]:
    stmt = select(VoiceMenu).where(VoiceMenu.domain_id == domain_id).order_by(VoiceMenu.name)
    if q.strip():
        pat = like_pattern(q.strip())
        stmt = stmt.where(
            or_(VoiceMenu.name.ilike(pat, escape="\\"), VoiceMenu.prompt_text.ilike(pat, escape="\\"))
        )
    return await paginate(s, stmt, page)


async def all_menus(s: AsyncSession, domain_id: uuid.UUID) -> list[VoiceMenu]:
    stmt = select(VoiceMenu).where(VoiceMenu.domain_id == domain_id).order_by(VoiceMenu.name)
    return list((await s.scalars(stmt)).all())
