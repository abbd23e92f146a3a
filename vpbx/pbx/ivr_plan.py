"""What the call engine needs to run a voice menu: frozen values, no ORM objects (issue core-3, item 2).

``MenuPlans.menu_plan(domain_id, menu_id)`` reads a menu once and returns a ``MenuPlan``: the greeting's
prompt id, how many times it plays while no key is pressed, the digit timeout, the prompt said after an
unknown key, and every key with its resolved target (a user's id and extension, a group id, a menu id, an
E.164 number), plus what happens after the last repeat (``timeout``; hang up when the menu names nothing).

Prompts are ready to play when the plan is returned: a text greeting the cabinet could not synthesise (a menu
seeded without a prompt store) is spoken here once and then cached by ``PromptStore``; the invalid-key prompt
falls back to the system phrase «Неверный выбор» in the greeting's voice.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from sqlalchemy import select

from vpbx.errors import NotFound
from vpbx.media.prompts import PromptError, PromptId, SystemPhrase, Voice
from vpbx.pbx.menus import KEYS, TIMEOUT_KEY
from vpbx.store.models import DomainId, User, VoiceMenu, VoiceMenuKey

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from vpbx.media.prompts import PromptStore


@dataclass(frozen=True, slots=True, kw_only=True)
class MenuAction:
    """Where a key (or the timeout) sends the call; only the fields of ``action`` are set.

    ``user``: ``user_id`` and ``pin``; ``group``: ``group_id``; ``voicemail``: the box's ``user_id`` or
    ``group_id``; ``menu``: ``menu_id``; ``external``:
    ``number`` (E.164); ``repeat`` (play the greeting again), ``extension`` (the caller keys an extension,
    then the call goes to that user or group) and ``hangup`` carry nothing.
    """

    action: str
    user_id: uuid.UUID | None = None
    pin: str | None = None
    group_id: uuid.UUID | None = None
    menu_id: uuid.UUID | None = None
    number: str | None = None


HANGUP = MenuAction(action="hangup")
_ORDER = (*KEYS, TIMEOUT_KEY)


@dataclass(frozen=True, slots=True, kw_only=True)
class MenuPlan:
    domain_id: DomainId
    menu_id: uuid.UUID
    name: str
    voice: Voice  # the greeting's language: say system phrases (goodbye, no input) in it
    greeting_prompt_id: PromptId
    repeat_count: int  # times the greeting plays while no key is pressed
    digit_timeout_s: int  # wait after each play of the greeting
    invalid_prompt_id: PromptId  # said after a key the menu does not know, before the greeting again
    keys: Mapping[str, MenuAction]  # "0"-"9", "*", "#"; a key not here is invalid
    timeout: MenuAction  # after the last repeat with no key: user, group, menu, external or hangup

    def action_for(self, key: str) -> MenuAction | None:
        """The key's action, or None for a key the menu does not know (play ``invalid_prompt_id``)."""
        return self.keys.get(key)


async def build_menu_plan(
    s: AsyncSession, prompts: PromptStore, domain_id: uuid.UUID, menu_id: uuid.UUID
) -> MenuPlan:
    """The plan of one of the domain's menus; ``NotFound`` for another domain's or a missing menu,
    ``PromptError`` when an uploaded greeting's file is gone."""
    m: VoiceMenu | None = await s.scalar(
        select(VoiceMenu).where(VoiceMenu.domain_id == domain_id, VoiceMenu.id == menu_id)
    )
    if m is None:
        raise NotFound("menu", menu_id)
    voice: Voice = "en" if m.greeting_voice == "en" else "ru"
    greeting = _prompt(prompts, m.greeting_prompt_id)
    if greeting is None:
        if m.greeting_source == "upload":
            raise PromptError("prompt-missing", "The prompt file is missing")
        greeting = (await prompts.tts(m.prompt_text, voice=voice)).id
    invalid = _prompt(prompts, m.invalid_prompt_id)
    if invalid is None:
        if m.invalid_text:
            invalid = (await prompts.tts(m.invalid_text, voice=voice)).id
        else:
            invalid = (await prompts.system_phrase(SystemPhrase.INVALID_CHOICE, voice)).id
    keys: dict[str, MenuAction] = {}
    timeout = HANGUP
    for k in sorted(m.keys, key=lambda k: _ORDER.index(k.key)):
        action = await _action(s, domain_id, k)
        if k.key == TIMEOUT_KEY:
            timeout = action
        else:
            keys[k.key] = action
    return MenuPlan(
        domain_id=DomainId(domain_id),
        menu_id=m.id,
        name=m.name,
        voice=voice,
        greeting_prompt_id=greeting,
        repeat_count=m.repeat_count,
        digit_timeout_s=m.digit_timeout_s,
        invalid_prompt_id=invalid,
        keys=MappingProxyType(keys),
        timeout=timeout,
    )


def _prompt(prompts: PromptStore, prompt_id: str | None) -> PromptId | None:
    if not prompt_id:
        return None
    try:
        return prompts.get(prompt_id).id
    except (PromptError, ValueError):
        return None


async def _action(s: AsyncSession, domain_id: uuid.UUID, k: VoiceMenuKey) -> MenuAction:
    if k.action == "user" and k.target_user_id is not None:
        user = await s.scalar(select(User).where(User.domain_id == domain_id, User.id == k.target_user_id))
        if user is None:  # validation keeps targets in the domain; never route into another one
            return HANGUP
        return MenuAction(action="user", user_id=user.id, pin=user.pin)
    if k.action == "group":
        return MenuAction(action="group", group_id=k.target_group_id)
    if k.action == "voicemail":  # the box of a user, else of a group (validation keeps both in the domain)
        return MenuAction(action="voicemail", user_id=k.target_user_id, group_id=k.target_group_id)
    if k.action == "menu":
        return MenuAction(action="menu", menu_id=k.target_menu_id)
    if k.action == "external":
        return MenuAction(action="external", number=k.target_number)
    return MenuAction(action=k.action)


class MenuPlans:
    """The B2BUA's reader of voice menus: one short session per plan."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], prompts: PromptStore) -> None:
        self._sessions = sessions
        self._prompts = prompts

    async def menu_plan(self, domain_id: uuid.UUID, menu_id: uuid.UUID) -> MenuPlan:
        async with self._sessions() as s:
            return await build_menu_plan(s, self._prompts, domain_id, menu_id)
