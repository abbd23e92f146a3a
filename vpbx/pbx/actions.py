"""Call actions shared by routing rules and a group's fall-through: where a call goes next.

An action names a target inside the same domain; a target id from another domain is reported exactly like
one that does not exist.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.pbx.validation import N_, Check
from vpbx.store.models import CallGroup, User, VoiceMenu

ACTIONS = ("user", "group", "menu", "voicemail", "external", "reject")


@dataclass(kw_only=True)
class ActionInput:
    action: str
    user_id: uuid.UUID | None = None
    group_id: uuid.UUID | None = None
    menu_id: uuid.UUID | None = None
    number: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    """A validated action: exactly the target fields its kind uses are set."""

    action: str
    user_id: uuid.UUID | None = None
    group_id: uuid.UUID | None = None
    menu_id: uuid.UUID | None = None
    number: str | None = None


async def _owned(
    s: AsyncSession, model: type[User | CallGroup | VoiceMenu], domain_id: uuid.UUID, ident: uuid.UUID | None
) -> bool:
    if ident is None:
        return False
    found = await s.scalar(select(model.id).where(model.domain_id == domain_id, model.id == ident))
    return found is not None


async def validate_action(
    c: Check, s: AsyncSession, domain_id: uuid.UUID, data: ActionInput, prefix: str = ""
) -> Action | None:
    """Check ``data`` into ``c`` (fields named ``prefix + 'action'`` …); ``None`` when invalid."""
    kind = c.choice(prefix + "action", data.action, ACTIONS)
    if kind is None:
        return None
    if kind == "user" or (kind == "voicemail" and data.group_id is None):
        if not await _owned(s, User, domain_id, data.user_id):
            c.add(prefix + "user_id", N_("Choose a user of this domain"))
            return None
        return Action(action=kind, user_id=data.user_id)
    if kind in ("group", "voicemail"):
        if not await _owned(s, CallGroup, domain_id, data.group_id):
            c.add(prefix + "group_id", N_("Choose a group of this domain"))
            return None
        return Action(action=kind, group_id=data.group_id)
    if kind == "menu":
        if not await _owned(s, VoiceMenu, domain_id, data.menu_id):
            c.add(prefix + "menu_id", N_("Choose a voice menu of this domain"))
            return None
        return Action(action=kind, menu_id=data.menu_id)
    if kind == "external":
        number = c.number(prefix + "number", data.number)
        return Action(action=kind, number=number) if number else None
    return Action(action="reject")
