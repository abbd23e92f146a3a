"""The platform operator's pages: domains (create with the first admin, edit, block, unblock), the price list.

Only the operator role reaches these routes (``OperatorDep``); domain admins and users get 403. The operator
works across domains, so the queries here are by domain id, not by a tenant of the principal.
"""

from __future__ import annotations

import uuid
import zoneinfo
from functools import cache

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx import billing
from vpbx.errors import FieldError, ValidationFailed
from vpbx.pbx import domains as domains_svc
from vpbx.pbx import users as users_svc
from vpbx.pbx.validation import N_
from vpbx.store.models import Domain, User
from vpbx.web import forms
from vpbx.web.auth import CoreDep, DbDep, OperatorDep, RendererDep
from vpbx.web.forms import FormData
from vpbx.web.pages.services import money

router = APIRouter(prefix="/operator")
DOMAIN_FORM = "operator/domain_form.html"
PRICES = "operator/prices.html"

# where the first admin's field errors show on the combined form
ADMIN_FIELDS = {
    "name": "admin_name",
    "sip_login": "admin_name",
    "pin": "admin_pin",
    "web_password": "admin_password",
}


@cache
def timezones() -> list[str]:
    """Every IANA zone, for the form's suggestions: Russia's first, then the rest."""
    russian = [
        "Europe/Kaliningrad",
        "Europe/Moscow",
        "Europe/Samara",
        "Asia/Yekaterinburg",
        "Asia/Omsk",
        "Asia/Novosibirsk",
        "Asia/Krasnoyarsk",
        "Asia/Irkutsk",
        "Asia/Yakutsk",
        "Asia/Vladivostok",
        "Asia/Magadan",
        "Asia/Kamchatka",
    ]
    return russian + sorted(zoneinfo.available_timezones() - set(russian))


def _domain_input(form: FormData) -> domains_svc.DomainInput:
    return domains_svc.DomainInput(
        name=forms.text(form, "name"),
        timezone=forms.text(form, "timezone"),
        channel_limit=forms.text(form, "channel_limit"),
    )


def _domain_values(d: Domain | None, data: domains_svc.DomainInput | None = None) -> dict[str, object]:
    if data is not None:
        return dict(vars(data))
    if d is None:
        return {"name": "", "timezone": "Europe/Moscow", "channel_limit": 10}
    return {"name": d.name, "timezone": d.timezone, "channel_limit": d.channel_limit}


# --- domains ---------------------------------------------------------------------------------------------


@router.get("/domains")
async def list_domains(request: Request, r: RendererDep, _p: OperatorDep, s: DbDep) -> Response:
    q = request.query_params.get("q", "")[:100]
    page = await domains_svc.list_domains(s, q, forms.page_number(request.query_params.get("page")))
    return r.page(request, "operator/domains.html", {"page": page, "q": q})


@router.get("/domains/new")
async def new_domain(request: Request, r: RendererDep, _p: OperatorDep) -> Response:
    return r.page(
        request,
        DOMAIN_FORM,
        {
            "domain": None,
            "v": _domain_values(None),
            "admin": {"name": "admin", "pin": ""},
            "zones": timezones(),
        },
    )


@router.post("/domains")
async def create_domain(
    request: Request, r: RendererDep, _p: OperatorDep, s: DbDep, core: CoreDep
) -> Response:
    """The domain and its first admin are saved together, or nothing is: errors of both show at once."""
    form = await request.form()
    data = _domain_input(form)
    admin_name, admin_pin = forms.text(form, "admin_name"), forms.text(form, "admin_pin")
    admin_password = forms.text(form, "admin_password")
    admin = users_svc.UserInput(
        name=admin_name,
        display_name=admin_name,
        pin=admin_pin,
        role="admin",
        web_password=admin_password,
    )
    errors: list[FieldError] = []
    domain: Domain | None = None
    try:
        domain = await domains_svc.create_domain(s, data)
    except ValidationFailed as e:
        errors += e.errors
    if not admin_password:
        errors.append(FieldError("admin_password", N_("Required field")))
    admin_errors: list[FieldError] = []
    if domain is not None:
        try:
            await users_svc.create_user(s, domain.id, admin, box=core.box)
        except ValidationFailed as e:
            admin_errors = e.errors
    else:
        # the domain is invalid, yet its admin's fields are checked too, so the form shows every error at
        # once; a new domain has no users, so a domain id that does not exist checks the same rules
        admin_errors = (await users_svc.validate_user(s, uuid.uuid4(), admin)).errors
    errors += [FieldError(ADMIN_FIELDS.get(e.field, "admin_name"), e.msgid, e.params) for e in admin_errors]
    if errors:
        await s.rollback()
        return r.page(
            request,
            DOMAIN_FORM,
            {
                "domain": None,
                "v": _domain_values(None, data),
                "admin": {"name": admin_name, "pin": admin_pin},
                "zones": timezones(),
            },
            errors=ValidationFailed(errors),
            status_code=422,
        )
    await s.commit()
    return RedirectResponse("/operator/domains", status_code=303)


async def _edit_page(
    request: Request,
    r: RendererDep,
    s: AsyncSession,
    d: Domain,
    *,
    v: dict[str, object] | None = None,
    errors: ValidationFailed | None = None,
    reason: str = "",
) -> Response:
    admins = list(
        await s.scalars(
            select(User.name).where(User.domain_id == d.id, User.role == "admin").order_by(User.name)
        )
    )
    return r.page(
        request,
        DOMAIN_FORM,
        {
            "domain": d,
            "v": v if v is not None else _domain_values(d),
            "zones": timezones(),
            "admins": admins,
            "monthly_total": await billing.monthly_total(s, d.id),
            "money": money(r.translator(request).lang),
            "reason": reason,
        },
        errors=errors,
        status_code=422 if errors else 200,
    )


@router.get("/domains/{domain_id}")
async def edit_domain(
    domain_id: str, request: Request, r: RendererDep, _p: OperatorDep, s: DbDep
) -> Response:
    d = await domains_svc.get_domain(s, forms.parse_id(domain_id, "domain"))
    return await _edit_page(request, r, s, d)


@router.post("/domains/{domain_id}")
async def update_domain(
    domain_id: str, request: Request, r: RendererDep, _p: OperatorDep, s: DbDep, core: CoreDep
) -> Response:
    did = forms.parse_id(domain_id, "domain")
    data = _domain_input(await request.form())
    try:
        await domains_svc.update_domain(s, did, data, box=core.box)
    except ValidationFailed as e:
        await s.rollback()
        d = await domains_svc.get_domain(s, did)
        return await _edit_page(request, r, s, d, v=_domain_values(d, data), errors=e)
    await s.commit()
    return RedirectResponse("/operator/domains", status_code=303)


@router.post("/domains/{domain_id}/block")
async def block_domain(
    domain_id: str, request: Request, r: RendererDep, _p: OperatorDep, s: DbDep
) -> Response:
    did = forms.parse_id(domain_id, "domain")
    await domains_svc.get_domain(s, did)
    reason = forms.text(await request.form(), "reason")
    try:
        await domains_svc.set_blocked(s, did, True, reason)
    except ValidationFailed as e:
        await s.rollback()
        return await _edit_page(request, r, s, await domains_svc.get_domain(s, did), errors=e, reason=reason)
    await s.commit()
    return RedirectResponse(f"/operator/domains/{did}", status_code=303)


@router.post("/domains/{domain_id}/unblock")
async def unblock_domain(domain_id: str, _p: OperatorDep, s: DbDep) -> Response:
    did = forms.parse_id(domain_id, "domain")
    await domains_svc.set_blocked(s, did, False)
    await s.commit()
    return RedirectResponse(f"/operator/domains/{did}", status_code=303)


# --- price list ------------------------------------------------------------------------------------------


@router.get("/prices")
async def prices_page(request: Request, r: RendererDep, _p: OperatorDep, s: DbDep) -> Response:
    current = await billing.prices(s)
    return r.page(
        request,
        PRICES,
        {
            "services": billing.CATALOGUE,
            "v": {code: str(fee) for code, fee in current.items()},
            "saved": request.query_params.get("saved") == "1",
        },
    )


@router.post("/prices")
async def save_prices(request: Request, r: RendererDep, _p: OperatorDep, s: DbDep, core: CoreDep) -> Response:
    form = await request.form()
    submitted = {svc.code: forms.text(form, f"fee_{svc.code}") for svc in billing.CATALOGUE}
    try:
        await billing.set_prices(s, submitted, now=core.clock.now())
    except ValidationFailed as e:
        await s.rollback()
        return r.page(
            request,
            PRICES,
            {"services": billing.CATALOGUE, "v": submitted, "saved": False},
            errors=e,
            status_code=422,
        )
    await s.commit()
    return RedirectResponse("/operator/prices?saved=1", status_code=303)
