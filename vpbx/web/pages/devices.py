"""Registered devices («Устройства»): every live registration of the domain, from the location store.

Bindings are read with ``LocationStore.bindings(tenant)``, so only the admin's own domain is listed. The AoR
of a binding names an extension; the user with that extension is shown beside it (a binding whose user was
deleted or renumbered still shows, under its AoR, until it expires).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import Response

from vpbx.app import Core
from vpbx.pbx import users as users_svc
from vpbx.pbx.registrar import aor_for
from vpbx.store.models import DomainId, User
from vpbx.store.paging import Page
from vpbx.web import forms
from vpbx.web.auth import AdminDep, CoreDep, DbDep, Principal, RendererDep

router = APIRouter(prefix="/devices")
PER_PAGE = 50
MAX_QUERY = 100


@dataclass(frozen=True, slots=True)
class DeviceRow:
    aor: str
    user: User | None
    contact: str
    source: str  # transport and address the REGISTER came from (the flow requests go back on)
    user_agent: str
    expires_in_s: int
    nated: bool


def source_text(transport: str, host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{transport.upper()} {shown}:{port}"


def _matches(row: DeviceRow, q: str) -> bool:
    q = q.casefold()
    u = row.user
    fields = [row.aor, row.user_agent, row.contact]
    if u is not None:
        fields += [u.pin, u.name, u.display_name]
    return any(q in f.casefold() for f in fields)


async def domain_devices(core: Core, p: Principal, users: list[User], q: str = "") -> list[DeviceRow]:
    """The domain's live bindings, by extension, then contact; filtered by ``q`` (user, PIN, device)."""
    now = core.clock.monotonic()
    by_aor = {aor_for(u.pin, p.domain_name): u for u in users}
    rows = [
        DeviceRow(
            aor=aor,
            user=by_aor.get(aor),
            contact=b.contact,
            source=source_text(b.flow.transport, b.flow.host, b.flow.port),
            user_agent=b.user_agent or "",
            expires_in_s=b.remaining(now),
            nated=b.nated,
        )
        for aor, b in await core.location.bindings(DomainId(p.tenant))
        if b.expires_at > now
    ]
    if q:
        rows = [r for r in rows if _matches(r, q)]
    return rows


@router.get("")
async def devices_page(request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep) -> Response:
    q = request.query_params.get("q", "").strip()[:MAX_QUERY]
    rows = await domain_devices(core, p, await users_svc.all_users(s, p.tenant), q)
    total = len(rows)
    last = max(1, -(-total // PER_PAGE))
    number = min(forms.page_number(request.query_params.get("page")), last)
    page = Page(
        items=rows[(number - 1) * PER_PAGE : number * PER_PAGE], total=total, page=number, per_page=PER_PAGE
    )
    return r.page(request, "calls/devices.html", {"page": page, "q": q})
