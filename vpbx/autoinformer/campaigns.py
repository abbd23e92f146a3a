"""The campaign service (autoinformer.md §2, §4, §8, §9): create, edit, validate, start/pause/resume/stop,
delete, copy, the status object, the per-number report and the cabinet's list. Used by the signed API
(``vpbx.autoinformer.api``) and the cabinet; every function takes the session and ``domain_id`` first, and
every lookup filters by the domain, so another domain's campaign is simply "not found" (``CampaignNotFound``).

Each function works in the caller's transaction and writes an ``AuditEntry`` for what it changed (status moves
are audited by ``status.set_status``, the one writer of ``AiCampaign.status``). ``actor`` is ``"api"`` or
``"user:<name>"``.

Decisions (ours):

* A line (``IncomingNumber``) of the domain is "active and allowed for outgoing calls": lines have no such
  flags yet; a blocked domain never gets this far (the API's R5, the cabinet's block page).
* A connect target of type ``menu`` names the voice menu by its name or its id (``id.hex``): menus have no
  PIN.
  A ``number`` target must be a valid number (amocrm.md §2.4 spelling), never premium-rate (``7809…``), and
  international only when the campaign allows it.
* At start, every variable of the message must be a column of every contact (the import refuses rows without
  it, so a gap means the message changed after the import); the first segment that uses a missing one is the
  ``field``.
* The limit of 5 ``scheduled``/``running`` campaigns per domain (§7.5) is checked with the domain's row
  locked (``FOR UPDATE`` on PostgreSQL; SQLite has one writer), so two starts at once cannot both take the
  fifth place.
* Besides §4.1's list (schedule, attempts, ring timeout, concurrency, DTMF map), the name, ``auto_complete``,
  the report e-mails and the amoCRM task stay editable in ``scheduled``/``paused``/``error``: none of them
  changes what a recipient hears or how a result counts.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.autoinformer import dispatcher, schedule
from vpbx.autoinformer import status as transitions
from vpbx.autoinformer.errors import (
    N_,
    AudioInvalid,
    CallerIdNotAllowed,
    CampaignInvalid,
    CampaignNotFound,
    LimitExceeded,
    NotEditable,
    TargetNotFound,
)
from vpbx.autoinformer.schemas import MOSCOW, CampaignSpec, Segment, spec_of
from vpbx.billing import AUTOINFORMER, is_enabled
from vpbx.pbx.numbering import dialled_digits
from vpbx.store.models import (
    AiAttempt,
    AiAudioFile,
    AiCampaign,
    AiContact,
    AiContactPhone,
    AiStopEntry,
    AuditEntry,
    CallGroup,
    Domain,
    IncomingNumber,
    User,
    VoiceMenu,
)
from vpbx.store.paging import Page, paginate

MAX_ACTIVE = 5  # campaigns scheduled or running per domain (§7.5)
MAX_REPORT_LIMIT = 1000
ACTIVE = ("scheduled", "running")
DELETABLE = ("draft", "completed", "stopped")
FINAL = ("completed", "stopped")
WAITING = ("pending", "waiting_retry")  # contacts a window opening would dial
# what §4.1 lets an admin change per status (top-level keys of the campaign object)
EDITABLE_LIVE = frozenset(
    {
        "name",
        "schedule",
        "attempts",
        "ring_timeout_s",
        "concurrency",
        "dtmf",
        "auto_complete",
        "report_emails",
        "amocrm_task",
    }
)
FROZEN_AFTER_FIRST = frozenset({"message", "caller_id"})  # editable while no attempt was made
EDITABLE_RUNNING = frozenset({"concurrency"})  # and schedule.end_at
PREMIUM_PREFIX = "7809"
_MSK_FORMAT = "%Y-%m-%d %H:%M:%S"


# --- lookups ------------------------------------------------------------------------------------------------


def parse_campaign_id(value: object) -> uuid.UUID | None:
    """A ``campaign_id`` as the API and the cabinet's URLs spell it (32 hex digits, or a dashed UUID)."""
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str) or len(value) not in (32, 36):
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


async def get_campaign(
    s: AsyncSession, domain_id: uuid.UUID, campaign_id: uuid.UUID | str, *, lock: bool = False
) -> AiCampaign:
    """The domain's campaign; ``CampaignNotFound`` for an unknown id or another domain's. ``lock`` takes the
    row ``FOR UPDATE`` (PostgreSQL), so a status move and the dispatcher's claim do not interleave."""
    cid = parse_campaign_id(campaign_id)
    if cid is None:
        raise CampaignNotFound()
    query = select(AiCampaign).where(AiCampaign.domain_id == domain_id, AiCampaign.id == cid)
    if lock and s.get_bind().dialect.name == "sqlite":
        # SQLite has no row locks: take the database's write lock now (a no-op write), so a dispatcher's
        # commit cannot slip in between this read and our write
        await s.execute(
            update(AiCampaign)
            .where(AiCampaign.domain_id == domain_id, AiCampaign.id == cid)
            .values(updated_at=AiCampaign.updated_at)
        )
    elif lock:
        query = query.with_for_update()
    query = query.execution_options(populate_existing=True)
    row = await s.scalar(query)
    if row is None:
        raise CampaignNotFound()
    return row


async def find_by_external_id(s: AsyncSession, domain_id: uuid.UUID, external_id: str) -> AiCampaign | None:
    return await s.scalar(
        select(AiCampaign).where(AiCampaign.domain_id == domain_id, AiCampaign.external_id == external_id)
    )


async def _domain(s: AsyncSession, domain_id: uuid.UUID) -> Domain:
    d = await s.get(Domain, domain_id)
    if d is None:
        raise CampaignNotFound()
    return d


def _audit(
    s: AsyncSession,
    domain_id: uuid.UUID,
    action: str,
    campaign_id: uuid.UUID,
    *,
    actor: str,
    now: dt.datetime,
    **details: Any,
) -> None:
    s.add(
        AuditEntry(
            domain_id=domain_id,
            at=now,
            actor=actor,
            action=f"autoinformer.campaign.{action}",
            object_id=campaign_id.hex,
            details=details,
        )
    )


# --- checks that need the database --------------------------------------------------------------------------


async def check_caller_id(s: AsyncSession, domain_id: uuid.UUID, caller_id: str) -> str:
    """The caller ID's digits when it is a line of the domain; ``CallerIdNotAllowed`` (-42) otherwise."""
    digits = caller_id.strip().removeprefix("+")
    found = await s.scalar(
        select(IncomingNumber.id).where(
            IncomingNumber.domain_id == domain_id, IncomingNumber.number == f"+{digits}"
        )
    )
    if found is None:
        raise CallerIdNotAllowed()
    return digits


def _segments(spec: CampaignSpec) -> list[tuple[str, Segment]]:
    """Every segment of the campaign with its field path: the message's, then the DTMF actions' own."""
    out = [(f"message.segments[{i}]", seg) for i, seg in enumerate(spec.message.segments)]
    for digit, act in sorted(spec.dtmf.actions.items()):
        if act.segment is not None:
            out.append((f"dtmf.actions.{digit}.segment", act.segment))
    return out


async def check_files(s: AsyncSession, domain_id: uuid.UUID, spec: CampaignSpec) -> None:
    """Every ``file`` segment names a file of the domain's library; ``AudioInvalid`` (-43) otherwise."""
    wanted = [(f"{path}.file_id", seg.file_id) for path, seg in _segments(spec) if seg.file_id is not None]
    if not wanted:
        return
    ids = {uuid.UUID(file_id) for _, file_id in wanted}
    have = set(
        (
            await s.scalars(
                select(AiAudioFile.id).where(AiAudioFile.domain_id == domain_id, AiAudioFile.id.in_(ids))
            )
        ).all()
    )
    for path, file_id in wanted:
        if uuid.UUID(file_id) not in have:
            raise AudioInvalid("unknown_file", field=path)


async def check_targets(s: AsyncSession, domain_id: uuid.UUID, spec: CampaignSpec) -> None:
    """Every ``connect`` action's target exists in the domain; ``TargetNotFound`` (-46) otherwise."""
    for digit, act in sorted(spec.dtmf.actions.items()):
        target = act.target
        if act.action != "connect" or target is None:
            continue
        path = f"dtmf.actions.{digit}.target"
        found: object = None
        if target.type == "user":
            found = await s.scalar(select(User.id).where(User.domain_id == domain_id, User.pin == target.pin))
        elif target.type == "group":
            found = await s.scalar(
                select(CallGroup.id).where(CallGroup.domain_id == domain_id, CallGroup.pin == target.pin)
            )
        elif target.type == "menu":
            menu_id = parse_campaign_id(target.pin)
            cond = VoiceMenu.name == target.pin
            if menu_id is not None:
                cond = cond | (VoiceMenu.id == menu_id)
            found = await s.scalar(select(VoiceMenu.id).where(VoiceMenu.domain_id == domain_id, cond))
        else:
            digits = dialled_digits(target.number or "")
            if (
                digits is not None
                and not digits.startswith(PREMIUM_PREFIX)
                and (digits.startswith("7") or spec.allow_international)
            ):
                found = digits
        if found is None:
            raise TargetNotFound(f"{path}.{'number' if target.type == 'number' else 'pin'}")


async def check_settings(s: AsyncSession, domain_id: uuid.UUID, spec: CampaignSpec) -> str:
    """What every save checks (caller ID, library files, connect targets); returns the caller ID's digits."""
    caller = await check_caller_id(s, domain_id, spec.caller_id)
    await check_files(s, domain_id, spec)
    await check_targets(s, domain_id, spec)
    return caller


def variable_fields(spec: CampaignSpec) -> dict[str, str]:
    """Each list column the campaign's texts use → the field of its first use (``phone`` is built in)."""
    out: dict[str, str] = {}
    for path, seg in _segments(spec):
        for name, _ in seg.variables():
            if name != "phone":
                out.setdefault(name, f"{path}.text")
    return out


async def check_contacts(s: AsyncSession, campaign: AiCampaign, spec: CampaignSpec) -> None:
    """Every variable the texts use is a column of every contact (-1 naming the first segment that uses a
    missing one; with no contact there is no column), and there is at least one contact."""
    needed = variable_fields(spec)
    missing: set[str] = set()
    count = 0
    stream = await s.stream_scalars(
        select(AiContact.variables)
        .where(AiContact.campaign_id == campaign.id)
        .execution_options(yield_per=2000)
    )
    async for variables in stream:
        count += 1
        if needed:
            missing |= {name for name in needed if name not in (variables or {})}
    for name, path in needed.items():
        if name in missing or count == 0:  # no contact: no column either
            raise CampaignInvalid(N_("The contact list has no column «{name}»"), field=path, name=name)
    if count == 0:
        raise CampaignInvalid(N_("Add at least one contact"), field="contacts")


async def _check_can_run(s: AsyncSession, domain_id: uuid.UUID, campaign: AiCampaign) -> None:
    """A blocked domain, or one with the service off, starts and resumes nothing (-41)."""
    domain = await _domain(s, domain_id)
    if domain.status == "blocked" or not await is_enabled(s, domain_id, AUTOINFORMER):
        raise transitions.InvalidTransition(campaign.status, "running")


async def _check_active_limit(s: AsyncSession, domain_id: uuid.UUID, campaign: AiCampaign) -> None:
    await s.execute(select(Domain.id).where(Domain.id == domain_id).with_for_update())
    active = await s.scalar(
        select(func.count())
        .select_from(AiCampaign)
        .where(
            AiCampaign.domain_id == domain_id,
            AiCampaign.status.in_(ACTIVE),
            AiCampaign.id != campaign.id,
        )
    )
    if (active or 0) >= MAX_ACTIVE:
        raise LimitExceeded(
            N_("At most {max} campaigns of a domain can be scheduled or running at once"),
            field="status",
            max=MAX_ACTIVE,
        )


def moscow_time(text: str) -> dt.datetime:
    """A schedule time (``YYYY-MM-DD HH:MM:SS`` Moscow) as an aware datetime."""
    return dt.datetime.strptime(text, _MSK_FORMAT).replace(tzinfo=MOSCOW)


# --- create, update, copy, delete ---------------------------------------------------------------------------


async def create_campaign(
    s: AsyncSession, domain_id: uuid.UUID, spec: CampaignSpec, *, actor: str, now: dt.datetime
) -> tuple[AiCampaign, bool]:
    """A new ``draft`` (and True), or the existing campaign of a repeated ``external_id`` (and False: nothing
    is created or changed). A concurrent twin with the same ``external_id`` makes the flush raise
    ``IntegrityError``; the caller rolls back and calls again, which then finds the twin's campaign."""
    if spec.external_id is not None:
        existing = await find_by_external_id(s, domain_id, spec.external_id)
        if existing is not None:
            return existing, False
    caller = await check_settings(s, domain_id, spec)
    row = AiCampaign(
        domain_id=domain_id,
        external_id=spec.external_id,
        name=spec.name,
        caller_id=caller,
        settings=spec.settings_json(),
        status="draft",
        created_at=now,
        updated_at=now,
    )
    s.add(row)
    await s.flush()
    _audit(s, domain_id, "create", row.id, actor=actor, now=now, name=spec.name)
    return row, True


def _changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return [key for key in new if old.get(key) != new[key]]


def _check_editable(campaign: AiCampaign, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    changed = _changed(old, new)
    status = campaign.status
    if status == "draft":
        return changed
    for key in changed:
        if status in FINAL:
            ok = False
        elif status == "running":
            ok = key in EDITABLE_RUNNING or (
                key == "schedule"
                and {**old["schedule"], "end_at": None} == {**new["schedule"], "end_at": None}
            )
        else:
            ok = key in EDITABLE_LIVE or (key in FROZEN_AFTER_FIRST and campaign.first_attempt_at is None)
        if not ok:
            if key in FROZEN_AFTER_FIRST and campaign.first_attempt_at is not None:
                msgid = N_("The message and the caller ID cannot change after the first attempt")
            elif status == "running":
                msgid = N_("Pause the campaign to change this")
            else:
                msgid = N_("This cannot change in the campaign's current status")
            raise NotEditable(msgid, field=key)
    return changed


async def update_campaign(
    s: AsyncSession,
    domain_id: uuid.UUID,
    campaign_id: uuid.UUID | str,
    spec: CampaignSpec,
    *,
    actor: str,
    now: dt.datetime,
) -> AiCampaign:
    """Save new settings under §4.1's editing rules (``NotEditable``, -45), checked as on create."""
    row = await get_campaign(s, domain_id, campaign_id, lock=True)
    old = spec_of(row).model_dump(mode="json", by_alias=True)
    new = spec.model_dump(mode="json", by_alias=True)
    changed = _check_editable(row, old, new)
    if not changed:
        return row
    if "external_id" in changed and spec.external_id is not None:
        twin = await find_by_external_id(s, domain_id, spec.external_id)
        if twin is not None and twin.id != row.id:
            raise CampaignInvalid(N_("Another campaign has this external ID"), field="external_id")
    row.caller_id = await check_settings(s, domain_id, spec)
    row.external_id = spec.external_id
    row.name = spec.name
    row.settings = spec.settings_json()
    row.updated_at = now
    _audit(s, domain_id, "update", row.id, actor=actor, now=now, fields=changed)
    await s.flush()
    return row


async def copy_campaign(
    s: AsyncSession,
    domain_id: uuid.UUID,
    campaign_id: uuid.UUID | str,
    *,
    actor: str,
    now: dt.datetime,
    name: str | None = None,
) -> AiCampaign:
    """A new ``draft`` with the same settings and caller ID, no contacts and no ``external_id``."""
    src = await get_campaign(s, domain_id, campaign_id)
    row = AiCampaign(
        domain_id=domain_id,
        external_id=None,
        name=(name or f"{src.name} (копия)")[:255],
        caller_id=src.caller_id,
        settings=dict(src.settings),
        status="draft",
        created_at=now,
        updated_at=now,
    )
    s.add(row)
    await s.flush()
    _audit(s, domain_id, "copy", row.id, actor=actor, now=now, source=src.id.hex, name=row.name)
    return row


async def delete_campaign(
    s: AsyncSession, domain_id: uuid.UUID, campaign_id: uuid.UUID | str, *, actor: str, now: dt.datetime
) -> None:
    """Delete a ``draft``, ``completed`` or ``stopped`` campaign with its contacts and attempts (its calls
    stay in the call history, its opt-outs on the stop list);
    ``InvalidTransition`` (-41) in any other status."""
    row = await get_campaign(s, domain_id, campaign_id, lock=True)
    if row.status not in DELETABLE:
        raise transitions.InvalidTransition(row.status, "deleted")
    await s.execute(delete(AiAttempt).where(AiAttempt.campaign_id == row.id))
    await s.execute(delete(AiContactPhone).where(AiContactPhone.campaign_id == row.id))
    await s.execute(delete(AiContact).where(AiContact.campaign_id == row.id))
    await s.execute(
        update(AiStopEntry)
        .where(AiStopEntry.domain_id == domain_id, AiStopEntry.campaign_id == row.id)
        .values(campaign_id=None)
    )
    _audit(s, domain_id, "delete", row.id, actor=actor, now=now, name=row.name, status=row.status)
    await s.delete(row)
    await s.flush()


# --- status moves -------------------------------------------------------------------------------------------


async def start_campaign(
    s: AsyncSession, domain_id: uuid.UUID, campaign_id: uuid.UUID | str, *, actor: str, now: dt.datetime
) -> AiCampaign:
    """``draft`` → ``scheduled`` (or ``running`` once ``start_at`` has passed) after validating everything;
    ``paused``/``error`` → ``running`` (a resume). Any other status: ``InvalidTransition`` (-41)."""
    row = await get_campaign(s, domain_id, campaign_id, lock=True)
    if row.status in ("paused", "error"):
        return await _resume(s, domain_id, row, actor=actor, now=now)
    if row.status != "draft":
        raise transitions.InvalidTransition(row.status, "running")
    spec = spec_of(row)
    row.caller_id = await check_settings(s, domain_id, spec)
    if spec.schedule.end_at is not None and moscow_time(spec.schedule.end_at) <= now:
        raise CampaignInvalid(N_("The end of the campaign has already passed"), field="schedule.end_at")
    await check_contacts(s, row, spec)
    await _check_can_run(s, domain_id, row)
    await _check_active_limit(s, domain_id, row)
    target = "running" if moscow_time(spec.schedule.start_at) <= now else "scheduled"
    domain = await _domain(s, domain_id)
    await transitions.set_status(s, row, target, domain=domain.name, actor=actor, now=now)
    return row


async def resume_campaign(
    s: AsyncSession, domain_id: uuid.UUID, campaign_id: uuid.UUID | str, *, actor: str, now: dt.datetime
) -> AiCampaign:
    """``paused``/``error`` → ``running``, once the caller ID, the files and the targets check out again."""
    row = await get_campaign(s, domain_id, campaign_id, lock=True)
    return await _resume(s, domain_id, row, actor=actor, now=now)


async def _resume(
    s: AsyncSession, domain_id: uuid.UUID, row: AiCampaign, *, actor: str, now: dt.datetime
) -> AiCampaign:
    if (row.status, "running") not in transitions.ADMIN_MOVES:
        raise transitions.InvalidTransition(row.status, "running")
    await check_settings(s, domain_id, spec_of(row))
    await _check_can_run(s, domain_id, row)
    await _check_active_limit(s, domain_id, row)
    domain = await _domain(s, domain_id)
    await transitions.set_status(s, row, "running", domain=domain.name, actor=actor, now=now)
    return row


async def pause_campaign(
    s: AsyncSession, domain_id: uuid.UUID, campaign_id: uuid.UUID | str, *, actor: str, now: dt.datetime
) -> AiCampaign:
    """``running`` → ``paused``: no new attempt is claimed after the commit; calls in progress end
    normally."""
    return await _move(s, domain_id, campaign_id, "paused", actor=actor, now=now)


async def stop_campaign(
    s: AsyncSession, domain_id: uuid.UUID, campaign_id: uuid.UUID | str, *, actor: str, now: dt.datetime
) -> AiCampaign:
    """``scheduled``/``running``/``paused``/``error`` → ``stopped``; contacts not yet final become
    ``cancelled``."""
    return await _move(s, domain_id, campaign_id, "stopped", actor=actor, now=now)


async def _move(
    s: AsyncSession,
    domain_id: uuid.UUID,
    campaign_id: uuid.UUID | str,
    status: str,
    *,
    actor: str,
    now: dt.datetime,
) -> AiCampaign:
    row = await get_campaign(s, domain_id, campaign_id, lock=True)
    domain = await _domain(s, domain_id)
    await transitions.set_status(s, row, status, domain=domain.name, actor=actor, now=now)
    return row


# --- status object, report, list ----------------------------------------------------------------------------


async def in_window(s: AsyncSession, campaign: AiCampaign, now: dt.datetime) -> bool:
    """§4.1's ``in_window`` of a running campaign: the start rule (§3.3: days ∩ windows ∩ quiet hours, ring
    timeout left) holds now for at least one waiting contact's time zone (the domain's when none waits)."""
    if campaign.status != "running":
        return False
    domain = await _domain(s, campaign.domain_id)
    spec = spec_of(campaign)
    rules = schedule.PlatformRules.from_settings(await dispatcher.platform_settings(s))
    plan = schedule.Plan.of(spec)
    zones: set[str | None] = set(
        (
            await s.scalars(
                select(AiContact.timezone)
                .where(AiContact.campaign_id == campaign.id, AiContact.status.in_(WAITING))
                .distinct()
            )
        ).all()
    ) or {None}
    return any(
        schedule.can_start(plan, rules, recipient_tz=tz, domain_tz=domain.timezone, at=now) for tz in zones
    )


@dataclass(frozen=True, slots=True)
class Stats:
    """A campaign's numbers: contacts per status (with ``total``), dials made, contacts with ≥ 1 attempt,
    success rate as text with 2 decimals, average listening time of answered dials."""

    counters: dict[str, int]
    attempts_made: int
    attempted_contacts: int
    success_rate: str
    avg_listen_s: float


def rate(part: int, whole: int) -> str:
    """``part / whole`` as ``"0.63"`` (half up); ``"0.00"`` when nothing was attempted."""
    if whole <= 0:
        return "0.00"
    return str((Decimal(part) / Decimal(whole)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


async def campaign_stats(s: AsyncSession, campaign: AiCampaign) -> Stats:
    counters = await transitions.counters(s, campaign.id)
    attempts = await s.scalar(
        select(func.count()).select_from(AiAttempt).where(AiAttempt.campaign_id == campaign.id)
    )
    attempted = await s.scalar(
        select(func.count())
        .select_from(AiContact)
        .where(AiContact.campaign_id == campaign.id, AiContact.attempts_made > 0)
    )
    avg = await s.scalar(
        select(func.avg(AiAttempt.listen_s)).where(
            AiAttempt.campaign_id == campaign.id, AiAttempt.answered_at.is_not(None)
        )
    )
    return Stats(
        counters=counters,
        attempts_made=int(attempts or 0),
        attempted_contacts=int(attempted or 0),
        success_rate=rate(counters["succeeded"], int(attempted or 0)),
        avg_listen_s=round(float(avg or 0.0), 1),
    )


async def status_object(
    s: AsyncSession, domain_id: uuid.UUID, campaign_id: uuid.UUID | str, *, now: dt.datetime
) -> dict[str, object]:
    """§9's ``campaign`` object (``autoinformer_status``)."""
    row = await get_campaign(s, domain_id, campaign_id)
    stats = await campaign_stats(s, row)
    return {
        "campaign_id": row.id.hex,
        "external_id": row.external_id,
        "status": row.status,
        "in_window": await in_window(s, row, now),
        "error_reason": row.error_reason,
        "counters": stats.counters,
        "attempts_made": stats.attempts_made,
        "success_rate": stats.success_rate,
        "avg_listen_s": stats.avg_listen_s,
    }


@dataclass(frozen=True, slots=True)
class ReportRow:
    contact: AiContact
    attempts: Sequence[AiAttempt]  # in order: round, then number


@dataclass(frozen=True, slots=True)
class Report:
    total: int  # contacts matching the filter
    rows: Sequence[ReportRow]


async def report(
    s: AsyncSession,
    domain_id: uuid.UUID,
    campaign_id: uuid.UUID | str,
    *,
    status: str | None = None,
    offset: int = 0,
    limit: int = 100,
) -> Report:
    """The numbers table (§6) with each contact's attempts, in list order; ``limit`` at most 1000."""
    row = await get_campaign(s, domain_id, campaign_id)
    limit = max(0, min(limit, MAX_REPORT_LIMIT))
    cond = [AiContact.campaign_id == row.id, AiContact.domain_id == domain_id]
    if status is not None:
        cond.append(AiContact.status == status)
    total = await s.scalar(select(func.count()).select_from(AiContact).where(*cond))
    contacts = (
        await s.scalars(
            select(AiContact)
            .where(*cond)
            .order_by(AiContact.row_no, AiContact.created_at, AiContact.id)
            .offset(max(0, offset))
            .limit(limit)
        )
    ).all()
    by_contact: dict[uuid.UUID, list[AiAttempt]] = {c.id: [] for c in contacts}
    if contacts:
        attempts = (
            await s.scalars(
                select(AiAttempt)
                .where(AiAttempt.campaign_id == row.id, AiAttempt.contact_id.in_(list(by_contact)))
                .order_by(AiAttempt.attempt_no, AiAttempt.number_index)
            )
        ).all()
        for a in attempts:
            by_contact[a.contact_id].append(a)
    return Report(total=int(total or 0), rows=[ReportRow(c, by_contact[c.id]) for c in contacts])


@dataclass(frozen=True, slots=True)
class CampaignSummary:
    """A row of the cabinet's campaign list: the campaign and its numbers."""

    campaign: AiCampaign
    stats: Stats


async def list_campaigns(
    s: AsyncSession,
    domain_id: uuid.UUID,
    *,
    status: str | None = None,
    page: int = 1,
    per_page: int = 20,
) -> Page[CampaignSummary]:
    """The domain's campaigns, newest first, with their progress and success rate."""
    query = select(AiCampaign).where(AiCampaign.domain_id == domain_id)
    if status is not None:
        query = query.where(AiCampaign.status == status)
    found = await paginate(s, query.order_by(AiCampaign.created_at.desc(), AiCampaign.id), page, per_page)
    items = [CampaignSummary(c, await campaign_stats(s, c)) for c in found.items]
    return Page(items=items, total=found.total, page=found.page, per_page=found.per_page)


@dataclass(frozen=True, slots=True)
class CallCampaign:
    """The campaign an autoinformer call belongs to, as the call log names it (§5)."""

    campaign_id: uuid.UUID
    name: str


async def campaigns_of_calls(
    s: AsyncSession, domain_id: uuid.UUID, session_ids: Sequence[str]
) -> dict[str, CallCampaign]:
    """``session_id`` → its campaign, for those of ``session_ids`` that are the domain's attempts."""
    wanted = sorted({sid for sid in session_ids if sid})
    if not wanted:
        return {}
    rows = await s.execute(
        select(AiAttempt.session_id, AiCampaign.id, AiCampaign.name)
        .join(AiCampaign, AiCampaign.id == AiAttempt.campaign_id)
        .where(
            AiAttempt.domain_id == domain_id,
            AiCampaign.domain_id == domain_id,
            AiAttempt.session_id.in_(wanted),
        )
    )
    return {sid: CallCampaign(cid, name) for sid, cid, name in rows.all()}
