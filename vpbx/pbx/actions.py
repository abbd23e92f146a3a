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
from vpbx.store.models import CallGroup, RoutingRule, User, VoiceMenu, VoiceMenuKey

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


# Which columns point at a target of each kind: in routing rules and in a group's fall-through.
_TARGET_COLUMNS = {
    "user": (RoutingRule.target_user_id, CallGroup.fallthrough_user_id),
    "group": (RoutingRule.target_group_id, CallGroup.fallthrough_group_id),
    "menu": (RoutingRule.target_menu_id, CallGroup.fallthrough_menu_id),
}


# ... and in voice menus' keys and timeout actions
_KEY_COLUMNS = {
    "user": VoiceMenuKey.target_user_id,
    "group": VoiceMenuKey.target_group_id,
    "menu": VoiceMenuKey.target_menu_id,
}


async def is_target(s: AsyncSession, domain_id: uuid.UUID, kind: str, ident: uuid.UUID) -> bool:
    """Whether a routing rule, another group's fall-through or another voice menu's key or timeout sends
    calls to this user, group or menu."""
    rule_col, fallthrough_col = _TARGET_COLUMNS[kind]
    rule = await s.scalar(
        select(RoutingRule.id).where(RoutingRule.domain_id == domain_id, rule_col == ident).limit(1)
    )
    if rule is not None:
        return True
    group = await s.scalar(
        select(CallGroup.id)
        .where(CallGroup.domain_id == domain_id, fallthrough_col == ident, CallGroup.id != ident)
        .limit(1)
    )
    if group is not None:
        return True
    key = await s.scalar(
        select(VoiceMenuKey.id)
        .join(VoiceMenu, VoiceMenu.id == VoiceMenuKey.menu_id)
        .where(VoiceMenu.domain_id == domain_id, _KEY_COLUMNS[kind] == ident, VoiceMenu.id != ident)
        .limit(1)
    )
    return key is not None
