"""Numbers section («Номера»): the domain's incoming lines; list with search, add, edit, delete."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from vpbx.errors import ValidationFailed
from vpbx.pbx import lines as svc
from vpbx.store.models import IncomingNumber
from vpbx.web import forms
from vpbx.web.auth import AdminDep, DbDep, RendererDep
from vpbx.web.forms import FormData

router = APIRouter(prefix="/numbers")
FORM = "numbers/form.html"


def _input(form: FormData) -> svc.NumberInput:
    return svc.NumberInput(number=forms.text(form, "number"), label=forms.text(form, "label"))


def _values(n: IncomingNumber | None, data: svc.NumberInput | None = None) -> dict[str, object]:
    if data is not None:
        return dict(vars(data))
    if n is None:
        return {"number": "", "label": ""}
    return {"number": n.number, "label": n.label}


@router.get("")
async def list_numbers(request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    q = request.query_params.get("q", "")[:100]
    page = await svc.list_numbers(s, p.tenant, q, forms.page_number(request.query_params.get("page")))
    counts = await svc.rule_counts(s, p.tenant, [n.id for n in page.items])
    return r.page(request, "numbers/list.html", {"page": page, "q": q, "counts": counts})


@router.get("/new")
async def new_number(request: Request, r: RendererDep, _p: AdminDep) -> Response:
    return r.page(request, FORM, {"number": None, "v": _values(None)})


@router.post("")
async def create_number(request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    data = _input(await request.form())
    try:
        await svc.create_number(s, p.tenant, data)
    except ValidationFailed as e:
        await s.rollback()
        return r.page(request, FORM, {"number": None, "v": _values(None, data)}, errors=e, status_code=422)
    await s.commit()
    return RedirectResponse("/numbers", status_code=303)


@router.get("/{number_id}")
async def edit_number(number_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    n = await svc.get_number(s, p.tenant, forms.parse_id(number_id, "number"))
    return r.page(request, FORM, {"number": n, "v": _values(n)})


@router.post("/{number_id}")
async def update_number(number_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    nid = forms.parse_id(number_id, "number")
    await svc.get_number(s, p.tenant, nid)
    data = _input(await request.form())
    try:
        await svc.update_number(s, p.tenant, nid, data)
    except ValidationFailed as e:
        await s.rollback()
        n = await svc.get_number(s, p.tenant, nid)
        return r.page(request, FORM, {"number": n, "v": _values(n, data)}, errors=e, status_code=422)
    await s.commit()
    return RedirectResponse("/numbers", status_code=303)


@router.post("/{number_id}/delete")
async def delete_number(number_id: str, p: AdminDep, s: DbDep) -> Response:
    await svc.delete_number(s, p.tenant, forms.parse_id(number_id, "number"))
    await s.commit()
    return RedirectResponse("/numbers", status_code=303)
