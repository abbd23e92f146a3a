"""Live calls («Звонки сейчас»): the domain's calls in progress, from the call registry, refreshed by htmx.

The page holds a fragment (``/calls/live/rows``) that htmx fetches again every ``POLL_S`` seconds and swaps in
place. Only the admin's own tenant is read from the registry (``snapshot(domain_id)``), so another domain's
calls never reach the page.
"""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.app import Core
from vpbx.errors import NotFound
from vpbx.pbx import journal
from vpbx.pbx.calls import CallSnapshot
from vpbx.pbx.history_view import duration_text
from vpbx.store.models import Domain, DomainId
from vpbx.web.auth import AdminDep, CoreDep, DbDep, Principal, RendererDep
from vpbx.web.render import Renderer

router = APIRouter(prefix="/calls")
POLL_S = 2  # how often the open page asks for the rows again


@dataclass(frozen=True, slots=True)
class LiveCall:
    """One row of the page: a ``CallSnapshot`` with names, local start time and duration."""

    session_id: str
    type: str  # incoming, outbound, internal
    state: str  # ringing, connected, held
    from_number: str
    from_pin: str
    from_name: str
    to_number: str
    to_pin: str
    to_name: str
    started_at: str  # in the domain's time zone
    duration: str  # since the call started, H:MM:SS or M:SS


def started_text(when: dt.datetime, now: dt.datetime, lang: str, timezone: str) -> str:
    """A UTC start time as the domain's wall clock, to the second; with the date unless it is today."""
    zone = zoneinfo.ZoneInfo(timezone)
    local = when.astimezone(zone)
    if local.date() == now.astimezone(zone).date():
        return local.strftime("%H:%M:%S")
    return local.strftime("%d.%m.%Y %H:%M:%S" if lang == "ru" else "%Y-%m-%d %H:%M:%S")


async def live_calls(
    s: AsyncSession, core: Core, tenant: uuid.UUID, lang: str, timezone: str
) -> list[LiveCall]:
    snaps: list[CallSnapshot] = core.calls.snapshot(DomainId(tenant))
    names = await journal.user_names(s, tenant, [p for c in snaps for p in (c.from_pin, c.to_pin)])
    now = core.clock.now()
    return [
        LiveCall(
            session_id=c.session_id,
            type=c.type,
            state=c.state,
            from_number=c.from_number,
            from_pin=c.from_pin,
            from_name=names.get(c.from_pin, ""),
            to_number=c.to_number,
            to_pin=c.to_pin,
            to_name=names.get(c.to_pin, ""),
            started_at=started_text(c.started_at, now, lang, timezone),
            duration=duration_text((now - c.started_at) / dt.timedelta(seconds=1)),
        )
        for c in snaps
    ]


async def _render(
    request: Request, r: Renderer, p: Principal, s: AsyncSession, core: Core, template: str
) -> Response:
    domain = await s.get(Domain, p.tenant)
    if domain is None:
        raise NotFound("domain", p.tenant)
    lang = r.translator(request).lang
    context = {
        "calls": await live_calls(s, core, p.tenant, lang, domain.timezone),
        "active": core.calls.active(DomainId(p.tenant)),
        "limit": domain.channel_limit,
        "timezone": domain.timezone,
        "poll_s": POLL_S,
    }
    return r.page(request, template, context)


@router.get("/live")
async def live_page(request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep) -> Response:
    return await _render(request, r, p, s, core, "calls/live.html")


@router.get("/live/rows")
async def live_rows(request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep) -> Response:
    """The fragment htmx swaps in every ``POLL_S`` seconds: the count and the table."""
    return await _render(request, r, p, s, core, "calls/_live.html")
