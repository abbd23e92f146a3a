"""``amo.ai_result``: an autoinformer contact's final result into amoCRM (autoinformer.md §5 "amoCRM").

When a contact of a campaign reaches a final status and its domain has an active binding, one ``CrmJob`` is
queued (key: campaign + contact; a second enqueue is a no-op). The job finds the amoCRM contact by the
contact's numbers (the last dialled first) with the ИМК's lookup (vpbx/amocrm/lookup.py: the phone cache,
then E4 post-filtered on the PHONE values) and writes a call note on it: the campaign, the outcome, the
listen time, the keys pressed and the stable recording link (amocrm.md §5.5) when the call was recorded.
The campaign option «Создавать задачу в amoCRM» (``CampaignSpec.amocrm_task``) adds a task on the contact.

A number nobody in amoCRM has is skipped: no amoCRM contact is created. A contact never dialled (cancelled,
expired, excluded before its first call) has no result to write and queues nothing. Autoinformer calls run
no scenario (amocrm.md §5.1).

The steps (``lookup``, ``note``, ``task``) have the ledger of ``amo.finish`` (vpbx/amocrm/finish.py
``write_step``), kept in the job's ``payload["steps"]``: an in-flight write is verified against amoCRM (the
note by its ``uniq``, the task by text and deadline) before it is sent again, so a re-run writes nothing
twice.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from vpbx.amocrm.finish import (
    STATUS_BUSY,
    STATUS_NOT_REACHED,
    STATUS_TALKED,
    STATUS_WRONG_NUMBER,
    FinishSettings,
    Ledger,
    account_zone,
    recording_link,
    request_id,
    write_step,
)
from vpbx.amocrm.jobs import enqueue
from vpbx.amocrm.lookup import PhoneLookup
from vpbx.autoinformer.schemas import spec_of
from vpbx.crm.connector import Binding
from vpbx.crm.phone import match_key
from vpbx.logs import get_logger
from vpbx.store.models import AiAttempt, AiCampaign, AiContact, AmoInstall, CallRecord, CrmBinding, CrmJob

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from vpbx.amocrm.jobs import JobRunner

log = get_logger("vpbx.amocrm.ai_results")

KIND = "amo.ai_result"
LOOKUP_STATE = "ai_results.lookup"  # the runner's shared PhoneLookup (JobRunner.state)

# the contact's final status in the note (ours)
STATUS_TEXT = {
    "succeeded": "Успешно",
    "not_succeeded": "Не успешно",
    "attempts_exhausted": "Попытки исчерпаны",
    "invalid_number": "Неверный номер",
    "opted_out": "Отказ от рассылки",
    "excluded": "Исключён",
    "error": "Ошибка",
    "cancelled": "Отменён",
    "expired": "Истёк срок",
}
# the last dial's outcome → amoCRM's call_status (§2.3)
CALL_STATUS = {
    "success": STATUS_TALKED,
    "answered_incomplete": STATUS_TALKED,
    "opted_out": STATUS_TALKED,
    "machine": STATUS_TALKED,
    "busy": STATUS_BUSY,
    "invalid_number": STATUS_WRONG_NUMBER,
}


def result_key(campaign_id: uuid.UUID, contact_id: uuid.UUID) -> str:
    return f"{campaign_id.hex}:{contact_id.hex}"


async def enqueue_result(
    s: AsyncSession, *, campaign: AiCampaign, contact: AiContact, at: dt.datetime
) -> bool:
    """Queue the contact's result for amoCRM, in the caller's transaction; False when there is nothing to
    write (never dialled) or nowhere to write it (no active binding)."""
    if contact.last_session_id is None:
        return False
    binding_id = await s.scalar(
        select(CrmBinding.id).where(CrmBinding.domain_id == campaign.domain_id, CrmBinding.status == "active")
    )
    if binding_id is None:
        return False
    await enqueue(
        s,
        binding_id=binding_id,
        kind=KIND,
        key=result_key(campaign.id, contact.id),
        payload={"campaign_id": campaign.id.hex, "contact_id": contact.id.hex},
        run_after=at,
    )
    return True


class JobLedger(Ledger):
    """The steps of one ``amo.ai_result`` job, kept in its ``payload["steps"]``."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], job: CrmJob) -> None:
        super().__init__(sessions, job.binding_id, job.key, (job.payload or {}).get("steps"))
        self.job_id = job.id
        self.payload = dict(job.payload or {})

    async def save(self, **columns: Any) -> None:
        self.payload["steps"] = {k: dict(v) for k, v in self.steps.items()}
        async with self.sessions() as s, s.begin():
            await s.execute(
                update(CrmJob).where(CrmJob.id == self.job_id).values(payload=dict(self.payload), **columns)
            )


def note_text(campaign_name: str, contact: AiContact) -> str:
    """The call note's ``call_result``: «Автоинформатор «…»: <status>; прослушано N с; нажато: …»."""
    parts = [f"Автоинформатор «{campaign_name}»: {STATUS_TEXT.get(contact.status, contact.status)}"]
    parts.append(f"прослушано {round(contact.best_listen_s or 0)} с")
    if contact.digits:
        parts.append(f"нажато: {contact.digits}")
    return "; ".join(parts)


def task_deadline(due_days: int, *, now: dt.datetime, zone: dt.tzinfo) -> int:
    """«Срок, дней»: 23:59 of the day ``due_days`` after today in the account's zone (today: at least
    15 minutes ahead)."""
    local = (now.astimezone(zone) + dt.timedelta(days=due_days)).replace(
        hour=23, minute=59, second=0, microsecond=0
    )
    return int(max(local, now + dt.timedelta(minutes=15)).timestamp())


class AiResultHandler:
    """The runner's handler of ``amo.ai_result`` jobs."""

    kind = KIND

    def __init__(self, settings: FinishSettings) -> None:
        self.settings = settings

    async def __call__(self, runner: JobRunner, job: CrmJob, binding: CrmBinding) -> None:
        core = runner.core
        payload = job.payload or {}
        try:
            campaign_id = uuid.UUID(str(payload.get("campaign_id")))
            contact_id = uuid.UUID(str(payload.get("contact_id")))
        except ValueError:
            log.warning("amo.ai_result_bad_payload", job_id=str(job.id))
            return
        async with core.sessions() as s:
            campaign = await s.scalar(
                select(AiCampaign).where(
                    AiCampaign.id == campaign_id, AiCampaign.domain_id == binding.domain_id
                )
            )
            contact = await s.scalar(
                select(AiContact).where(AiContact.id == contact_id, AiContact.campaign_id == campaign_id)
            )
            if campaign is None or contact is None or contact.last_session_id is None:
                log.info("amo.ai_result_nothing", key=job.key)
                return
            attempt = await s.scalar(select(AiAttempt).where(AiAttempt.session_id == contact.last_session_id))
            recorded = await s.scalar(
                select(CallRecord.is_record).where(
                    CallRecord.session_id == contact.last_session_id,
                    CallRecord.domain_id == binding.domain_id,
                )
            )
            zone_name = await s.scalar(
                select(AmoInstall.timezone).where(AmoInstall.amo_account_id == binding.external_account_id)
            )
        spec = spec_of(campaign)
        ledger = JobLedger(core.sessions, job)
        lookup = runner.state.get(LOOKUP_STATE)
        if not isinstance(lookup, PhoneLookup):
            lookup = runner.state[LOOKUP_STATE] = PhoneLookup(core.sessions, runner.clients, core.clock)

        # 1. who: the contact's numbers, the last dialled first; found once (the ledger keeps it)
        found = ledger.get("lookup")
        if found["state"] == "skipped":  # nobody had the numbers: a re-run asks no more
            return
        if found["state"] != "done":
            phones = list(contact.phones)
            if attempt is not None and attempt.phone in phones:
                phones.remove(attempt.phone)
                phones.insert(0, attempt.phone)
            hit: tuple[int, int | None, str] | None = None
            for phone in phones:
                key = match_key(phone)
                if key is None:
                    continue
                result = await lookup.lookup(Binding.of(binding), key)
                if result.outcome == "hit" and result.contact is not None:
                    hit = (result.contact.id, result.contact.responsible_user_id, phone)
                    break
            if hit is None:
                await ledger.mark("lookup", state="skipped", last_error="not found")
                log.info("amo.ai_result_unknown", key=job.key)
                return
            await ledger.mark("lookup", state="done", id=hit[0], responsible=hit[1], phone=hit[2])
            found = ledger.get("lookup")
        elif found.get("id") is None:
            return
        amo_contact = int(found["id"])
        amo_responsible = found.get("responsible")
        phone = "+" + str(found.get("phone") or (attempt.phone if attempt else contact.phones[0]))
        api = runner.clients.for_account(binding.external_account_id)
        sid = contact.last_session_id

        # 2. the call note
        link = ""
        if recorded:
            async with core.sessions() as s, s.begin():
                link = await recording_link(
                    s,
                    domain_id=binding.domain_id,
                    binding_id=binding.id,
                    session_id=sid,
                    origin=self.settings.origin,
                )
        answered = attempt is not None and attempt.answered_at is not None
        duration = 0
        if (
            answered
            and attempt is not None
            and attempt.ended_at is not None
            and attempt.answered_at is not None
        ):
            duration = max(int((attempt.ended_at - attempt.answered_at).total_seconds()), 0)
        outcome = contact.last_outcome or (attempt.outcome if attempt else None) or ""
        params: dict[str, Any] = {
            "uniq": sid,
            "duration": duration,
            "source": self.settings.source_name,
            "phone": phone,
            "call_status": CALL_STATUS.get(outcome, STATUS_NOT_REACHED),
            "call_result": note_text(campaign.name, contact),
        }
        if link:
            params["link"] = link
        started = (
            attempt.started_at if attempt is not None and attempt.started_at else contact.last_attempt_at
        )
        note: dict[str, Any] = {
            "entity_id": amo_contact,
            "note_type": "call_out",
            "created_at": int((started or core.clock.now()).timestamp()),
            "params": params,
            "request_id": request_id(job.key, "note"),
        }
        if binding.fallback_user_id is not None:
            note["created_by"] = note["responsible_user_id"] = binding.fallback_user_id

        async def verify_note() -> int | None:
            for n in await api.list_notes("contacts", amo_contact):
                if (n.get("params") or {}).get("uniq") == sid:
                    return int(n["id"])
            return None

        async def send_note() -> int | None:
            created = await api.add_notes("contacts", [note])
            return int(created[0]["id"]) if created else None

        await write_step(ledger, job.key, "note", send_note, verify_note)

        # 3. «Создавать задачу в amoCRM»
        opts = spec.amocrm_task
        if opts is None:
            return
        entry = ledger.get("task")
        if entry["state"] in ("done", "skipped", "failed"):
            return
        till = entry.get("till") if entry["state"] == "in_flight" else None
        if till is None:
            till = task_deadline(opts.due_days, now=core.clock.now(), zone=account_zone(zone_name or ""))
        who = int(opts.responsible) if opts.responsible and opts.responsible.isdigit() else None
        if who is None:
            who = int(amo_responsible) if amo_responsible is not None else binding.fallback_user_id
        task: dict[str, Any] = {
            "text": opts.text,
            "complete_till": int(till),
            "task_type_id": 1,
            "entity_type": "contacts",
            "entity_id": amo_contact,
            "request_id": request_id(job.key, "task"),
        }
        if who is not None:
            task["responsible_user_id"] = who

        async def verify_task() -> int | None:
            for t in await api.list_tasks(entity_type="contacts", entity_ids=[amo_contact]):
                if t.get("text") == opts.text and int(t.get("complete_till") or 0) == int(till):
                    return int(t["id"])
            return None

        async def send_task() -> int | None:
            created = await api.create_tasks([task])
            return int(created[0]["id"]) if created else None

        await write_step(ledger, job.key, "task", send_task, verify_task, till=int(till))
