"""Services management («Управление услугами»): the domain's services, their fees, and the charges ledger.

Plain services are switched here, each through a confirmation: switching on shows how much the monthly fee
rises and how much is charged now for the rest of the month, and «Подключить» charges exactly the sums that
were shown (if the price or the date changed meanwhile, the new sums are shown again instead). The counted
service («Интеграция с внешними системами») is read-only here: integrations such as amoCRM change its counter.
"""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from collections.abc import Callable
from decimal import Decimal
from typing import Literal

from babel.numbers import format_decimal
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx import billing
from vpbx.errors import NotFound
from vpbx.integration_api.settings import ensure_settings
from vpbx.store.models import Domain
from vpbx.web import forms
from vpbx.web.auth import AdminDep, CoreDep, DbDep, RendererDep

router = APIRouter(prefix="/services")

Action = Literal["enable", "disable"]


def money(lang: str) -> Callable[[Decimal], str]:
    """Roubles as the language writes them: «1 490,00 ₽» in Russian, «1,490.00 ₽» in English."""

    def fmt(amount: Decimal) -> str:
        return f"{format_decimal(amount, format='#,##0.00', locale=lang)}\u00a0₽"

    return fmt


def local_time(lang: str, timezone: str) -> Callable[[dt.datetime], str]:
    """A stored UTC time as the domain's wall-clock time."""
    tz = zoneinfo.ZoneInfo(timezone)
    pattern = "%d.%m.%Y %H:%M" if lang == "ru" else "%Y-%m-%d %H:%M"

    def fmt(when: dt.datetime) -> str:
        return when.astimezone(tz).strftime(pattern)

    return fmt


def _switchable(code: str) -> billing.Service:
    """Only plain services are switched by hand; the counted one is not a page here."""
    svc = billing.service(code)
    if svc.counted:
        raise NotFound("service", code)
    return svc


async def _page(
    request: Request,
    r: RendererDep,
    s: AsyncSession,
    tenant: uuid.UUID,
    *,
    confirm: dict[str, object] | None = None,
    status_code: int = 200,
) -> Response:
    domain = await s.get(Domain, tenant)
    if domain is None:
        raise NotFound("domain", tenant)
    lang = r.translator(request).lang
    rows = await billing.domain_services(s, tenant)
    ledger = await billing.ledger(s, tenant, forms.page_number(request.query_params.get("page")))
    return r.page(
        request,
        "services/list.html",
        {
            "rows": rows,
            "total": sum((row.monthly_fee for row in rows), Decimal("0.00")),
            "ledger": ledger,
            "names": {svc.code: svc.name for svc in billing.CATALOGUE},
            "money": money(lang),
            "when": local_time(lang, domain.timezone),
            "domain": domain,
            "confirm": confirm,
        },
        status_code=status_code,
    )


@router.get("")
async def services_page(request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    return await _page(request, r, s, p.tenant)


async def _confirm(
    request: Request,
    r: RendererDep,
    s: AsyncSession,
    tenant: uuid.UUID,
    core: CoreDep,
    code: str,
    action: Action,
    *,
    changed: bool = False,
) -> Response:
    svc = _switchable(code)
    enabled = await billing.is_enabled(s, tenant, code)
    if enabled == (action == "enable"):
        return RedirectResponse("/services", status_code=303)  # nothing to confirm: it already is so
    confirm: dict[str, object] = {"action": action, "service": svc, "changed": changed}
    if action == "enable":
        today = await billing.domain_today(s, tenant, core.clock.now())
        confirm["quote"] = await billing.quote_enable(s, tenant, code, today)
    else:
        confirm["fee"] = await billing.price(s, code)
    return await _page(request, r, s, tenant, confirm=confirm, status_code=409 if changed else 200)


@router.get("/{code}/enable")
async def confirm_enable(
    code: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep
) -> Response:
    return await _confirm(request, r, s, p.tenant, core, code, "enable")


@router.post("/{code}/enable")
async def enable(
    code: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep
) -> Response:
    _switchable(code)
    if await billing.is_enabled(s, p.tenant, code):
        return RedirectResponse("/services", status_code=303)
    form = await request.form()
    now = core.clock.now()
    quote = await billing.quote_enable(s, p.tenant, code, await billing.domain_today(s, p.tenant, now))
    shown = (forms.text(form, "quoted_fee"), forms.text(form, "quoted_charge"))
    if shown != (str(quote.monthly_increase), str(quote.charge_now)):
        # charge only what the admin saw; a new price or a new day means a new confirmation
        return await _confirm(request, r, s, p.tenant, core, code, "enable", changed=True)
    await billing.enable(s, p.tenant, code, now)
    if code == billing.INTEGRATION_API:
        await ensure_settings(s, p.tenant, core.box)  # the section's settings and credentials (§6.1)
    await s.commit()
    return RedirectResponse("/services", status_code=303)


@router.get("/{code}/disable")
async def confirm_disable(
    code: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep
) -> Response:
    return await _confirm(request, r, s, p.tenant, core, code, "disable")


@router.post("/{code}/disable")
async def disable(code: str, p: AdminDep, s: DbDep, core: CoreDep) -> Response:
    _switchable(code)
    await billing.disable(s, p.tenant, code, core.clock.now())
    await s.commit()
    return RedirectResponse("/services", status_code=303)
