"""Call statistics («Статистика звонков»): calls per hour of day and per day, answered against missed, and per
user, for a period of the domain's calendar; drawn by chart.js from a JSON block on the page.

The numbers come from ``journal.period_stats`` (SQL aggregates, folded into the domain's time zone); the
charts read them from ``<script type="application/json">``, which the Content-Security-Policy allows
because it is data, not script, and ``/static/stats.js`` draws them.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response

from vpbx.errors import ValidationFailed
from vpbx.pbx import journal
from vpbx.pbx.history_view import duration_text
from vpbx.web.auth import AdminDep, CoreDep, DbDep, RendererDep
from vpbx.web.pages.history import TYPE_MSGIDS, domain_of, presets, today_in

router = APIRouter(prefix="/stats")


def chart_data(stats: journal.Stats, t_answered: str, t_missed: str, t_talk: str) -> dict[str, Any]:
    return {
        "labels": {"answered": t_answered, "missed": t_missed, "talk": t_talk},
        "hours": {
            "labels": [f"{h:02d}" for h in range(24)],
            "answered": [x.answered for x in stats.hours],
            "missed": [x.missed for x in stats.hours],
        },
        "days": {
            "labels": [d.strftime("%d.%m") for d, _ in stats.days],
            "answered": [x.answered for _, x in stats.days],
            "missed": [x.missed for _, x in stats.days],
        },
        "total": {"answered": stats.total.answered, "missed": stats.total.missed},
        "users": {
            "labels": [f"{u.pin} {u.name}".strip() for u in stats.users],
            "answered": [u.answered for u in stats.users],
            "talk_min": [round(u.talk_s / 60, 1) for u in stats.users],
        },
    }


@router.get("")
async def stats_page(request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep) -> Response:
    domain = await domain_of(s, p)
    today = today_in(core, domain.timezone)
    t = r.translator(request)
    context: dict[str, Any] = {"timezone": domain.timezone, "directions": TYPE_MSGIDS}
    try:
        f = journal.parse_filter(request.query_params, today)
    except ValidationFailed as e:
        values = {k: (request.query_params.get(k) or "")[:64] for k in ("from", "to", "direction")}
        context |= {"f": None, "values": values, "stats": None, "journal_q": ""}
        return r.page(request, "history/stats.html", context, errors=e, status_code=400)
    f = journal.JournalFilter(date_from=f.date_from, date_to=f.date_to, direction=f.direction)
    stats = await journal.period_stats(s, p.tenant, f, domain.timezone)
    data = chart_data(
        stats, t.gettext("Answered (calls)"), t.gettext("Missed (calls)"), t.gettext("Talk time, min")
    )
    context |= {
        "f": f,
        "values": f.query(),
        "journal_q": urlencode(f.query()),
        "stats": stats,
        "talk": {u.pin: duration_text(u.talk_s) for u in stats.users},
        # no "<" at all, so user input (names) can never close the JSON block early
        "chart_json": json.dumps(data, ensure_ascii=False).replace("<", "\\u003c"),
        "presets": presets(f, today),
    }
    return r.page(request, "history/stats.html", context)
