"""The call journal («Журнал звонков»), a call's card with its protocol, and the journal as CSV.

A domain admin sees every call of the domain; a plain user only the calls they took part in (their
extension as the caller, the callee or the one who answered). The filters live in the URL query, so a
filtered view can be shared; htmx swaps only the table (``/history/rows``) and puts the page's own URL in
the address bar.

The CSV export is streamed from the database in the filtered order. It is UTF-8 with a byte order mark and
``;`` between fields: Excel with Russian regional settings opens such a file by double click with Cyrillic
intact and one value per column (it expects the list separator of the locale, which is ``;`` where the
decimal separator is a comma). A malformed period is refused with 400 and the page that says why, never an
empty file.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import uuid
import zoneinfo
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.app import Core
from vpbx.autoinformer.campaigns import CallCampaign, campaigns_of_calls
from vpbx.errors import NotFound, ValidationFailed
from vpbx.pbx import journal
from vpbx.pbx.history_view import build_wire_log, duration_text, parse_steps
from vpbx.pbx.validation import N_
from vpbx.store.models import CallRecord, Domain, User
from vpbx.store.paging import paginate
from vpbx.web.auth import CoreDep, DbDep, MemberDep, Principal, RendererDep
from vpbx.web.i18n import Translator
from vpbx.web.render import Renderer

router = APIRouter(prefix="/history")
PER_PAGE = 25
CSV_DELIMITER = ";"
CSV_BATCH = 500  # rows fetched from the database per round trip while streaming
TYPE_MSGIDS = {"incoming": N_("Incoming"), "outbound": N_("Outgoing"), "internal": N_("Internal")}
# a cell starting like a formula is run by spreadsheets (CSV injection); phone numbers such as +7 495 … are
# data, anything else gets a leading apostrophe, which Excel hides and which keeps it text
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
PHONE_RE = re.compile(r"[+]?[0-9 ()\-]+")


async def domain_of(s: AsyncSession, p: Principal) -> Domain:
    domain = await s.get(Domain, p.tenant)
    if domain is None:
        raise NotFound("domain", p.tenant)
    return domain


async def own_pin(s: AsyncSession, p: Principal) -> str | None:
    """``None`` for an admin (the whole domain); a plain user's extension, so they see their own calls."""
    if p.role == "admin":
        return None
    user = await s.get(User, p.user_id) if p.user_id else None
    if user is None or user.domain_id != p.tenant:
        return ""
    return user.pin


def today_in(core: Core, timezone: str) -> dt.date:
    return core.clock.now().astimezone(zoneinfo.ZoneInfo(timezone)).date()


def local_text(when: dt.datetime | None, timezone: str, lang: str) -> str:
    """A UTC instant as the domain's wall clock, to the second."""
    if when is None:
        return ""
    local = when.astimezone(zoneinfo.ZoneInfo(timezone))
    return local.strftime("%d.%m.%Y %H:%M:%S" if lang == "ru" else "%Y-%m-%d %H:%M:%S")


def presets(f: journal.JournalFilter, today: dt.date) -> list[tuple[str, str, str, bool]]:
    """(id, msgid, URL query, active) of the period shortcuts, keeping the other filters."""
    labels = {"today": N_("Today"), "yesterday": N_("Yesterday"), "7d": N_("7 days"), "30d": N_("30 days")}
    out = []
    for key in journal.PRESETS:
        start, end = journal.period_of(key, today)
        q = urlencode(f.query(date_from=start, date_to=end, page=1))
        out.append((key, labels[key], q, (f.date_from, f.date_to) == (start, end)))
    return out


def _raw_filter(params: Mapping[str, str]) -> dict[str, str]:
    """The submitted filter values, to show back in the form when they are refused."""
    return {k: (params.get(k) or "")[:64] for k in ("from", "to", "direction", "state", "number", "user")}


async def _journal(
    request: Request, r: Renderer, p: Principal, s: AsyncSession, core: Core, template: str
) -> Response:
    domain = await domain_of(s, p)
    pin = await own_pin(s, p)
    today = today_in(core, domain.timezone)
    lang = r.translator(request).lang
    context: dict[str, Any] = {
        "timezone": domain.timezone,
        "users": await journal.user_choices(s, p.tenant) if pin is None else [],
        "directions": TYPE_MSGIDS,
    }
    try:
        f = journal.parse_filter(request.query_params, today)
    except ValidationFailed as e:
        context |= {"f": None, "values": _raw_filter(request.query_params), "page": None, "rows": []}
        return r.page(request, template, context, errors=e, status_code=400)
    page = await paginate(
        s, journal.journal_query(p.tenant, f, domain.timezone, own_pin=pin), f.page, PER_PAGE
    )
    records: list[CallRecord] = list(page.items)
    names = await journal.user_names(
        s, p.tenant, [x for c in records for x in (c.caller_pin, c.callee_pin, c.answering_pin)]
    )
    campaigns = await _campaigns(s, p.tenant, records)
    context |= {
        "f": f,
        "values": f.query() | {"from": f.date_from.isoformat(), "to": f.date_to.isoformat()},
        "page": page,
        "rows": [row(c, names, domain.timezone, lang, campaigns.get(c.session_id)) for c in records],
        "is_admin": p.role == "admin",
        "presets": presets(f, today),
        "query_of": lambda **kw: urlencode(f.query(**kw)),
    }
    response = r.page(request, template, context)
    if template != "history/journal.html":
        response.headers["HX-Push-Url"] = "/history?" + urlencode(f.query())
    return response


async def _campaigns(
    s: AsyncSession, tenant: uuid.UUID, records: list[CallRecord]
) -> dict[str, CallCampaign]:
    """The campaigns of the autoinformer calls among ``records`` (autoinformer.md §5), by session."""
    return await campaigns_of_calls(
        s, tenant, [c.session_id for c in records if c.call_kind == "autoinformer"]
    )


def row(
    c: CallRecord,
    names: Mapping[str, str],
    timezone: str,
    lang: str,
    campaign: CallCampaign | None = None,
) -> dict[str, Any]:
    return {
        "session_id": c.session_id,
        "type": c.call_type,
        "started_at": local_text(c.started_at, timezone, lang),
        "answered": c.answered_at is not None,
        "caller_number": c.caller_number,
        "caller_pin": c.caller_pin or "",
        "caller_name": names.get(c.caller_pin or "", ""),
        "callee_number": c.callee_number,
        "callee_pin": c.callee_pin or "",
        "callee_name": names.get(c.callee_pin or "", ""),
        "line": c.line or "",
        "answering_pin": c.answering_pin or "",
        "answering_name": names.get(c.answering_pin or "", ""),
        "duration": duration_text(c.duration_s),
        "is_record": c.is_record,
        "is_voicemail": c.is_voicemail,
        "open": c.ended_at is None,
        "campaign": campaign,
    }


@router.get("")
async def journal_page(request: Request, r: RendererDep, p: MemberDep, s: DbDep, core: CoreDep) -> Response:
    return await _journal(request, r, p, s, core, "history/journal.html")


@router.get("/rows")
async def journal_rows(request: Request, r: RendererDep, p: MemberDep, s: DbDep, core: CoreDep) -> Response:
    """The fragment htmx swaps when a filter changes or a page is turned."""
    return await _journal(request, r, p, s, core, "history/_rows.html")


# --- CSV export ---------------------------------------------------------------------------------------------

CSV_COLUMNS = (
    N_("Session"),
    N_("Started ({tz})"),
    N_("Type"),
    N_("Answered"),
    N_("Caller number"),
    N_("Caller extension"),
    N_("Caller name"),
    N_("Callee number"),
    N_("Callee extension"),
    N_("Callee name"),
    N_("Line"),
    N_("Answered by extension"),
    N_("Answered by name"),
    N_("Talk time, s"),
    N_("Status code"),
    N_("Status text"),
    N_("Recording"),
    N_("Voicemail"),
    N_("Protocol"),
)


def safe_cell(value: str) -> str:
    """A spreadsheet shows the value instead of running it as a formula."""
    if value.startswith(FORMULA_START) and not PHONE_RE.fullmatch(value):
        return "'" + value
    return value


def csv_line(values: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, delimiter=CSV_DELIMITER, lineterminator="\r\n").writerow([safe_cell(v) for v in values])
    return buf.getvalue()


def csv_values(c: CallRecord, names: Mapping[str, str], timezone: str, t: Translator) -> list[str]:
    yes, no = t.gettext("yes"), t.gettext("no")
    started = c.started_at.astimezone(zoneinfo.ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M:%S")
    return [
        c.session_id,
        started,
        t.gettext(TYPE_MSGIDS.get(c.call_type, c.call_type)),
        yes if c.answered_at is not None else no,
        c.caller_number,
        c.caller_pin or "",
        names.get(c.caller_pin or "", ""),
        c.callee_number,
        c.callee_pin or "",
        names.get(c.callee_pin or "", ""),
        c.line or "",
        c.answering_pin or "",
        names.get(c.answering_pin or "", ""),
        str(c.duration_s),
        "" if c.status_code is None else str(c.status_code),
        c.status_text or "",
        yes if c.is_record else no,
        yes if c.is_voicemail else no,
        build_wire_log(c.session_log),
    ]


async def csv_chunks(
    core: Core, tenant: uuid.UUID, f: journal.JournalFilter, timezone: str, pin: str | None, t: Translator
) -> AsyncIterator[bytes]:
    """The export, a batch of rows at a time, in a session of its own that lives as long as the stream."""
    yield ("\ufeff" + csv_line([t.gettext(m, tz=timezone) for m in CSV_COLUMNS])).encode()
    async with core.sessions() as s:
        names = dict(await journal.user_choices(s, tenant))
        stmt = journal.journal_query(tenant, f, timezone, own_pin=pin)
        result = await s.stream_scalars(stmt.execution_options(yield_per=CSV_BATCH))
        async for batch in result.partitions(CSV_BATCH):
            yield "".join(csv_line(csv_values(c, names, timezone, t)) for c in batch).encode()


@router.get("/export.csv")
async def export_csv(request: Request, r: RendererDep, p: MemberDep, s: DbDep, core: CoreDep) -> Response:
    domain = await domain_of(s, p)
    pin = await own_pin(s, p)
    try:
        f = journal.parse_filter(request.query_params, today_in(core, domain.timezone))
    except ValidationFailed:
        return await _journal(request, r, p, s, core, "history/journal.html")
    filename = f"calls-{f.date_from.isoformat()}-{f.date_to.isoformat()}.csv"
    return StreamingResponse(
        csv_chunks(core, p.tenant, f, domain.timezone, pin, r.translator(request)),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"},
    )


# --- the call card ------------------------------------------------------------------------------------------


@router.get("/{session_id}")
async def call_card(session_id: str, request: Request, r: RendererDep, p: MemberDep, s: DbDep) -> Response:
    domain = await domain_of(s, p)
    rec = await journal.get_record(s, p.tenant, session_id, own_pin=await own_pin(s, p))
    if rec is None:
        raise NotFound("call", session_id[:64])
    steps = parse_steps(rec.session_log)
    names = await journal.user_names(
        s, p.tenant, [rec.caller_pin, rec.callee_pin, rec.answering_pin, *(x.party for x in steps)]
    )
    lang = r.translator(request).lang
    campaign = (await _campaigns(s, p.tenant, [rec])).get(rec.session_id)
    return r.page(
        request,
        "history/card.html",
        {
            "c": rec,
            "row": row(rec, names, domain.timezone, lang, campaign),
            "is_admin": p.role == "admin",
            "timezone": domain.timezone,
            "answered_at": local_text(rec.answered_at, domain.timezone, lang),
            "ended_at": local_text(rec.ended_at, domain.timezone, lang),
            "steps": steps,
            "names": names,
            "wire_log": build_wire_log(rec.session_log),
            "type_msgid": TYPE_MSGIDS.get(rec.call_type, rec.call_type),
        },
    )
