"""Call recordings in the cabinet (telephony.md §3.10): the MP3 download/player source and the domain's
recording settings («Запись разговоров»).

``GET /recordings/{session_id}.mp3`` serves a ready recording with Range support (the browser's player
seeks). Who may: the domain's admin, or a user of the domain who was a party of the call (caller, callee or
the one who answered, by PIN on the call record). Everything else, another domain's recording included,
is 404; so is a recording that is not ready yet (with a message saying so).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.errors import NotFound, ValidationFailed
from vpbx.pbx.validation import N_
from vpbx.store.models import CallRecord, Domain, Recording, User
from vpbx.web import forms
from vpbx.web.auth import AdminDep, CoreDep, DbDep, MemberDep, Principal, RendererDep
from vpbx.web.render import Renderer

router = APIRouter(prefix="/recordings")

MIN_RETENTION_DAYS = 1  # the domains table's check constraint
MAX_RETENTION_DAYS = 3650
NOT_READY = N_("The recording is not ready yet. Try again in a minute.")


async def _may_listen(s: AsyncSession, p: Principal, session_id: str) -> bool:
    """The admin hears every call of the domain; a user the calls they were a party of."""
    if p.role == "admin":
        return True
    if p.user_id is None:
        return False
    user = await s.get(User, p.user_id)
    if user is None or user.domain_id != p.tenant:
        return False
    found = await s.scalar(
        select(CallRecord.id).where(
            CallRecord.domain_id == p.tenant,
            CallRecord.session_id == session_id,
            or_(
                CallRecord.caller_pin == user.pin,
                CallRecord.callee_pin == user.pin,
                CallRecord.answering_pin == user.pin,
            ),
        )
    )
    return found is not None


@router.get("/settings")
async def settings_page(request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    return await _settings(request, r, s, p)


async def _settings(
    request: Request,
    r: Renderer,
    s: AsyncSession,
    p: Principal,
    *,
    errors: ValidationFailed | None = None,
    values: dict[str, object] | None = None,
    saved: bool = False,
) -> Response:
    domain = await s.get(Domain, p.tenant)
    if domain is None:
        raise NotFound("domain", p.tenant)
    v = values or {"record_calls": domain.record_calls, "retention_days": domain.recording_retention_days}
    return r.page(
        request,
        "recordings/settings.html",
        {"v": v, "saved": saved, "min_days": MIN_RETENTION_DAYS, "max_days": MAX_RETENTION_DAYS},
        errors=errors,
        status_code=422 if errors else 200,
    )


@router.post("/settings")
async def save_settings(request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    form = await request.form()
    record_calls = forms.checked(form, "record_calls")
    raw = forms.text(form, "retention_days")
    values: dict[str, object] = {"record_calls": record_calls, "retention_days": raw}
    days = int(raw) if raw.isdigit() and len(raw) <= 5 else 0
    if not MIN_RETENTION_DAYS <= days <= MAX_RETENTION_DAYS:
        errors = ValidationFailed.one(
            "retention_days", N_("From {min} to {max} days"), min=MIN_RETENTION_DAYS, max=MAX_RETENTION_DAYS
        )
        return await _settings(request, r, s, p, errors=errors, values=values)
    domain = await s.get(Domain, p.tenant)
    if domain is None:
        raise NotFound("domain", p.tenant)
    domain.record_calls = record_calls
    domain.recording_retention_days = days
    await s.commit()
    return RedirectResponse("/recordings/settings?saved=1", status_code=303)


@router.get("/{session_id}.mp3")
async def download(
    session_id: str, request: Request, r: RendererDep, p: MemberDep, s: DbDep, core: CoreDep
) -> Response:
    if len(session_id) > 64:
        raise NotFound("recording", session_id[:64])
    rec = await s.scalar(
        select(Recording)
        .where(Recording.domain_id == p.tenant, Recording.session_id == session_id)
        .order_by(Recording.created_at.desc())
        .limit(1)
    )
    if rec is None or not await _may_listen(s, p, session_id):
        raise NotFound("recording", session_id)
    if rec.status != "ready":
        t = r.translator(request)
        return r.page(
            request, "error.html", {"status": 404, "message": t.gettext(NOT_READY)}, status_code=404
        )
    try:
        path = core.recordings.path(rec.path)
    except ValueError:
        raise NotFound("recording", session_id) from None
    if not path.is_file():
        raise NotFound("recording", session_id)
    return FileResponse(
        path,
        media_type="audio/mpeg",
        filename=f"{session_id}.mp3",
        content_disposition_type="inline",
        headers={"Cache-Control": "private, max-age=3600"},
    )
