"""Call groups section («Группы»): list with search, create, edit, delete."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.errors import ValidationFailed
from vpbx.pbx import groups as svc
from vpbx.pbx import menus, users
from vpbx.pbx.actions import ActionInput
from vpbx.store.models import CallGroup
from vpbx.web import forms
from vpbx.web.auth import AdminDep, DbDep, RendererDep
from vpbx.web.forms import FormData

router = APIRouter(prefix="/groups")
FORM = "groups/form.html"


def _input(form: FormData) -> svc.GroupInput:
    action = forms.text(form, "fallthrough_action").strip()
    user_id = forms.optional_id(forms.text(form, "fallthrough_user_id"))
    group_id = forms.optional_id(forms.text(form, "fallthrough_group_id"))
    if action == "voicemail" and user_id is not None:
        group_id = None  # a user's voicemail when a user is chosen, else the chosen group's
    return svc.GroupInput(
        name=forms.text(form, "name"),
        pin=forms.text(form, "pin"),
        strategy=forms.text(form, "strategy", "simultaneous"),
        member_timeout_s=forms.text(form, "member_timeout_s", "20"),
        overall_timeout_s=forms.text(form, "overall_timeout_s", "60"),
        members=forms.lines(form, "members"),
        fallthrough=ActionInput(
            action=action,
            user_id=user_id,
            group_id=group_id,
            menu_id=forms.optional_id(forms.text(form, "fallthrough_menu_id")),
            number=forms.text(form, "fallthrough_number"),
        ),
    )


def _id(value: uuid.UUID | None) -> str:
    return str(value) if value else ""


def _fallthrough_values(ft: ActionInput) -> dict[str, object]:
    return {
        "fallthrough_action": ft.action,
        "fallthrough_user_id": _id(ft.user_id),
        "fallthrough_group_id": _id(ft.group_id),
        "fallthrough_menu_id": _id(ft.menu_id),
        "fallthrough_number": ft.number,
    }


async def _values(
    s: AsyncSession, domain_id: uuid.UUID, g: CallGroup | None, data: svc.GroupInput | None = None
) -> dict[str, object]:
    if data is not None:
        return {
            "name": data.name,
            "pin": data.pin,
            "strategy": data.strategy,
            "member_timeout_s": data.member_timeout_s,
            "overall_timeout_s": data.overall_timeout_s,
            "members": "\n".join(data.members),
            **_fallthrough_values(data.fallthrough),
        }
    if g is None:
        return {
            "name": "",
            "pin": "",
            "strategy": "simultaneous",
            "member_timeout_s": 20,
            "overall_timeout_s": 60,
            "members": "",
            **_fallthrough_values(ActionInput(action=svc.HANG_UP)),
        }
    return {
        "name": g.name,
        "pin": g.pin,
        "strategy": g.strategy,
        "member_timeout_s": g.member_timeout_s,
        "overall_timeout_s": g.overall_timeout_s,
        "members": "\n".join(await svc.member_pins(s, domain_id, g)),
        **_fallthrough_values(svc.fallthrough_of(g)),
    }


async def _context(
    s: AsyncSession, domain_id: uuid.UUID, g: CallGroup | None, data: svc.GroupInput | None = None
) -> dict[str, object]:
    """The form's values and what it offers: the domain's users, groups and voice menus."""
    domain_users = await users.all_users(s, domain_id)
    none = [("", "—")]
    return {
        "group": g,
        "v": await _values(s, domain_id, g, data),
        "users": domain_users,
        "user_options": none + [(str(u.id), f"{u.pin} — {u.display_name}") for u in domain_users],
        "group_options": none
        + [(str(x.id), f"{x.pin} — {x.name}") for x in await svc.all_groups(s, domain_id)],
        "menu_options": none + [(str(m.id), m.name) for m in await menus.all_menus(s, domain_id)],
    }


@router.get("")
async def list_groups(request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    q = request.query_params.get("q", "")[:100]
    page = await svc.list_groups(s, p.tenant, q, forms.page_number(request.query_params.get("page")))
    return r.page(request, "groups/list.html", {"page": page, "q": q})


@router.get("/new")
async def new_group(request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    return r.page(request, FORM, await _context(s, p.tenant, None))


@router.post("")
async def create_group(request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    data = _input(await request.form())
    try:
        await svc.create_group(s, p.tenant, data)
    except ValidationFailed as e:
        await s.rollback()
        return r.page(request, FORM, await _context(s, p.tenant, None, data), errors=e, status_code=422)
    await s.commit()
    return RedirectResponse("/groups", status_code=303)


@router.get("/{group_id}")
async def edit_group(group_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    g = await svc.get_group(s, p.tenant, forms.parse_id(group_id, "group"))
    return r.page(request, FORM, await _context(s, p.tenant, g))


@router.post("/{group_id}")
async def update_group(group_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    gid = forms.parse_id(group_id, "group")
    await svc.get_group(s, p.tenant, gid)
    data = _input(await request.form())
    try:
        await svc.update_group(s, p.tenant, gid, data)
    except ValidationFailed as e:
        await s.rollback()
        g = await svc.get_group(s, p.tenant, gid)
        return r.page(request, FORM, await _context(s, p.tenant, g, data), errors=e, status_code=422)
    await s.commit()
    return RedirectResponse("/groups", status_code=303)


@router.post("/{group_id}/delete")
async def delete_group(group_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    gid = forms.parse_id(group_id, "group")
    try:
        await svc.delete_group(s, p.tenant, gid)
    except ValidationFailed as e:
        await s.rollback()
        g = await svc.get_group(s, p.tenant, gid)
        return r.page(request, FORM, await _context(s, p.tenant, g), errors=e, status_code=422)
    await s.commit()
    return RedirectResponse("/groups", status_code=303)
