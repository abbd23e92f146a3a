"""The cabinet section «Автоинформатор» (autoinformer.md §1, §8): the campaign list, a campaign's tabs
(«Сообщение», «Контакты», «Расписание», «Попытки и линии», «Реакции на нажатия»; «Отчёт» is in
``ai_report``) and its actions, and the domain's «Резерв линий для обычных вызовов».

Reached from the admin desktop's icon and from «Настройки» → tab «Автоинформатор». Until the service is on
in «Управление услугами» every page of the section shows the activation prompt instead. Admin rights are
required; every lookup filters by the session's domain, so another domain's campaign id is 404.
"""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx import billing
from vpbx.app import Core
from vpbx.autoinformer import campaigns as svc
from vpbx.autoinformer import contacts as contacts_svc
from vpbx.autoinformer import render
from vpbx.autoinformer.errors import AutoinformerError
from vpbx.autoinformer.schemas import MAX_VALUE_CHARS, MOSCOW, VOICES, CampaignSpec
from vpbx.autoinformer.status import InvalidTransition
from vpbx.autoinformer.tables import TableError
from vpbx.errors import FieldError, NotFound, ValidationFailed
from vpbx.media.prompts import PromptError
from vpbx.pbx.menus import record_prompt
from vpbx.pbx.validation import N_
from vpbx.store.models import (
    AI_CONTACT_STATUSES,
    AI_OUTCOMES,
    AiAudioFile,
    AiCampaign,
    AiContact,
    AuditEntry,
    CallGroup,
    Domain,
    IncomingNumber,
    User,
    VoiceMenu,
)
from vpbx.store.paging import paginate
from vpbx.web import aiforms, forms
from vpbx.web.auth import AdminDep, CoreDep, DbDep, Principal, RendererDep
from vpbx.web.pages.menus import prompt_file
from vpbx.web.render import Renderer
from vpbx.web.sections import SectionRoute, ServiceOff

router = APIRouter(prefix="/autoinformer", route_class=SectionRoute)

BASE = "/autoinformer"
MAX_RESERVE = 1000
LIST_PAGE = 20
CONTACTS_PAGE = 50
MAX_LIST_BYTES = 20 * 1024 * 1024  # a CSV/XLSX contact list (§3.2)
CAMPAIGN_STATUS: dict[str, str] = {
    "draft": N_("draft"),
    "scheduled": N_("scheduled"),
    "running": N_("running"),
    "paused": N_("paused"),
    "completed": N_("completed"),
    "stopped": N_("stopped"),
    "error": N_("error"),
}
CONTACT_STATUS: dict[str, str] = {
    "pending": N_("pending"),
    "in_progress": N_("in progress"),
    "waiting_retry": N_("waiting for a retry"),
    "succeeded": N_("succeeded"),
    "not_succeeded": N_("not succeeded"),
    "attempts_exhausted": N_("attempts exhausted"),
    "invalid_number": N_("invalid number"),
    "opted_out": N_("opted out"),
    "excluded": N_("excluded (stop list)"),
    "error": N_("error"),
    "cancelled": N_("cancelled"),
    "expired": N_("expired"),
}
OUTCOME: dict[str, str] = {
    "success": N_("success"),
    "answered_incomplete": N_("answered, criterion not met"),
    "opted_out": N_("opted out"),
    "machine": N_("answering machine"),
    "busy": N_("busy"),
    "no_answer": N_("no answer"),
    "rejected": N_("rejected"),
    "invalid_number": N_("invalid number"),
    "failed": N_("failed"),
}
ERROR_REASON: dict[str, str] = {
    "domain_blocked": N_("the domain is blocked"),
    "service_disabled": N_("the service is disabled"),
    "caller_id_unavailable": N_("the caller ID is not a line of the domain any more"),
    "audio_unavailable": N_("an audio file of the message is missing"),
}
ACTION_LABEL: dict[str, str] = {
    "connect": N_("connect to an operator"),
    "repeat": N_("repeat the message"),
    "confirm": N_("confirm"),
    "opt_out": N_("opt out (stop list)"),
    "hangup": N_("hang up"),
}
TARGET_LABEL: dict[str, str] = {
    "user": N_("user (PIN)"),
    "group": N_("group (PIN)"),
    "menu": N_("voice menu (name)"),
    "number": N_("external number"),
}
CRITERION_LABEL: dict[str, str] = {
    "answered": N_("the call is answered"),
    "listened_full": N_("listened to the end"),
    "listened_min": N_("listened at least N seconds"),
    "confirmed": N_("confirmed by a key"),
}
TABS: tuple[tuple[str, str], ...] = (
    ("message", N_("Message")),
    ("contacts", N_("Contacts")),
    ("schedule", N_("Schedule")),
    ("lines", N_("Attempts and lines")),
    ("keys", N_("Key press reactions")),
    ("report", N_("Report")),
)
# which admin actions each status offers (§4.1); the service refuses anything else
ACTIONS_BY_STATUS: dict[str, tuple[str, ...]] = {
    "draft": ("start", "copy", "delete"),
    "scheduled": ("stop", "copy"),
    "running": ("pause", "stop", "copy"),
    "paused": ("resume", "stop", "copy"),
    "error": ("resume", "stop", "copy"),
    "completed": ("copy", "delete"),
    "stopped": ("copy", "delete"),
}
ACTION_BUTTON: dict[str, str] = {
    "start": N_("Start"),
    "pause": N_("Pause"),
    "resume": N_("Resume"),
    "stop": N_("Stop"),
    "copy": N_("Copy"),
    "delete": N_("Delete"),
}
TRANSITION_ERROR = N_("This action is not allowed while the campaign is «{status}».")
NOT_EDITABLE = N_("This part of the campaign cannot be changed while it is «{status}».")


# --- the section -------------------------------------------------------------------------------------------


async def domain_of(s: AsyncSession, tenant: uuid.UUID) -> Domain:
    domain = await s.get(Domain, tenant)
    if domain is None:
        raise NotFound("domain", tenant)
    return domain


async def service_on(s: AsyncSession, tenant: uuid.UUID) -> bool:
    return await billing.is_enabled(s, tenant, billing.AUTOINFORMER)


def off_page(request: Request, r: Renderer) -> Response:
    """The activation prompt: the section exists once «Автоинформатор» is on in «Управление услугами»."""
    return r.page(request, "autoinformer/off.html", {"settings_tab": "autoinformer"})


async def require_on(s: AsyncSession, tenant: uuid.UUID) -> None:
    """``ServiceOff`` (the «off» page, see ``vpbx.web.sections``) while the service is off."""
    if not await service_on(s, tenant):
        raise ServiceOff(off_page)


async def _service_on(p: AdminDep, s: DbDep) -> None:
    await require_on(s, p.tenant)


ServiceOnDep = Annotated[None, Depends(_service_on)]


def local_time(timezone: str) -> Callable[[dt.datetime | None], str]:
    """A stored UTC time as the domain's wall clock (``—`` when unset)."""
    tz = zoneinfo.ZoneInfo(timezone)

    def fmt(when: dt.datetime | None) -> str:
        if when is None:
            return "—"
        return (
            (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).astimezone(tz).strftime("%d.%m.%Y %H:%M")
        )

    return fmt


def msk_to_local(timezone: str) -> Callable[[str | None], str]:
    """The campaign object's Moscow ``start_at``/``end_at`` as the domain's wall clock."""

    def fmt(moscow: str | None) -> str:
        if not moscow:
            return "—"
        return aiforms.to_local(moscow, timezone).replace("T", " ")

    return fmt


async def get_campaign(s: AsyncSession, tenant: uuid.UUID, campaign_id: str) -> AiCampaign:
    """The domain's campaign; another domain's (or a malformed) id is not found."""
    cid = forms.parse_id(campaign_id, "campaign")
    row = await s.scalar(select(AiCampaign).where(AiCampaign.id == cid, AiCampaign.domain_id == tenant))
    if row is None:
        raise NotFound("campaign", campaign_id[:64])
    return row


async def _campaign_on(campaign_id: str, p: AdminDep, s: DbDep) -> AiCampaign:
    """The path's campaign, in the route's own session: another domain's id is 404 whether the service is
    on or not, then ``ServiceOff`` while it is off."""
    row = await get_campaign(s, p.tenant, campaign_id)
    await require_on(s, p.tenant)
    return row


CampaignDep = Annotated[AiCampaign, Depends(_campaign_on)]


def progress(counters: dict[str, int]) -> int:
    """% of the campaign's contacts that are final (the list's progress bar)."""
    total = counters["total"]
    final = total - sum(counters[st] for st in ("pending", "in_progress", "waiting_retry"))
    return round(100 * final / total) if total else 0


@router.get("")
async def campaigns_page(
    request: Request, r: RendererDep, p: AdminDep, s: DbDep, _on: ServiceOnDep
) -> Response:
    return await _list(request, r, s, p)


async def _list(
    request: Request,
    r: Renderer,
    s: AsyncSession,
    p: Principal,
    *,
    errors: ValidationFailed | None = None,
    reserve: str | None = None,
    notice: str = "",
) -> Response:
    domain = await domain_of(s, p.tenant)
    found = await svc.list_campaigns(
        s, p.tenant, page=forms.page_number(request.query_params.get("page")), per_page=LIST_PAGE
    )
    items = [
        {
            "row": it.campaign,
            "counters": it.stats.counters,
            "progress": progress(it.stats.counters),
            "success_rate": _rate(it.stats.counters["succeeded"], it.stats.attempted_contacts),
            "start_at": it.campaign.settings.get("schedule", {}).get("start_at"),
            "end_at": it.campaign.settings.get("schedule", {}).get("end_at"),
        }
        for it in found.items
    ]
    return r.page(
        request,
        "autoinformer/list.html",
        {
            "settings_tab": "autoinformer",
            "items": items,
            "found": found,
            "domain": domain,
            "status_label": CAMPAIGN_STATUS,
            "error_reason": ERROR_REASON,
            "when": msk_to_local(domain.timezone),
            "reserve": reserve if reserve is not None else str(domain.ai_line_reserve),
            "notice": notice or request.query_params.get("notice", ""),
        },
        errors=errors,
        status_code=422 if errors else 200,
    )


def _rate(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "—"


@router.post("/settings")
async def save_reserve(
    request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep, _on: ServiceOnDep
) -> Response:
    """«Резерв линий для обычных вызовов» (§3.4): channels the campaigns leave to ordinary calls."""
    form = await request.form()
    raw = forms.text(form, "ai_line_reserve").strip()
    domain = await domain_of(s, p.tenant)
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= min(MAX_RESERVE, domain.channel_limit):
        errors = ValidationFailed.one(
            "ai_line_reserve",
            N_("A whole number from 0 to {max}"),
            max=min(MAX_RESERVE, domain.channel_limit),
        )
        return await _list(request, r, s, p, errors=errors, reserve=raw)
    if value != domain.ai_line_reserve:
        s.add(
            AuditEntry(
                domain_id=p.tenant,
                at=core.clock.now(),
                actor=actor_of(p),
                action="autoinformer.line_reserve",
                details={"from": domain.ai_line_reserve, "to": value},
            )
        )
        domain.ai_line_reserve = value
    await s.commit()
    return RedirectResponse(f"{BASE}?notice=reserve", status_code=303)


def actor_of(p: Principal) -> str:
    return f"user:{p.login}"


# --- a campaign's tabs -------------------------------------------------------------------------------------


async def _lines(s: AsyncSession, tenant: uuid.UUID) -> list[IncomingNumber]:
    return list(
        await s.scalars(
            select(IncomingNumber).where(IncomingNumber.domain_id == tenant).order_by(IncomingNumber.number)
        )
    )


async def audio_files(s: AsyncSession, tenant: uuid.UUID) -> list[AiAudioFile]:
    return list(
        await s.scalars(select(AiAudioFile).where(AiAudioFile.domain_id == tenant).order_by(AiAudioFile.name))
    )


async def _targets(s: AsyncSession, tenant: uuid.UUID) -> dict[str, list[tuple[str, str]]]:
    """What a «connect» reaction can name: users' and groups' PINs, voice menus' names."""
    users = await s.execute(select(User.pin, User.display_name).where(User.domain_id == tenant))
    groups = await s.execute(select(CallGroup.pin, CallGroup.name).where(CallGroup.domain_id == tenant))
    menus = await s.scalars(select(VoiceMenu.name).where(VoiceMenu.domain_id == tenant))
    return {
        "user": sorted((str(a), str(b)) for a, b in users.all()),
        "group": sorted((str(a), str(b)) for a, b in groups.all()),
        "menu": sorted((str(n), str(n)) for n in menus.all()),  # menus have no PIN: named by their name
    }


def values_of(row: AiCampaign | None, timezone: str, now: dt.datetime) -> dict[str, Any]:
    """The campaign object as the forms show it (defaults for a new campaign)."""
    if row is None:
        start = (now + dt.timedelta(hours=1)).astimezone(MOSCOW).strftime(aiforms.MSK_FORMAT)
        spec: dict[str, Any] = CampaignSpec.model_validate(
            {
                "name": "x",
                "caller_id": "70000000000",
                "message": {"segments": [{"type": "tts", "text": "x"}]},
                "schedule": {"start_at": start},
            }
        ).settings_json()
        spec["message"]["segments"] = []
        name, caller_id = "", ""
    else:
        spec = dict(row.settings)
        name, caller_id = row.name, row.caller_id
    sched = spec["schedule"]
    return {
        **spec,
        "name": name,
        "caller_id": caller_id,
        "start_local": aiforms.to_local(sched.get("start_at"), timezone),
        "end_local": aiforms.to_local(sched.get("end_at"), timezone),
    }


LIVE_EDITABLE = frozenset(
    {
        "name",
        "schedule",
        "end_at",
        "attempts",
        "concurrency",
        "dtmf",
        "auto_complete",
        "report_emails",
        "amocrm_task",
        "contacts",
    }
)


def editable(row: AiCampaign, part: str) -> bool:
    """What the status lets the admin change (§4.1 «Editing»); the campaign service has the last word."""
    st = row.status
    if st == "draft":
        return True
    if st in ("completed", "stopped"):
        return False
    if part in ("message", "caller_id"):
        return st in ("scheduled", "paused", "error") and row.first_attempt_at is None
    if st == "running":
        return part in ("concurrency", "end_at", "contacts")
    return part in LIVE_EDITABLE


async def campaign_context(
    s: AsyncSession, p: Principal, row: AiCampaign, tab: str, now: dt.datetime
) -> dict[str, Any]:
    domain = await domain_of(s, p.tenant)
    return {
        "settings_tab": "autoinformer",
        "tab": tab,
        "tabs": TABS,
        "c": row,
        "domain": domain,
        "v": values_of(row, domain.timezone, now),
        "status_label": CAMPAIGN_STATUS,
        "error_reason": ERROR_REASON,
        "actions": ACTIONS_BY_STATUS.get(row.status, ()),
        "action_button": ACTION_BUTTON,
        "editable": lambda part: editable(row, part),
        "notice": "",
        "action_error": "",
    }


async def _tab(
    request: Request,
    r: Renderer,
    s: AsyncSession,
    p: Principal,
    row: AiCampaign,
    tab: str,
    now: dt.datetime,
    *,
    values: dict[str, Any] | None = None,
    errors: ValidationFailed | None = None,
    action_error: str = "",
    extra: dict[str, Any] | None = None,
    status_code: int = 200,
) -> Response:
    ctx = await campaign_context(s, p, row, tab, now)
    if values:
        ctx["v"] = {**ctx["v"], **values}
    ctx["notice"] = request.query_params.get("notice", "")
    ctx["action_error"] = action_error
    if tab in ("message", "keys"):
        ctx["files"] = await audio_files(s, p.tenant)
        ctx["voices"] = [(v, aiforms.VOICE_NAMES[v]) for v in VOICES]
    if tab == "keys":
        ctx["keys"] = aiforms.KEYS
        ctx["action_label"] = ACTION_LABEL
        ctx["target_label"] = TARGET_LABEL
        ctx["targets"] = await _targets(s, p.tenant)
    if tab == "lines":
        ctx["lines"] = await _lines(s, p.tenant)
        ctx["retry_outcomes"] = aiforms.RETRY_OUTCOMES
        ctx["outcome_label"] = OUTCOME
        ctx["criterion_label"] = CRITERION_LABEL
    ctx.update(extra or {})
    if errors and status_code == 200:
        status_code = 422
    return r.page(request, f"autoinformer/tab_{tab}.html", ctx, errors=errors, status_code=status_code)


def labels() -> dict[str, Any]:
    return {
        "contact_status": CONTACT_STATUS,
        "outcome_label": OUTCOME,
        "contact_statuses": AI_CONTACT_STATUSES,
        "outcomes": AI_OUTCOMES,
    }


# --- writes: create, the tabs' saves, the actions ----------------------------------------------------------


def service_errors(t_field: str | None, msgid: str, params: dict[str, object]) -> ValidationFailed:
    return ValidationFailed([FieldError(aiforms.form_field(t_field), msgid, dict(params))])


def as_form_errors(e: Exception) -> ValidationFailed:
    """The campaign service's and the spec's refusals as the form's per-field messages."""
    if isinstance(e, ValidationFailed):
        return e
    if isinstance(e, ValidationError):
        return aiforms.spec_errors(e)
    if isinstance(e, AutoinformerError):
        return service_errors(e.field, e.msgid, e.params)
    if isinstance(e, InvalidTransition):
        return ValidationFailed.one("id", NOT_EDITABLE, status=CAMPAIGN_STATUS.get(e.current, e.current))
    raise e


REFUSALS = (ValidationFailed, ValidationError, AutoinformerError, InvalidTransition)


def current_object(row: AiCampaign) -> dict[str, Any]:
    """The whole campaign object (§9) of a row: the settings plus the top-level fields."""
    return {**row.settings, "external_id": row.external_id, "name": row.name, "caller_id": row.caller_id}


@router.get("/new")
async def new_page(
    request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep, _on: ServiceOnDep
) -> Response:
    return await _new(request, r, s, p, core.clock.now())


async def _new(
    request: Request,
    r: Renderer,
    s: AsyncSession,
    p: Principal,
    now: dt.datetime,
    *,
    values: dict[str, Any] | None = None,
    errors: ValidationFailed | None = None,
) -> Response:
    domain = await domain_of(s, p.tenant)
    v = values_of(None, domain.timezone, now)
    v.update(values or {})
    return r.page(
        request,
        "autoinformer/new.html",
        {
            "settings_tab": "autoinformer",
            "v": v,
            "domain": domain,
            "lines": await _lines(s, p.tenant),
            "files": await audio_files(s, p.tenant),
            "voices": [(name, aiforms.VOICE_NAMES[name]) for name in VOICES],
        },
        errors=errors,
        status_code=422 if errors else 200,
    )


@router.post("/new")
async def create(
    request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep, _on: ServiceOnDep
) -> Response:
    """«Создать рассылку»: a draft with a name, a caller ID, a start and the first part of the message."""
    form = await request.form()
    now = core.clock.now()
    domain = await domain_of(s, p.tenant)
    seg = aiforms.segment(form, "seg0_")
    shown: dict[str, Any] = {
        "name": forms.text(form, "name").strip(),
        "caller_id": forms.text(form, "caller_id").strip(),
        "start_local": forms.text(form, "start_at").strip(),
        "message": {"repeat": 1, "segments": [seg] if seg else []},
    }
    try:
        start = aiforms.to_moscow(shown["start_local"], domain.timezone)
        obj = values_of(None, domain.timezone, now)
        for key in ("start_local", "end_local"):
            obj.pop(key)
        obj.update(name=shown["name"], caller_id=shown["caller_id"], message=shown["message"])
        obj["schedule"] = {**obj["schedule"], "start_at": start or ""}
        spec = CampaignSpec.model_validate(obj)
        row, _created = await svc.create_campaign(s, p.tenant, spec, actor=actor_of(p), now=now)
    except REFUSALS as e:
        await s.rollback()
        return await _new(request, r, s, p, now, values=shown, errors=as_form_errors(e))
    await s.commit()
    return RedirectResponse(f"{BASE}/campaigns/{row.id.hex}?notice=created", status_code=303)


async def _save(
    request: Request,
    r: Renderer,
    s: AsyncSession,
    p: Principal,
    now: dt.datetime,
    campaign_id: str,
    row: AiCampaign,
    tab: str,
) -> Response:
    """One tab's form → that part of the campaign object → the campaign service's update."""
    domain = await domain_of(s, p.tenant)
    form = await request.form()
    part: dict[str, Any] = {}
    shown: dict[str, Any] = {}
    try:
        if tab == "message":
            part = aiforms.message(form)
        elif tab == "schedule":
            shown = {"start_local": forms.text(form, "start_at"), "end_local": forms.text(form, "end_at")}
            part = aiforms.schedule(form, domain.timezone)
        elif tab == "lines":
            part = aiforms.lines(form)
        else:
            part = aiforms.keys(form)
        spec = CampaignSpec.model_validate(aiforms.merge(current_object(row), part))
        await svc.update_campaign(s, p.tenant, row.id, spec, actor=actor_of(p), now=now)
    except REFUSALS as e:
        await s.rollback()
        row = await get_campaign(s, p.tenant, campaign_id)
        values = {**aiforms.merge(current_object(row), part), **shown}  # what the admin sent, over the rest
        return await _tab(request, r, s, p, row, tab, now, values=values, errors=as_form_errors(e))
    await s.commit()
    suffix = "" if tab == "message" else f"/{tab}"
    return RedirectResponse(f"{BASE}/campaigns/{row.id.hex}{suffix}?notice=saved", status_code=303)


def _tab_routes(tab: str) -> None:
    """A form tab's page (GET) and its save (POST); the «Сообщение» tab is the campaign's own address."""

    async def show(
        request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep, row: CampaignDep
    ) -> Response:
        return await _tab(request, r, s, p, row, tab, core.clock.now())

    async def save(
        campaign_id: str,
        request: Request,
        r: RendererDep,
        p: AdminDep,
        s: DbDep,
        core: CoreDep,
        row: CampaignDep,
    ) -> Response:
        return await _save(request, r, s, p, core.clock.now(), campaign_id, row, tab)

    show.__name__, save.__name__ = f"{tab}_tab", f"save_{tab}"
    path = "/campaigns/{campaign_id}"
    router.add_api_route(path if tab == "message" else f"{path}/{tab}", show, methods=["GET"])
    router.add_api_route(f"{path}/{tab}", save, methods=["POST"])


for _tab_name in ("message", "schedule", "lines", "keys"):
    _tab_routes(_tab_name)


async def _action(
    request: Request,
    r: Renderer,
    s: AsyncSession,
    p: Principal,
    now: dt.datetime,
    campaign_id: str,
    row: AiCampaign,
    action: str,
) -> Response:
    """«Запустить», «Приостановить», «Продолжить», «Остановить», «Копировать», «Удалить» (§4.1); a refusal is
    shown on the campaign's page, in the admin's language."""
    actor = actor_of(p)
    target = f"{BASE}/campaigns/{row.id.hex}"
    try:
        if action == "start":
            await svc.start_campaign(s, p.tenant, row.id, actor=actor, now=now)
        elif action == "pause":
            await svc.pause_campaign(s, p.tenant, row.id, actor=actor, now=now)
        elif action == "resume":
            await svc.resume_campaign(s, p.tenant, row.id, actor=actor, now=now)
        elif action == "stop":
            await svc.stop_campaign(s, p.tenant, row.id, actor=actor, now=now)
        elif action == "copy":
            copy = await svc.copy_campaign(s, p.tenant, row.id, actor=actor, now=now)
            target = f"{BASE}/campaigns/{copy.id.hex}?notice=copied"
        else:
            await svc.delete_campaign(s, p.tenant, row.id, actor=actor, now=now)
            target = f"{BASE}?notice=deleted"
    except (AutoinformerError, InvalidTransition) as e:
        await s.rollback()
        row = await get_campaign(s, p.tenant, campaign_id)
        t = r.translator(request)
        if isinstance(e, InvalidTransition):
            message = t.gettext(TRANSITION_ERROR, status=t.gettext(CAMPAIGN_STATUS[e.current]))
        else:
            message = t.gettext(e.msgid, **e.params)
        return await _tab(request, r, s, p, row, "message", now, action_error=message, status_code=409)
    await s.commit()
    if action == "delete":  # its report goes with it (§4.1), so do its exported files
        await request.app.state.ai_exports.forget(p.tenant, row.id)
    if action not in ("copy", "delete"):
        target += f"/report?notice={action}" if action == "start" else f"?notice={action}"
    return RedirectResponse(target, status_code=303)


def _action_route(action: str) -> None:
    async def endpoint(
        campaign_id: str,
        request: Request,
        r: RendererDep,
        p: AdminDep,
        s: DbDep,
        core: CoreDep,
        row: CampaignDep,
    ) -> Response:
        return await _action(request, r, s, p, core.clock.now(), campaign_id, row, action)

    endpoint.__name__ = f"campaign_{action}"
    router.add_api_route(f"/campaigns/{{campaign_id}}/{action}", endpoint, methods=["POST"])


for _name in ACTION_BUTTON:
    _action_route(_name)


# --- «Контакты» ---------------------------------------------------------------------------------------------

REASON_LABEL: dict[str, str] = {
    "empty_phone": N_("no phone"),
    "invalid_format": N_("not a valid number"),
    "duplicate": N_("duplicate"),
    "stop_list": N_("on the stop list"),
    "destination_restricted": N_("destination not allowed"),
    "missing_variable": N_("a variable of the message is missing"),
    "row_limit": N_("over 100 000 contacts"),
}


async def read_upload(form: forms.FormData, name: str, max_bytes: int) -> bytes | None:
    """A file field's bytes (at most one past ``max_bytes``), the form's spooled files closed."""
    try:
        data, _filename = await forms.upload(form, name, max_bytes)
    finally:
        await form.close()
    return data


def rejected_path(data_dir: Path, tenant: uuid.UUID, campaign: uuid.UUID) -> Path:
    """Where the last import's rejected rows wait for their download (one file per campaign, replaced by
    the next import)."""
    return data_dir / "autoinformer" / "rejected" / tenant.hex / f"{campaign.hex}.csv"


async def _contacts(
    request: Request,
    r: Renderer,
    s: AsyncSession,
    p: Principal,
    row: AiCampaign,
    now: dt.datetime,
    *,
    result: dict[str, Any] | None = None,
    errors: ValidationFailed | None = None,
    manual: str = "",
) -> Response:
    page = await paginate(
        s,
        select(AiContact)
        .where(AiContact.campaign_id == row.id, AiContact.domain_id == p.tenant)
        .order_by(AiContact.row_no, AiContact.created_at, AiContact.id),
        forms.page_number(request.query_params.get("page")),
        CONTACTS_PAGE,
    )
    return await _tab(
        request,
        r,
        s,
        p,
        row,
        "contacts",
        now,
        errors=errors,
        extra={
            "contacts": page,
            "result": result,
            "reason_label": REASON_LABEL,
            "contact_status": CONTACT_STATUS,
            "manual": manual,
        },
    )


@router.get("/campaigns/{campaign_id}/contacts")
async def contacts_tab(
    request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep, row: CampaignDep
) -> Response:
    return await _contacts(request, r, s, p, row, core.clock.now())


async def _import(
    request: Request,
    r: Renderer,
    s: AsyncSession,
    p: Principal,
    core: Core,
    campaign_id: str,
    row: AiCampaign,
    kind: str,
) -> Response:
    now = core.clock.now()
    form = await request.form()
    name = "list" if kind == "upload" else "manual"
    manual = forms.text(form, "manual") if kind == "manual" else ""
    data: bytes | None = None
    if kind == "upload":
        data = await read_upload(form, "list", MAX_LIST_BYTES)
    if not editable(row, "contacts"):
        errors = ValidationFailed.one(name, NOT_EDITABLE, status=CAMPAIGN_STATUS[row.status])
        return await _contacts(request, r, s, p, row, now, errors=errors, manual=manual)
    t = r.translator(request)
    try:
        if kind == "upload":
            if data is None:
                raise ValidationFailed.one("list", N_("Choose a CSV or XLSX file"))
            if len(data) > MAX_LIST_BYTES:
                raise ValidationFailed.one("list", N_("The file is larger than 20 MB"))
            result = await contacts_svc.import_file(s, p.tenant, row.id, data)
        else:
            raw = str(form.get("manual") or "")
            if not raw.strip():
                raise ValidationFailed.one("manual", N_("Enter at least one line"))
            result = await contacts_svc.import_manual(
                s, p.tenant, row.id, raw[: contacts_svc.MAX_MANUAL_CHARS]
            )
    except ValidationFailed as e:
        await s.rollback()
        row = await get_campaign(s, p.tenant, campaign_id)
        return await _contacts(request, r, s, p, row, now, errors=e, manual=manual)
    except TableError as e:
        await s.rollback()
        row = await get_campaign(s, p.tenant, campaign_id)
        message = t.gettext(e.msgid, **e.params)
        return await _contacts(
            request,
            r,
            s,
            p,
            row,
            now,
            result={"accepted": 0, "rejected": [], "by_reason": {}, "error": message},
            manual=manual,
        )
    s.add(
        AuditEntry(
            domain_id=p.tenant,
            at=now,
            actor=actor_of(p),
            action="autoinformer.contacts.import",
            object_id=row.id.hex,
            details={"source": kind, "accepted": result.accepted, "rejected": len(result.rejected)},
        )
    )
    await s.commit()
    path = rejected_path(core.settings.data_dir, p.tenant, row.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(result.rejected_csv())
    shown = {
        "accepted": result.accepted,
        "rejected": result.rejected,
        "by_reason": {k: n for k, n in result.counts.items() if n},
        "error": "",
    }
    return await _contacts(request, r, s, p, row, now, result=shown)


@router.post("/campaigns/{campaign_id}/contacts/upload")
async def upload_contacts(
    campaign_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep, row: CampaignDep
) -> Response:
    return await _import(request, r, s, p, core, campaign_id, row, "upload")


@router.post("/campaigns/{campaign_id}/contacts/manual")
async def manual_contacts(
    campaign_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep, row: CampaignDep
) -> Response:
    return await _import(request, r, s, p, core, campaign_id, row, "manual")


@router.get("/campaigns/{campaign_id}/rejected.csv")
async def rejected_csv(p: AdminDep, core: CoreDep, row: CampaignDep) -> Response:
    """The last import's rejected rows as read, with a ``reason`` column (UTF-8 with BOM, ``;``)."""
    path = rejected_path(core.settings.data_dir, p.tenant, row.id)
    body = path.read_bytes() if path.exists() else "\ufeffreason\r\n".encode()  # nothing imported yet
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="rejected-{row.id.hex[:8]}.csv"'},
    )


@router.post("/campaigns/{campaign_id}/contacts/remove")
async def remove_contacts(
    request: Request, p: AdminDep, s: DbDep, core: CoreDep, row: CampaignDep
) -> Response:
    """Remove the selected contacts that are still ``pending`` (others are kept, §3.2)."""
    form = await request.form()
    ids = [cid for v in form.getlist("contact") if isinstance(v, str) and (cid := forms.optional_id(v))]
    if ids and row.status not in ("completed", "stopped"):
        removed = await contacts_svc.remove_contacts(s, p.tenant, row.id, ids)
        s.add(
            AuditEntry(
                domain_id=p.tenant,
                at=core.clock.now(),
                actor=actor_of(p),
                action="autoinformer.contacts.remove",
                object_id=row.id.hex,
                details={"removed": removed},
            )
        )
        await s.commit()
    return RedirectResponse(f"{BASE}/campaigns/{row.id.hex}/contacts?notice=saved", status_code=303)


# --- «Прослушать»: a TTS part with sample values, a contact's rendered message ----------------------------

PREVIEW_FAILED = N_("The text could not be spoken: {detail}")


def sample_of(raw: str) -> dict[str, str]:
    """``name=value`` lines of the «sample values» box."""
    out: dict[str, str] = {}
    for line in raw.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            out[contacts_svc.variable_name(key.strip())] = value.strip()[:MAX_VALUE_CHARS]
    return out


def _player(
    request: Request, r: Renderer, src: str = "", error: str = "", status_code: int = 200
) -> Response:
    return r.page(request, "autoinformer/_player.html", {"src": src, "error": error}, status_code=status_code)


@router.post("/campaigns/{campaign_id}/preview")
async def preview_part(
    request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep, row: CampaignDep
) -> Response:
    """«Прослушать» under a message part: a TTS text spoken with the sample values (or the first contact's),
    a library file as it is. htmx swaps the player in."""
    form = await request.form()
    prefix = forms.text(form, "prefix")
    if not prefix.startswith(("seg", "key")) or len(prefix) > 16:
        prefix = "seg0_"
    t = r.translator(request)
    seg = aiforms.segment(form, prefix)
    if seg is None:
        return _player(
            request, r, error=t.gettext(N_("Enter a text or choose a file first")), status_code=422
        )
    if seg["type"] == "file":
        found = await audio_files(s, p.tenant)
        if not any(f.id.hex == seg["file_id"] for f in found):
            raise NotFound("audio file", seg["file_id"])
        return _player(request, r, src=f"{BASE}/audio/{seg['file_id']}/play")
    values = sample_of(forms.text(form, "sample"))
    if not values:
        first = await s.scalar(
            select(AiContact).where(AiContact.campaign_id == row.id).order_by(AiContact.row_no).limit(1)
        )
        values = dict(first.variables) if first is not None else {}
    try:
        rate = float(seg["rate"])
        prompt_id = await render.preview(
            s, core.prompts, p.tenant, seg["text"], voice=seg["voice"], rate=rate, values=values
        )
        await record_prompt(s, p.tenant, prompt_id, "tts")
    except (ValueError, ValidationError, PromptError, render.RenderError) as e:
        await s.rollback()
        detail = getattr(e, "message", "") or type(e).__name__
        return _player(request, r, error=t.gettext(PREVIEW_FAILED, detail=str(detail)[:200]), status_code=422)
    await s.commit()
    return _player(request, r, src=f"{BASE}/prompts/{prompt_id}")


@router.get("/prompts/{prompt_id}")
async def prompt_audio(prompt_id: str, p: AdminDep, s: DbDep, core: CoreDep) -> Response:
    """A prompt this domain had spoken for a preview or a contact's message; 404 for anyone else's."""
    return await prompt_file(s, p.tenant, core.prompts, prompt_id)


@router.get("/campaigns/{campaign_id}/contacts/{contact_id}/player")
async def contact_player(
    campaign_id: str, contact_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep
) -> Response:
    """The message of one contact as the campaign renders it for the call (§3.1), to play in the report."""
    row = await get_campaign(s, p.tenant, campaign_id)
    cid = forms.parse_id(contact_id, "contact")
    contact = await s.scalar(
        select(AiContact).where(
            AiContact.id == cid, AiContact.campaign_id == row.id, AiContact.domain_id == p.tenant
        )
    )
    if contact is None:
        raise NotFound("contact", contact_id[:64])
    await require_on(s, p.tenant)
    t = r.translator(request)
    try:
        spec = CampaignSpec.model_validate(current_object(row))
        prompt_id, _key = await render.render_segments(
            s,
            core.prompts,
            p.tenant,
            spec.message.segments,
            contact.variables,
            phone=contact.phones[0] if contact.phones else "",
        )
        await record_prompt(s, p.tenant, prompt_id, "tts")
    except (ValidationError, PromptError, render.RenderError, render.AudioUnavailable) as e:
        await s.rollback()
        detail = getattr(e, "message", "") or type(e).__name__
        return _player(request, r, error=t.gettext(PREVIEW_FAILED, detail=str(detail)[:200]), status_code=422)
    await s.commit()
    return _player(request, r, src=f"{BASE}/prompts/{prompt_id}")
