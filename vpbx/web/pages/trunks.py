"""Trunks section («Транки»): the domain's carriers with their live state; add, edit, delete.

The list holds a fragment (``/trunks/status``) that htmx fetches again every ``POLL_S`` seconds, so a
registration that fails or a trunk that stops answering shows without a reload. States come from the trunk
monitor's status board; only the admin's own tenant is read from it. The password is never sent back.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from vpbx.app import Core
from vpbx.errors import ValidationFailed
from vpbx.pbx import trunks as svc
from vpbx.pbx.trunkmon import TrunkStatus
from vpbx.pbx.validation import N_
from vpbx.store.models import Trunk
from vpbx.web import forms
from vpbx.web.auth import AdminDep, CoreDep, DbDep, Principal, RendererDep
from vpbx.web.forms import FormData
from vpbx.web.render import Renderer

router = APIRouter(prefix="/trunks")
FORM = "trunks/form.html"
POLL_S = 5

STATES: dict[str, str] = {
    "disabled": N_("Disabled"),
    "unknown": N_("Not checked yet"),
    "registering": N_("Registering…"),
    "registered": N_("Registered"),
    "auth-failed": N_("Wrong credentials"),
    "unreachable": N_("Unreachable"),
    "rejected": N_("Registration refused"),
    "up": N_("Up"),
    "down": N_("Down"),
}
KINDS = [("registration", N_("Registration (we register to the carrier)")), ("ip", N_("By IP address"))]
CALLER_ID_MODES = [
    ("domain", N_("The domain's number")),
    ("user", N_("The employee's own number")),
    ("fixed", N_("A fixed number")),
]
NUMBER_FORMATS = [("e164", "+7XXXXXXXXXX"), ("plain", "7XXXXXXXXXX"), ("national", "8XXXXXXXXXX")]


def _input(form: FormData) -> svc.TrunkInput:
    return svc.TrunkInput(
        name=forms.text(form, "name"),
        kind=forms.text(form, "kind", "registration"),
        host=forms.text(form, "host"),
        port=forms.text(form, "port", "5060"),
        transport=forms.text(form, "transport", "udp"),
        outbound_proxy=forms.text(form, "outbound_proxy"),
        username=forms.text(form, "username"),
        auth_username=forms.text(form, "auth_username"),
        password=forms.text(form, "password"),
        expires_s=forms.text(form, "expires_s", "3600"),
        from_user=forms.text(form, "from_user"),
        from_domain=forms.text(form, "from_domain"),
        caller_id_mode=forms.text(form, "caller_id_mode", "domain"),
        caller_id_number=forms.text(form, "caller_id_number"),
        number_format=forms.text(form, "number_format", "e164"),
        max_calls=forms.text(form, "max_calls", "10"),
        priority=forms.text(form, "priority", "10"),
        enabled=forms.checked(form, "enabled"),
        allowed_networks=forms.lines(form, "allowed_networks"),
    )


def _values(t: Trunk | None, data: svc.TrunkInput | None = None) -> dict[str, object]:
    if data is not None:
        v = dict(vars(data))
        v["allowed_networks"] = "\n".join(data.allowed_networks or [])
        v["password"] = ""
        return v
    if t is None:
        return _values(None, svc.TrunkInput(name=""))
    return {
        "name": t.name,
        "kind": t.kind,
        "host": t.host,
        "port": t.port,
        "transport": t.transport,
        "outbound_proxy": t.outbound_proxy or "",
        "username": t.username,
        "auth_username": t.auth_username,
        "password": "",
        "expires_s": t.expires_s,
        "from_user": t.from_user,
        "from_domain": t.from_domain,
        "caller_id_mode": t.caller_id_mode,
        "caller_id_number": t.caller_id_number or "",
        "number_format": t.number_format,
        "max_calls": t.max_calls,
        "priority": t.priority,
        "enabled": t.enabled,
        "allowed_networks": t.allowed_networks,
    }


def _statuses(core: Core, p: Principal) -> dict[uuid.UUID, TrunkStatus]:
    return core.trunks.for_domain(p.tenant)


def _context(core: Core, p: Principal, items: list[Trunk]) -> dict[str, object]:
    return {"trunks": items, "statuses": _statuses(core, p), "states": STATES, "poll_s": POLL_S}


@router.get("")
async def list_trunks(request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep) -> Response:
    items = await svc.list_trunks(s, p.tenant)
    return r.page(request, "trunks/list.html", _context(core, p, items))


@router.get("/status")
async def trunk_rows(request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep) -> Response:
    items = await svc.list_trunks(s, p.tenant)
    return r.page(request, "trunks/_status.html", _context(core, p, items))


def _form(
    request: Request,
    r: Renderer,
    core: Core,
    p: Principal,
    t: Trunk | None,
    *,
    data: svc.TrunkInput | None = None,
    errors: ValidationFailed | None = None,
) -> Response:
    context = {
        "trunk": t,
        "v": _values(t, data),
        "status": core.trunks.get(p.tenant, t.id) if t is not None else None,
        "states": STATES,
        "kinds": KINDS,
        "caller_id_modes": CALLER_ID_MODES,
        "number_formats": NUMBER_FORMATS,
    }
    return r.page(request, FORM, context, errors=errors, status_code=422 if errors else 200)


@router.get("/new")
async def new_trunk(request: Request, r: RendererDep, p: AdminDep, core: CoreDep) -> Response:
    return _form(request, r, core, p, None)


@router.post("")
async def create_trunk(request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep) -> Response:
    data = _input(await request.form())
    try:
        await svc.create_trunk(s, p.tenant, data, box=core.box)
    except ValidationFailed as e:
        await s.rollback()
        return _form(request, r, core, p, None, data=data, errors=e)
    await s.commit()
    return RedirectResponse("/trunks", status_code=303)


@router.get("/{trunk_id}")
async def edit_trunk(
    trunk_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep
) -> Response:
    t = await svc.get_trunk(s, p.tenant, forms.parse_id(trunk_id, "trunk"))
    return _form(request, r, core, p, t)


@router.post("/{trunk_id}")
async def update_trunk(
    trunk_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep
) -> Response:
    tid = forms.parse_id(trunk_id, "trunk")
    await svc.get_trunk(s, p.tenant, tid)
    data = _input(await request.form())
    try:
        await svc.update_trunk(s, p.tenant, tid, data, box=core.box)
    except ValidationFailed as e:
        await s.rollback()
        t = await svc.get_trunk(s, p.tenant, tid)
        return _form(request, r, core, p, t, data=data, errors=e)
    await s.commit()
    return RedirectResponse("/trunks", status_code=303)


@router.post("/{trunk_id}/delete")
async def delete_trunk(trunk_id: str, p: AdminDep, s: DbDep) -> Response:
    await svc.delete_trunk(s, p.tenant, forms.parse_id(trunk_id, "trunk"))
    await s.commit()
    return RedirectResponse("/trunks", status_code=303)
