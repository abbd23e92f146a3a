"""Domains (tenants): created and blocked by the platform operator."""

from __future__ import annotations

import re
import uuid
import zoneinfo
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.crypto import SecretBox
from vpbx.errors import NotFound
from vpbx.pbx import users
from vpbx.pbx.validation import N_, Check
from vpbx.store.models import Domain
from vpbx.store.paging import Page, like_pattern, paginate

DOMAIN_RE = re.compile(r"(?=.{3,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
MAX_CHANNELS = 10_000


@dataclass(kw_only=True)
class DomainInput:
    name: str
    timezone: str = "Europe/Moscow"
    channel_limit: str | int = 10


def valid_timezone(name: str) -> bool:
    if not name or len(name) > 64:
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


async def _validate(s: AsyncSession, data: DomainInput, current: Domain | None) -> Check:
    c = Check()
    name = c.pattern(
        "name", data.name.lower(), DOMAIN_RE, N_("Not a domain name, e.g. acme.vpbx.local"), max_len=253
    )
    if not c.has("name"):
        taken = await s.scalar(select(Domain.id).where(Domain.name == name))
        if taken is not None and (current is None or taken != current.id):
            c.add("name", N_("This domain name is taken"))
    data.name = name
    if not valid_timezone(data.timezone.strip()):
        c.add("timezone", N_("Unknown time zone"))
    data.channel_limit = c.integer("channel_limit", data.channel_limit, lo=1, hi=MAX_CHANNELS)
    return c


async def create_domain(s: AsyncSession, data: DomainInput) -> Domain:
    c = await _validate(s, data, None)
    c.done()
    d = Domain(name=data.name, timezone=data.timezone.strip(), channel_limit=int(data.channel_limit))
    s.add(d)
    await s.flush()
    return d


async def update_domain(
    s: AsyncSession, domain_id: uuid.UUID, data: DomainInput, *, box: SecretBox
) -> Domain:
    """Change a domain; a rename re-derives its users' SIP digests, whose realm is the domain name."""
    d = await get_domain(s, domain_id)
    c = await _validate(s, data, d)
    c.done()
    renamed = d.name != data.name
    d.name, d.timezone, d.channel_limit = data.name, data.timezone.strip(), int(data.channel_limit)
    await s.flush()
    if renamed:
        await users.rekey(s, d.id, d.name, box)
    return d


async def set_blocked(s: AsyncSession, domain_id: uuid.UUID, blocked: bool, reason: str = "") -> Domain:
    d = await get_domain(s, domain_id)
    c = Check()
    reason = c.text("reason", reason, max_len=500, required=blocked)
    c.done()
    d.status = "blocked" if blocked else "active"
    d.blocked_reason = reason if blocked else None
    await s.flush()
    return d


async def get_domain(s: AsyncSession, domain_id: uuid.UUID) -> Domain:
    d = await s.get(Domain, domain_id)
    if d is None:
        raise NotFound("domain", domain_id)
    return d


async def find_domain(s: AsyncSession, name: str) -> Domain | None:
    result: Domain | None = await s.scalar(select(Domain).where(Domain.name == name.strip().lower()))
    return result


async def list_domains(s: AsyncSession, q: str = "", page: int = 1) -> Page[Domain]:
    stmt = select(Domain).order_by(Domain.name)
    if q.strip():
        stmt = stmt.where(or_(Domain.name.ilike(like_pattern(q.strip().lower()), escape="\\")))
    return await paginate(s, stmt, page)
