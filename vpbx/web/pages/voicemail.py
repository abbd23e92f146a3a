"""Voicemail section («Голосовая почта»): the boxes, each box's settings and its messages.

The admin sees every user's and group's box of the domain and sets any of them up; a user sees and sets up
only their own box. A box's settings page (``/voicemail/users/<id>``, ``/voicemail/groups/<id>``) holds the
greeting (speech with a preview in the browser, or an uploaded WAV/MP3), the longest message, the e-mail
notification and, for a user, whether unanswered or busy calls go to the box. The mailbox
(``/voicemail/boxes/<id>``) lists messages with a player; the MP3 is served only to the box's user or the
domain's admin, and another domain's ids are 404 everywhere.
"""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.app import Core
from vpbx.errors import NotFound, ValidationFailed
from vpbx.pbx import groups, users
from vpbx.pbx import voicemail as svc
from vpbx.store.models import Domain, VoicemailBox
from vpbx.web import forms
from vpbx.web.auth import AdminDep, CoreDep, DbDep, MemberDep, Principal, RendererDep
from vpbx.web.pages.menus import prompt_file, spoken_preview
from vpbx.web.render import Renderer

router = APIRouter(prefix="/voicemail")
FORM = "voicemail/box.html"


def _scope(p: Principal) -> uuid.UUID | None:
    """None for the admin (every box of the domain); a user's own id otherwise."""
    return None if p.role == "admin" else p.user_id


def root_of(core: Core) -> Path:
    return core.settings.data_dir / svc.VOICEMAIL_DIR


async def _read_form(request: Request, max_bytes: int) -> svc.BoxInput:
    form = await request.form()
    try:
        data, file_name = await forms.upload(form, "greeting_file", max_bytes)
        return svc.BoxInput(
            greeting_source=forms.text(form, "greeting_source", "text"),
            greeting_text=forms.text(form, "greeting_text"),
            greeting_voice=forms.text(form, "greeting_voice", "ru"),
            upload=data,
            greeting_file_name=file_name,
            max_message_s=forms.text(form, "max_message_s", str(svc.DEFAULT_MAX_MESSAGE_S)),
            notify_email=forms.text(form, "notify_email"),
            attach_audio=forms.checked(form, "attach_audio"),
            on_no_answer=forms.checked(form, "on_no_answer"),
            on_busy=forms.checked(form, "on_busy"),
        )
    finally:
        await form.close()  # the upload's spooled temporary file


async def _owner_name(
    s: AsyncSession, domain_id: uuid.UUID, user_id: uuid.UUID | None, group_id: uuid.UUID | None
) -> str:
    if user_id is not None:
        u = await users.get_user(s, domain_id, user_id)
        return f"{u.pin} — {u.display_name}"
    assert group_id is not None
    g = await groups.get_group(s, domain_id, group_id)
    return f"{g.pin} — {g.name}"


async def _box_page(
    request: Request,
    r: Renderer,
    s: AsyncSession,
    p: Principal,
    *,
    user_id: uuid.UUID | None = None,
    group_id: uuid.UUID | None = None,
    data: svc.BoxInput | None = None,
    errors: ValidationFailed | None = None,
    saved: bool = False,
) -> Response:
    owner = await _owner_name(s, p.tenant, user_id, group_id)
    box = await svc.find_box(s, p.tenant, user_id=user_id, group_id=group_id)
    action = f"/voicemail/users/{user_id}" if user_id else f"/voicemail/groups/{group_id}"
    return r.page(
        request,
        FORM,
        {
            "owner": owner,
            "box": box,
            "v": data or svc.box_input(box),
            "action": action,
            "for_user": user_id is not None,
            "saved": saved,
            "default_greeting": svc.DEFAULT_GREETING,
        },
        errors=errors,
        status_code=422 if errors else 200,
    )


async def _save(
    request: Request,
    r: Renderer,
    s: AsyncSession,
    p: Principal,
    core: Core,
    *,
    user_id: uuid.UUID | None = None,
    group_id: uuid.UUID | None = None,
) -> Response:
    await _owner_name(s, p.tenant, user_id, group_id)  # another domain's owner: 404 before reading the form
    data = await _read_form(request, core.prompts.max_upload_bytes)
    try:
        await svc.save_box(s, p.tenant, data, core.prompts, user_id=user_id, group_id=group_id)
    except ValidationFailed as e:
        await s.rollback()
        return await _box_page(request, r, s, p, user_id=user_id, group_id=group_id, data=data, errors=e)
    await s.commit()
    return await _box_page(request, r, s, p, user_id=user_id, group_id=group_id, saved=True)


# --- the section ---------------------------------------------------------------------------------------
@router.get("")
async def index(request: Request, r: RendererDep, p: MemberDep, s: DbDep) -> Response:
    """The boxes: the admin's list of users and groups with their boxes; a user's own box."""
    scope = _scope(p)
    boxes = await svc.visible_boxes(s, p.tenant, scope)
    by_user = {v.box.user_id: v for v in boxes if v.box.user_id}
    by_group = {v.box.group_id: v for v in boxes if v.box.group_id}
    if scope is None:
        people = await users.all_users(s, p.tenant)
        teams = await groups.all_groups(s, p.tenant)
    else:
        people = [await users.get_user(s, p.tenant, scope)]
        teams = []
    rows = [
        {"kind": "user", "id": u.id, "pin": u.pin, "name": u.display_name, "box": by_user.get(u.id)}
        for u in people
    ] + [
        {"kind": "group", "id": g.id, "pin": g.pin, "name": g.name, "box": by_group.get(g.id)} for g in teams
    ]
    return r.page(request, "voicemail/index.html", {"rows": rows})


@router.get("/users/{user_id}")
async def user_box(user_id: str, request: Request, r: RendererDep, p: MemberDep, s: DbDep) -> Response:
    uid = _own_user(p, user_id)
    return await _box_page(request, r, s, p, user_id=uid)


@router.post("/users/{user_id}")
async def save_user_box(
    user_id: str, request: Request, r: RendererDep, p: MemberDep, s: DbDep, core: CoreDep
) -> Response:
    uid = _own_user(p, user_id)
    return await _save(request, r, s, p, core, user_id=uid)


@router.get("/groups/{group_id}")
async def group_box(group_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    return await _box_page(request, r, s, p, group_id=forms.parse_id(group_id, "group"))


@router.post("/groups/{group_id}")
async def save_group_box(
    group_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep
) -> Response:
    return await _save(request, r, s, p, core, group_id=forms.parse_id(group_id, "group"))


def _own_user(p: Principal, user_id: str) -> uuid.UUID:
    """The user whose box is asked for: any of the domain's for the admin, only one's own for a user."""
    uid = forms.parse_id(user_id, "user")
    scope = _scope(p)
    if scope is not None and uid != scope:
        raise NotFound("user", uid)
    return uid


@router.post("/preview")
async def preview(request: Request, r: RendererDep, p: MemberDep, s: DbDep, core: CoreDep) -> Response:
    """Speak the greeting's text now and answer a player for it."""
    form = await request.form()
    text, voice = forms.text(form, "greeting_text"), forms.text(form, "greeting_voice", "ru")
    speaking = svc.speak_greeting(s, p.tenant, core.prompts, text, voice)
    return await spoken_preview(request, r, s, speaking, "/voicemail/prompts", "greeting_text")


@router.get("/prompts/{prompt_id}")
async def prompt_audio(prompt_id: str, p: MemberDep, s: DbDep, core: CoreDep) -> Response:
    """A greeting's 8 kHz WAV, to a domain that stored it; 404 for anyone else's."""
    return await prompt_file(s, p.tenant, core.prompts, prompt_id)


# --- the mailbox ---------------------------------------------------------------------------------------
async def _visible_box(s: AsyncSession, p: Principal, box_id: str) -> VoicemailBox:
    box = await svc.get_box(s, p.tenant, forms.parse_id(box_id, "voicemail box"))
    scope = _scope(p)
    if scope is not None and box.user_id != scope:
        raise NotFound("voicemail box", box.id)
    return box


@router.get("/boxes/{box_id}")
async def mailbox(box_id: str, request: Request, r: RendererDep, p: MemberDep, s: DbDep) -> Response:
    box = await _visible_box(s, p, box_id)
    owner = await _owner_name(s, p.tenant, box.user_id, box.group_id)
    messages = await svc.list_messages(s, p.tenant, box.id)
    domain = await s.get(Domain, p.tenant)
    tz = zoneinfo.ZoneInfo(domain.timezone if domain is not None else "UTC")
    local = {m.id: _aware(m.created_at).astimezone(tz) for m in messages}
    settings = f"/voicemail/users/{box.user_id}" if box.user_id else f"/voicemail/groups/{box.group_id}"
    return r.page(
        request,
        "voicemail/mailbox.html",
        {"box": box, "owner": owner, "messages": messages, "local": local, "settings": settings},
    )


def _aware(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)  # SQLite keeps no offset


@router.get("/messages/{message_id}/audio")
async def message_audio(message_id: str, p: MemberDep, s: DbDep, core: CoreDep) -> Response:
    """The message's MP3: to the box's user or the domain's admin; 404 for everyone else."""
    m = await svc.get_message(s, p.tenant, forms.parse_id(message_id, "voicemail message"), _scope(p))
    path = svc.message_file(root_of(core), m)
    if path is None or not path.is_file():
        raise NotFound("voicemail message", m.id)
    return FileResponse(
        path,
        media_type="audio/mpeg",
        filename=f"voicemail-{m.created_at:%Y%m%d-%H%M%S}.mp3",
        content_disposition_type="inline",
        headers={"Cache-Control": "private, max-age=3600"},
    )


@router.post("/messages/{message_id}/listened")
async def listened(message_id: str, p: MemberDep, s: DbDep) -> Response:
    m = await svc.mark_listened(s, p.tenant, forms.parse_id(message_id, "voicemail message"), _scope(p))
    await s.commit()
    return RedirectResponse(f"/voicemail/boxes/{m.box_id}", status_code=303)


@router.post("/messages/{message_id}/delete")
async def delete(message_id: str, p: MemberDep, s: DbDep, core: CoreDep) -> Response:
    mid = forms.parse_id(message_id, "voicemail message")
    m = await svc.get_message(s, p.tenant, mid, _scope(p))
    box_id = m.box_id
    await svc.delete_message(s, p.tenant, mid, _scope(p), root=root_of(core))
    await s.commit()
    return RedirectResponse(f"/voicemail/boxes/{box_id}", status_code=303)
