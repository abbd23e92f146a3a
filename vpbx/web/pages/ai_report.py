"""A campaign's «Отчёт» tab (autoinformer.md §6): the live summary (refreshed every 5 s by htmx while the
campaign can still call), the chart of attempts and outcomes per 15 minutes (chart.js from the page's JSON
block), the numbers and attempts tables with their filters and paging, and both tables' export as CSV (UTF-8
with BOM, ``;``) or XLSX: at once up to ``exports.BACKGROUND_ROWS`` rows, else built in the background and
listed on the tab with a download link while it is kept (``vpbx.autoinformer.exports``).

Everything is read from the campaign's rows of the session's domain; another domain's campaign is 404.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
import zoneinfo
from collections import Counter
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.autoinformer import campaigns, report_mail
from vpbx.autoinformer import exports as ai_exports
from vpbx.autoinformer import status as ai_status
from vpbx.autoinformer.exports import AiExports, Filters, attempts_query, numbers_query
from vpbx.errors import NotFound
from vpbx.store.models import AI_OUTCOMES, AiAttempt, AiCampaign, AiContact, Domain
from vpbx.store.paging import Page, paginate
from vpbx.web import forms
from vpbx.web.auth import AdminDep, CoreDep, DbDep, RendererDep
from vpbx.web.pages import autoinformer as section
from vpbx.web.sections import SectionRoute

router = APIRouter(prefix="/autoinformer", route_class=SectionRoute)
links = APIRouter()  # the report e-mail's links (§6): whoever has the signed link may download the file

POLL_S = 5
BUCKET = dt.timedelta(minutes=15)
MAX_BUCKETS = 7 * 24 * 4  # a week of 15-minute bars; older attempts fall out of the chart
PER_PAGE = 50
LIVE = ("scheduled", "running", "paused", "error")


def _exports(request: Request) -> AiExports:
    exports: AiExports = request.app.state.ai_exports
    return exports


AiExportsDep = Annotated[AiExports, Depends(_exports)]


@dataclass
class Summary:
    counters: dict[str, int]
    tried: int = 0
    reached: int = 0
    attempts: int = 0
    answered_attempts: int = 0
    avg_listen_s: float | None = None
    actions: dict[str, int] = field(default_factory=dict)
    operator_answered: int = 0
    talk_min: float = 0.0
    cost: str = ""

    @property
    def success_rate(self) -> str:
        return _percent(self.counters["succeeded"], self.tried)

    @property
    def reach_rate(self) -> str:
        return _percent(self.reached, self.tried)

    @property
    def per_contact(self) -> str:
        return f"{self.attempts / self.tried:.2f}" if self.tried else "—"


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "—"


async def summary(s: AsyncSession, campaign_id: uuid.UUID) -> Summary:
    out = Summary(counters=await ai_status.counters(s, campaign_id))
    out.tried = int(
        await s.scalar(
            select(func.count())
            .select_from(AiContact)
            .where(AiContact.campaign_id == campaign_id, AiContact.attempts_made > 0)
        )
        or 0
    )
    out.reached = int(
        await s.scalar(
            select(func.count(func.distinct(AiAttempt.contact_id))).where(
                AiAttempt.campaign_id == campaign_id, AiAttempt.answered_at.is_not(None)
            )
        )
        or 0
    )
    total, answered, avg_listen, ops, cost = (
        await s.execute(
            select(
                func.count(),
                func.count(AiAttempt.answered_at),
                func.avg(AiAttempt.listen_s).filter(AiAttempt.answered_at.is_not(None)),
                func.count().filter(AiAttempt.operator_answered.is_(True)),
                func.sum(AiAttempt.cost),
            ).where(AiAttempt.campaign_id == campaign_id)
        )
    ).one()
    out.attempts, out.answered_attempts = int(total), int(answered)
    out.avg_listen_s = float(avg_listen) if avg_listen is not None else None
    out.operator_answered = int(ops)
    out.cost = f"{cost:.2f}" if cost is not None else ""
    for action, n in (
        await s.execute(
            select(AiAttempt.action, func.count())
            .where(AiAttempt.campaign_id == campaign_id, AiAttempt.action.is_not(None))
            .group_by(AiAttempt.action)
        )
    ).all():
        out.actions[str(action)] = int(n)
    talk = (
        await s.execute(
            select(AiAttempt.answered_at, AiAttempt.ended_at).where(
                AiAttempt.campaign_id == campaign_id,
                AiAttempt.answered_at.is_not(None),
                AiAttempt.ended_at.is_not(None),
            )
        )
    ).all()
    seconds = [(b - a).total_seconds() for a, b in talk if a is not None and b is not None]
    out.talk_min = round(sum(max(0.0, x) for x in seconds) / 60, 1)
    return out


async def chart(s: AsyncSession, campaign_id: uuid.UUID, timezone: str) -> dict[str, Any]:
    """Attempts per 15 minutes (by their start), stacked by outcome, over the campaign's last week."""
    rows = (
        await s.execute(
            select(AiAttempt.started_at, AiAttempt.outcome).where(
                AiAttempt.campaign_id == campaign_id, AiAttempt.started_at.is_not(None)
            )
        )
    ).all()
    tz = zoneinfo.ZoneInfo(timezone)
    per: dict[dt.datetime, Counter[str]] = {}
    for started, outcome in rows:
        if started is None:
            continue
        at = (started if started.tzinfo else started.replace(tzinfo=dt.UTC)).astimezone(tz)
        slot = at.replace(minute=at.minute - at.minute % 15, second=0, microsecond=0)
        per.setdefault(slot, Counter())[outcome or "in_progress"] += 1
    if not per:
        return {"labels": [], "series": {}}
    last = max(per)
    first = max(min(per), last - BUCKET * (MAX_BUCKETS - 1))
    slots: list[dt.datetime] = []
    at = first
    while at <= last:
        slots.append(at)
        at = (at.astimezone(dt.UTC) + BUCKET).astimezone(tz)
    multi_day = first.date() != last.date()
    labels = [a.strftime("%d.%m %H:%M" if multi_day else "%H:%M") for a in slots]
    keys = [o for o in (*AI_OUTCOMES, "in_progress") if any(per.get(a, Counter())[o] for a in slots)]
    return {"labels": labels, "series": {k: [per.get(a, Counter())[k] for a in slots] for k in keys}}


def _live(row: AiCampaign) -> bool:
    return row.status in LIVE


async def _report_context(
    request: Request, s: AsyncSession, row: AiCampaign, domain: Domain, now: dt.datetime
) -> dict[str, Any]:
    t = request.app.state.renderer.translator(request)
    timezone = domain.timezone
    data = await chart(s, row.id, timezone)
    names = {**section.OUTCOME, "in_progress": section.CONTACT_STATUS["in_progress"]}
    data["names"] = {k: t.gettext(names[k]) for k in data["series"]}
    data["title"] = t.gettext("Attempts and outcomes per 15 minutes")
    return {
        "sm": await summary(s, row.id),
        "chart_json": json.dumps(data, ensure_ascii=False).replace("</", "<\\/"),
        "poll_s": POLL_S if _live(row) else 0,
        # running and inside a calling window for some contact (dialling) or not (idle until one opens)
        "in_window": row.status == "running" and await campaigns.in_window(s, row, now),
        "action_label": section.ACTION_LABEL,
        **section.labels(),
    }


@router.get("/campaigns/{campaign_id}/report")
async def report_tab(
    request: Request,
    r: RendererDep,
    p: AdminDep,
    s: DbDep,
    core: CoreDep,
    row: section.CampaignDep,
    exports: AiExportsDep,
) -> Response:
    domain = await section.domain_of(s, p.tenant)
    f = Filters.of(request.query_params)
    table = "attempts" if request.query_params.get("table") == "attempts" else "numbers"
    page = forms.page_number(request.query_params.get("page"))
    numbers: Page[AiContact] | None = None
    attempts: Page[AiAttempt] | None = None
    if table == "numbers":
        numbers = await paginate(s, numbers_query(row.id, f, domain.timezone), page, PER_PAGE)
    else:
        attempts = await paginate(s, attempts_query(row.id, f, domain.timezone), page, PER_PAGE)
    extra = {
        **await _report_context(request, s, row, domain, core.clock.now()),
        "table": table,
        "numbers": numbers,
        "attempts": attempts,
        "f": f,
        "fq": f.query(),
        "when": section.local_time(domain.timezone),
        "export_files": await exports.files(p.tenant, row.id),
        "background_rows": ai_exports.BACKGROUND_ROWS,
    }
    ctx = await section.campaign_context(s, p, row, "report", core.clock.now())
    ctx.update(extra)
    ctx["notice"] = request.query_params.get("notice", "")
    return r.page(request, "autoinformer/tab_report.html", ctx)


@router.get("/campaigns/{campaign_id}/summary")
async def summary_part(
    request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep, row: section.CampaignDep
) -> Response:
    """The summary block alone: what htmx fetches every 5 s while the campaign is live."""
    domain = await section.domain_of(s, p.tenant)
    ctx = {
        "c": row,
        "status_label": section.CAMPAIGN_STATUS,
        **await _report_context(request, s, row, domain, core.clock.now()),
    }
    return r.page(request, "autoinformer/_summary.html", ctx)


# --- export ------------------------------------------------------------------------------------------------


@router.get("/campaigns/{campaign_id}/export")
async def export(
    request: Request, p: AdminDep, s: DbDep, row: section.CampaignDep, exports: AiExportsDep
) -> Response:
    """``?table=numbers|attempts&fmt=csv|xlsx`` plus the page's filters. Up to ``BACKGROUND_ROWS`` rows the
    file comes at once; over that it is built in the background and the report lists it when ready."""
    domain = await section.domain_of(s, p.tenant)
    f = Filters.of(request.query_params)
    table: ai_exports.Table = "attempts" if request.query_params.get("table") == "attempts" else "numbers"
    fmt: ai_exports.Fmt = "xlsx" if request.query_params.get("fmt") == "xlsx" else "csv"
    if await ai_exports.count_rows(s, row.id, table, f, domain.timezone) > ai_exports.BACKGROUND_ROWS:
        name = exports.order(p.tenant, row.id, table, fmt, f, domain.timezone)
        return RedirectResponse(
            f"/autoinformer/campaigns/{row.id.hex}/report?notice=export_ordered#export-{name.split('.')[0]}",
            status_code=303,
        )
    rows: list[ai_exports.Row] = []
    async for chunk in ai_exports.batches(s, row.id, table, f, domain.timezone):
        rows.extend(chunk)
    header = ai_exports.header_of(table)
    name = f"campaign-{row.id.hex[:8]}-{table}.{fmt}"
    if fmt == "csv":
        body = ai_exports.build_csv(header, rows)
    else:
        body = await asyncio.to_thread(ai_exports.build_xlsx, table, header, rows)
    return Response(
        body,
        media_type=ai_exports.MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/campaigns/{campaign_id}/exports/{name}")
async def export_file(name: str, p: AdminDep, row: section.CampaignDep, exports: AiExportsDep) -> Response:
    """A finished background export of the campaign (another domain's campaign is 404 before this)."""
    path = exports.path(p.tenant, row.id, name)
    if path is None:
        raise NotFound("export", name[:64])
    fmt = "xlsx" if name.endswith(".xlsx") else "csv"
    return FileResponse(
        path,
        media_type=ai_exports.MEDIA_TYPES[fmt],
        filename=f"campaign-{row.id.hex[:8]}-{name}",
        headers={"Cache-Control": "no-store"},
    )


@links.get(report_mail.LINK_PATH + "/{token}")
async def report_link(token: str, core: CoreDep, exports: AiExportsDep) -> Response:
    """The CSV a report e-mail links to, while the link's signature holds and neither it nor the file has
    expired; anything else is 404 (nothing tells a wrong token from an old one)."""
    link = report_mail.open_link(core.settings.secret_key.get_secret_value(), token, core.clock.now())
    path = exports.path(link.domain_id, link.campaign_id, link.name) if link else None
    if link is None or path is None:
        raise NotFound("report", "link")
    return FileResponse(
        path,
        media_type=ai_exports.MEDIA_TYPES["csv"],
        filename=f"campaign-{link.campaign_id.hex[:8]}-{link.name}",
        headers={"Cache-Control": "no-store"},
    )
