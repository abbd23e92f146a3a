"""Campaign status transitions (autoinformer.md §4.1) and the contact counters, shared by the admin's actions
(cabinet, API) and the dispatcher's own (``scheduled`` → ``running``, → ``completed``, → ``error``).

``set_status`` is the only writer of ``AiCampaign.status``: it checks the transition table, applies the
contacts' side effects (``stopped`` cancels, ``completed`` by ``end_at`` expires every contact not yet final),
writes the ``campaign_status`` / ``number_finished`` notifications and the audit entry, all in the caller's
transaction. A refused transition raises ``InvalidTransition`` (the API's ``-41``).
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.autoinformer import events
from vpbx.autoinformer.schemas import FINAL_CONTACT
from vpbx.store.models import AI_CONTACT_STATUSES, AiCampaign, AiContact, AuditEntry

# (from, to) pairs an admin may ask for; the system's own moves are marked below.
ADMIN_MOVES: frozenset[tuple[str, str]] = frozenset(
    {
        ("draft", "scheduled"),
        ("draft", "running"),
        ("running", "paused"),
        ("paused", "running"),
        ("error", "running"),  # resume once the cause is gone
        ("scheduled", "stopped"),
        ("running", "stopped"),
        ("paused", "stopped"),
        ("error", "stopped"),
    }
)
SYSTEM_MOVES: frozenset[tuple[str, str]] = frozenset(
    {
        ("scheduled", "running"),  # start_at reached
        ("running", "error"),
        ("paused", "error"),
        ("scheduled", "error"),
        ("running", "completed"),  # every contact final (auto_complete) or end_at passed
        ("scheduled", "completed"),
        ("paused", "completed"),
        ("error", "completed"),
    }
)
LIVE = ("scheduled", "running", "paused", "error")  # not draft, not final
CHUNK = 500  # ids per statement (SQLite bounds the parameters of one statement)


class InvalidTransition(Exception):
    def __init__(self, current: str, wanted: str) -> None:
        super().__init__(f"{current} → {wanted}")
        self.current = current
        self.wanted = wanted


async def counters(s: AsyncSession, campaign_id: uuid.UUID) -> dict[str, int]:
    """Contacts per status (every status present, zeros included) and ``total``."""
    rows = (
        await s.execute(
            select(AiContact.status, func.count())
            .where(AiContact.campaign_id == campaign_id)
            .group_by(AiContact.status)
        )
    ).all()
    out = dict.fromkeys(AI_CONTACT_STATUSES, 0)
    for status, n in rows:
        out[status] = int(n)
    return {"total": sum(out.values()), **out}


async def set_status(
    s: AsyncSession,
    campaign: AiCampaign,
    status: str,
    *,
    domain: str,
    actor: str,
    now: dt.datetime,
    error_reason: str | None = None,
    system: bool = False,
) -> None:
    """Move ``campaign`` to ``status`` (the row must be loaded in ``s``; lock it first where it matters)."""
    move = (campaign.status, status)
    allowed = ADMIN_MOVES | SYSTEM_MOVES if system else ADMIN_MOVES
    if move not in allowed:
        raise InvalidTransition(*move)
    final_status = {"stopped": "cancelled", "completed": "expired"}.get(status)
    if final_status is not None:
        await _finish_contacts(s, campaign, final_status, domain=domain, now=now)
        campaign.finished_at = now
        if campaign.settings.get("report_emails") and campaign.report_mail is None:
            campaign.report_mail = "due"  # «Отправить отчёт на e-mail» (§6): the report mailer sends it once
    if status == "running" and campaign.started_at is None:
        campaign.started_at = now
    campaign.status = status
    campaign.error_reason = error_reason if status == "error" else None
    campaign.updated_at = now
    s.add(
        AuditEntry(
            domain_id=campaign.domain_id,
            at=now,
            actor=actor,
            action=f"autoinformer.campaign.{status}",
            object_id=campaign.id.hex,
            details={
                "from": move[0],
                "to": status,
                **({"error_reason": error_reason} if error_reason else {}),
            },
        )
    )
    await s.flush()
    await events.campaign_status(
        s, domain=domain, campaign=campaign, counters=await counters(s, campaign.id), at=now
    )


async def _finish_contacts(
    s: AsyncSession, campaign: AiCampaign, final_status: str, *, domain: str, now: dt.datetime
) -> None:
    """Every contact not yet final (and not in a call: its attempt ends normally and decides) → ``final``."""
    open_ = [st for st in AI_CONTACT_STATUSES if st not in FINAL_CONTACT and st != "in_progress"]
    ids = (
        await s.scalars(
            select(AiContact.id).where(AiContact.campaign_id == campaign.id, AiContact.status.in_(open_))
        )
    ).all()
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        await s.execute(
            update(AiContact)
            .where(AiContact.id.in_(chunk))
            .values(status=final_status, next_attempt_at=None, updated_at=now)
            .execution_options(synchronize_session="fetch")
        )
        for contact in (await s.scalars(select(AiContact).where(AiContact.id.in_(chunk)))).all():
            await events.number_finished(s, domain=domain, campaign=campaign, contact=contact, at=now)
