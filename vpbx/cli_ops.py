"""What the operator commands do, as coroutines over the services (kept apart from argument parsing)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import select

from vpbx.app import build_core
from vpbx.crypto import hash_password, random_password
from vpbx.errors import NotFound, ValidationFailed
from vpbx.pbx import domains, users
from vpbx.pbx.validation import LOGIN_RE, N_
from vpbx.settings import Settings
from vpbx.store.models import Operator


async def create_domain(
    settings: Settings, name: str, timezone: str, channels: int, admin_password: str | None
) -> str:
    core = build_core(settings)
    try:
        async with core.sessions() as s:
            d = await domains.create_domain(
                s, domains.DomainInput(name=name, timezone=timezone, channel_limit=channels)
            )
            if admin_password is not None:
                await users.create_user(
                    s,
                    d.id,
                    users.UserInput(
                        name="admin",
                        display_name="Administrator",
                        pin="100",
                        role="admin",
                        web_password=admin_password,
                    ),
                    box=core.box,
                )
            await s.commit()
            return f"domain {d.name} created ({d.id})"
    finally:
        await core.engine.dispose()


async def create_user(
    settings: Settings, domain: str, name: str, pin: str, display_name: str, role: str, password: str | None
) -> dict[str, str]:
    core = build_core(settings)
    try:
        async with core.sessions() as s:
            d = await domains.find_domain(s, domain)
            if d is None:
                raise NotFound("domain", domain)
            sip_password = random_password()
            u = await users.create_user(
                s,
                d.id,
                users.UserInput(
                    name=name,
                    display_name=display_name,
                    pin=pin,
                    role=role,
                    web_password=password or "",
                    sip_password=sip_password,
                ),
                box=core.box,
            )
            await s.commit()
            return {
                "login": f"{u.name}@{d.name}",
                "pin": u.pin,
                "sip_login": u.sip_login,
                "sip_password": sip_password,
            }
    finally:
        await core.engine.dispose()


async def create_operator(settings: Settings, login: str, password: str) -> None:
    login = login.strip().lower()
    if not LOGIN_RE.fullmatch(login):
        raise ValidationFailed.one("login", N_("Latin lower-case letters, digits, dot, dash and underscore"))
    if len(password) < 8:
        raise ValidationFailed.one("password", N_("From {lo} to {hi} characters"), lo=8, hi=128)
    core = build_core(settings)
    try:
        async with core.sessions() as s:
            if await s.scalar(select(Operator.id).where(Operator.login == login)) is not None:
                raise ValidationFailed.one("login", N_("Already used by another user"))
            s.add(Operator(login=login, password_hash=hash_password(password)))
            await s.commit()
    finally:
        await core.engine.dispose()


async def load_numbering(settings: Settings, path: Path) -> str:
    """Load one of the regulator's numbering files (ABC-3xx/4xx/8xx, DEF-9xx) into the numbering table."""
    from vpbx.autoinformer.tz import load_numbering as load

    data = await asyncio.to_thread(path.read_bytes)
    core = build_core(settings)
    try:
        async with core.sessions() as s:
            result = await load(s, data)
            await s.commit()
    finally:
        await core.engine.dispose()
    lines = [f"{result.ranges} ranges of {len(result.codes)} codes loaded"]
    for region, n in sorted(result.unmatched_regions.items()):
        lines.append(f"no time zone for region {region!r} ({n} ranges): the domain's zone applies")
    return "\n".join(lines)
