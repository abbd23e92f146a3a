"""Voice menus section («Голосовые меню»): list with search, create, edit, delete; greeting upload or speech,
its preview in the browser, the key table and the timeout action.

The form is multipart (the greeting may be a file). Key rows repeat the same field names (``key``,
``key_action``, ``key_user_id``…), one value per row in order; htmx adds a blank row (``/menus/key-row``) and
removes one. A prompt is served (``/menus/prompts/<id>``) only to a domain that stored it (``DomainPrompt``).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.errors import NotFound, ValidationFailed
from vpbx.media.prompts import PromptError, PromptStore
from vpbx.pbx import groups, users
from vpbx.pbx import menus as svc
from vpbx.pbx.actions import ActionInput
from vpbx.store.models import VoiceMenu
from vpbx.web import forms
from vpbx.web.auth import AdminDep, CoreDep, DbDep, RendererDep
from vpbx.web.forms import FormData
from vpbx.web.render import Renderer

if TYPE_CHECKING:
    from vpbx.store.models import VoiceMenuKey

router = APIRouter(prefix="/menus")
FORM = "menus/form.html"
PREVIEW = "_prompt_preview.html"
MAX_ROWS = 50  # rows read from a form; more keys than 12 are refused anyway, as duplicates
KEY_FIELDS = ("key", "key_action", "key_user_id", "key_group_id", "key_menu_id", "key_number")


def _column(form: FormData, name: str, n: int) -> list[str]:
    values = [v[: forms.MAX_FIELD] if isinstance(v, str) else "" for v in form.getlist(name)]
    return (values + [""] * n)[:n]


def _keys(form: FormData) -> list[svc.KeyInput]:
    n = min(len(form.getlist("key")), MAX_ROWS)
    key, action, user, group, menu, number = (_column(form, f, n) for f in KEY_FIELDS)
    out = []
    for i in range(n):
        if not key[i].strip():
            continue  # a row without a key (a blank one, or one the admin cleared)
        out.append(
            svc.KeyInput(
                key=key[i],
                target=ActionInput(
                    action=action[i].strip(),
                    user_id=forms.optional_id(user[i]),
                    group_id=forms.optional_id(group[i]),
                    menu_id=forms.optional_id(menu[i]),
                    number=number[i],
                ),
            )
        )
    return out


async def _input(form: FormData, max_bytes: int) -> svc.MenuInput:
    data, file_name = await forms.upload(form, "greeting_file", max_bytes)
    return svc.MenuInput(
        name=forms.text(form, "name"),
        greeting_source=forms.text(form, "greeting_source", "text"),
        prompt_text=forms.text(form, "prompt_text"),
        greeting_voice=forms.text(form, "greeting_voice", "ru"),
        upload=data,
        greeting_file_name=file_name,
        invalid_text=forms.text(form, "invalid_text"),
        repeat_count=forms.text(form, "repeat_count", str(svc.DEFAULT_REPEAT)),
        digit_timeout_s=forms.text(form, "digit_timeout_s", str(svc.DEFAULT_DIGIT_TIMEOUT_S)),
        keys=_keys(form),
        timeout=ActionInput(
            action=forms.text(form, "timeout_action", "hangup").strip(),
            user_id=forms.optional_id(forms.text(form, "timeout_user_id")),
            group_id=forms.optional_id(forms.text(form, "timeout_group_id")),
            menu_id=forms.optional_id(forms.text(form, "timeout_menu_id")),
            number=forms.text(form, "timeout_number"),
        ),
    )


async def _read_form(request: Request, max_bytes: int) -> svc.MenuInput:
    form = await request.form()
    try:
        return await _input(form, max_bytes)
    finally:
        await form.close()  # the upload's spooled temporary file


def _id(value: uuid.UUID | None) -> str:
    return str(value) if value else ""


def _target(prefix: str, a: ActionInput) -> dict[str, object]:
    return {
        prefix + "action": a.action,
        prefix + "user_id": _id(a.user_id),
        prefix + "group_id": _id(a.group_id),
        prefix + "menu_id": _id(a.menu_id),
        prefix + "number": a.number,
    }


def _row_target(k: VoiceMenuKey | None) -> ActionInput:
    if k is None:
        return ActionInput(action="hangup")
    return ActionInput(
        action=k.action,
        user_id=k.target_user_id,
        group_id=k.target_group_id,
        menu_id=k.target_menu_id,
        number=k.target_number or "",
    )


def _values(m: VoiceMenu | None, data: svc.MenuInput | None = None) -> dict[str, object]:
    if data is not None:
        return {
            "name": data.name,
            "greeting_source": data.greeting_source,
            "prompt_text": data.prompt_text,
            "greeting_voice": data.greeting_voice,
            "invalid_text": data.invalid_text,
            "repeat_count": data.repeat_count,
            "digit_timeout_s": data.digit_timeout_s,
            "keys": [{"key": k.key, **_target("", k.target)} for k in data.keys],
            **_target("timeout_", data.timeout),
        }
    if m is None:
        return {
            "name": "",
            "greeting_source": "text",
            "prompt_text": "",
            "greeting_voice": "ru",
            "invalid_text": "",
            "repeat_count": svc.DEFAULT_REPEAT,
            "digit_timeout_s": svc.DEFAULT_DIGIT_TIMEOUT_S,
            "keys": [],
            **_target("timeout_", ActionInput(action="hangup")),
        }
    return {
        "name": m.name,
        "greeting_source": m.greeting_source,
        "prompt_text": m.prompt_text,
        "greeting_voice": m.greeting_voice,
        "invalid_text": m.invalid_text,
        "repeat_count": m.repeat_count,
        "digit_timeout_s": m.digit_timeout_s,
        "keys": [{"key": k.key, **_target("", _row_target(k))} for k in svc.sorted_keys(m)],
        **_target("timeout_", _row_target(svc.timeout_key(m))),
    }


async def _options(s: AsyncSession, domain_id: uuid.UUID) -> dict[str, object]:
    none = [("", "—")]
    return {
        "key_options": none + [(k, k) for k in svc.KEYS],
        "user_options": none
        + [(str(u.id), f"{u.pin} — {u.display_name}") for u in await users.all_users(s, domain_id)],
        "group_options": none
        + [(str(g.id), f"{g.pin} — {g.name}") for g in await groups.all_groups(s, domain_id)],
        "menu_options": none + [(str(m.id), m.name) for m in await svc.all_menus(s, domain_id)],
    }


async def _context(
    s: AsyncSession, domain_id: uuid.UUID, m: VoiceMenu | None, data: svc.MenuInput | None = None
) -> dict[str, object]:
    return {"menu": m, "v": _values(m, data), **await _options(s, domain_id)}


@router.get("")
async def list_menus(request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    q = request.query_params.get("q", "")[:100]
    page = await svc.list_menus(s, p.tenant, q, forms.page_number(request.query_params.get("page")))
    return r.page(request, "menus/list.html", {"page": page, "q": q})


@router.get("/new")
async def new_menu(request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    return r.page(request, FORM, await _context(s, p.tenant, None))


@router.get("/key-row")
async def key_row(request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    """A blank key row for the form's «Add key» button (htmx appends it to the table)."""
    row = {"key": "", **_target("", ActionInput(action="hangup"))}
    return r.page(request, "menus/_key_row.html", {"k": row, "i": 0, **await _options(s, p.tenant)})


# --- a greeting's preview and audio (the voicemail section serves its greetings with these too) ----------
async def spoken_preview(
    request: Request, r: Renderer, s: AsyncSession, speaking: Awaitable[str], prompts_url: str, field: str
) -> Response:
    """A player for the prompt ``speaking`` stores (htmx swaps it in under the text), or the text's error
    on ``field``; ``prompts_url`` is where the section serves its prompts."""
    context = {"prompt_id": None, "prompts_url": prompts_url, "field": field}
    try:
        context["prompt_id"] = await speaking
    except ValidationFailed as e:
        await s.rollback()
        return r.page(request, PREVIEW, context, errors=e, status_code=422)
    await s.commit()
    return r.page(request, PREVIEW, context)


async def prompt_file(
    s: AsyncSession, domain_id: uuid.UUID, prompts: PromptStore, prompt_id: str
) -> Response:
    """The stored 8 kHz WAV of a prompt this domain uploaded or synthesised; 404 for anyone else's."""
    if len(prompt_id) != 64 or not await svc.owns_prompt(s, domain_id, prompt_id):
        raise NotFound("prompt", prompt_id[:64])
    try:
        prompt = prompts.get(prompt_id)
    except (PromptError, ValueError):
        raise NotFound("prompt", prompt_id) from None
    return FileResponse(
        prompt.wav, media_type="audio/wav", headers={"Cache-Control": "private, max-age=3600"}
    )


@router.post("/preview")
async def preview(request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep) -> Response:
    """Speak the greeting's text now and answer a player for it."""
    form = await request.form()
    text, voice = forms.text(form, "prompt_text"), forms.text(form, "greeting_voice", "ru")
    speaking = svc.speak(s, p.tenant, core.prompts, text, voice)
    return await spoken_preview(request, r, s, speaking, "/menus/prompts", "prompt_text")


@router.get("/prompts/{prompt_id}")
async def prompt_audio(prompt_id: str, p: AdminDep, s: DbDep, core: CoreDep) -> Response:
    """A prompt of the domain's menus; 404 for anyone else's."""
    return await prompt_file(s, p.tenant, core.prompts, prompt_id)


@router.post("")
async def create_menu(request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep) -> Response:
    data = await _read_form(request, core.prompts.max_upload_bytes)
    try:
        await svc.create_menu(s, p.tenant, data, core.prompts)
    except ValidationFailed as e:
        await s.rollback()
        return r.page(request, FORM, await _context(s, p.tenant, None, data), errors=e, status_code=422)
    await s.commit()
    return RedirectResponse("/menus", status_code=303)


@router.get("/{menu_id}")
async def edit_menu(menu_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    m = await svc.get_menu(s, p.tenant, forms.parse_id(menu_id, "menu"))
    return r.page(request, FORM, await _context(s, p.tenant, m))


@router.post("/{menu_id}")
async def update_menu(
    menu_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep
) -> Response:
    mid = forms.parse_id(menu_id, "menu")
    await svc.get_menu(s, p.tenant, mid)
    data = await _read_form(request, core.prompts.max_upload_bytes)
    try:
        await svc.update_menu(s, p.tenant, mid, data, core.prompts)
    except ValidationFailed as e:
        await s.rollback()
        m = await svc.get_menu(s, p.tenant, mid)
        return r.page(request, FORM, await _context(s, p.tenant, m, data), errors=e, status_code=422)
    await s.commit()
    return RedirectResponse("/menus", status_code=303)


@router.post("/{menu_id}/delete")
async def delete_menu(menu_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    mid = forms.parse_id(menu_id, "menu")
    try:
        await svc.delete_menu(s, p.tenant, mid)
    except ValidationFailed as e:
        await s.rollback()
        m = await svc.get_menu(s, p.tenant, mid)
        return r.page(request, FORM, await _context(s, p.tenant, m), errors=e, status_code=422)
    await s.commit()
    return RedirectResponse("/menus", status_code=303)
