"""Schedules section («Расписания»): list with search, create, edit, delete."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.errors import ValidationFailed
from vpbx.pbx import schedules as svc
from vpbx.store.models import Domain, Schedule
from vpbx.web import forms
from vpbx.web.auth import AdminDep, DbDep, RendererDep
from vpbx.web.forms import FormData

router = APIRouter(prefix="/schedules")


def _input(form: FormData) -> svc.ScheduleInput:
    return svc.ScheduleInput(
        name=forms.text(form, "name"),
        days=[forms.text(form, svc.day_field(d)) for d in range(7)],
        holidays=forms.text(form, "holidays"),
    )


def _values(data: svc.ScheduleInput) -> dict[str, object]:
    v: dict[str, object] = {"name": data.name, "holidays": data.holidays}
    for d in range(7):
        v[svc.day_field(d)] = data.days[d] if d < len(data.days) else ""
    return v


async def _form_context(
    s: AsyncSession, tenant: uuid.UUID, sch: Schedule | None, data: svc.ScheduleInput
) -> dict[str, Any]:
    domain = await s.get(Domain, tenant)
    return {
        "schedule": sch,
        "v": _values(data),
        "weekdays": svc.WEEKDAYS,
        "day_field": svc.day_field,
        "timezone": domain.timezone if domain else "",
    }


@router.get("")
async def list_schedules(request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    q = request.query_params.get("q", "")[:100]
    page = await svc.list_schedules(s, p.tenant, q, forms.page_number(request.query_params.get("page")))
    summaries = {sch.id: svc.week_summary(sch) for sch in page.items}
    return r.page(
        request,
        "schedules/list.html",
        {"page": page, "q": q, "summaries": summaries, "short": svc.WEEKDAYS_SHORT},
    )


@router.get("/new")
async def new_schedule(request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    blank = svc.ScheduleInput(name="", days=["09:00-18:00"] * 5 + ["", ""])
    return r.page(request, "schedules/form.html", await _form_context(s, p.tenant, None, blank))


@router.post("")
async def create_schedule(request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    data = _input(await request.form())
    try:
        await svc.create_schedule(s, p.tenant, data)
    except ValidationFailed as e:
        await s.rollback()
        ctx = await _form_context(s, p.tenant, None, data)
        return r.page(request, "schedules/form.html", ctx, errors=e, status_code=422)
    await s.commit()
    return RedirectResponse("/schedules", status_code=303)


@router.get("/{schedule_id}")
async def edit_schedule(
    schedule_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep
) -> Response:
    sch = await svc.get_schedule(s, p.tenant, forms.parse_id(schedule_id, "schedule"))
    return r.page(request, "schedules/form.html", await _form_context(s, p.tenant, sch, svc.input_of(sch)))


@router.post("/{schedule_id}")
async def update_schedule(
    schedule_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep
) -> Response:
    sid = forms.parse_id(schedule_id, "schedule")
    await svc.get_schedule(s, p.tenant, sid)
    data = _input(await request.form())
    try:
        await svc.update_schedule(s, p.tenant, sid, data)
    except ValidationFailed as e:
        await s.rollback()
        sch = await svc.get_schedule(s, p.tenant, sid)
        ctx = await _form_context(s, p.tenant, sch, data)
        return r.page(request, "schedules/form.html", ctx, errors=e, status_code=422)
    await s.commit()
    return RedirectResponse("/schedules", status_code=303)


@router.post("/{schedule_id}/delete")
async def delete_schedule(
    schedule_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep
) -> Response:
    sid = forms.parse_id(schedule_id, "schedule")
    try:
        await svc.delete_schedule(s, p.tenant, sid)
    except ValidationFailed as e:
        await s.rollback()
        sch = await svc.get_schedule(s, p.tenant, sid)
        ctx = await _form_context(s, p.tenant, sch, svc.input_of(sch))
        return r.page(request, "schedules/form.html", ctx, errors=e, status_code=422)
    await s.commit()
    return RedirectResponse("/schedules", status_code=303)
