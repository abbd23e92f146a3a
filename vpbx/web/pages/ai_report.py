"""A campaign's «Отчёт» tab (autoinformer.md §6): the live summary (refreshed every 5 s by htmx while the
campaign can still call), the chart of attempts and outcomes per 15 minutes (chart.js from the page's JSON
block), the numbers and attempts tables with their filters and paging, and both tables' export as CSV (UTF-8
with BOM, ``;``) or XLSX.

Everything is read from the campaign's rows of the session's domain; another domain's campaign is 404.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import uuid
import zoneinfo
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import QueryableAttribute

from vpbx.autoinformer import campaigns
from vpbx.autoinformer import status as ai_status
from vpbx.store.models import AI_OUTCOMES, AiAttempt, AiCampaign, AiContact, AiContactPhone, Domain
from vpbx.store.paging import Page, like_pattern, paginate
from vpbx.web import forms
from vpbx.web.auth import AdminDep, CoreDep, DbDep, RendererDep
from vpbx.web.pages import autoinformer as section
from vpbx.web.sections import SectionRoute

router = APIRouter(prefix="/autoinformer", route_class=SectionRoute)

_Row = TypeVar("_Row")

POLL_S = 5
BUCKET = dt.timedelta(minutes=15)
MAX_BUCKETS = 7 * 24 * 4  # a week of 15-minute bars; older attempts fall out of the chart
PER_PAGE = 50
EXPORT_LIMIT = 100_000
LIVE = ("scheduled", "running", "paused", "error")
NUMBER_COLUMNS = (
    "phone",
    "phones",
    "external_id",
    "variables",
    "status",
    "attempts_made",
    "last_outcome",
    "last_attempt_at",
    "next_attempt_at",
    "best_listen_s",
    "digits",
    "succeeded_at",
    "last_session_id",
)
ATTEMPT_COLUMNS = (
    "attempt_id",
    "contact_id",
    "external_id",
    "attempt_no",
    "number_index",
    "phone",
    "scheduled_at",
    "started_at",
    "answered_at",
    "ended_at",
    "sip_code",
    "outcome",
    "criterion_met",
    "listen_s",
    "played_full",
    "digits",
    "action",
    "operator_target",
    "operator_answered",
    "amd_result",
    "session_id",
    "cost",
    "detail",
)


@dataclass(frozen=True, slots=True)
class Filters:
    """The tables' filters (§6): status, last outcome, digit, period (the domain's dates), phone."""

    status: str = ""
    outcome: str = ""
    digit: str = ""
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    phone: str = ""

    @classmethod
    def of(cls, q: Any) -> Filters:
        def day(name: str) -> dt.date | None:
            try:
                return dt.date.fromisoformat(str(q.get(name) or "")[:10])
            except ValueError:
                return None

        status = str(q.get("status") or "")
        outcome = str(q.get("outcome") or "")
        digit = str(q.get("digit") or "")[:1]
        return cls(
            status=status if status in section.CONTACT_STATUS else "",
            outcome=outcome if outcome in AI_OUTCOMES else "",
            digit=digit if digit and digit in "0123456789*#" else "",
            date_from=day("from"),
            date_to=day("to"),
            phone="".join(ch for ch in str(q.get("phone") or "") if ch.isdigit())[:16],
        )

    def query(self) -> dict[str, str]:
        return {
            "status": self.status,
            "outcome": self.outcome,
            "digit": self.digit,
            "from": self.date_from.isoformat() if self.date_from else "",
            "to": self.date_to.isoformat() if self.date_to else "",
            "phone": self.phone,
        }

    def bounds(self, timezone: str) -> tuple[dt.datetime | None, dt.datetime | None]:
        """The period as UTC instants: from the start of ``date_from`` to the end of ``date_to``."""
        tz = zoneinfo.ZoneInfo(timezone)
        lo = dt.datetime.combine(self.date_from, dt.time(), tz) if self.date_from else None
        hi = dt.datetime.combine(self.date_to + dt.timedelta(days=1), dt.time(), tz) if self.date_to else None
        return (lo.astimezone(dt.UTC) if lo else None, hi.astimezone(dt.UTC) if hi else None)


def _narrowed(
    stmt: Select[_Row],
    f: Filters,
    timezone: str,
    *,
    outcome: QueryableAttribute[Any],
    digits: QueryableAttribute[Any],
    at: QueryableAttribute[Any],
) -> Select[_Row]:
    """The filters both tables share: the outcome, a pressed key, the local dates (on ``at``)."""
    if f.outcome:
        stmt = stmt.where(outcome == f.outcome)
    if f.digit:
        stmt = stmt.where(digits.like(like_pattern(f.digit), escape="\\"))
    lo, hi = f.bounds(timezone)
    if lo:
        stmt = stmt.where(at >= lo)
    if hi:
        stmt = stmt.where(at < hi)
    return stmt


def numbers_query(campaign_id: uuid.UUID, f: Filters, timezone: str) -> Select[AiContact]:
    stmt = select(AiContact).where(AiContact.campaign_id == campaign_id)
    if f.status:
        stmt = stmt.where(AiContact.status == f.status)
    stmt = _narrowed(
        stmt,
        f,
        timezone,
        outcome=AiContact.last_outcome,
        digits=AiContact.digits,
        at=AiContact.last_attempt_at,
    )
    if f.phone:
        stmt = stmt.where(
            AiContact.id.in_(
                select(AiContactPhone.contact_id).where(
                    AiContactPhone.campaign_id == campaign_id,
                    AiContactPhone.phone.like(like_pattern(f.phone), escape="\\"),
                )
            )
        )
    return stmt.order_by(AiContact.row_no, AiContact.created_at, AiContact.id)


def attempts_query(campaign_id: uuid.UUID, f: Filters, timezone: str) -> Select[AiAttempt]:
    stmt = select(AiAttempt).where(AiAttempt.campaign_id == campaign_id)
    if f.status:
        stmt = stmt.where(
            AiAttempt.contact_id.in_(
                select(AiContact.id).where(AiContact.campaign_id == campaign_id, AiContact.status == f.status)
            )
        )
    stmt = _narrowed(
        stmt, f, timezone, outcome=AiAttempt.outcome, digits=AiAttempt.digits, at=AiAttempt.started_at
    )
    if f.phone:
        stmt = stmt.where(AiAttempt.phone.like(like_pattern(f.phone), escape="\\"))
    return stmt.order_by(AiAttempt.started_at.desc(), AiAttempt.id)


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
    request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep, row: section.CampaignDep
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


def _cell(value: Any, tz: zoneinfo.ZoneInfo) -> str | int | float:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        at = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return at.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, uuid.UUID):
        return value.hex
    if isinstance(value, int | float):
        return value
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def number_row(c: AiContact, tz: zoneinfo.ZoneInfo) -> list[str | int | float]:
    values: dict[str, Any] = {
        "phone": c.phones[0] if c.phones else "",
        "phones": c.phones,
        "external_id": c.external_id,
        "variables": c.variables,
        "status": c.status,
        "attempts_made": c.attempts_made,
        "last_outcome": c.last_outcome,
        "last_attempt_at": c.last_attempt_at,
        "next_attempt_at": c.next_attempt_at,
        "best_listen_s": c.best_listen_s,
        "digits": c.digits,
        "succeeded_at": c.succeeded_at,
        "last_session_id": c.last_session_id,
    }
    return [_cell(values[k], tz) for k in NUMBER_COLUMNS]


def attempt_row(a: AiAttempt, external: dict[uuid.UUID, str | None], tz: zoneinfo.ZoneInfo) -> list[Any]:
    values: dict[str, Any] = {k: getattr(a, k, None) for k in ATTEMPT_COLUMNS}
    values["attempt_id"] = a.id
    values["external_id"] = external.get(a.contact_id)
    values["cost"] = f"{a.cost:.2f}" if a.cost is not None else None
    return [_cell(values[k], tz) for k in ATTEMPT_COLUMNS]


def build_csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    """UTF-8 with a BOM and ``;`` between fields, so spreadsheet programs open it directly (§6)."""
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=";", lineterminator="\r\n")
    w.writerow(header)
    w.writerows(rows)
    return ("\ufeff" + buf.getvalue()).encode("utf-8")


def build_xlsx(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    from openpyxl import Workbook

    wb = Workbook(write_only=True)
    ws = wb.create_sheet(title)
    ws.append(list(header))
    for row in rows:
        # phones and ids stay text: a spreadsheet would show 79161234567 as 7.9E+10
        ws.append([v if isinstance(v, int | float) else str(v) for v in row])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


Table = Literal["numbers", "attempts"]


@router.get("/campaigns/{campaign_id}/export")
async def export(request: Request, p: AdminDep, s: DbDep, row: section.CampaignDep) -> Response:
    """``?table=numbers|attempts&fmt=csv|xlsx`` plus the page's filters."""
    domain = await section.domain_of(s, p.tenant)
    tz = zoneinfo.ZoneInfo(domain.timezone)
    f = Filters.of(request.query_params)
    table: Table = "attempts" if request.query_params.get("table") == "attempts" else "numbers"
    fmt = "xlsx" if request.query_params.get("fmt") == "xlsx" else "csv"
    header: Sequence[str]
    if table == "numbers":
        contacts = (await s.scalars(numbers_query(row.id, f, domain.timezone).limit(EXPORT_LIMIT))).all()
        header, rows = NUMBER_COLUMNS, [number_row(c, tz) for c in contacts]
    else:
        attempts = (await s.scalars(attempts_query(row.id, f, domain.timezone).limit(EXPORT_LIMIT))).all()
        ids = {a.contact_id for a in attempts}
        external: dict[uuid.UUID, str | None] = {}
        for cid, ext in (
            await s.execute(
                select(AiContact.id, AiContact.external_id).where(
                    AiContact.campaign_id == row.id, AiContact.external_id.is_not(None)
                )
            )
        ).all():
            if cid in ids:
                external[cid] = ext
        header, rows = ATTEMPT_COLUMNS, [attempt_row(a, external, tz) for a in attempts]
    name = f"campaign-{row.id.hex[:8]}-{table}.{fmt}"
    if fmt == "csv":
        body = build_csv(header, rows)
        media = "text/csv; charset=utf-8"
    else:
        body = await asyncio.to_thread(build_xlsx, table, header, rows)
        media = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    return Response(body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'})
