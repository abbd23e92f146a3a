"""«Интеграция с внешними системами» (amocrm.md F2–F4, F15): the domain's amoCRM link, connecting it from
the widget's ticket, and switching it off.

The connect page ``/integrations/amocrm/connect?ticket=…`` is where the widget's «Подключить» lands (after
the login, which keeps the ticket in ``next``). It shows exactly one of: the fee modal with the two sums of
«Управление услугами» (F2), the F3 refusal (get_number_info is on), the F4 modal naming the account the
domain is linked to, or the refusal naming the domain the account is linked to. «Подключить» charges only
the sums that were shown and uses the ticket up; «Отмена» leaves the ticket valid until it expires. Domain
administrators only; every lookup is the session's domain's.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx import billing
from vpbx.amocrm import binding as amo
from vpbx.amocrm import health as amo_health
from vpbx.amocrm import jobs as amo_jobs
from vpbx.amocrm import recordings as amo_recordings
from vpbx.amocrm.relink import reissue_link
from vpbx.app import Core
from vpbx.errors import NotFound
from vpbx.store.models import AmoInstall, AmoRecordingLink, CrmBinding, Domain
from vpbx.web import forms
from vpbx.web.auth import AdminDep, CoreDep, DbDep, RendererDep
from vpbx.web.pages.services import local_time, money
from vpbx.web.render import Renderer

router = APIRouter(prefix="/integrations")

CONNECT = "/integrations/amocrm/connect"


async def _domain(s: AsyncSession, tenant: uuid.UUID) -> Domain:
    domain = await s.get(Domain, tenant)
    if domain is None:
        raise NotFound("domain", tenant)
    return domain


LINKS_LISTED = 20


async def _links(s: AsyncSession, binding_id: uuid.UUID) -> list[AmoRecordingLink]:
    """The binding's newest recording links (live and revoked) for the revoke/reissue actions."""
    rows = await s.scalars(
        select(AmoRecordingLink)
        .where(AmoRecordingLink.binding_id == binding_id)
        .order_by(AmoRecordingLink.created_at.desc())
        .limit(LINKS_LISTED)
    )
    return list(rows)


async def _page(
    request: Request,
    r: Renderer,
    s: AsyncSession,
    core: Core,
    tenant: uuid.UUID,
    *,
    modal: dict[str, Any] | None = None,
    notice: str = "",
    status_code: int = 200,
) -> Response:
    domain = await _domain(s, tenant)
    lang = r.translator(request).lang
    current = await amo.active_binding(s, tenant)
    install = await amo.install_of(s, current.external_account_id) if current else None
    health = await amo_health.binding_health(s, core, current, app=request.app) if current else None
    links = await _links(s, current.id) if current is not None else []
    if health is not None:
        last = health["last_success_at"]
        health["last_success_at_local"] = (
            local_time(lang, domain.timezone)(dt.datetime.fromisoformat(last)) if last else ""
        )
        for alert in health["alerts"]:  # e.g. the last 429's time, in the domain's time zone
            if alert["params"].get("time"):
                when = dt.datetime.fromisoformat(alert["params"]["time"])
                alert["params"] = {**alert["params"], "time": local_time(lang, domain.timezone)(when)}
    return r.page(
        request,
        "integrations/page.html",
        {
            "settings_tab": "integrations",
            "domain": domain,
            "binding": current,
            "needs_reauth": current is not None
            and (install is None or install.token_state == "needs_reauth"),
            "counter": await billing.counter(s, tenant, billing.EXTERNAL_INTEGRATIONS),
            "configured": bool(core.settings.amocrm.client_id and core.settings.amocrm.client_secret),
            "confirm_disable": current is not None and request.query_params.get("confirm") == "disable",
            "health": health,
            "links": links,
            "modal": modal,
            "notice": notice or request.query_params.get("notice", ""),
            "money": money(lang),
            "when": local_time(lang, domain.timezone),
        },
        status_code=status_code,
    )


@router.get("")
async def integrations_page(
    request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep
) -> Response:
    return await _page(request, r, s, core, p.tenant)


@router.post("/amocrm/disable")
async def disable_amocrm(p: AdminDep, s: DbDep, core: CoreDep) -> Response:
    """F15 from the PBX side, after the confirmation."""
    current = await amo.active_binding(s, p.tenant)
    if current is not None:
        await amo.disable(s, current, reason="cabinet", now=core.clock.now())
        await s.commit()
    return RedirectResponse("/integrations?notice=disabled", status_code=303)


@router.post("/amocrm/jobs/{job_id}/retry")
async def retry_job(job_id: str, p: AdminDep, s: DbDep, core: CoreDep) -> Response:
    """«Повторить» for a dead job of the session's domain's binding (another domain's job: 404)."""
    current = await amo.active_binding(s, p.tenant)
    try:
        wanted = uuid.UUID(job_id)
    except ValueError:
        raise NotFound("job", job_id) from None
    if current is None or not await amo_jobs.retry_dead(s, current.id, wanted, core.clock.now()):
        raise NotFound("job", job_id)
    await s.commit()
    return RedirectResponse("/integrations?notice=retried", status_code=303)


@router.post("/amocrm/recordings/revoke")
async def revoke_recordings(request: Request, p: AdminDep, s: DbDep, core: CoreDep) -> Response:
    """Revoke one recording link (``token`` in the form) or every link of the domain's binding (§5.5)."""
    current = await amo.active_binding(s, p.tenant)
    if current is None:
        raise NotFound("binding", p.tenant)
    token = forms.text(await request.form(), "token") or None
    count = await amo_recordings.revoke_links(s, current.id, now=core.clock.now(), token=token)
    if token is not None and not count:
        raise NotFound("recording link", token)
    await s.commit()
    return RedirectResponse("/integrations?notice=revoked", status_code=303)


@router.post("/amocrm/recordings/{token}/reissue")
async def reissue_recording(token: str, p: AdminDep, s: DbDep, core: CoreDep) -> Response:
    """A revoked link of the domain's binding gets a new token; a job sends it to amoCRM (``relink``)."""
    current = await amo.active_binding(s, p.tenant)
    new = await reissue_link(s, current.id, token, core.clock.now()) if current is not None else None
    if new is None:
        raise NotFound("recording link", token)
    await s.commit()
    return RedirectResponse("/integrations?notice=reissued", status_code=303)


async def _ticket_install(s: AsyncSession, raw: str, core: Core) -> tuple[str, AmoInstall] | None:
    """The ticket's install while the ticket is usable, else None."""
    try:
        ticket = await amo.peek_ticket(s, raw, core.clock.now())
    except amo.TicketInvalid:
        return None
    install = await amo.install_of(s, ticket.amo_account_id)
    return (raw, install) if install is not None else None


async def _connect_modal(
    s: AsyncSession, core: Core, tenant: uuid.UUID, raw: str, install: AmoInstall, *, changed: bool = False
) -> dict[str, Any]:
    """What the connect page shows for this ticket in this domain now."""
    check = await amo.connect_check(s, domain_id=tenant, install=install)
    modal: dict[str, Any] = {"kind": check.outcome, "ticket": raw, "host": install.base_domain}
    if check.outcome == "ready":
        today = await billing.domain_today(s, tenant, core.clock.now())
        modal["quote"] = await billing.quote_enable(s, tenant, billing.EXTERNAL_INTEGRATIONS, today)
        modal["changed"] = changed
    elif check.outcome == "domain_elsewhere":
        current: CrmBinding | None = check.current
        modal["linked_host"] = current.base_domain if current else ""
    elif check.outcome == "account_elsewhere":
        modal["other_domain"] = check.other_domain
    return modal


def _invalid_ticket(given: bool) -> dict[str, Any]:
    return {"kind": "ticket_invalid" if given else "ticket_missing"}


@router.get("/amocrm/connect")
async def connect_page(request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep) -> Response:
    raw = request.query_params.get("ticket", "")
    found = await _ticket_install(s, raw, core)
    if found is None:
        return await _page(
            request, r, s, core, p.tenant, modal=_invalid_ticket(bool(raw)), status_code=410 if raw else 200
        )
    modal = await _connect_modal(s, core, p.tenant, raw, found[1])
    return await _page(request, r, s, core, p.tenant, modal=modal)


@router.post("/amocrm/connect")
async def connect(request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep) -> Response:
    """F2.4 «Подключить»: binds, counts, charges what was shown, uses the ticket up."""
    form = await request.form()
    raw = forms.text(form, "ticket")
    found = await _ticket_install(s, raw, core)
    if found is None:
        return await _page(request, r, s, core, p.tenant, modal=_invalid_ticket(bool(raw)), status_code=410)
    install = found[1]
    now = core.clock.now()
    modal = await _connect_modal(s, core, p.tenant, raw, install)
    if modal["kind"] == "already":
        return RedirectResponse("/integrations?notice=connected", status_code=303)
    if modal["kind"] != "ready":
        return await _page(request, r, s, core, p.tenant, modal=modal, status_code=409)
    quote = modal["quote"]
    shown = (forms.text(form, "quoted_fee"), forms.text(form, "quoted_charge"))
    if shown != (str(quote.monthly_increase), str(quote.charge_now)):
        modal["changed"] = True  # charge only what the admin saw
        return await _page(request, r, s, core, p.tenant, modal=modal, status_code=409)
    try:
        await amo.activate(s, domain_id=p.tenant, install=install, now=now)
        await amo.use_ticket(s, raw, now)
    except amo.BindError:
        await s.rollback()
        found = await _ticket_install(s, raw, core)
        modal = await _connect_modal(s, core, p.tenant, raw, found[1]) if found else _invalid_ticket(True)
        if modal["kind"] == "ready":  # linked or used meanwhile (another tab)
            modal = _invalid_ticket(True)
        return await _page(request, r, s, core, p.tenant, modal=modal, status_code=409)
    await s.commit()
    return RedirectResponse("/integrations?notice=connected", status_code=303)


@router.post("/amocrm/connect/replace")
async def replace(request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep) -> Response:
    """F4 «Отключить интеграцию»: the domain's current link goes as in F15, then the new one's fee modal."""
    form = await request.form()
    raw = forms.text(form, "ticket")
    found = await _ticket_install(s, raw, core)
    if found is None:
        return await _page(request, r, s, core, p.tenant, modal=_invalid_ticket(bool(raw)), status_code=410)
    current = await amo.active_binding(s, p.tenant)
    if current is not None and current.external_account_id != found[1].amo_account_id:
        await amo.disable(s, current, reason="replaced", now=core.clock.now())
        await s.commit()
    return RedirectResponse(f"{CONNECT}?ticket={raw}", status_code=303)
