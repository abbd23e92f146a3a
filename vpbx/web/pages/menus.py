"""Voice menus section («Голосовые меню»): list with search, create, edit, delete."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from vpbx.errors import ValidationFailed
from vpbx.pbx import menus as svc
from vpbx.store.models import VoiceMenu
from vpbx.web import forms
from vpbx.web.auth import AdminDep, DbDep, RendererDep
from vpbx.web.forms import FormData

router = APIRouter(prefix="/menus")
FORM = "menus/form.html"


def _input(form: FormData) -> svc.MenuInput:
    return svc.MenuInput(name=forms.text(form, "name"), prompt_text=forms.text(form, "prompt_text"))


def _values(m: VoiceMenu | None, data: svc.MenuInput | None = None) -> dict[str, object]:
    if data is not None:
        return dict(vars(data))
    if m is None:
        return {"name": "", "prompt_text": ""}
    return {"name": m.name, "prompt_text": m.prompt_text}


@router.get("")
async def list_menus(request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    q = request.query_params.get("q", "")[:100]
    page = await svc.list_menus(s, p.tenant, q, forms.page_number(request.query_params.get("page")))
    return r.page(request, "menus/list.html", {"page": page, "q": q})


@router.get("/new")
async def new_menu(request: Request, r: RendererDep, _p: AdminDep) -> Response:
    return r.page(request, FORM, {"menu": None, "v": _values(None)})


@router.post("")
async def create_menu(request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    data = _input(await request.form())
    try:
        await svc.create_menu(s, p.tenant, data)
    except ValidationFailed as e:
        await s.rollback()
        return r.page(request, FORM, {"menu": None, "v": _values(None, data)}, errors=e, status_code=422)
    await s.commit()
    return RedirectResponse("/menus", status_code=303)


@router.get("/{menu_id}")
async def edit_menu(menu_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    m = await svc.get_menu(s, p.tenant, forms.parse_id(menu_id, "menu"))
    return r.page(request, FORM, {"menu": m, "v": _values(m)})


@router.post("/{menu_id}")
async def update_menu(menu_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    mid = forms.parse_id(menu_id, "menu")
    await svc.get_menu(s, p.tenant, mid)
    data = _input(await request.form())
    try:
        await svc.update_menu(s, p.tenant, mid, data)
    except ValidationFailed as e:
        await s.rollback()
        m = await svc.get_menu(s, p.tenant, mid)
        return r.page(request, FORM, {"menu": m, "v": _values(m, data)}, errors=e, status_code=422)
    await s.commit()
    return RedirectResponse("/menus", status_code=303)


@router.post("/{menu_id}/delete")
async def delete_menu(menu_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    mid = forms.parse_id(menu_id, "menu")
    try:
        await svc.delete_menu(s, p.tenant, mid)
    except ValidationFailed as e:
        await s.rollback()
        m = await svc.get_menu(s, p.tenant, mid)
        return r.page(request, FORM, {"menu": m, "v": _values(m)}, errors=e, status_code=422)
    await s.commit()
    return RedirectResponse("/menus", status_code=303)
