"""The integration's health panel (amocrm.md §5.8, ours): one object per binding, read from what the other
parts already record, with an alert per problem. Shown in the cabinet (``/integrations``) and to the
widget's admins (``GET /amo/widget/v1/health``).

Sources (nothing here keeps its own bookkeeping):
- the client's record per account (``AmoClientPool.health``: last success/failure, the limiter's 429 count
  and pause, the 429 answers of the last 15 minutes, the 403 circuit), live in this process, else its copy in
  ``CrmBinding.health["client"]``; a 429 within 15 minutes is a warning with its time and count, while the
  widget's ``/state`` health stays one of §3.4's words (a 429 alone is not an outage);
- the install's ``token_state``/``token_error`` (``tokens``: failed refreshes, needs_reauth);
- the job queue (``jobs.queue_health`` and the dead jobs, «Повторить» = ``jobs.retry_dead``);
- the ИМК's cache-only state (``PhoneLookup.cache_only`` of the running routing hook);
- the domain's users without a mapping (``CrmUserMap``).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.amocrm import jobs
from vpbx.amocrm.binding import health_of, install_of
from vpbx.amocrm.client import RECENT_429, shared_pool
from vpbx.amocrm.lookup import PhoneLookup
from vpbx.amocrm.widget_api import AdminDep, _binding, _core
from vpbx.store.models import CrmBinding, CrmJob, CrmUserMap, User

if TYPE_CHECKING:
    from vpbx.app import Core

router = APIRouter(prefix="/widget/v1")

DEAD_LISTED = 20  # the panel lists the newest dead jobs

# alert code → the cabinet's message (gettext msgids; Russian in locale/ru/integrations.po)
ALERTS = {
    "needs_reauth": "amoCRM needs a new authorisation: open the widget in amoCRM and connect again.",
    "amo_unreachable": "No connection to amoCRM.",
    "token_failures": "The amoCRM access key could not be refreshed.",
    "rate_limited": "amoCRM limited the request rate (429) in the last 15 minutes: 429 answers: {count}, the "
    "last at {time}; requests pause meanwhile.",
    "circuit_open": "amoCRM refused access (403): requests are suspended.",
    "cache_only": "Contact lookup uses the cache only: amoCRM did not answer in time.",
    "unmapped": "Some extensions are not mapped to amoCRM users.",
    "dead_jobs": "Some call events were not delivered to amoCRM.",
    "queue": "Call events wait for amoCRM (held).",
}
WARNINGS = frozenset({"rate_limited", "unmapped"})  # the others are errors (the panel's level, ours)
STATUS_LABELS = {
    "ok": "Linked",
    "needs_reauth": "Re-authorisation required",
    "amo_unreachable": "No connection to amoCRM",
}


def _client_record(core: Core, row: CrmBinding) -> dict[str, Any]:
    """This process's live record for the account, else the last copy the pool saved on the binding."""
    saved = (row.health or {}).get("client")
    live = shared_pool(core).health(row.external_account_id)
    touched = live.get("last_success_at") or live.get("last_failure_at") or live.get("count_429")
    if not touched and isinstance(saved, dict):
        return dict(saved)
    return live


def amo_lookup(app: Any) -> PhoneLookup | None:
    """The running ИМК's phone lookup (the ``/amo`` sub-app's state), if this process routes calls."""
    state = getattr(app, "state", None)
    found = getattr(state, "amo_lookup", None)
    if found is None:
        from vpbx.amocrm.routing import _amo_sub_app

        sub = _amo_sub_app(app)
        found = getattr(getattr(sub, "state", None), "amo_lookup", None) if sub is not None else None
    return found if isinstance(found, PhoneLookup) else None


async def binding_health(s: AsyncSession, core: Core, row: CrmBinding, *, app: Any = None) -> dict[str, Any]:
    """The panel's object for one binding."""
    install = await install_of(s, row.external_account_id)
    client = _client_record(core, row)
    needs_reauth = install is None or install.token_state == "needs_reauth"
    word = "needs_reauth" if needs_reauth else health_of({**(row.health or {}), "client": client})
    status = word if word in STATUS_LABELS else "ok"
    mapped = set(await s.scalars(select(CrmUserMap.extension).where(CrmUserMap.binding_id == row.id)))
    users = (
        await s.execute(
            select(User.pin, User.display_name).where(User.domain_id == row.domain_id).order_by(User.pin)
        )
    ).all()
    unmapped = [{"extension": pin, "name": name} for pin, name in users if pin not in mapped]
    queue = await jobs.queue_health(s, row.id)
    dead = (
        await s.scalars(
            select(CrmJob)
            .where(CrmJob.binding_id == row.id, CrmJob.state == "dead")
            .order_by(CrmJob.done_at.desc(), CrmJob.created_at.desc())
            .limit(DEAD_LISTED)
        )
    ).all()
    lookup = amo_lookup(app) if app is not None else None
    cache_only = lookup.cache_only(row.id) if lookup is not None else False
    token_error = install.token_error if install is not None else ""
    out: dict[str, Any] = {
        "status": status,
        "status_label": STATUS_LABELS[status],
        "last_success_at": client.get("last_success_at"),
        "last_failure_at": client.get("last_failure_at"),
        "last_error": client.get("last_error") or "",
        "tokens": {
            "state": install.token_state if install is not None else "needs_reauth",
            "error": token_error,
        },
        "rate_limit": {
            "count_429": int(client.get("count_429") or 0),
            "paused_until": client.get("paused_until"),
            "rate": client.get("rate"),
            **recent_429(client, core.clock.now()),
        },
        "circuit": {
            "state": client.get("circuit") or "closed",
            "open_until": client.get("circuit_open_until"),
            "count_403": int(client.get("count_403") or 0),
        },
        "queue": queue,
        "dead_jobs": [
            {
                "id": str(j.id),
                "kind": j.kind,
                "key": j.key,
                "attempts": j.attempts,
                "last_error": j.last_error,
                "done_at": j.done_at.isoformat() if j.done_at else None,
            }
            for j in dead
        ],
        "cache_only": cache_only,
        "unmapped": unmapped,
    }
    out["alerts"] = [
        {
            "code": code,
            "message": ALERTS[code],
            "level": "warning" if code in WARNINGS else "error",
            "params": alert_params(code, out),
        }
        for code in alert_codes(out)
    ]
    return out


def recent_429(client: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """The last 429 answer (ISO time) and how many came within ``RECENT_429`` before ``now`` (from the live
    record or its saved copy; a copy's count is the count when it was saved)."""
    last = client.get("last_429_at")
    if not isinstance(last, str):
        return {"last_429_at": None, "recent_429": 0}
    try:
        at = dt.datetime.fromisoformat(last)
    except ValueError:
        return {"last_429_at": None, "recent_429": 0}
    fresh = now - at <= RECENT_429
    return {"last_429_at": last, "recent_429": max(int(client.get("recent_429") or 0), 1) if fresh else 0}


def alert_params(code: str, h: dict[str, Any]) -> dict[str, Any]:
    """The values an alert's message names (``{count}``, ``{time}``: ISO, the cabinet shows it local)."""
    if code == "rate_limited":
        rl = h["rate_limit"]
        return {"count": max(int(rl["recent_429"]), 1), "time": rl["last_429_at"] or ""}
    return {}


def alert_codes(h: dict[str, Any]) -> list[str]:
    """One code per problem the panel raises an alert for (§5.8), in the panel's order."""
    codes: list[str] = []
    if h["status"] in ("needs_reauth", "amo_unreachable"):
        codes.append(h["status"])
    if h["status"] != "needs_reauth" and h["tokens"]["error"]:
        codes.append("token_failures")
    if h["rate_limit"]["paused_until"] or h["rate_limit"]["recent_429"]:  # pausing now, or within 15 min
        codes.append("rate_limited")
    if h["circuit"]["state"] in ("open", "half_open"):
        codes.append("circuit_open")
    if h["cache_only"]:
        codes.append("cache_only")
    if h["unmapped"]:
        codes.append("unmapped")
    if h["queue"]["dead"]:
        codes.append("dead_jobs")
    if h["queue"]["held"]:
        codes.append("queue")
    return codes


@router.get("/health")
async def widget_health(request: Request, caller: AdminDep) -> dict[str, Any]:
    core = _core(request)
    async with core.sessions() as s:
        row = await _binding(s, caller)
        out = await binding_health(s, core, row, app=request.app)
    out.pop("status_label")
    out["warnings"] = [a["code"] for a in out["alerts"] if a["level"] == "warning"]
    out["alerts"] = [a["code"] for a in out["alerts"]]
    return out


__all__ = ["ALERTS", "STATUS_LABELS", "alert_codes", "binding_health", "router"]
