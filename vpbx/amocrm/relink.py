"""Reissuing a revoked recording link (amocrm.md §5.5, the cabinet's action): the call gets a new token
and an ``amo.relink`` job tells amoCRM the new link.

amoCRM's call notes keep their ``params.link`` as written, and our ``AmoApi`` has no note edit (E1–E19), so
the job adds a new text note («common») with the new link on the call's contact instead of editing the call
note (ours; the old link in the call note answers 404 once revoked).
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.amocrm import jobs
from vpbx.amocrm.finish import RECORDING_PATH, TOKEN_BYTES, request_id
from vpbx.amocrm.widget_auth import public_origin
from vpbx.logs import get_logger
from vpbx.store.models import AmoCall, AmoRecordingLink, CrmBinding, CrmJob

if TYPE_CHECKING:
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
        note: dict[str, Any] = {
            "entity_id": call.contact_id,
            "note_type": "common",
            "params": {"text": NOTE_TEXT.format(link=url)},
            "request_id": request_id(session_id, f"relink-{job.key[:8]}"),
        }
        api = runner.clients.for_account(binding.external_account_id)
        await api.add_notes("contacts", [note])
        log.info("amo.relinked", binding_id=str(binding.id), session_id=session_id)


__all__ = ["RELINK", "RelinkHandler", "reissue_link"]
