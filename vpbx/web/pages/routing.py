"""Routing section («Маршрутизация»): the domain's numbers, each number's ordered rules, and a check tool."""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.errors import FieldError, NotFound, ValidationFailed
from vpbx.pbx import lines
from vpbx.pbx import routing as svc
from vpbx.pbx.actions import ActionInput
from vpbx.pbx.validation import N_, Check
from vpbx.store.models import Domain, IncomingNumber, RoutingRule
from vpbx.web import forms
from vpbx.web.auth import AdminDep, CoreDep, DbDep, RendererDep
from vpbx.web.forms import FormData

router = APIRouter(prefix="/routing")
T = TypeVar("T")
RULE_FIELDS = ("condition", "schedule_id", "action", "user_id", "group_id", "menu_id", "mailbox", "number")

CONDITION_LABELS = {
    "always": N_("Always"),
    "work": N_("During work hours"),
    "non_work": N_("Outside work hours"),
}
ACTION_LABELS = {
    "user": N_("To a user"),
    "group": N_("To a call group"),
    "menu": N_("To a voice menu"),
    "voicemail": N_("To voicemail"),
    "external": N_("To an external number"),
    "reject": N_("Reject the call"),
}


def _input(form: FormData) -> svc.RuleInput:
    action = forms.text(form, "action")
    target = ActionInput(action=action)
    if action == "user":
        target.user_id = forms.optional_id(forms.text(form, "user_id"))
    elif action == "group":
        target.group_id = forms.optional_id(forms.text(form, "group_id"))
    elif action == "menu":
        target.menu_id = forms.optional_id(forms.text(form, "menu_id"))
    elif action == "voicemail":
        kind, _, ident = forms.text(form, "mailbox").partition(":")
        if kind == "group":
            target.group_id = forms.optional_id(ident)
        else:
            target.user_id = forms.optional_id(ident)
    elif action == "external":
        target.number = forms.text(form, "number")
    return svc.RuleInput(
        condition=forms.text(form, "condition", "always"),
        schedule_id=forms.optional_id(forms.text(form, "schedule_id")),
        target=target,
    )


def _form_values(form: FormData) -> dict[str, object]:
    return {n: forms.text(form, n) for n in RULE_FIELDS}


def _rule_values(rule: RoutingRule | None) -> dict[str, object]:
    if rule is None:
        blank: dict[str, object] = dict.fromkeys(RULE_FIELDS, "")
        return {**blank, "condition": "always", "action": "user"}
    mailbox = ""
    if rule.action == "voicemail":
        mailbox = f"group:{rule.target_group_id}" if rule.target_group_id else f"user:{rule.target_user_id}"
    return {
        "condition": rule.condition,
        "schedule_id": rule.schedule_id or "",
        "action": rule.action,
        "user_id": rule.target_user_id if rule.action == "user" else "",
        "group_id": rule.target_group_id if rule.action == "group" else "",
        "menu_id": rule.target_menu_id or "",
        "mailbox": mailbox,
        "number": rule.target_number or "",
    }


def _errors(e: ValidationFailed, data: svc.RuleInput) -> ValidationFailed:
    """A voicemail's box is one select on the page; the service names the user or the group field."""
    if data.target.action != "voicemail":
        return e
    box = FieldError("mailbox", N_("Choose a voicemail box of this domain"))
    return ValidationFailed([box if x.field in ("user_id", "group_id") else x for x in e.errors])


async def _choices(s: AsyncSession, tenant: uuid.UUID) -> dict[str, Any]:
    tg = await svc.targets(s, tenant)
    return {
        "tg": tg,
        "by_id": {
            "users": {u.id: u for u in tg.users},
            "groups": {g.id: g for g in tg.groups},
            "menus": {m.id: m for m in tg.menus},
            "schedules": {x.id: x for x in tg.schedules},
        },
        "condition_labels": CONDITION_LABELS,
        "action_labels": ACTION_LABELS,
    }


async def _number_page(
    request: Request,
    r: RendererDep,
    s: AsyncSession,
    tenant: uuid.UUID,
    number_id: uuid.UUID,
    v: dict[str, object],
    errors: ValidationFailed | None = None,
) -> Response:
    number = await lines.get_number(s, tenant, number_id)
    rules = await svc.list_rules(s, tenant, number_id)
    ctx = {"number": number, "rules": rules, "v": v, **await _choices(s, tenant)}
    return r.page(request, "routing/number.html", ctx, errors=errors, status_code=422 if errors else 200)


@router.get("")
async def list_numbers(request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    q = request.query_params.get("q", "")[:100]
    page, counts = await svc.list_numbers(s, p.tenant, q, forms.page_number(request.query_params.get("page")))
    return r.page(request, "routing/list.html", {"page": page, "q": q, "counts": counts})


def _parse(parse: Callable[[str], T], value: str) -> T | None:
    try:
        return parse(value.strip())
    except ValueError:
        return None


@router.get("/check")
async def check(request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep) -> Response:
    """Which rule a call to a number takes at a given local date and time ("check routing")."""
    domain = await s.get(Domain, p.tenant)
    assert domain is not None
    zone = zoneinfo.ZoneInfo(domain.timezone)
    now = core.clock.now().astimezone(zone)
    qp = request.query_params
    v = {
        "number": qp.get("number", "")[:64],
        "date": qp.get("date", now.date().isoformat())[:32],
        "time": qp.get("time", now.strftime("%H:%M"))[:32],
    }
    numbers = list(
        await s.scalars(
            select(IncomingNumber).where(IncomingNumber.domain_id == p.tenant).order_by(IncomingNumber.number)
        )
    )
    ctx: dict[str, Any] = {
        "v": v,
        "numbers": numbers,
        "timezone": domain.timezone,
        "checked": False,
        "result": None,
    }
    ctx.update(await _choices(s, p.tenant))
    if "number" not in qp:
        return r.page(request, "routing/check.html", ctx)
    c = Check()
    e164 = c.number("number", v["number"])
    v["number"] = e164 or v["number"]
    day = _parse(dt.date.fromisoformat, v["date"])
    clock = _parse(dt.time.fromisoformat, v["time"])
    if day is None:
        c.add("date", N_("Not a date: {value}; write it as 2026-01-01"), value=v["date"])
    if clock is None:
        c.add("time", N_("Not a time: {value}; write it as 09:30"), value=v["time"])
    when = None
    if day is not None and clock is not None:
        when = dt.datetime.combine(day, clock.replace(tzinfo=None), tzinfo=zone).astimezone(dt.UTC)
    if e164 is not None and when is not None:
        try:
            ctx["result"] = await svc.resolve(s, p.tenant, e164, when)
            ctx["checked"] = True
        except NotFound:
            c.add("number", N_("Choose a number of this domain"))
    if c.errors:
        return r.page(request, "routing/check.html", ctx, errors=ValidationFailed(c.errors), status_code=422)
    return r.page(request, "routing/check.html", ctx)


@router.get("/{number_id}")
async def number_rules(number_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    return await _number_page(
        request, r, s, p.tenant, forms.parse_id(number_id, "number"), _rule_values(None)
    )


@router.post("/{number_id}/rules")
async def add_rule(number_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    nid = forms.parse_id(number_id, "number")
    await lines.get_number(s, p.tenant, nid)
    form = await request.form()
    data = _input(form)
    try:
        await svc.add_rule(s, p.tenant, nid, data)
    except ValidationFailed as e:
        await s.rollback()
        return await _number_page(request, r, s, p.tenant, nid, _form_values(form), _errors(e, data))
    await s.commit()
    return RedirectResponse(f"/routing/{nid}", status_code=303)


async def _rule(s: AsyncSession, tenant: uuid.UUID, number_id: str, rule_id: str) -> RoutingRule:
    nid = forms.parse_id(number_id, "number")
    await lines.get_number(s, tenant, nid)
    return await svc.get_rule(s, tenant, forms.parse_id(rule_id, "rule"), nid)


async def _rule_form(
    request: Request,
    r: RendererDep,
    s: AsyncSession,
    tenant: uuid.UUID,
    rule: RoutingRule,
    v: dict[str, object],
    errors: ValidationFailed | None = None,
) -> Response:
    number = await lines.get_number(s, tenant, rule.number_id)
    ctx = {"number": number, "rule": rule, "v": v, **await _choices(s, tenant)}
    return r.page(request, "routing/rule.html", ctx, errors=errors, status_code=422 if errors else 200)


@router.get("/{number_id}/rules/{rule_id}")
async def edit_rule(
    number_id: str, rule_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep
) -> Response:
    rule = await _rule(s, p.tenant, number_id, rule_id)
    return await _rule_form(request, r, s, p.tenant, rule, _rule_values(rule))


@router.post("/{number_id}/rules/{rule_id}")
async def update_rule(
    number_id: str, rule_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep
) -> Response:
    rule = await _rule(s, p.tenant, number_id, rule_id)
    rid, nid = rule.id, rule.number_id
    form = await request.form()
    data = _input(form)
    try:
        await svc.update_rule(s, p.tenant, rid, data, number_id=nid)
    except ValidationFailed as e:
        await s.rollback()
        rule = await svc.get_rule(s, p.tenant, rid, nid)
        return await _rule_form(request, r, s, p.tenant, rule, _form_values(form), _errors(e, data))
    await s.commit()
    return RedirectResponse(f"/routing/{nid}", status_code=303)


@router.post("/{number_id}/rules/{rule_id}/delete")
async def delete_rule(number_id: str, rule_id: str, p: AdminDep, s: DbDep) -> Response:
    rule = await _rule(s, p.tenant, number_id, rule_id)
    nid = rule.number_id
    await svc.delete_rule(s, p.tenant, rule.id, number_id=nid)
    await s.commit()
    return RedirectResponse(f"/routing/{nid}", status_code=303)


@router.post("/{number_id}/rules/{rule_id}/up")
async def move_up(number_id: str, rule_id: str, p: AdminDep, s: DbDep) -> Response:
    rule = await _rule(s, p.tenant, number_id, rule_id)
    await svc.move_rule(s, p.tenant, rule.id, -1, number_id=rule.number_id)
    await s.commit()
    return RedirectResponse(f"/routing/{rule.number_id}", status_code=303)


@router.post("/{number_id}/rules/{rule_id}/down")
async def move_down(number_id: str, rule_id: str, p: AdminDep, s: DbDep) -> Response:
    rule = await _rule(s, p.tenant, number_id, rule_id)
    await svc.move_rule(s, p.tenant, rule.id, +1, number_id=rule.number_id)
    await s.commit()
    return RedirectResponse(f"/routing/{rule.number_id}", status_code=303)
