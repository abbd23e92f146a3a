"""Voice menus («Голосовые меню»): a name and a prompt for now; keys and the IVR engine come later."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.errors import NotFound, ValidationFailed
from vpbx.pbx.actions import is_target
from vpbx.pbx.validation import N_, Check
from vpbx.store.models import VoiceMenu
from vpbx.store.paging import Page, like_pattern, paginate

MAX_NAME = 64
MAX_PROMPT = 1000


@dataclass(kw_only=True)
class MenuInput:
    name: str
    prompt_text: str = ""


async def _validate(s: AsyncSession, domain_id: uuid.UUID, d: MenuInput, current: VoiceMenu | None) -> Check:
    c = Check()
    d.name = c.text("name", d.name, max_len=MAX_NAME)
    d.prompt_text = c.text("prompt_text", d.prompt_text, max_len=MAX_PROMPT, required=False)
    if not c.has("name"):
        taken = await s.scalar(
            select(VoiceMenu.id).where(VoiceMenu.domain_id == domain_id, VoiceMenu.name == d.name)
        )
        if taken is not None and (current is None or taken != current.id):
            c.add("name", N_("A voice menu with this name already exists"))
    return c


async def create_menu(s: AsyncSession, domain_id: uuid.UUID, data: MenuInput) -> VoiceMenu:
    c = await _validate(s, domain_id, data, None)
    c.done()
    m = VoiceMenu(domain_id=domain_id, name=data.name, prompt_text=data.prompt_text)
    s.add(m)
    await s.flush()
    return m


async def update_menu(
    s: AsyncSession, domain_id: uuid.UUID, menu_id: uuid.UUID, data: MenuInput
) -> VoiceMenu:
    m = await get_menu(s, domain_id, menu_id)
    c = await _validate(s, domain_id, data, m)
    c.done()
    m.name, m.prompt_text = data.name, data.prompt_text
    await s.flush()
    return m


async def delete_menu(s: AsyncSession, domain_id: uuid.UUID, menu_id: uuid.UUID) -> None:
    m = await get_menu(s, domain_id, menu_id)
    if await is_target(s, domain_id, "menu", m.id):
        raise ValidationFailed.one(
            "id",
            N_("The voice menu is a target of a routing rule or a group's fall-through; change it first"),
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
