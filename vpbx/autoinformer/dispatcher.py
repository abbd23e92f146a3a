"""The autoinformer's dispatcher (autoinformer.md §3.3–§3.5, §4, §7): it decides who is dialled when, claims
each dial exactly once, hands it to the call engine and turns the result into the contact's next state.

Each ``tick``:
- holds a lease per live campaign (``AiCampaign.lease_owner``/``lease_until``, 15 s, renewed every 5 s); a
  campaign whose lease another node holds is left alone, and a node that loses a lease stops claiming for it;
- moves campaigns: ``scheduled`` → ``running`` at ``start_at``; any live one → ``completed`` at ``end_at``
  (``status.set_status`` expires the rest); ``running``/``scheduled`` → ``error`` when a cause appears
  (domain blocked, service off, caller ID no longer a line of the domain, a library file gone); ``running`` →
  ``completed`` when every contact is final and ``auto_complete`` is on;
- claims due contacts of running campaigns within the effective concurrency (campaign concurrency, the
  domain's channel limit minus its other calls and the reserve, the platform's per-domain cap), shared
  round-robin between a domain's campaigns, at most 2 new attempts a second per campaign and a platform-wide
  cps cap.

A claim (§7.1) is one transaction: lock the contact (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; on SQLite a
conditional write first, which takes the database's write lock), re-read the campaign locked (``FOR NO KEY
UPDATE``: a pause committed first is seen, one committed later waits; claims of one campaign take turns, so
two never deadlock upgrading a shared lock to set ``first_attempt_at``), re-check status, lease, stop list,
start rule and frequency caps, insert the ``AiAttempt`` as ``dialing`` under its unique dispatch key and mark
the contact ``in_progress``. The INVITE leaves only after the commit, with a Call-ID derived from the key. A
restart closes attempts left without a result from the call history or as ``failed``/``dispatcher_restart``
(§7.2).
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from vpbx.autoinformer import events, status, stoplist
from vpbx.autoinformer.caps import CAPS_KEY, Caps, answered_times, next_allowed
from vpbx.autoinformer.outcome import DROPS, next_number, next_state, outcome_of
from vpbx.autoinformer.schedule import (
    HOLIDAYS_KEY,
    QUIET_HOURS_KEY,
    Plan,
    PlatformRules,
    can_start,
    next_open,
    zone_of,
    zones,
)
from vpbx.autoinformer.schemas import FINAL_CONTACT, MOSCOW, CampaignSpec, spec_of
from vpbx.background import BackgroundLoop
from vpbx.billing import AUTOINFORMER, enabled_clause
from vpbx.clock import Clock
from vpbx.errors import VpbxError
from vpbx.logs import get_logger
from vpbx.pbx.broadcast import (
    AmdSettings,
    BroadcastDialer,
    BroadcastRequest,
    BroadcastResult,
    KeyAction,
    broadcast_ids,
)
from vpbx.store.leases import lease_free, release_lease, take_leases
from vpbx.store.models import (
    AiAttempt,
    AiAudioFile,
    AiCampaign,
    AiContact,
    AiStopEntry,
    CallRecord,
    Domain,
    IncomingNumber,
    PlatformSetting,
    VoiceMenu,
)

log = get_logger("vpbx.autoinformer.dispatcher")

LEASE_S = 15.0
RENEW_S = 5.0
TICK_S = 0.5
CAMPAIGN_CPS = 2  # new attempts per second per campaign (§3.4)
ZONES_CHECKED = 200  # distinct recipient zones looked at by in_window
CANDIDATES = 20  # due contacts looked at per claim round
LIMITS_KEY = "autoinformer.limits"
AUDIO_UNAVAILABLE = "audio-unavailable"  # the renderer's error code for a library file gone
DUE = ("pending", "waiting_retry")
LIVE = ("scheduled", "running", "paused", "error")
ACTOR = "system"
STOP_DRAIN_S = 10.0  # stop() lets calls in progress report this long before cancelling them
_MSK_FORMAT = "%Y-%m-%d %H:%M:%S"
# the engine's refusals that mean no INVITE left and no call record was written: they spend no attempt
NOT_SENT = frozenset({"no_trunk", "channels", "no_engine", "history_unavailable", "domain_unavailable"})
REFUSED_BACKOFF = dt.timedelta(seconds=30)

RenderFn = Callable[[AsyncSession, AiCampaign, AiContact], Awaitable[str | None]]
KeysFn = Callable[[AsyncSession, AiCampaign, AiContact], Awaitable[dict[str, str] | None]]
BusyFn = Callable[[uuid.UUID], int]
RoomFn = Callable[[uuid.UUID], int]


@dataclass(frozen=True, slots=True)
class Limits:
    """Platform abuse limits (§7.5), ``PlatformSetting`` ``autoinformer.limits``."""

    domain_concurrency: int = 100  # autoinformer calls of one domain at once
    cps: int = 20  # new autoinformer calls per second, whole platform
    daily_attempts: int = 50_000  # attempts per domain per local day

    @classmethod
    def from_json(cls, value: Any) -> Limits:
        if not isinstance(value, Mapping):
            return cls()
        d = cls()
        return cls(
            domain_concurrency=int(value.get("domain_concurrency", d.domain_concurrency)),
            cps=int(value.get("cps", d.cps)),
            daily_attempts=int(value.get("daily_attempts", d.daily_attempts)),
        )


@dataclass(frozen=True, slots=True)
class _Platform:
    rules: PlatformRules
    caps: Caps
    limits: Limits


def moscow_time(text: str) -> dt.datetime:
    """The API's ``YYYY-MM-DD HH:MM:SS`` (Moscow time) as aware UTC."""
    return dt.datetime.strptime(text, _MSK_FORMAT).replace(tzinfo=MOSCOW).astimezone(dt.UTC)


def dispatch_key(campaign_id: uuid.UUID, contact_id: uuid.UUID, attempt_no: int, number_index: int) -> str:
    return f"{campaign_id.hex}:{contact_id.hex}:{attempt_no}:{number_index}"


async def platform_settings(s: AsyncSession) -> dict[str, Any]:
    keys = (QUIET_HOURS_KEY, HOLIDAYS_KEY, CAPS_KEY, LIMITS_KEY)
    rows = await s.execute(
        select(PlatformSetting.key, PlatformSetting.value).where(PlatformSetting.key.in_(keys))
    )
    return {str(k): v for k, v in rows.all()}


@dataclass(frozen=True, slots=True)
class Readiness:
    """What §4.1's error causes need beyond the campaign and domain rows, read with them in the pass's one
    query (``readiness_columns``) plus one query for the library files of every live campaign."""

    service_on: bool
    line_ok: bool
    files: frozenset[tuple[uuid.UUID, str]]  # (domain, file id hex) of the wanted files that exist


def readiness_columns() -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """The service switch and the caller ID's line, as columns of a query over campaigns joined to domains."""
    line = exists().where(
        IncomingNumber.domain_id == AiCampaign.domain_id,
        func.ltrim(IncomingNumber.number, "+") == func.ltrim(AiCampaign.caller_id, "+"),
    )
    return enabled_clause(Domain.id, AUTOINFORMER).label("service_on"), line.label("line_ok")


def wanted_files(spec: CampaignSpec) -> set[str]:
    """The library files the campaign plays: its message's and its keys' segments."""
    wanted = {seg.file_id for seg in spec.message.segments if seg.file_id}
    wanted |= {a.segment.file_id for a in spec.dtmf.actions.values() if a.segment and a.segment.file_id}
    return wanted


async def existing_files(
    s: AsyncSession, wanted: set[tuple[uuid.UUID, str]]
) -> frozenset[tuple[uuid.UUID, str]]:
    """Which of the (domain, file id) pairs are in their domain's library, in one query."""
    if not wanted:
        return frozenset()
    ids = {uuid.UUID(hex=f) for _, f in wanted}
    rows = await s.execute(select(AiAudioFile.domain_id, AiAudioFile.id).where(AiAudioFile.id.in_(ids)))
    return frozenset((d, f.hex) for d, f in rows.all()) & frozenset(wanted)


def error_cause(domain: Domain, spec: CampaignSpec, ready: Readiness) -> str | None:
    """Why the campaign cannot dial now (§4.1 ``error_reason``), or None."""
    if domain.status == "blocked":
        return "domain_blocked"
    if not ready.service_on:
        return "service_disabled"
    if not ready.line_ok:
        return "caller_id_unavailable"
    if any((domain.id, f) not in ready.files for f in wanted_files(spec)):
        return "audio_unavailable"
    return None


async def in_window(s: AsyncSession, campaign: AiCampaign, domain: Domain, now: dt.datetime) -> bool:
    """§9's ``in_window``: the start rule holds now for at least one time zone among the campaign's
    contacts not yet final (the domain's when there are none); ``running`` with it false is idle."""
    plan = Plan.of(spec_of(campaign))
    rules = PlatformRules.from_settings(await platform_settings(s))
    found = (
        await s.scalars(
            select(AiContact.timezone)
            .where(AiContact.campaign_id == campaign.id, AiContact.status.not_in(tuple(FINAL_CONTACT)))
            .distinct()
            .limit(ZONES_CHECKED)
        )
    ).all()
    return any(
        can_start(plan, rules, recipient_tz=zone, domain_tz=domain.timezone, at=now)
        for zone in (found or [None])
    )


def _is_pg(s: AsyncSession) -> bool:
    return s.get_bind().dialect.name == "postgresql"


async def _lock_campaign(s: AsyncSession, campaign_id: uuid.UUID) -> AiCampaign | None:
    """The campaign row, locked for this transaction (PostgreSQL: ``FOR NO KEY UPDATE``, which rows
    referencing it can still be inserted under; SQLite: the write lock, taken by a no-op write)."""
    if _is_pg(s):
        q = select(AiCampaign).where(AiCampaign.id == campaign_id).with_for_update(key_share=True)
        return await s.scalar(q.execution_options(populate_existing=True))
    await s.execute(
        update(AiCampaign).where(AiCampaign.id == campaign_id).values(updated_at=AiCampaign.updated_at)
    )
    return await s.get(AiCampaign, campaign_id, populate_existing=True)


class Dispatcher(BackgroundLoop):
    """Claims due numbers and dials them: ``tick`` is one pass, every ``tick_s`` or on ``wake()`` (a dial
    that ends wakes it); a failed pass is logged and backed off (a ``BackgroundLoop``)."""

    name = "autoinformer-dispatch"
    failure_event = "autoinformer.tick_failed"

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        dialer: BroadcastDialer,
        render: RenderFn,
        clock: Clock,
        node_id: str,
        busy_channels: BusyFn,
        *,
        tick_s: float = TICK_S,
        trunk_room: RoomFn | None = None,
        render_keys: KeysFn | None = None,
    ) -> None:
        """``render(s, campaign, contact)``: the contact's message as one stored prompt, or None when it
        could not be rendered now (it counts the failure itself). ``render_keys`` likewise: key → prompt of
        the DTMF actions' TTS segments (none rendered without it). ``busy_channels(domain_id)``: the domain's
        calls in progress other than this dispatcher's own. ``trunk_room(domain_id)``: the free channels of
        the domain's usable trunks (``max_calls`` minus their calls in progress), when known."""
        self.sessions = sessions
        self.dialer = dialer
        self.render = render
        self.clock = clock
        self.node_id = node_id
        self.busy_channels = busy_channels
        self.interval_s = tick_s
        self.trunk_room = trunk_room
        self.render_keys = render_keys
        self._dials: dict[str, asyncio.Task[None]] = {}  # session_id → the dial's task
        self._inflight: dict[str, tuple[uuid.UUID, uuid.UUID]] = {}  # session_id → (domain, campaign)
        self._leases: dict[uuid.UUID, float] = {}  # campaign → monotonic time of the last renewal
        self._paced: dict[uuid.UUID, collections.deque[float]] = {}
        self._platform_paced: collections.deque[float] = collections.deque()
        self._rr: dict[uuid.UUID, int] = {}

    # --- lifecycle ---
    async def start(self) -> None:
        await self.reconcile()
        await super().start()

    async def halt(self) -> None:
        """Stop claiming; dials in progress go on and are recorded."""
        await super().stop()

    async def stop(self) -> None:
        await self.halt()
        if self._dials:
            _, pending = await asyncio.wait(list(self._dials.values()), timeout=STOP_DRAIN_S)
            for task in pending:  # their attempts stay open: the next start reconciles them
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._release()

    async def run_once(self) -> float | None:
        await self.tick()
        return None

    async def drain(self) -> None:
        """Wait until every dial placed so far has ended and been recorded (tests, shutdown)."""
        while self._dials:
            await asyncio.gather(*list(self._dials.values()), return_exceptions=True)

    @property
    def sessions_in_flight(self) -> frozenset[str]:
        return frozenset(self._inflight)

    def in_flight(self, *, domain_id: uuid.UUID | None = None, campaign_id: uuid.UUID | None = None) -> int:
        return sum(
            1
            for d, c in self._inflight.values()
            if (domain_id is None or d == domain_id) and (campaign_id is None or c == campaign_id)
        )

    # --- one pass ---
    async def tick(self) -> int:
        """One pass of housekeeping and claims; returns the number of dials started."""
        now = self.clock.now()
        async with self.sessions() as s:
            platform = self._platform(await platform_settings(s))
            rows = (
                await s.execute(
                    select(AiCampaign, Domain, *readiness_columns())
                    .join(Domain, Domain.id == AiCampaign.domain_id)
                    .where(AiCampaign.status.in_(LIVE))
                    .order_by(AiCampaign.created_at, AiCampaign.id)
                )
            ).all()
            specs = {c.id: spec_of(c) for c, *_ in rows}
            files = await existing_files(
                s, {(c.domain_id, f) for c, *_ in rows for f in wanted_files(specs[c.id])}
            )
        running: dict[uuid.UUID, list[AiCampaign]] = {}
        domains: dict[uuid.UUID, Domain] = {}
        for campaign, domain, service_on, line_ok in rows:
            if not await self._hold(campaign.id, now):
                continue
            ready = Readiness(bool(service_on), bool(line_ok), files)
            try:
                current = await self._housekeep(campaign, domain, specs[campaign.id], ready, now)
            except Exception:
                log.exception("autoinformer.housekeeping_failed", campaign_id=campaign.id.hex)
                continue
            if current == "running":
                running.setdefault(domain.id, []).append(campaign)
                domains[domain.id] = domain
        started = 0
        for domain_id, campaigns in running.items():
            started += await self._claim_domain(domains[domain_id], campaigns, platform, now)
        return started

    def _platform(self, values: Mapping[str, Any]) -> _Platform:
        return _Platform(
            rules=PlatformRules.from_settings(values),
            caps=Caps.from_json(values.get(CAPS_KEY)),
            limits=Limits.from_json(values.get(LIMITS_KEY)),
        )

    # --- lease (§7.3) ---
    async def _hold(self, campaign_id: uuid.UUID, now: dt.datetime) -> bool:
        mono = self.clock.monotonic()
        last = self._leases.get(campaign_id)
        if last is not None and mono - last < RENEW_S:
            return True
        async with self.sessions() as s:
            held = await take_leases(
                s,
                AiCampaign,
                AiCampaign.id,
                [campaign_id],
                owner_col=AiCampaign.lease_owner,
                until_col=AiCampaign.lease_until,
                owner=self.node_id,
                now=now,
                lease_for=dt.timedelta(seconds=LEASE_S),
            )
            await s.commit()
        if held:
            self._leases[campaign_id] = mono
            return True
        if self._leases.pop(campaign_id, None) is not None:
            log.warning("autoinformer.lease_lost", campaign_id=campaign_id.hex)
        return False

    async def _release(self) -> None:
        if not self._leases:
            return
        try:
            async with self.sessions() as s:
                await release_lease(
                    s,
                    AiCampaign,
                    AiCampaign.id.in_(list(self._leases)),
                    owner_col=AiCampaign.lease_owner,
                    until_col=AiCampaign.lease_until,
                    owner=self.node_id,
                    clear_owner=True,
                )
                await s.commit()
        except Exception:
            log.exception("autoinformer.lease_release_failed")
        self._leases.clear()

    def _lease_valid(self, campaign: AiCampaign, now: dt.datetime) -> bool:
        return (
            campaign.lease_owner == self.node_id
            and campaign.lease_until is not None
            and campaign.lease_until > now
        )

    # --- campaign moves (§4.1) ---
    async def _housekeep(
        self, campaign: AiCampaign, domain: Domain, spec: CampaignSpec, ready: Readiness, now: dt.datetime
    ) -> str:
        """Apply the system's moves to one campaign; returns its status after them."""
        current = campaign.status
        end_at = moscow_time(spec.schedule.end_at) if spec.schedule.end_at else None
        if end_at is not None and now >= end_at:
            return await self._move(campaign.id, current, "completed", domain, now)
        if current == "scheduled" and now >= moscow_time(spec.schedule.start_at):
            current = await self._move(campaign.id, current, "running", domain, now)
        if current in ("running", "scheduled"):
            cause = error_cause(domain, spec, ready)
            if cause is not None:
                return await self._move(campaign.id, current, "error", domain, now, error_reason=cause)
        if current == "running" and spec.auto_complete and await self._all_final(campaign.id):
            return await self._move(campaign.id, current, "completed", domain, now)
        return current

    async def _all_final(self, campaign_id: uuid.UUID) -> bool:
        """Every contact final and none of the campaign's calls up. Runs every pass of a running campaign:
        a call in flight answers without the database, then one query looks for any contact and any open one
        (two EXISTS probes, not counts over the whole list)."""
        if self.in_flight(campaign_id=campaign_id):
            return False
        of_campaign = AiContact.campaign_id == campaign_id
        async with self.sessions() as s:
            row = (
                await s.execute(
                    select(
                        exists().where(of_campaign),
                        exists().where(of_campaign, AiContact.status.not_in(tuple(FINAL_CONTACT))),
                    )
                )
            ).one()
        return bool(row[0]) and not row[1]

    async def _move(
        self,
        campaign_id: uuid.UUID,
        expected: str,
        wanted: str,
        domain: Domain,
        now: dt.datetime,
        *,
        error_reason: str | None = None,
    ) -> str:
        async with self.sessions() as s:
            campaign = await _lock_campaign(s, campaign_id)
            if campaign is None:
                await s.rollback()
                return "gone"
            if campaign.status != expected:  # someone moved it first: act on what it is now
                await s.commit()
                return campaign.status
            await status.set_status(
                s,
                campaign,
                wanted,
                domain=domain.name,
                actor=ACTOR,
                now=now,
                error_reason=error_reason,
                system=True,
            )
            await s.commit()
        log.info("autoinformer.campaign_moved", campaign_id=campaign_id.hex, to=wanted, reason=error_reason)
        return wanted

    # --- claims ---
    def _paced_ok(self, campaign_id: uuid.UUID, limits: Limits) -> bool:
        mono = self.clock.monotonic()
        window = self._paced.setdefault(campaign_id, collections.deque())
        for q in (window, self._platform_paced):
            while q and mono - q[0] >= 1.0:
                q.popleft()
        return len(window) < CAMPAIGN_CPS and len(self._platform_paced) < limits.cps

    def _note_paced(self, campaign_id: uuid.UUID) -> None:
        mono = self.clock.monotonic()
        self._paced.setdefault(campaign_id, collections.deque()).append(mono)
        self._platform_paced.append(mono)

    async def _attempts_today(self, domain: Domain, now: dt.datetime) -> int:
        zone = zone_of(domain.timezone) or MOSCOW
        local = now.astimezone(zone)
        start = dt.datetime.combine(local.date(), dt.time(), tzinfo=zone).astimezone(dt.UTC)
        async with self.sessions() as s:
            n = await s.scalar(
                select(func.count()).where(AiAttempt.domain_id == domain.id, AiAttempt.started_at >= start)
            )
        return int(n or 0)

    async def _claim_domain(
        self, domain: Domain, campaigns: list[AiCampaign], platform: _Platform, now: dt.datetime
    ) -> int:
        mine = self.in_flight(domain_id=domain.id)
        free = domain.channel_limit - self.busy_channels(domain.id) - domain.ai_line_reserve - mine
        budget = min(free, platform.limits.domain_concurrency - mine)
        if self.trunk_room is not None:  # a campaign above the trunks' capacity waits for free channels
            budget = min(budget, self.trunk_room(domain.id))
        if budget <= 0:
            return 0
        left_today = platform.limits.daily_attempts - await self._attempts_today(domain, now)
        budget = min(budget, left_today)
        if budget <= 0:
            return 0
        offset = self._rr.get(domain.id, 0) % len(campaigns)
        self._rr[domain.id] = offset + 1
        queue = collections.deque(campaigns[offset:] + campaigns[:offset])
        skip: dict[uuid.UUID, set[uuid.UUID]] = {}
        started = 0
        while budget > 0 and queue:
            campaign = queue.popleft()
            spec = spec_of(campaign)
            if self.in_flight(campaign_id=campaign.id) >= spec.concurrency or not self._paced_ok(
                campaign.id, platform.limits
            ):
                continue
            if not await self._claim_one(
                campaign, spec, domain, platform, now, skip.setdefault(campaign.id, set())
            ):
                continue  # nothing due (now) in this campaign
            started += 1
            budget -= 1
            queue.append(campaign)  # round-robin: back of the line
        return started

    async def _position(self, s: AsyncSession, contact: AiContact) -> tuple[int, int] | None:
        """(attempt_no, number_index) of the contact's next dial, or None when no number is left."""
        last = (
            await s.execute(
                select(AiAttempt.attempt_no, AiAttempt.number_index)
                .where(AiAttempt.contact_id == contact.id)
                .order_by(AiAttempt.attempt_no.desc(), AiAttempt.number_index.desc())
                .limit(1)
            )
        ).first()
        phones = len(contact.phones)
        if last is None:
            first = next_number(phones, contact.dropped, None)
            return None if first is None else (1, first)
        same = next_number(phones, contact.dropped, last.number_index)
        if same is not None:
            return last.attempt_no, same
        first = next_number(phones, contact.dropped, None)
        return None if first is None else (last.attempt_no + 1, first)

    async def _claim_one(
        self,
        campaign: AiCampaign,
        spec: CampaignSpec,
        domain: Domain,
        platform: _Platform,
        now: dt.datetime,
        skip: set[uuid.UUID],
    ) -> bool:
        """Claim and dial one due contact of ``campaign``; False when none can be dialled now."""
        plan = Plan.of(spec)
        for _ in range(CANDIDATES):
            async with self.sessions() as s:
                q = select(AiContact).where(
                    AiContact.campaign_id == campaign.id,
                    AiContact.status.in_(DUE),
                    or_(AiContact.next_attempt_at.is_(None), AiContact.next_attempt_at <= now),
                )
                if skip:
                    q = q.where(AiContact.id.not_in(list(skip)))
                contact = await s.scalar(
                    q.order_by(AiContact.next_attempt_at.asc().nulls_first(), AiContact.row_no).limit(1)
                )
                if contact is None:
                    return False
                skip.add(contact.id)
                # the start rule before anything costly: a closed window only moves next_attempt_at
                opens = next_open(
                    plan, platform.rules, recipient_tz=contact.timezone, domain_tz=domain.timezone, after=now
                )
                if opens != now:
                    await self._defer(s, contact, opens, now)
                    continue
                key_prompts: dict[str, str] | None = {}
                try:
                    prompt_id = await self.render(s, campaign, contact)
                    if prompt_id is not None and self.render_keys is not None:
                        key_prompts = await self.render_keys(s, campaign, contact)
                except VpbxError as e:
                    await s.rollback()
                    if e.code != AUDIO_UNAVAILABLE:
                        log.exception("autoinformer.render_error", contact_id=contact.id.hex)
                        continue
                    # a library file is gone: the campaign's problem, not the contact's
                    await self._move(
                        campaign.id, "running", "error", domain, now, error_reason="audio_unavailable"
                    )
                    return False
                if contact.status == "error":  # the renderer gave up on it (tts_failed)
                    await events.number_finished(
                        s, domain=domain.name, campaign=campaign, contact=contact, at=now
                    )
                await s.commit()
                if prompt_id is None or key_prompts is None:
                    continue
            request = await self._claim(
                campaign.id, contact.id, spec, plan, domain, platform, (prompt_id, key_prompts), now
            )
            if request is not None:
                self._dial(request, domain.id, campaign.id)
                return True
        return False

    async def _defer(
        self, s: AsyncSession, contact: AiContact, opens: dt.datetime | None, now: dt.datetime
    ) -> None:
        """Outside the start rule: wait for the next open moment, using no attempt."""
        until = opens if opens is not None else now + dt.timedelta(days=1)
        await s.execute(
            update(AiContact)
            .where(AiContact.id == contact.id, AiContact.status == contact.status)
            .values(next_attempt_at=until, updated_at=now)
        )
        await s.commit()

    async def _claim(
        self,
        campaign_id: uuid.UUID,
        contact_id: uuid.UUID,
        spec: CampaignSpec,
        plan: Plan,
        domain: Domain,
        platform: _Platform,
        prompts: tuple[str, Mapping[str, str]],
        now: dt.datetime,
    ) -> BroadcastRequest | None:
        """The claim transaction (§7.1). Returns the request to dial once committed, or None. ``prompts``:
        the contact's message and its keys' TTS segments, rendered before the transaction."""
        prompt_id, key_prompts = prompts
        due = or_(AiContact.next_attempt_at.is_(None), AiContact.next_attempt_at <= now)
        try:
            async with self.sessions() as s:
                if _is_pg(s):
                    campaign = await _lock_campaign(s, campaign_id)
                    contact = await s.scalar(
                        select(AiContact)
                        .where(AiContact.id == contact_id, AiContact.status.in_(DUE), due)
                        .with_for_update(skip_locked=True)
                        .execution_options(populate_existing=True)
                    )
                else:
                    res = await s.execute(
                        update(AiContact)
                        .where(AiContact.id == contact_id, AiContact.status.in_(DUE), due)
                        .values(updated_at=now)
                    )
                    if getattr(res, "rowcount", 0) != 1:
                        await s.rollback()
                        return None
                    campaign = await s.get(AiCampaign, campaign_id, populate_existing=True)
                    contact = await s.get(AiContact, contact_id, populate_existing=True)
                if campaign is None or contact is None or campaign.status != "running":
                    await s.rollback()
                    return None
                if not self._lease_valid(campaign, now):
                    await s.rollback()
                    return None
                position = await self._position(s, contact)
                stopped = None
                if position is not None and position[0] <= spec.attempts.max:
                    stopped = await s.scalar(
                        select(AiStopEntry.phone).where(
                            AiStopEntry.domain_id == domain.id,
                            AiStopEntry.phone == contact.phones[position[1]],
                        )
                    )
                if position is None or position[0] > spec.attempts.max or stopped is not None:
                    contact.status = (
                        "not_succeeded"
                        if position is None
                        else "attempts_exhausted"
                        if position[0] > spec.attempts.max
                        else "excluded"
                    )
                    contact.next_attempt_at = None
                    contact.updated_at = now
                    await s.flush()
                    await events.number_finished(
                        s, domain=domain.name, campaign=campaign, contact=contact, at=now
                    )
                    await s.commit()
                    return None
                attempt_no, index = position
                phone = contact.phones[index]
                opens = next_open(
                    plan, platform.rules, recipient_tz=contact.timezone, domain_tz=domain.timezone, after=now
                )
                if opens != now:
                    contact.next_attempt_at = opens or now + dt.timedelta(days=1)
                    await s.commit()
                    return None
                if spec.compliance_profile == "collections":
                    _, zone = zones(plan, contact.timezone, domain.timezone)
                    allowed = next_allowed(
                        await answered_times(s, domain.id, phone, now=now), platform.caps, zone=zone, now=now
                    )
                    if allowed is not None:
                        later = next_open(
                            plan,
                            platform.rules,
                            recipient_tz=contact.timezone,
                            domain_tz=domain.timezone,
                            after=allowed,
                        )
                        contact.status = "waiting_retry"
                        contact.detail = "frequency_cap"
                        contact.next_attempt_at = later or allowed
                        contact.updated_at = now
                        await s.commit()
                        return None
                key = dispatch_key(campaign.id, contact.id, attempt_no, index)
                session_id, call_id = broadcast_ids(key)
                s.add(
                    AiAttempt(
                        domain_id=domain.id,
                        campaign_id=campaign.id,
                        contact_id=contact.id,
                        attempt_no=attempt_no,
                        number_index=index,
                        dispatch_key=key,
                        phone=phone,
                        state="dialing",
                        scheduled_at=contact.next_attempt_at or now,
                        started_at=now,
                        session_id=session_id,
                        call_id=call_id,
                    )
                )
                contact.status = "in_progress"
                contact.detail = None
                contact.attempts_made = max(contact.attempts_made, attempt_no)
                contact.next_attempt_at = None
                contact.last_attempt_at = now
                contact.last_session_id = session_id
                contact.updated_at = now
                if campaign.first_attempt_at is None:
                    campaign.first_attempt_at = now
                actions = await self._actions(s, domain.id, spec, key_prompts)
                await s.commit()
        except IntegrityError:  # another worker claimed this dispatch key first
            log.info("autoinformer.claim_conflict", contact_id=contact_id.hex)
            return None
        self._note_paced(campaign_id)
        log.info("autoinformer.claimed", campaign_id=campaign_id.hex, session_id=session_id, key=key)
        return BroadcastRequest(
            domain_id=domain.id,
            session_id=session_id,
            call_id=call_id,
            number=phone,
            caller_id=campaign.caller_id.lstrip("+"),
            ring_timeout_s=spec.ring_timeout_s,
            message_prompt_id=prompt_id,
            repeat=spec.message.repeat,
            dtmf_wait_s=float(spec.dtmf.wait_s),
            actions=actions,
            record=spec.record,
            operator_display=f"Автоинформатор: {campaign.name}",
            amd=_amd(spec),
        )

    async def _actions(
        self, s: AsyncSession, domain_id: uuid.UUID, spec: CampaignSpec, key_prompts: Mapping[str, str]
    ) -> dict[str, KeyAction]:
        """The DTMF map for the engine; a segment becomes its prompt: a library file's converted prompt, a
        TTS text's rendered one (``key_prompts``)."""
        out: dict[str, KeyAction] = {}
        for digit, act in spec.dtmf.actions.items():
            prompt_id = key_prompts.get(digit)
            if act.segment is not None and act.segment.file_id:
                prompt_id = await s.scalar(
                    select(AiAudioFile.prompt_id).where(
                        AiAudioFile.domain_id == domain_id,
                        AiAudioFile.id == uuid.UUID(hex=act.segment.file_id),
                    )
                )
            target = act.target
            name = (target.number if target.type == "number" else target.pin) if target else None
            if target is not None and target.type == "menu" and name:
                name = await _menu_id(s, domain_id, name) or name  # a menu gone: the engine says unknown
            out[digit] = KeyAction(
                action=act.action,
                target_type=target.type if target else None,
                target=name,
                prompt_id=prompt_id,
            )
        return out

    # --- dialling and results ---
    def _dial(self, request: BroadcastRequest, domain_id: uuid.UUID, campaign_id: uuid.UUID) -> None:
        self._inflight[request.session_id] = (domain_id, campaign_id)
        task = asyncio.create_task(self._dial_and_record(request), name=f"ai-dial-{request.session_id}")
        self._dials[request.session_id] = task

    async def _dial_and_record(self, request: BroadcastRequest) -> None:
        try:
            started = self.clock.now()
            try:
                result = await self.dialer.dial(request)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("autoinformer.dial_failed", session_id=request.session_id)
                result = BroadcastResult(
                    sip_code=None, started_at=started, ended_at=self.clock.now(), detail="dial_error"
                )
            try:
                await self.finish(request.session_id, result)
            except Exception:  # the attempt stays open; the next start reconciles it from the call history
                log.exception("autoinformer.result_not_recorded", session_id=request.session_id)
        finally:
            self._inflight.pop(request.session_id, None)
            self._dials.pop(request.session_id, None)
            self.wake()

    async def finish(
        self,
        session_id: str,
        result: BroadcastResult,
        *,
        min_delay: dt.timedelta | None = None,
        detail: str | None = None,
    ) -> str | None:
        """Record one dial's result: the attempt, the contact's next state, the events. Returns the contact's
        new status (None when the attempt was already closed). ``min_delay``: the earliest next dial."""
        now = self.clock.now()
        async with self.sessions() as s:
            pg = _is_pg(s)
            if not pg:  # the write lock first, so everything read below is current
                await s.execute(
                    update(AiAttempt).where(AiAttempt.session_id == session_id).values(state=AiAttempt.state)
                )
            q = select(AiAttempt).where(AiAttempt.session_id == session_id)
            attempt = await s.scalar(
                (q.with_for_update() if pg else q).execution_options(populate_existing=True)
            )
            if attempt is None or attempt.state == "done":
                await s.rollback()
                return None
            qc = select(AiContact).where(AiContact.id == attempt.contact_id)
            contact = await s.scalar(
                (qc.with_for_update() if pg else qc).execution_options(populate_existing=True)
            )
            campaign = await s.get(AiCampaign, attempt.campaign_id, populate_existing=True)
            domain = await s.get(Domain, attempt.domain_id)
            assert contact is not None and campaign is not None and domain is not None
            if result.sip_code is None and result.detail in NOT_SENT:
                back = await self._give_back(s, attempt, contact, campaign, domain, result.detail, now)
                await s.commit()
                log.info("autoinformer.dial_refused", session_id=session_id, detail=result.detail)
                return back
            spec = spec_of(campaign)
            outcome, met = outcome_of(result, spec.success)
            ended = result.ended_at or now
            attempt.state = "done"
            attempt.started_at = attempt.started_at or result.started_at
            attempt.answered_at = result.answered_at
            attempt.ended_at = ended
            attempt.sip_code = result.sip_code
            attempt.outcome = outcome
            attempt.criterion_met = met
            attempt.listen_s = result.listen_s
            attempt.played_full = result.played_full
            attempt.digits = result.digits[:64]
            attempt.action = result.action
            attempt.operator_target = result.operator_target
            attempt.operator_answered = result.operator_answered
            attempt.amd_result = result.amd_result
            attempt.detail = (detail or result.detail or None) if outcome == "failed" else (detail or None)
            if outcome in DROPS and attempt.number_index not in contact.dropped:
                contact.dropped = [*contact.dropped, attempt.number_index]
            await s.flush()
            done = (
                await s.execute(
                    select(AiAttempt.attempt_no, AiAttempt.number_index, AiAttempt.outcome)
                    .where(AiAttempt.contact_id == contact.id, AiAttempt.state == "done")
                    .order_by(AiAttempt.attempt_no, AiAttempt.number_index)
                )
            ).all()
            round_outcomes = [o for no, _, o in done if no == attempt.attempt_no and o is not None]
            last_by_index = {i: o for _, i, o in done}
            drop_outcomes = [str(last_by_index.get(i)) for i in contact.dropped]
            plan = Plan.of(spec)
            state = next_state(
                outcome,
                number_index=attempt.number_index,
                attempt_no=attempt.attempt_no,
                phones=len(contact.phones),
                dropped=contact.dropped,
                round_outcomes=round_outcomes,
                drop_outcomes=drop_outcomes,
                retry_on=spec.attempts.retry_on,
                max_rounds=spec.attempts.max,
                interval_min=spec.attempts.interval_min,
                ended_at=ended,
                min_delay=min_delay or dt.timedelta(0),
            )
            new_status, next_at = state.status, state.next_attempt_at
            if next_at is not None:
                platform = self._platform(await platform_settings(s))
                next_at = (
                    next_open(
                        plan,
                        platform.rules,
                        recipient_tz=contact.timezone,
                        domain_tz=domain.timezone,
                        after=next_at,
                    )
                    or next_at
                )
            if campaign.status in ("stopped", "completed") and new_status not in FINAL_CONTACT:
                new_status, next_at = ("cancelled" if campaign.status == "stopped" else "expired"), None
            contact.status = new_status
            contact.next_attempt_at = next_at
            contact.detail = None
            contact.last_outcome = outcome
            contact.last_attempt_at = attempt.started_at or ended
            contact.last_session_id = attempt.session_id
            if result.answered_at is not None:
                contact.best_listen_s = max(contact.best_listen_s or 0.0, result.listen_s)
            if result.digits:
                contact.digits = (contact.digits + result.digits)[:64]
            if new_status == "succeeded":
                contact.succeeded_at = ended
            contact.updated_at = now
            if outcome == "opted_out":
                await stoplist.add_many(
                    s, domain.id, contact.phones, source="opt_out", campaign_id=campaign.id, author=ACTOR
                )
            await s.flush()
            await events.attempt_finished(
                s, domain=domain.name, campaign=campaign, contact=contact, attempt=attempt, at=now
            )
            if new_status in FINAL_CONTACT:
                await events.number_finished(
                    s, domain=domain.name, campaign=campaign, contact=contact, at=now
                )
            await s.commit()
        log.info(
            "autoinformer.attempt_finished", session_id=session_id, outcome=outcome, number_status=new_status
        )
        return new_status

    async def _give_back(
        self,
        s: AsyncSession,
        attempt: AiAttempt,
        contact: AiContact,
        campaign: AiCampaign,
        domain: Domain,
        detail: str,
        now: dt.datetime,
    ) -> str:
        """The engine refused the dial before any INVITE left: the attempt never happened. Its row goes (the
        dispatch key is free again), the contact is due again after a short back-off, as it was before."""
        await s.delete(attempt)
        await s.flush()
        prev = (
            await s.execute(
                select(AiAttempt.attempt_no, AiAttempt.session_id, AiAttempt.started_at)
                .where(AiAttempt.contact_id == contact.id)
                .order_by(AiAttempt.attempt_no.desc(), AiAttempt.number_index.desc())
                .limit(1)
            )
        ).first()
        contact.attempts_made = prev.attempt_no if prev is not None else 0
        contact.last_session_id = prev.session_id if prev is not None else None
        contact.last_attempt_at = prev.started_at if prev is not None else None
        contact.updated_at = now
        if campaign.status in ("stopped", "completed"):
            contact.status = "cancelled" if campaign.status == "stopped" else "expired"
            contact.next_attempt_at = None
            contact.detail = None
            await s.flush()
            await events.number_finished(s, domain=domain.name, campaign=campaign, contact=contact, at=now)
            return contact.status
        contact.status = "waiting_retry" if prev is not None else "pending"
        contact.detail = detail
        contact.next_attempt_at = now + REFUSED_BACKOFF
        return contact.status

    # --- restart (§7.2) ---
    async def reconcile(self) -> int:
        """Close the attempts a previous run left without a result; returns how many."""
        now = self.clock.now()
        async with self.sessions() as s:
            rows = (
                await s.execute(
                    select(AiAttempt.session_id, AiAttempt.started_at, AiCampaign.settings)
                    .join(AiCampaign, AiCampaign.id == AiAttempt.campaign_id)
                    .where(
                        AiAttempt.state.in_(("dialing", "in_call")),
                        lease_free(AiCampaign.lease_owner, AiCampaign.lease_until, self.node_id, now),
                    )
                )
            ).all()
        closed = 0
        for session_id, started_at, settings in rows:
            if session_id in self._inflight:
                continue
            interval = dt.timedelta(minutes=int((settings.get("attempts") or {}).get("interval_min", 30)))
            async with self.sessions() as s:
                record = await s.scalar(select(CallRecord).where(CallRecord.session_id == session_id))
            if record is not None and record.ended_at is not None:
                answered = record.answered_at is not None
                result = BroadcastResult(
                    sip_code=200 if answered else record.status_code,
                    started_at=record.started_at,
                    answered_at=record.answered_at,
                    ended_at=record.ended_at,
                )
                detail = None
            else:
                result = BroadcastResult(sip_code=None, started_at=started_at or now, ended_at=now)
                detail = "dispatcher_restart"
            if await self.finish(session_id, result, min_delay=interval, detail=detail) is not None:
                closed += 1
                log.warning("autoinformer.attempt_reconciled", session_id=session_id, detail=detail)
        return closed


async def _menu_id(s: AsyncSession, domain_id: uuid.UUID, name: str) -> str | None:
    """The id of the domain's voice menu a campaign names by its name or its ``id.hex`` (the engine wants
    the id), or None."""
    cond = VoiceMenu.name == name
    try:
        cond = cond | (VoiceMenu.id == uuid.UUID(name))
    except ValueError:
        pass
    found = await s.scalar(
        select(VoiceMenu.id).where(VoiceMenu.domain_id == domain_id, cond).order_by(VoiceMenu.id).limit(1)
    )
    return str(found) if found is not None else None


def _amd(spec: CampaignSpec) -> AmdSettings | None:
    a = spec.amd
    if not a.enabled:
        return None
    return AmdSettings(
        analysis_s=a.analysis_s,
        initial_silence_s=a.initial_silence_s,
        greeting_s=a.greeting_s,
        after_greeting_silence_s=a.after_greeting_silence_s,
        on_machine=a.on_machine,
    )
