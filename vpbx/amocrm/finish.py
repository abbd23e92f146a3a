"""``amo.finish``: one finished call's writes to amoCRM (amocrm.md §5.4–5.6, F10–F14).

Steps run strictly in order: contact (E7), lead (E9, or E19 for «Неразобранное»), task (E11), responsible
(E8) and the call log (E13, or E15 in ``calls_api`` mode). Each has a ledger entry in ``AmoCall.steps``
(``pending``/``in_flight``/``done``/``skipped``/``failed``, the created ``id``, ``attempts``, ``last_error``).
Before a write the step becomes ``in_flight`` in its own committed transaction and the request carries
``request_id = "{session_id}:{step}"``; a step found ``in_flight`` (a crash, a 5xx, a lost answer) is verified
against amoCRM before it is sent again, so a re-run job never makes a second entity.

The pure parts (classification, ``call_status``, templates, deadlines, the responsible rules) are module
functions; ``Finish`` does the I/O. Errors that mean "not applied" (429, 401–403, a skipped request) put the
step back to ``pending`` and propagate to the job runner (vpbx/amocrm/jobs.py), which re-queues or holds
the job; a 5xx or an unknown outcome leaves the step ``in_flight`` for verification; a 400 fails the step
and the later steps go on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import uuid
import zoneinfo
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from vpbx.amocrm.errors import (
    AmoEntityNotFound,
    AmoError,
    AmoForbidden,
    AmoPaymentRequired,
    AmoRateLimited,
    AmoReauthRequired,
    AmoSkipped,
    AmoUnreachable,
    AmoValidationError,
)
from vpbx.amocrm.lookup import pick
from vpbx.amocrm.nearest import (
    LOST,
    NO_ACTIVE_LEAD,
    WON,
    NearestLeads,
    active_lead,
    lead_ids,
    nearest_for,
)
from vpbx.amocrm.options import BindingOptions, options_of
from vpbx.amocrm.scenario import (
    ClientKind,
    Deadline,
    Direction,
    EventTab,
    FieldValue,
    Responsible,
    ScenarioDocument,
)
from vpbx.crm.phone import match_key
from vpbx.logs import get_logger
from vpbx.store.models import (
    AmoCall,
    AmoInstall,
    AmoPhoneCache,
    AmoRecordingLink,
    AmoScenario,
    CallRecord,
    CrmBinding,
    CrmJob,
    CrmUserMap,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from vpbx.amocrm.api import AmoApi, Json
    from vpbx.amocrm.jobs import JobRunner

log = get_logger("vpbx.amocrm.finish")

STEPS = ("contact", "lead", "task", "responsible", "note")
UNSORTED_TYPE = 1
ADOPT_WINDOW_S = 60  # verification: an entity created at most this long before the call's end is ours
PAST_DEADLINE = dt.timedelta(minutes=15)  # a deadline already past when the task is written: now + 15 min
RECORDING_PATH = "/rec/amo/{token}.mp3"
TOKEN_BYTES = 24  # 32 url-safe characters

# call_status (§2.3) and its call_result text (ours)
STATUS_TALKED, STATUS_WRONG_NUMBER, STATUS_NOT_REACHED, STATUS_BUSY = 4, 5, 6, 7
RESULTS = {
    ("incoming", STATUS_TALKED): "Разговор состоялся",
    ("outgoing", STATUS_TALKED): "Разговор состоялся",
    ("missed", STATUS_NOT_REACHED): "Пропущенный вызов",
    ("failed_outgoing", STATUS_NOT_REACHED): "Не дозвонился",
    ("failed_outgoing", STATUS_BUSY): "Номер занят",
    ("failed_outgoing", STATUS_WRONG_NUMBER): "Неверный номер",
}


# --- pure: classification, status, templates, deadlines, responsible ----------------------------------------


def classify(call_type: str, *, answered_pins: Sequence[str], client_answered: bool) -> Direction:
    """§5.4: incoming with an employee who answered → incoming, without → missed; outbound answered by the
    client → outgoing, else failed_outgoing."""
    if call_type == "incoming":
        return "incoming" if answered_pins else "missed"
    return "outgoing" if client_answered else "failed_outgoing"


def call_status(direction: Direction, status_code: int | None) -> tuple[int, str]:
    """§2.3's ``call_status`` and our ``call_result`` text."""
    if direction in ("incoming", "outgoing"):
        code = STATUS_TALKED
    elif direction == "missed":
        code = STATUS_NOT_REACHED
    elif status_code == 486:
        code = STATUS_BUSY
    elif status_code in (404, 484):
        code = STATUS_WRONG_NUMBER
    else:
        code = STATUS_NOT_REACHED
    return code, RESULTS[(direction, code)]


@dataclass(frozen=True, slots=True, kw_only=True)
class TemplateVars:
    phone: str  # the client's E.164 with "+"
    line: str  # our line, E.164 with "+", or ""
    ext: str  # the manager's extension, or ""
    at: dt.datetime  # the call's start, in the account's time zone

    def mapping(self) -> dict[str, str]:
        return {
            "$(phone)": self.phone,
            "$(line)": self.line,
            "$(ext)": self.ext,
            "$(date)": self.at.strftime("%d.%m.%Y"),
            "$(time)": self.at.strftime("%H:%M"),
        }


def render(template: str, variables: TemplateVars) -> str:
    """F11's variables in one pass (a value containing ``$(…)`` is never expanded again)."""
    values = variables.mapping()
    out: list[str] = []
    i = 0
    while i < len(template):
        if template.startswith("$(", i):
            end = template.find(")", i)
            if end != -1 and template[i : end + 1] in values:
                out.append(values[template[i : end + 1]])
                i = end + 1
                continue
        out.append(template[i])
        i += 1
    return "".join(out)


def account_zone(name: str) -> dt.tzinfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("Europe/Moscow")


def deadline_at(deadline: Deadline, *, ended_at: dt.datetime, zone: dt.tzinfo, now: dt.datetime) -> int:
    """``complete_till`` (Unix seconds): N minutes after the end, or 23:59 of the end's day in the account's
    zone; a moment already past when the task is written becomes now + 15 minutes (§5.5)."""
    if deadline.kind == "minutes":
        when = ended_at + dt.timedelta(minutes=deadline.minutes)
    else:
        local = ended_at.astimezone(zone)
        when = local.replace(hour=23, minute=59, second=0, microsecond=0)
    if when <= now:
        when = now + PAST_DEADLINE
    return int(when.timestamp())


def manager_pin(
    direction: Direction,
    *,
    answered_pins: Sequence[str],
    rung_pins: Sequence[str],
    caller_pin: str | None,
    follow_transfer: bool,
) -> str | None:
    """The extension «Принявший вызов» names (§5.5): the first who answered (the last with
    ``follow_transfer``), the caller of an outgoing call, the last rung of a missed one."""
    if direction == "incoming":
        if not answered_pins:
            return None
        return answered_pins[-1] if follow_transfer else answered_pins[0]
    if direction == "missed":
        return rung_pins[-1] if rung_pins else None
    return caller_pin


def transferred(answered_pins: Sequence[str]) -> bool:
    return len(answered_pins) > 1


def pick_responsible(
    rule: Responsible,
    *,
    answered_user: int | None,
    contact_user: int | None,
    fallback: int | None,
    group_pick: Callable[[int], int | None] | None = None,
) -> int | None:
    """F11's table; an unmapped or unknown result is the fallback manager."""
    who: int | None
    if rule.rule == "answered":
        who = answered_user
    elif rule.rule == "contact":
        who = contact_user
    elif rule.rule == "user":
        who = rule.user_id
    elif rule.rule == "group":
        who = group_pick(rule.group_id) if group_pick is not None and rule.group_id is not None else None
    else:
        who = None
    return who if who is not None else fallback


def round_robin(members: Sequence[int], last: int | None) -> int | None:
    """The member after ``last`` (by id), wrapping; the first when ``last`` is unknown."""
    ordered = sorted(set(members))
    if not ordered:
        return None
    for uid in ordered:
        if last is None or uid > last:
            return uid
    return ordered[0]


def field_values(fields: Sequence[FieldValue], variables: TemplateVars) -> list[dict[str, Any]]:
    """``custom_fields_values`` for a write: a text value through the templates, or a select's enum."""
    out: list[dict[str, Any]] = []
    for f in fields:
        if f.enum_id is not None:
            value: dict[str, Any] = {"enum_id": f.enum_id}
        elif isinstance(f.value, str):
            value = {"value": render(f.value, variables)}
        else:
            value = {"value": f.value}
        out.append({"field_id": f.field_id, "values": [value]})
    return out


# --- the ledger ---------------------------------------------------------------------------------------------


class Ledger:
    """``AmoCall.steps`` of one call; every change is committed at once (the job holds the call's lease)."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], binding_id: uuid.UUID, session_id: str, steps: Any
    ) -> None:
        self.sessions = sessions
        self.binding_id = binding_id
        self.session_id = session_id
        self.steps: dict[str, dict[str, Any]] = {
            k: dict(v) for k, v in (steps or {}).items() if isinstance(v, dict)
        }

    def get(self, step: str) -> dict[str, Any]:
        return self.steps.setdefault(step, {"state": "pending", "id": None, "attempts": 0, "last_error": ""})

    def state(self, step: str) -> str:
        return str(self.get(step)["state"])

    def id(self, step: str) -> int | None:
        value = self.get(step).get("id")
        return int(value) if value is not None else None

    async def mark(self, step: str, **changes: Any) -> None:
        self.get(step).update(changes)
        await self.save()

    async def save(self, **columns: Any) -> None:
        snapshot = {k: dict(v) for k, v in self.steps.items()}
        async with self.sessions() as s, s.begin():
            await s.execute(
                update(AmoCall)
                .where(AmoCall.binding_id == self.binding_id, AmoCall.session_id == self.session_id)
                .values(steps=snapshot, **columns)
            )


def request_id(session_id: str, step: str) -> str:
    return f"{session_id}:{step}"


async def write_step(
    ledger: Ledger,
    sid: str,
    step: str,
    send: Callable[[], Awaitable[int | None]],
    verify: Callable[[], Awaitable[int | None]] | None = None,
    **remember: Any,
) -> int | None:
    """Run ``step`` of the ledger once: verify an in-flight one first, then send; the entity's id (None:
    none). ``sid`` names the run in the logs (the call's session id, or an autoinformer result's key)."""
    entry = ledger.get(step)
    if entry["state"] in ("done", "skipped", "failed"):
        return ledger.id(step)
    if entry["state"] == "in_flight" and verify is not None:
        found = await verify()
        if found is not None:
            await ledger.mark(step, state="done", id=found, adopted=True)
            log.info("amo.step_adopted", session_id=sid, step=step, entity_id=found)
            return found
    await ledger.mark(step, state="in_flight", attempts=int(entry.get("attempts") or 0) + 1, **remember)
    try:
        created = await send()
    except AmoValidationError as e:
        errors = "; ".join(f"{v.code} {v.path}" for v in e.violations)[:480]
        await ledger.mark(step, state="failed", last_error=f"400 {errors}")
        log.warning("amo.step_failed", session_id=sid, step=step, errors=errors)
        return None
    except NOT_APPLIED as e:
        await ledger.mark(step, state="pending", last_error=type(e).__name__)
        raise
    except AmoError as e:
        if e.status in (401, 402, 403, 429):  # refused before processing
            await ledger.mark(step, state="pending", last_error=type(e).__name__)
        else:
            await ledger.mark(step, last_error=f"{type(e).__name__} {e}"[:480])
        raise
    except Exception as e:  # a transport failure: the write may have been applied
        await ledger.mark(step, last_error=f"{type(e).__name__} {e}"[:480])
        raise
    await ledger.mark(step, state="done", id=created, last_error="")
    return created


# --- the phone lock -----------------------------------------------------------------------------------------


@dataclass
class PhoneLocks:
    """One lock per (binding, phone key) in this process: calls from one new number create one contact."""

    _locks: dict[tuple[uuid.UUID, str], asyncio.Lock] = field(default_factory=dict)
    _users: dict[tuple[uuid.UUID, str], int] = field(default_factory=dict)

    def lock(self, binding_id: uuid.UUID, key: str) -> _Held:
        return _Held(self, (binding_id, key))


class _Held:
    def __init__(self, owner: PhoneLocks, key: tuple[uuid.UUID, str]) -> None:
        self.owner = owner
        self.key = key

    async def __aenter__(self) -> None:
        lock = self.owner._locks.setdefault(self.key, asyncio.Lock())
        self.owner._users[self.key] = self.owner._users.get(self.key, 0) + 1
        await lock.acquire()

    async def __aexit__(self, *_exc: object) -> None:
        self.owner._locks[self.key].release()
        left = self.owner._users[self.key] - 1
        if left:
            self.owner._users[self.key] = left
        else:
            del self.owner._users[self.key]
            del self.owner._locks[self.key]


# --- recording links ----------------------------------------------------------------------------------------


async def recording_link(
    s: AsyncSession, *, domain_id: uuid.UUID, binding_id: uuid.UUID, session_id: str, origin: str
) -> str:
    """The call's stable recording URL (§5.5): its unrevoked link, else a new one."""
    token = await s.scalar(
        select(AmoRecordingLink.token).where(
            AmoRecordingLink.binding_id == binding_id,
            AmoRecordingLink.session_id == session_id,
            AmoRecordingLink.revoked_at.is_(None),
        )
    )
    if token is None:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        s.add(
            AmoRecordingLink(token=token, domain_id=domain_id, binding_id=binding_id, session_id=session_id)
        )
        await s.flush()
    return origin.rstrip("/") + RECORDING_PATH.format(token=token)


# --- the job ------------------------------------------------------------------------------------------------


class StepFailed(Exception):
    """Internal: a step ended without an entity (400 or nothing to do); later steps go on."""


# refused before amoCRM processed anything (AmoUnreachable: a write never left): no verification needed
NOT_APPLIED = (
    AmoRateLimited,
    AmoSkipped,
    AmoReauthRequired,
    AmoPaymentRequired,
    AmoForbidden,
    AmoUnreachable,
)


@dataclass(slots=True, kw_only=True)
class FinishSettings:
    source_name: str = "Виртуальная АТС"
    origin: str = "http://127.0.0.1:8080"  # our public origin, for recording links


async def _upsert_cache(
    s: AsyncSession, binding_id: uuid.UUID, key: str, values: dict[str, Any], now: dt.datetime
) -> None:
    row = {"binding_id": binding_id, "phone_key": key, "cached_at": now, **values}
    stmt = (pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert)(AmoPhoneCache)
    changed = {k: v for k, v in row.items() if k not in ("binding_id", "phone_key")}
    await s.execute(
        stmt.values(row).on_conflict_do_update(index_elements=["binding_id", "phone_key"], set_=changed)
    )


class Finish:
    """One run of ``amo.finish`` for (binding, session): see the module docstring."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        api: AmoApi,
        binding: CrmBinding,
        call: AmoCall,
        record: CallRecord,
        document: ScenarioDocument | None,
        user_of_pin: dict[str, int],
        zone: dt.tzinfo,
        now: Callable[[], dt.datetime],
        locks: PhoneLocks,
        settings: FinishSettings,
        nearest: NearestLeads | None = None,
    ) -> None:
        self.sessions = sessions
        self.api = api
        self.binding = binding
        self.call = call
        self.record = record
        self.document = document
        self.user_of_pin = user_of_pin
        self.zone = zone
        self.now = now
        self.locks = locks
        self.settings = settings
        self.nearest = nearest  # the process's 60 s cache of E5/E6 answers, shared with the pop-ups
        self.options: BindingOptions = options_of(binding.options)
        self.ledger = Ledger(sessions, binding.id, call.session_id, call.steps)
        self.sid = call.session_id
        self.key = match_key(call.client_e164) or ""
        self.phone = "+" + call.client_e164 if call.client_e164 else ""
        self.direction: Direction = classify(
            record.call_type,
            answered_pins=call.answered_pins or [],
            client_answered=record.answered_at is not None,
        )
        self.ended_at = record.ended_at or record.started_at
        self.contact: Json | None = None  # the client's contact as last read (E4/E5)
        self._leads: list[Json] | None = None  # the contact's leads (E6), read by this run at most once

    # --- who -------------------------------------------------------------------------------------------

    @property
    def fallback(self) -> int | None:
        return self.binding.fallback_user_id

    def user(self, pin: str | None) -> int | None:
        return self.user_of_pin.get(pin) if pin else None

    def answered_user(self, follow_transfer: bool) -> int | None:
        pin = manager_pin(
            self.direction,
            answered_pins=self.call.answered_pins or [],
            rung_pins=self.call.rung_pins or [],
            caller_pin=self.call.manager_pin,
            follow_transfer=follow_transfer,
        )
        return self.user(pin)

    def manager(self) -> int | None:
        """The call note's manager (§5.5): the last who answered, the caller, else the fallback."""
        if self.direction == "missed":
            return self.fallback
        return self.answered_user(True) or self.fallback

    def variables(self, follow_transfer: bool) -> TemplateVars:
        pin = manager_pin(
            self.direction,
            answered_pins=self.call.answered_pins or [],
            rung_pins=self.call.rung_pins or [],
            caller_pin=self.call.manager_pin,
            follow_transfer=follow_transfer,
        )
        return TemplateVars(
            phone=self.phone,
            line="+" + self.call.line if self.call.line else "",
            ext=pin or "",
            at=self.record.started_at.astimezone(self.zone),
        )

    async def group_member(self, group_id: int) -> int | None:
        """Round-robin among the group's active members (F11). The last pick is kept in the binding's
        ``health["round_robin"]``, read fresh and written back under a per-binding lock of this process (one
        process serves an account, §2.5); other keys of ``health`` are left as they are."""
        users = await self.api.users()
        members = [
            int(u["id"])
            for u in users
            if (u.get("rights") or {}).get("group_id") == group_id
            and (u.get("rights") or {}).get("is_active", True)
        ]
        async with self.locks.lock(self.binding.id, f"round-robin:{group_id}"):
            async with self.sessions() as s, s.begin():
                row = await s.get(CrmBinding, self.binding.id)
                if row is None:
                    return None
                health = dict(row.health or {})
                rr = dict(health.get("round_robin") or {})
                last = rr.get(str(group_id))
                pick = round_robin(members, int(last) if last is not None else None)
                if pick is not None:
                    rr[str(group_id)] = pick
                    row.health = {**health, "round_robin": rr}
        return pick

    async def responsible(
        self, rule: Responsible, *, follow_transfer: bool, contact_user: int | None
    ) -> int | None:
        answered = self.answered_user(follow_transfer)
        if rule.rule == "group" and rule.group_id is not None:
            picked = await self.group_member(rule.group_id)
            return picked if picked is not None else self.fallback
        return pick_responsible(
            rule, answered_user=answered, contact_user=contact_user, fallback=self.fallback
        )

    # --- reads -----------------------------------------------------------------------------------------

    async def search(self) -> Json | None:
        """E4 with the phone key, post-filtered (§2.4)."""
        if not self.key:
            return None
        return pick(await self.api.search_contacts(self.key), self.key)

    async def leads(self) -> list[Json]:
        """The contact's leads read now (E5 for their ids unless E4 embedded them, then E6); the answer goes
        into the process's 60 s cache."""
        if self._leads is not None:
            return self._leads
        contact_id = self.call.contact_id
        if contact_id is None:
            self._leads = []
            return self._leads
        contact = self.contact if self.contact and self.contact.get("id") == contact_id else None
        if contact is None or "_embedded" not in contact:
            contact = await self.api.get_contact(contact_id)
        ids = lead_ids(contact)
        self._leads = await self.api.get_leads(ids) if ids else []
        if self.nearest is not None:
            self.nearest.remember_read(self.binding.id, contact_id, contact, self._leads)
        return self._leads

    async def nearest_lead(self, *, before_new_deal: bool) -> int | None:
        """The contact's nearest active deal (F13) with as few reads as §5.9 allows: this run's own read,
        else the pop-up's read of this call (``AmoCall.nearest_lead_id``), else the process's 60 s cache
        (once a pop-up's read in flight has ended), else E5/E6 now. A known deal is trusted; "no active
        deal" is read again ``before_new_deal``, because a manager may have made one during the call and the
        deal check is there to make no duplicate (vpbx/amocrm/nearest.py)."""
        if self._leads is not None:
            lead = active_lead(self._leads)
            return int(lead["id"]) if lead else None
        contact_id = self.call.contact_id
        if contact_id is None:
            return None
        known = self.call.nearest_lead_id
        if known is None and self.nearest is not None:
            entry = await self.nearest.settled(self.binding.id, contact_id)
            if entry is not None:
                known = entry.lead_id if entry.lead_id is not None else NO_ACTIVE_LEAD
        if known is not None and known != NO_ACTIVE_LEAD:
            return int(known)
        if known == NO_ACTIVE_LEAD and not before_new_deal:
            return None
        lead = active_lead(await self.leads())
        return int(lead["id"]) if lead else None

    async def save_contact(self, contact: Json, *, responsible: int | None = None) -> None:
        """The client's contact is known: the call's context and the phone cache (at once, §5.5)."""
        self.contact = contact
        cid = int(contact["id"])
        name = str(contact.get("name") or "")
        resp = contact.get("responsible_user_id", responsible)
        self.call.contact_id, self.call.contact_name = cid, name
        self.call.responsible_user_id = int(resp) if resp is not None else None
        self.call.lookup = "hit"
        async with self.sessions() as s, s.begin():
            await s.execute(
                update(AmoCall)
                .where(AmoCall.binding_id == self.binding.id, AmoCall.session_id == self.sid)
                .values(
                    contact_id=cid,
                    contact_name=name,
                    responsible_user_id=self.call.responsible_user_id,
                    lookup="hit",
                )
            )
            if self.key:
                values = {
                    "contact_id": cid,
                    "name": name,
                    "responsible_user_id": self.call.responsible_user_id,
                    "negative": False,
                }
                await _upsert_cache(s, self.binding.id, self.key, values, self.now())

    async def resolve_client(self) -> ClientKind:
        """§5.4: a lookup that ended unknown at routing is made again here (background, no deadline). A
        click-to-call from a contact's card (``card_hint``) names the contact already."""
        hint = self.call.card_hint or {}
        if (
            self.call.contact_id is None
            and hint.get("type") == "contacts"
            and str(hint.get("id", "")).isdigit()
        ):
            self.call.contact_id, self.call.lookup = int(hint["id"]), "hit"
        if self.call.lookup == "unknown" and self.key:
            found = await self.search()
            if found is not None:
                await self.save_contact(found)
            else:
                self.call.lookup = "miss"
                async with self.sessions() as s, s.begin():
                    await s.execute(
                        update(AmoCall)
                        .where(AmoCall.binding_id == self.binding.id, AmoCall.session_id == self.sid)
                        .values(lookup="miss")
                    )
                    values = {"contact_id": None, "name": "", "responsible_user_id": None, "negative": True}
                    await _upsert_cache(s, self.binding.id, self.key, values, self.now())
        return "existing" if self.call.contact_id is not None else "new"

    # --- one write with its ledger entry -----------------------------------------------------------------

    async def write(
        self,
        step: str,
        send: Callable[[], Awaitable[int | None]],
        verify: Callable[[], Awaitable[int | None]] | None = None,
        **remember: Any,
    ) -> int | None:
        """Run ``step`` once: verify an in-flight one first, then send; the entity's id (None: none)."""
        return await write_step(self.ledger, self.sid, step, send, verify, **remember)

    async def skip(self, step: str, why: str) -> None:
        if self.ledger.state(step) in ("pending",):
            await self.ledger.mark(step, state="skipped", last_error=why)

    # --- the steps -------------------------------------------------------------------------------------

    async def run(self) -> str:
        """All steps; the classification (e.g. ``incoming.new``)."""
        kind = await self.resolve_client()
        if self.ledger.state("contact") == "done" and self.ledger.id("contact") is not None:
            kind = "new"  # the contact this call created (or adopted) does not make the client existing
            if self.call.contact_id is None:
                self.call.contact_id = self.ledger.id("contact")
        elif self.ledger.state("contact") == "in_flight":
            kind = "new"
        classification = f"{self.direction}.{kind}"
        tab: EventTab | None = self.document.events.tab(self.direction) if self.document else None
        new_opts = tab.new if tab is not None and kind == "new" and tab.new.enabled else None
        old_opts = tab.existing if tab is not None and kind == "existing" and tab.existing.enabled else None
        follow = bool(new_opts and new_opts.update_responsible_on_transfer)
        variables = self.variables(follow)

        # 1. contact
        if new_opts is not None and new_opts.contact.enabled and self.key:
            await self.step_contact(new_opts.contact.name_template, new_opts, variables, follow)
        else:
            await self.skip("contact", "not configured")
        contact_user = self.contact_responsible()

        # 2. lead
        lead_opts = new_opts.lead if new_opts else old_opts.lead if old_opts else None
        if lead_opts is not None and lead_opts.enabled:
            if (
                kind == "existing"
                and lead_opts.skip_if_active_lead
                and self.ledger.state("lead") == "pending"  # in flight: verified by step_lead
                and await self.nearest_lead(before_new_deal=True) is not None
            ):
                await self.skip("lead", "active lead")
            else:
                await self.step_lead(lead_opts, variables, follow, contact_user)
        else:
            await self.skip("lead", "not configured")

        # 3. task
        task_opts = new_opts.task if new_opts else old_opts.task if old_opts else None
        if task_opts is not None and task_opts.enabled:
            await self.step_task(task_opts, variables, follow, contact_user)
        else:
            await self.skip("task", "not configured")

        # 4. responsible of an adopted contact after a transfer
        adopted = bool(self.ledger.get("contact").get("adopted"))
        if new_opts is not None and follow and adopted and transferred(self.call.answered_pins or []):
            await self.step_responsible()
        else:
            await self.skip("responsible", "not needed")

        # 5. the call log, whatever the scenario says, whenever a contact is known
        if self.call.contact_id is not None:
            await self.step_note()
        else:
            await self.skip("note", "no contact")
        await self.ledger.save(classification=classification)
        return classification

    def contact_responsible(self) -> int | None:
        """«Ответственный за контакт»: the contact's, or the one a contact made by this call got."""
        return self.call.responsible_user_id

    async def step_contact(self, template: str, opts: Any, variables: TemplateVars, follow: bool) -> None:
        if self.ledger.state("contact") in ("done", "skipped", "failed"):
            return
        name = render(template, variables)
        contact = opts.contact
        responsible = await self.responsible(contact.responsible, follow_transfer=follow, contact_user=None)
        async with self.locks.lock(self.binding.id, self.key):
            # re-check (§5.5): a parallel call or a manager may have made the contact meanwhile
            async with self.sessions() as s:
                cached = await s.get(AmoPhoneCache, (self.binding.id, self.key))
            found: Json | None = None
            if cached is not None and not cached.negative and cached.contact_id is not None:
                found = {
                    "id": cached.contact_id,
                    "name": cached.name,
                    "responsible_user_id": cached.responsible_user_id,
                }
            else:
                found = await self.search()
            if found is not None:
                await self.ledger.mark("contact", state="done", id=int(found["id"]), adopted=True)
                await self.save_contact(found)
                log.info("amo.contact_adopted", session_id=self.sid, contact_id=found["id"])
                return
            item: dict[str, Any] = {
                "name": name,
                "responsible_user_id": responsible,
                "custom_fields_values": [
                    {"field_code": "PHONE", "values": [{"value": self.phone, "enum_code": "WORK"}]},
                    *field_values(contact.fields, variables),
                ],
                "request_id": request_id(self.sid, "contact"),
            }
            if contact.tags:
                item["_embedded"] = {"tags": [{"name": t} for t in contact.tags]}
            lead = opts.lead
            if (
                self.options.use_complex_create
                and lead.enabled
                and lead.target == "deal"
                and self.ledger.state("lead") == "pending"
            ):
                if await self.complex_create(
                    item, lead, variables, follow, name=name, responsible=responsible
                ):
                    return

            async def send() -> int | None:
                created = await self.api.create_contacts([item])
                return int(created[0]["id"]) if created else None

            cid = await self.write("contact", send, None, name=name, responsible=responsible)
            if cid is not None:
                await self.save_contact({"id": cid, "name": name, "responsible_user_id": responsible})

    async def complex_create(
        self,
        contact_item: dict[str, Any],
        opts: Any,
        variables: TemplateVars,
        follow: bool,
        *,
        name: str,
        responsible: int | None,
    ) -> bool:
        """Steps 1 and 2 in one request (E10, ``use_complex_create``): both ledger entries go in flight; a
        re-run after a lost answer adopts the contact by the re-check and the lead by its verification.
        False when the deal cannot be made (the contact is then made alone)."""
        lead_name, item = await self.lead_item(
            opts, variables, follow, contact_user=responsible, contact_id=None
        )
        if item is None:
            return False
        item.setdefault("_embedded", {})["contacts"] = [
            {k: v for k, v in contact_item.items() if k != "request_id"}
        ]
        entry = self.ledger.get("lead")
        await self.ledger.mark(
            "lead", state="in_flight", attempts=int(entry.get("attempts") or 0) + 1, name=lead_name
        )
        made: dict[str, Any] = {}

        async def send() -> int | None:
            created = await self.api.create_complex([item])
            if not created or created[0].get("contact_id") is None:
                return None
            made.update(created[0])
            return int(created[0]["contact_id"])

        try:
            cid = await self.write("contact", send, None, name=name, responsible=responsible)
        except Exception:
            if self.ledger.state("contact") == "pending":  # not applied: the lead was not made either
                await self.ledger.mark("lead", state="pending")
            raise
        if cid is None or made.get("id") is None:
            await self.ledger.mark("lead", state="pending")  # E9 on its own, below
            return True
        if made.get("merged"):  # amoCRM's duplicate control attached an existing contact
            await self.ledger.mark("contact", adopted=True)
        await self.ledger.mark("lead", state="done", id=int(made["id"]), last_error="")
        await self.save_contact({"id": cid, "name": name, "responsible_user_id": responsible})
        return True

    async def _pipeline(
        self, pipeline_id: int | None, status_id: int | None, unsorted: bool
    ) -> tuple[int, int]:
        if pipeline_id is not None and (status_id is not None or unsorted):
            return pipeline_id, status_id or 0
        pipelines = await self.api.pipelines()
        chosen = next((p for p in pipelines if p.get("id") == pipeline_id), None) if pipeline_id else None
        chosen = chosen or next((p for p in pipelines if p.get("is_main")), None)
        chosen = chosen or (pipelines[0] if pipelines else None)
        if chosen is None:
            raise StepFailed("no pipeline")
        statuses = (chosen.get("_embedded") or {}).get("statuses") or []
        usable = [
            st for st in statuses if st.get("type") != UNSORTED_TYPE and st.get("id") not in (WON, LOST)
        ]
        sid = status_id if status_id is not None else (usable[0]["id"] if usable else 0)
        return int(chosen["id"]), int(sid)

    async def lead_item(
        self,
        opts: Any,
        variables: TemplateVars,
        follow: bool,
        *,
        contact_user: int | None,
        contact_id: int | None,
    ) -> tuple[str, dict[str, Any] | None]:
        """The deal's name and its E9/E10 item (None: the step failed, e.g. no pipeline)."""
        name = render(opts.name_template, variables)
        responsible = await self.responsible(
            opts.responsible, follow_transfer=follow, contact_user=contact_user
        )
        try:
            pipeline_id, status_id = await self._pipeline(opts.pipeline_id, opts.status_id, False)
        except StepFailed as e:
            await self.ledger.mark("lead", state="failed", last_error=str(e))
            return name, None
        item: dict[str, Any] = {
            "name": name,
            "pipeline_id": pipeline_id,
            "status_id": status_id,
            "responsible_user_id": responsible,
            "custom_fields_values": field_values(opts.fields, variables),
            "request_id": request_id(self.sid, "lead"),
        }
        embedded: dict[str, Any] = {}
        if opts.tags:
            embedded["tags"] = [{"name": t} for t in opts.tags]
        if contact_id is not None:
            embedded["contacts"] = [{"id": contact_id, "is_main": True}]
        if embedded:
            item["_embedded"] = embedded
        if not item["custom_fields_values"]:
            del item["custom_fields_values"]
        return name, item

    async def step_lead(
        self, opts: Any, variables: TemplateVars, follow: bool, contact_user: int | None
    ) -> None:
        if self.ledger.state("lead") in ("done", "skipped", "failed"):
            return
        contact_id = self.call.contact_id
        since = int(self.ended_at.timestamp()) - ADOPT_WINDOW_S
        name = render(opts.name_template, variables)

        async def verify() -> int | None:
            if contact_id is None:
                return None
            self._leads = None
            for lead in await self.leads():
                if lead.get("name") == name and int(lead.get("created_at") or 0) >= since:
                    return int(lead["id"])
            return None

        if opts.target == "unsorted":
            responsible = await self.responsible(
                opts.responsible, follow_transfer=follow, contact_user=contact_user
            )
            try:
                pipeline_id, _status = await self._pipeline(opts.pipeline_id, opts.status_id, True)
            except StepFailed as e:
                await self.ledger.mark("lead", state="failed", last_error=str(e))
                return
            send = self._unsorted_sender(name, pipeline_id, responsible, contact_id)
        else:
            _name, item = await self.lead_item(
                opts, variables, follow, contact_user=contact_user, contact_id=contact_id
            )
            if item is None:
                return
            made = item

            async def send() -> int | None:
                created = await self.api.create_leads([made])
                return int(created[0]["id"]) if created else None

        await self.write("lead", send, verify, name=name)

    def _unsorted_sender(
        self, name: str, pipeline_id: int, responsible: int | None, contact_id: int | None
    ) -> Callable[[], Awaitable[int | None]]:
        started = int(self.record.started_at.timestamp())
        lead: dict[str, Any] = {"name": name}
        if responsible is not None:
            lead["responsible_user_id"] = responsible
        contact: dict[str, Any] = {"id": contact_id} if contact_id is not None else {"name": self.phone}
        metadata: dict[str, Any] = {
            "from": self.phone,
            "phone": self.phone,
            "called_at": started,
            "duration": self.record.duration_s or 0,
            "service_code": "vpbx",
            "uniq": self.sid,
            "is_call_event_needed": True,
        }
        item = {
            "source_name": self.settings.source_name,
            "source_uid": self.sid,
            "pipeline_id": pipeline_id,
            "created_at": started,
            "metadata": metadata,
            "_embedded": {"leads": [lead], "contacts": [contact]},
            "request_id": request_id(self.sid, "lead"),
        }

        async def send() -> int | None:
            created = await self.api.add_unsorted_sip([item])
            leads = ((created[0].get("_embedded") or {}).get("leads") or []) if created else []
            return int(leads[0]["id"]) if leads else None

        return send

    async def step_task(
        self, opts: Any, variables: TemplateVars, follow: bool, contact_user: int | None
    ) -> None:
        entry = self.ledger.get("task")
        if entry["state"] in ("done", "skipped", "failed"):
            return
        text = render(opts.text, variables)
        till = entry.get("till") if entry["state"] == "in_flight" else None
        if till is None:
            till = deadline_at(opts.deadline, ended_at=self.ended_at, zone=self.zone, now=self.now())
        responsible = await self.responsible(
            opts.responsible, follow_transfer=follow, contact_user=contact_user
        )
        entity_type, entity_id = await self._task_entity()
        item: dict[str, Any] = {
            "text": text,
            "complete_till": int(till),
            "task_type_id": opts.task_type_id,
            "responsible_user_id": responsible,
            "request_id": request_id(self.sid, "task"),
        }
        if entity_id is not None:
            item["entity_type"], item["entity_id"] = entity_type, entity_id

        async def verify() -> int | None:
            if entity_id is None:
                return None
            for task in await self.api.list_tasks(entity_type=entity_type, entity_ids=[entity_id]):
                if task.get("text") == text and int(task.get("complete_till") or 0) == int(till):
                    return int(task["id"])
            return None

        async def send() -> int | None:
            created = await self.api.create_tasks([item])
            return int(created[0]["id"]) if created else None

        await self.write("task", send, verify, till=int(till))

    async def _task_entity(self) -> tuple[str, int | None]:
        """F12: the lead of this call, else the nearest active lead, else the contact, else none."""
        lead_id = self.ledger.id("lead") if self.ledger.state("lead") == "done" else None
        if lead_id is not None:
            return "leads", lead_id
        if self.call.contact_id is None:
            return "contacts", None
        created_here = self.ledger.state("contact") == "done" and not self.ledger.get("contact").get(
            "adopted"
        )
        # a contact made by this call has no deals yet
        nearest = None if created_here else await self.nearest_lead(before_new_deal=False)
        if nearest is not None:
            return "leads", nearest
        return "contacts", self.call.contact_id

    async def step_responsible(self) -> None:
        target = self.answered_user(True) or self.fallback
        contact_id = self.call.contact_id
        if target is None or contact_id is None:
            await self.skip("responsible", "no target")
            return

        async def send() -> int | None:
            await self.api.update_contact(contact_id, {"responsible_user_id": target})
            return contact_id

        await self.write("responsible", send, None)  # idempotent: re-sent, never verified

    async def step_note(self) -> None:
        contact_id = self.call.contact_id
        assert contact_id is not None
        answered = self.direction in ("incoming", "outgoing")
        duration = self.record.duration_s if answered else 0
        code, result = call_status(self.direction, self.record.status_code)
        manager = self.manager()
        link = ""
        if self.record.is_record:
            async with self.sessions() as s, s.begin():
                link = await recording_link(
                    s,
                    domain_id=self.binding.domain_id,
                    binding_id=self.binding.id,
                    session_id=self.sid,
                    origin=self.settings.origin,
                )
        started = int(self.record.started_at.timestamp())
        params: dict[str, Any] = {
            "uniq": self.sid,
            "duration": duration,
            "source": self.settings.source_name,
            "phone": self.phone,
            "call_status": code,
            "call_result": result,
        }
        if link:
            params["link"] = link
        if manager is not None:
            params["call_responsible"] = manager
        incoming = self.direction in ("incoming", "missed")

        def noted(on: str, on_id: int) -> None:  # where the note is, for a reissued link's edit (relink)
            self.ledger.get("note").update(on=on, on_id=on_id)

        async def verify() -> int | None:
            for note in await self.api.list_notes("contacts", contact_id):
                if (note.get("params") or {}).get("uniq") == self.sid:
                    return int(note["id"])
            if self.options.call_log_mode == "calls_api":
                self._leads = None
                lead = active_lead(await self.leads())
                if lead is not None:
                    for note in await self.api.list_notes("leads", int(lead["id"])):
                        if (note.get("params") or {}).get("uniq") == self.sid:
                            noted("leads", int(lead["id"]))
                            return int(note["id"])
            return None

        note: dict[str, Any] = {
            "entity_id": contact_id,
            "note_type": "call_in" if incoming else "call_out",
            "created_at": started,
            "params": params,
            "request_id": request_id(self.sid, "note"),
        }
        if manager is not None:
            note["created_by"] = note["responsible_user_id"] = manager

        async def send_note() -> int | None:
            created = await self.api.add_notes("contacts", [note])
            noted("contacts", contact_id)
            return int(created[0]["id"]) if created else None

        async def send_call() -> int | None:
            item = {
                "direction": "inbound" if incoming else "outbound",
                **{k: v for k, v in params.items() if k != "call_result"},
                "call_result": result,
                "created_at": started,
                "request_id": request_id(self.sid, "note"),
            }
            if manager is not None:
                item["responsible_user_id"] = item["created_by"] = manager
            try:
                created = await self.api.add_calls([item])
            except AmoEntityNotFound:
                log.info("amo.call_entity_not_found", session_id=self.sid, contact_id=contact_id)
                return await send_note()  # §5.7: fall back to the note on the known contact
            if not created:
                return None
            entity = created[0].get("entity_type")
            entity_id = created[0].get("entity_id")
            if entity in ("lead", "contact") and entity_id is not None:
                noted("leads" if entity == "lead" else "contacts", int(entity_id))
            return int(created[0]["id"])

        send = send_call if self.options.call_log_mode == "calls_api" else send_note
        await self.write("note", send, verify)


# --- loading a job's inputs -------------------------------------------------------------------------------


async def load_finish(
    s: AsyncSession, binding: CrmBinding, session_id: str
) -> tuple[AmoCall, CallRecord, ScenarioDocument | None, dict[str, int], str] | None:
    """The call's context, its record, its scenario's document, the mapping (pin → user) and the account's
    time zone; None when the context or the record is gone."""
    call = await s.get(AmoCall, (binding.id, session_id))
    record = await s.scalar(
        select(CallRecord).where(
            CallRecord.session_id == session_id, CallRecord.domain_id == binding.domain_id
        )
    )
    if call is None or record is None:
        return None
    document = None
    if call.scenario_id is not None:
        scenario = await s.scalar(
            select(AmoScenario).where(
                AmoScenario.id == call.scenario_id, AmoScenario.binding_id == binding.id
            )
        )
        if scenario is not None and scenario.is_active:
            document = ScenarioDocument.model_validate(scenario.document or {})
    mapping = {
        row.extension: int(row.crm_user_id)
        for row in await s.scalars(select(CrmUserMap).where(CrmUserMap.binding_id == binding.id))
    }
    zone = await s.scalar(
        select(AmoInstall.timezone).where(AmoInstall.amo_account_id == binding.external_account_id)
    )
    return call, record, document, mapping, zone or "Europe/Moscow"


class FinishHandler:
    """The runner's handler of ``amo.finish`` jobs (key: the session id)."""

    kind = "amo.finish"

    def __init__(self, settings: FinishSettings, locks: PhoneLocks | None = None) -> None:
        self.settings = settings
        self.locks = locks or PhoneLocks()

    async def __call__(self, runner: JobRunner, job: CrmJob, binding: CrmBinding) -> None:
        core = runner.core
        async with core.sessions() as s:
            loaded = await load_finish(s, binding, job.key)
        if loaded is None:
            log.warning("amo.finish_nothing", binding_id=str(binding.id), session_id=job.key)
            return
        call, record, document, mapping, zone = loaded
        if call.classification == "ignored":
            return
        finish = Finish(
            sessions=core.sessions,
            api=runner.clients.for_account(binding.external_account_id),
            binding=binding,
            call=call,
            record=record,
            document=document,
            user_of_pin=mapping,
            zone=account_zone(zone),
            now=core.clock.now,
            locks=self.locks,
            settings=self.settings,
            nearest=nearest_for(core),
        )
        classification = await finish.run()
        log.info("amo.finished", session_id=job.key, classification=classification)
