"""The admin desktop («Рабочий стол администратора»): one icon per section, and the user's own page."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx import billing
from vpbx.app import Core
from vpbx.errors import ValidationFailed
from vpbx.pbx import dnd
from vpbx.pbx import users as users_svc
from vpbx.pbx.validation import N_
from vpbx.store.models import Domain
from vpbx.web import forms
from vpbx.web.auth import AdminDep, CoreDep, DbDep, MemberDep, Principal, RendererDep
from vpbx.web.pages.users import dnd_since
from vpbx.web.render import Renderer

router = APIRouter()


@dataclass(frozen=True, slots=True)
class Section:
    href: str
    title: str  # msgid
    hint: str  # msgid
    icon: str  # name of an icon in templates/_icons.html


SECTIONS: list[Section] = [
    Section("/users", N_("Users"), N_("Employees, extensions and SIP accounts"), "users"),
    Section("/numbers", N_("Numbers"), N_("The domain's phone lines"), "phone"),
    Section("/trunks", N_("Trunks"), N_("Carriers' SIP trunks and their state"), "trunk"),
    Section("/groups", N_("Call groups"), N_("Ring several employees"), "group"),
    Section("/schedules", N_("Schedules"), N_("Work hours and holidays"), "clock"),
    Section("/routing", N_("Routing"), N_("Where incoming calls go"), "route"),
    Section("/menus", N_("Voice menus"), N_("Greetings and key choices"), "menu"),
    Section("/voicemail", N_("Voicemail"), N_("Mailboxes, greetings and messages"), "voicemail"),
    Section("/services", N_("Services management"), N_("Services, fees and charges"), "services"),
    Section(
        "/integrations",
        N_("Integration with external systems"),
        N_("Connect external systems such as amoCRM"),
        "link",
    ),
    Section("/autoinformer", N_("Autoinformer"), N_("Voice messages to many people"), "autoinformer"),
    Section("/calls/live", N_("Live calls"), N_("Calls in progress and busy channels"), "calls"),
    Section("/devices", N_("Devices"), N_("Registered phones and softphones"), "devices"),
    Section("/history", N_("Call journal"), N_("Every call with its protocol and recording"), "journal"),
    Section("/stats", N_("Call statistics"), N_("Calls per hour, day and user"), "chart"),
]
# shown only while the «Интеграционный API» service is on
API_SECTION = Section(
    "/integration-api", N_("Integration API"), N_("CRM connection, notifications and the request log"), "api"
)


@router.get("/")
async def desktop(request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    domain = await s.get(Domain, p.tenant)
    sections = SECTIONS
    if await billing.is_enabled(s, p.tenant, billing.INTEGRATION_API):
        sections = [*SECTIONS, API_SECTION]
    return r.page(request, "desktop.html", {"sections": sections, "domain": domain})


@router.get("/me")
async def my_page(request: Request, r: RendererDep, p: MemberDep, s: DbDep, core: CoreDep) -> Response:
    return await _me(request, r, p, s, core)


async def _me(
    request: Request,
    r: Renderer,
    p: Principal,
    s: AsyncSession,
    core: Core,
    *,
    errors: ValidationFailed | None = None,
    saved: bool = False,
) -> Response:
    assert p.user_id is not None
    user = await users_svc.get_user(s, p.tenant, p.user_id)
    return r.page(
        request,
        "me.html",
        {
            "user": user,
            "sip_password": users_svc.sip_password(user, core.box),
            "saved": saved,
            "dnd_since": await dnd_since(s, p, user),
        },
        errors=errors,
        status_code=422 if errors else 200,
    )


@router.post("/me/password")
async def change_password(
    request: Request, r: RendererDep, p: MemberDep, s: DbDep, core: CoreDep
) -> Response:
    form = await request.form()
    assert p.user_id is not None
    try:
        await users_svc.change_own_password(
            s,
            p.tenant,
            p.user_id,
            forms.text(form, "current_password"),
            forms.text(form, "new_password"),
            forms.text(form, "repeat_password"),
            keep_session=p.session_id,
        )
    except ValidationFailed as e:
        await s.rollback()
        return await _me(request, r, p, s, core, errors=e)
    await s.commit()
    return await _me(request, r, p, s, core, saved=True)


@router.post("/me/dnd")
async def switch_my_dnd(request: Request, p: MemberDep, s: DbDep, core: CoreDep) -> Response:
    """The user's own Do Not Disturb (``on`` = 1 or 0), as *78 / *79 from their phone."""
    assert p.user_id is not None
    await dnd.set_dnd(s, p.tenant, p.user_id, forms.checked(await request.form(), "on"), now=core.clock.now())
    await s.commit()
    return RedirectResponse("/me", status_code=303)
