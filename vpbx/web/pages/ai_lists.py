"""The autoinformer's domain lists in the cabinet: «Стоп-лист» (autoinformer.md §3.2) and «Аудиофайлы»
(§3.1).

The stop list is the domain's: listed, searched, added to and removed from by hand (an ``opt_out`` entry only
after a confirmation: the person asked not to be called), imported from and exported to CSV. Every lookup
filters by the session's domain; every change is in the domain's audit log.

The audio library takes WAV or MP3 uploads (converted at once to 8 kHz mono), shows why a file was refused
(format, size, length, decoding), plays a file and deletes one that no live campaign uses.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.autoinformer import audio, stoplist
from vpbx.autoinformer.tables import TableError
from vpbx.errors import NotFound, ValidationFailed
from vpbx.media.prompts import PromptError
from vpbx.pbx.validation import N_
from vpbx.store.models import AiStopEntry, AuditEntry
from vpbx.store.paging import Page
from vpbx.web import forms
from vpbx.web.auth import AdminDep, CoreDep, DbDep, Principal, RendererDep
from vpbx.web.pages import autoinformer as section
from vpbx.web.render import Renderer
from vpbx.web.sections import SectionRoute

router = APIRouter(prefix="/autoinformer", route_class=SectionRoute)

STOP_PAGE = 50
MAX_STOP_FILE = 20 * 1024 * 1024
SOURCE_LABEL: dict[str, str] = {
    "opt_out": N_("opted out during a call"),
    "manual": N_("added by hand"),
    "import": N_("imported"),
}
STOP_REASON: dict[str, str] = {
    "empty_phone": N_("no phone"),
    "invalid_format": N_("not a valid number"),
    "duplicate": N_("already on the list"),
}


def _audit(s: AsyncSession, p: Principal, now: dt.datetime, action: str, **details: Any) -> None:
    s.add(
        AuditEntry(
            domain_id=p.tenant,
            at=now,
            actor=section.actor_of(p),
            action=f"autoinformer.stop_list.{action}",
            object_id=str(details.get("phone", "")),
            details=details,
        )
    )


async def _stop_page(
    request: Request,
    r: Renderer,
    s: AsyncSession,
    p: Principal,
    *,
    errors: ValidationFailed | None = None,
    confirm: AiStopEntry | None = None,
    result: dict[str, Any] | None = None,
    phone: str = "",
    status_code: int = 200,
) -> Response:
    q = (request.query_params.get("q") or "")[:32]
    page_no = forms.page_number(request.query_params.get("page"))
    found = await stoplist.list_entries(
        s, p.tenant, query=q, offset=(page_no - 1) * STOP_PAGE, limit=STOP_PAGE
    )
    page = Page(items=found.entries, total=found.total, page=page_no, per_page=STOP_PAGE)
    ctx = {
        "entries": page,
        "q": q,
        "confirm": confirm,
        "result": result,
        "phone": phone,
        "source_label": SOURCE_LABEL,
        "reason_label": STOP_REASON,
    }
    return await _list_page(request, r, s, p, "stop_list", ctx, errors, status_code)


async def _list_page(
    request: Request,
    r: Renderer,
    s: AsyncSession,
    p: Principal,
    name: str,
    ctx: dict[str, Any],
    errors: ValidationFailed | None,
    status_code: int,
) -> Response:
    """One of the domain's lists (stop list, audio library) with what both pages show: the domain, its
    wall clock, the notice; 422 with errors unless the caller chose another status."""
    domain = await section.domain_of(s, p.tenant)
    return r.page(
        request,
        f"autoinformer/{name}.html",
        {
            "settings_tab": "autoinformer",
            **ctx,
            "when": section.local_time(domain.timezone),
            "domain": domain,
            "notice": request.query_params.get("notice", ""),
        },
        errors=errors,
        status_code=422 if errors and status_code == 200 else status_code,
    )


@router.get("/stop-list")
async def stop_list_page(
    request: Request, r: RendererDep, p: AdminDep, s: DbDep, _on: section.ServiceOnDep
) -> Response:
    return await _stop_page(request, r, s, p)


@router.post("/stop-list/add")
async def stop_list_add(
    request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep, _on: section.ServiceOnDep
) -> Response:
    raw = forms.text(await request.form(), "phone").strip()
    try:
        entry, created = await stoplist.add(s, p.tenant, raw, source="manual", author=section.actor_of(p))
    except ValidationFailed as e:
        await s.rollback()
        return await _stop_page(request, r, s, p, errors=e, phone=raw)
    if created:
        _audit(s, p, core.clock.now(), "add", phone=entry.phone)
    await s.commit()
    return RedirectResponse(
        f"/autoinformer/stop-list?notice={'added' if created else 'listed'}", status_code=303
    )


@router.post("/stop-list/remove")
async def stop_list_remove(
    request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep, _on: section.ServiceOnDep
) -> Response:
    """Take a number off the list; an ``opt_out`` entry first shows a confirmation (§3.2)."""
    form = await request.form()
    raw = forms.text(form, "phone").strip()
    confirmed = forms.checked(form, "confirm")
    try:
        digits = "".join(ch for ch in raw if ch.isdigit())
        entry = await s.get(AiStopEntry, (p.tenant, digits))
        if entry is None:
            raise NotFound("stop-list entry", digits)
        source = entry.source
        await stoplist.remove(s, p.tenant, digits, confirm=confirmed, actor=section.actor_of(p))
    except stoplist.OptOutConfirmationRequired:
        await s.rollback()
        entry = await s.get(AiStopEntry, (p.tenant, digits))
        return await _stop_page(request, r, s, p, confirm=entry, status_code=409)
    if source != "opt_out":  # the service audits an opt-out's removal itself
        _audit(s, p, core.clock.now(), "remove", phone=digits, source=source)
    await s.commit()
    return RedirectResponse("/autoinformer/stop-list?notice=removed", status_code=303)


@router.post("/stop-list/import")
async def stop_list_import(
    request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep, _on: section.ServiceOnDep
) -> Response:
    form = await request.form()
    data = await section.read_upload(form, "file", MAX_STOP_FILE)
    try:
        if data is None:
            raise ValidationFailed.one("file", N_("Choose a CSV or XLSX file"))
        if len(data) > MAX_STOP_FILE:
            raise ValidationFailed.one("file", N_("The file is larger than 20 MB"))
        result = await stoplist.import_csv(s, p.tenant, data, author=section.actor_of(p))
    except ValidationFailed as e:
        await s.rollback()
        return await _stop_page(request, r, s, p, errors=e)
    except TableError as e:
        await s.rollback()
        t = r.translator(request)
        return await _stop_page(
            request, r, s, p, result={"added": 0, "rejected": [], "error": t.gettext(e.msgid, **e.params)}
        )
    _audit(s, p, core.clock.now(), "import", added=result.added, rejected=len(result.rejected))
    await s.commit()
    return await _stop_page(
        request, r, s, p, result={"added": result.added, "rejected": result.rejected, "error": ""}
    )


@router.get("/stop-list/export.csv")
async def stop_list_export(p: AdminDep, s: DbDep, _on: section.ServiceOnDep) -> Response:
    body = await stoplist.export_csv(s, p.tenant)
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="stop-list.csv"'},
    )


# --- «Аудиофайлы» ------------------------------------------------------------------------------------------

AUDIO_REASON: dict[str, str] = {
    "unsupported_format": N_("Unsupported format: upload a WAV (PCM, A-law, µ-law) or MP3 file"),
    "too_large": N_("The file is larger than 20 MB"),
    "too_long": N_("The recording is longer than 10 minutes"),
    "decode_failed": N_("The file is damaged and cannot be decoded"),
}


async def _audio_page(
    request: Request,
    r: Renderer,
    s: AsyncSession,
    p: Principal,
    *,
    errors: ValidationFailed | None = None,
    in_use: list[str] | None = None,
    status_code: int = 200,
) -> Response:
    ctx = {"files": await audio.list_files(s, p.tenant), "in_use": in_use}
    return await _list_page(request, r, s, p, "audio", ctx, errors, status_code)


@router.get("/audio")
async def audio_page(
    request: Request, r: RendererDep, p: AdminDep, s: DbDep, _on: section.ServiceOnDep
) -> Response:
    return await _audio_page(request, r, s, p)


@router.post("/audio")
async def audio_upload(
    request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep, _on: section.ServiceOnDep
) -> Response:
    """Add a WAV/MP3 to the library; a refused upload names its reason (§3.1)."""
    form = await request.form()
    name = forms.text(form, "name").strip()
    value = form.get("file")
    filename = getattr(value, "filename", "") or ""
    data = await section.read_upload(form, "file", audio.MAX_BYTES["cabinet"])
    try:
        if data is None:
            raise ValidationFailed.one("file", N_("Choose a WAV or MP3 file"))
        row = await audio.upload(s, core.prompts, p.tenant, name or filename.rsplit(".", 1)[0], data)
    except ValidationFailed as e:
        await s.rollback()
        return await _audio_page(request, r, s, p, errors=e)
    except audio.AudioRejected as e:
        await s.rollback()
        errors = ValidationFailed.one("file", AUDIO_REASON[e.reason])
        return await _audio_page(request, r, s, p, errors=errors)
    s.add(
        AuditEntry(
            domain_id=p.tenant,
            at=core.clock.now(),
            actor=section.actor_of(p),
            action="autoinformer.audio.upload",
            object_id=row.id.hex,
            details={"name": row.name, "duration_ms": row.duration_ms},
        )
    )
    await s.commit()
    return RedirectResponse("/autoinformer/audio?notice=uploaded", status_code=303)


@router.get("/audio/{file_id}/play")
async def audio_play(file_id: str, p: AdminDep, s: DbDep, core: CoreDep) -> Response:
    """The library file's converted 8 kHz WAV, for the page's player."""
    row = await audio.get_file(s, p.tenant, file_id)  # another domain's: 404, service or not
    await section.require_on(s, p.tenant)
    try:
        prompt = core.prompts.get(row.prompt_id)
    except (PromptError, ValueError):
        raise NotFound("audio file", file_id) from None
    return FileResponse(
        prompt.wav, media_type="audio/wav", headers={"Cache-Control": "private, max-age=3600"}
    )


@router.post("/audio/{file_id}/delete")
async def audio_delete(
    file_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep
) -> Response:
    row = await audio.get_file(s, p.tenant, file_id)  # another domain's: 404, service or not
    await section.require_on(s, p.tenant)
    name = row.name
    try:
        await audio.delete_file(s, p.tenant, row.id.hex)
    except audio.AudioInUse as e:
        await s.rollback()
        return await _audio_page(request, r, s, p, in_use=e.campaigns, status_code=409)
    s.add(
        AuditEntry(
            domain_id=p.tenant,
            at=core.clock.now(),
            actor=section.actor_of(p),
            action="autoinformer.audio.delete",
            object_id=file_id,
            details={"name": name},
        )
    )
    await s.commit()
    return RedirectResponse("/autoinformer/audio?notice=deleted", status_code=303)
