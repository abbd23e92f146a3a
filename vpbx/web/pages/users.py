"""Users section: list with search, create, edit, delete."""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.app import Core
from vpbx.errors import ValidationFailed
from vpbx.pbx import dnd
from vpbx.pbx import users as svc
from vpbx.pbx.registrar import aor_for
from vpbx.store.models import Domain, DomainId, User
from vpbx.web import forms
from vpbx.web.auth import AdminDep, CoreDep, DbDep, Principal, RendererDep
from vpbx.web.forms import FormData
from vpbx.web.render import Renderer

router = APIRouter(prefix="/users")


def _input(form: FormData) -> svc.UserInput:
    return svc.UserInput(
        name=forms.text(form, "name"),
        display_name=forms.text(form, "display_name"),
        pin=forms.text(form, "pin"),
        sip_login=forms.text(form, "sip_login"),
        sip_password=forms.text(form, "sip_password"),
        email=forms.text(form, "email"),
        role=forms.text(form, "role", "user"),
        web_password=forms.text(form, "web_password"),
        record_calls=forms.checked(form, "record_calls"),
        allow_international=forms.checked(form, "allow_international"),
        allow_long_distance=forms.checked(form, "allow_long_distance"),
        allow_mobile=forms.checked(form, "allow_mobile"),
        mobile_delay_s=forms.text(form, "mobile_delay_s", "15"),
        contact_numbers=forms.lines(form, "contact_numbers"),
    )


def _values(u: User | None, data: svc.UserInput | None = None) -> dict[str, object]:
    if data is not None:
        v = dict(vars(data))
        v["contact_numbers"] = "\n".join(data.contact_numbers)
        v["sip_password"] = v["web_password"] = ""
        return v
    if u is None:
        return _values(None, svc.UserInput(name="", display_name="", pin=""))
    return {
        "name": u.name,
        "display_name": u.display_name,
        "pin": u.pin,
        "sip_login": u.sip_login,
        "email": u.email or "",
        "role": u.role,
        "record_calls": u.record_calls,
        "allow_international": u.allow_international,
        "allow_long_distance": u.allow_long_distance,
        "allow_mobile": u.allow_mobile,
        "mobile_delay_s": u.mobile_delay_s,
        "contact_numbers": "\n".join(c.number for c in u.contact_numbers),
    }


@dataclass(frozen=True, slots=True)
class Device:
    contact: str
    user_agent: str
    source: str
    expires_in_s: int
    nated: bool


async def devices(core: Core, p: Principal, u: User) -> list[Device]:
    """The user's live registrations, as the SIP node keeps them."""
    now = core.clock.monotonic()
    bindings = await core.location.lookup(DomainId(p.tenant), aor_for(u.pin, p.domain_name))
    return [
        Device(
            b.contact,
            b.user_agent or "",
            f"{b.flow.transport.upper()} {b.flow.host}:{b.flow.port}",
            b.remaining(now),
            b.nated,
        )
        for b in bindings
        if b.expires_at > now
    ]


async def dnd_since(s: AsyncSession, p: Principal, u: User) -> str:
    """When ``u`` switched DND on, in the domain's time zone ("" when off)."""
    if not u.dnd or u.dnd_since is None:
        return ""
    domain = await s.get(Domain, p.tenant)
    zone = zoneinfo.ZoneInfo(domain.timezone if domain is not None else "UTC")
    return u.dnd_since.astimezone(zone).strftime("%d.%m.%Y %H:%M")


@router.get("")
async def list_users(request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep) -> Response:
    q = request.query_params.get("q", "")[:100]
    page = await svc.list_users(s, p.tenant, q, forms.page_number(request.query_params.get("page")))
    online = {u.id: len(await devices(core, p, u)) for u in page.items}
    return r.page(request, "users/list.html", {"page": page, "q": q, "online": online})


@router.get("/new")
async def new_user(request: Request, r: RendererDep, _p: AdminDep) -> Response:
    return r.page(request, "users/form.html", {"user": None, "v": _values(None)})


@router.post("")
async def create_user(request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep) -> Response:
    data = _input(await request.form())
    try:
        await svc.create_user(s, p.tenant, data, box=core.box)
    except ValidationFailed as e:
        await s.rollback()
        return r.page(
            request, "users/form.html", {"user": None, "v": _values(None, data)}, errors=e, status_code=422
        )
    await s.commit()
    return RedirectResponse("/users", status_code=303)


async def _edit_form(
    request: Request,
    r: Renderer,
    core: Core,
    p: Principal,
    u: User,
    s: AsyncSession,
    *,
    data: svc.UserInput | None = None,
    errors: ValidationFailed | None = None,
) -> Response:
    """The edit page of ``u``: as stored, or with the submitted ``data`` and its ``errors``."""
    context = {
        "user": u,
        "v": _values(u, data),
        "sip_password": svc.sip_password(u, core.box),
        "devices": await devices(core, p, u),
        "dnd_since": await dnd_since(s, p, u),
    }
    return r.page(request, "users/form.html", context, errors=errors, status_code=422 if errors else 200)


@router.get("/{user_id}")
async def edit_user(
    user_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep
) -> Response:
    u = await svc.get_user(s, p.tenant, forms.parse_id(user_id, "user"))
    return await _edit_form(request, r, core, p, u, s)


@router.post("/{user_id}")
async def update_user(
    user_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep
) -> Response:
    uid = forms.parse_id(user_id, "user")
    u = await svc.get_user(s, p.tenant, uid)
    data = _input(await request.form())
    try:
        await svc.update_user(s, p.tenant, uid, data, box=core.box)
    except ValidationFailed as e:
        await s.rollback()
        u = await svc.get_user(s, p.tenant, uid)
        return await _edit_form(request, r, core, p, u, s, data=data, errors=e)
    await s.commit()
    return RedirectResponse("/users", status_code=303)


@router.post("/{user_id}/delete")
async def delete_user(
    user_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep
) -> Response:
    uid = forms.parse_id(user_id, "user")
    try:
        await svc.delete_user(s, p.tenant, uid)
    except ValidationFailed as e:
        await s.rollback()
        u = await svc.get_user(s, p.tenant, uid)
        return await _edit_form(request, r, core, p, u, s, errors=e)
    await s.commit()
    return RedirectResponse("/users", status_code=303)


@router.post("/{user_id}/dnd")
async def switch_dnd(user_id: str, request: Request, p: AdminDep, s: DbDep, core: CoreDep) -> Response:
    """The user's Do Not Disturb, switched by an admin (``on`` = 1 or 0); another domain's user: 404."""
    uid = forms.parse_id(user_id, "user")
    on = forms.checked(await request.form(), "on")
    await dnd.set_dnd(s, p.tenant, uid, on, now=core.clock.now())
    await s.commit()
    return RedirectResponse(f"/users/{uid}", status_code=303)
