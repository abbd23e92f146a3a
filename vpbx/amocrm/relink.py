"""Reissuing a revoked recording link (amocrm.md §5.5, the cabinet's action): the call gets a new token
and an ``amo.relink`` job tells amoCRM the new link.

The job edits the call note made by the finish job (its id is in the call's step ledger, ``steps.note.id``):
it reads the note's params (E14), swaps ``link`` and PATCHes the note (``PATCH /api/v4/contacts/notes/{id}``)
so the card keeps one call note with a working link. When that note is gone (deleted card or note, 404 /
Entity not found), a text note («common») with the new link goes on the call's contact instead (ours). In
``calls_api`` mode amoCRM may attach the call to the contact's deal: the ledger remembers the card
(``steps.note.on``/``on_id``).
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.amocrm import jobs
from vpbx.amocrm.errors import AmoEntityNotFound
from vpbx.amocrm.finish import RECORDING_PATH, TOKEN_BYTES, request_id
from vpbx.amocrm.widget_auth import public_origin
from vpbx.logs import get_logger
from vpbx.store.models import AmoCall, AmoRecordingLink, CrmBinding, CrmJob

if TYPE_CHECKING:
    from vpbx.amocrm.api import AmoApi, NoteEntity
    from vpbx.amocrm.jobs import JobRunner

log = get_logger("vpbx.amocrm.relink")

RELINK = "amo.relink"
NOTE_TEXT = "Новая ссылка на запись звонка: {link}"


async def reissue_link(s: AsyncSession, binding_id: uuid.UUID, token: str, now: dt.datetime) -> str | None:
    """A new token for the call of the binding's revoked link ``token`` and the job that sends it; the new
    token (the call's live one if it already has one), or None when ``token`` is not this binding's revoked
    link."""
    old = await s.scalar(
        select(AmoRecordingLink).where(
            AmoRecordingLink.binding_id == binding_id,
            AmoRecordingLink.token == token,
            AmoRecordingLink.revoked_at.is_not(None),
        )
    )
    if old is None:
        return None
    live: str | None = await s.scalar(
        select(AmoRecordingLink.token).where(
            AmoRecordingLink.binding_id == binding_id,
            AmoRecordingLink.session_id == old.session_id,
            AmoRecordingLink.revoked_at.is_(None),
        )
    )
    if live is None:
        live = secrets.token_urlsafe(TOKEN_BYTES)
        s.add(
            AmoRecordingLink(
                token=live,
                domain_id=old.domain_id,
                binding_id=binding_id,
                session_id=old.session_id,
                created_at=now,
            )
        )
    await jobs.enqueue(
        s,
        binding_id=binding_id,
        kind=RELINK,
        key=live,
        payload={"session_id": old.session_id},
        run_after=now,
    )
    return live


class RelinkHandler:
    """The runner's handler of ``amo.relink`` jobs (key: the new token)."""

    kind = RELINK

    async def __call__(self, runner: JobRunner, job: CrmJob, binding: CrmBinding) -> None:
        session_id = str((job.payload or {}).get("session_id") or "")
        async with runner.core.sessions() as s:
            link = await s.get(AmoRecordingLink, job.key)
            call = await s.get(AmoCall, (binding.id, session_id))
        if link is None or link.revoked_at is not None or call is None or call.contact_id is None:
            log.info("amo.relink_nothing", binding_id=str(binding.id), session_id=session_id)
            return
        url = public_origin(runner.core.settings).rstrip("/") + RECORDING_PATH.format(token=job.key)
        api = runner.clients.for_account(binding.external_account_id)
        where = _note_of(call)
        if where is not None and await _edit_call_note(api, *where, url):
            log.info("amo.relinked", binding_id=str(binding.id), session_id=session_id, note_id=where[2])
            return
        note: dict[str, Any] = {
            "entity_id": call.contact_id,
            "note_type": "common",
            "params": {"text": NOTE_TEXT.format(link=url)},
            "request_id": request_id(session_id, f"relink-{job.key[:8]}"),
        }
        await api.add_notes("contacts", [note])
        log.info("amo.relinked_new_note", binding_id=str(binding.id), session_id=session_id)


def _note_of(call: AmoCall) -> tuple[NoteEntity, int, int] | None:
    """Where the call note the finish job made is (its ledger step ``note``: the card's kind and id, the
    note's id), if it made one; a ledger without the card (older runs) means the call's contact."""
    step = (call.steps or {}).get("note") or {}
    if step.get("state") != "done" or step.get("id") is None or call.contact_id is None:
        return None
    on: NoteEntity = "leads" if step.get("on") == "leads" else "contacts"
    return on, int(step.get("on_id") or call.contact_id), int(step["id"])


async def _edit_call_note(api: AmoApi, entity: NoteEntity, entity_id: int, note_id: int, url: str) -> bool:
    """PATCH the card's call note ``note_id`` with the new ``link``; False when it is gone."""
    current = next(
        (n for n in await api.list_notes(entity, entity_id) if int(n.get("id") or 0) == note_id), None
    )
    if current is None:
        return False
    params = {**(current.get("params") or {}), "link": url}
    fields = {"entity_id": entity_id, "note_type": current.get("note_type"), "params": params}
    try:
        await api.update_note(entity, note_id, fields)
    except AmoEntityNotFound:  # deleted between the read and the edit
        return False
    return True


__all__ = ["RELINK", "RelinkHandler", "reissue_link"]
