"""Call events → the per-call context ``AmoCall`` and the ``amo.finish`` job (amocrm.md §5.1–5.4).

The consumer reads the call history's events outbox (``CallEventRow``, committed with the call's record by
vpbx/pbx/history.py) for the domains with an active binding, like the Integration API's pump
(vpbx/integration_api/events.py) and durable the same way without a cursor table: a call's events are
pending while its context is not finished (``AmoCall.ended_at`` unset, not ``ignored``), and an event is
applied once (``AmoCall.processed_seqs``), so a restart re-reads what it had not finished and never applies
an event twice. ``end`` classifies the call from its committed ``CallRecord`` and inserts the job
``amo.finish`` keyed by the session id with insert-or-ignore, so a duplicate ``end`` makes no second job.

The routing hook (vpbx/amocrm/routing.py) may have inserted the context at routing time (lookup, contact,
route); this module inserts-or-ignores the row, then writes only its own columns.

Ignored (§5.1, §5.4): internal calls, hidden numbers, autoinformer calls, outgoing calls from unmapped
extensions; their context is marked ``ignored`` so their later events are passed over in SQL.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, and_, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from vpbx.amocrm.ai_results import KIND as AI_RESULT
from vpbx.amocrm.ai_results import AiResultHandler
from vpbx.amocrm.finish import FinishHandler, FinishSettings, classify
from vpbx.amocrm.jobs import HOURLY_S, RETRY_SCHEDULE_S, JobRunner, enqueue
from vpbx.amocrm.lease import AccountLeases
from vpbx.amocrm.widget_auth import public_origin
from vpbx.background import BackgroundLoop
from vpbx.crm.phone import normalised_digits
from vpbx.logs import get_logger
from vpbx.store.models import (
    AmoCall,
    AmoScenario,
    AmoScenarioLine,
    CallEventRow,
    CallRecord,
    CrmBinding,
    CrmUserMap,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from vpbx.amocrm.api import AmoClients
    from vpbx.amocrm.client import AmoClientPool
    from vpbx.app import Core
    from vpbx.pbx.bus import CallEvent, EventBus

log = get_logger("vpbx.amocrm.calls")

FINISH = "amo.finish"
RETENTION = dt.timedelta(days=2)  # older events are not turned (their jobs would be past 24 h anyway)
SLACK = dt.timedelta(seconds=60)  # events commit in groups, not strictly in ``at`` order
BATCH = 500
INTERVAL_S = 1.0
MAX_BACKOFF_S = 5.0
# once a minute a pass over the last hour: events committed late (a replayed spool) are not lost; the first
# pass of a process goes over the whole retention (what a stopped process had not finished)
FULL_PASS_S = 60.0
LATE_WINDOW = dt.timedelta(hours=1)
IGNORED = "ignored"
_CALLS = cast(Table, AmoCall.__table__)


def user_part(number: str) -> str:
    """``sip:79031112233@domain`` / ``user101@domain`` → the part before ``@``."""
    return number.removeprefix("sip:").split("@", 1)[0]


def client_digits(number: str) -> str | None:
    """An outside party's E.164 digits, or None (internal, hidden, anonymous, malformed)."""
    user = user_part(number).lstrip("+")
    if not user.isdigit() or len(user) <= 6:
        return None
    return normalised_digits(user)


@dataclass(slots=True, kw_only=True)
class Directory:
    """What the consumer reads about one binding in one pass: mapping and scenarios by line."""

    pins: set[str]
    line_scenario: dict[str, int]  # line digits → the active scenario holding it
    first_scenario: int | None  # the first active scenario by position


async def _directory(s: AsyncSession, binding_id: uuid.UUID) -> Directory:
    pins = set(await s.scalars(select(CrmUserMap.extension).where(CrmUserMap.binding_id == binding_id)))
    rows = (
        await s.execute(
            select(AmoScenario.id, AmoScenario.position, AmoScenarioLine.line)
            .outerjoin(AmoScenarioLine, AmoScenarioLine.scenario_id == AmoScenario.id)
            .where(AmoScenario.binding_id == binding_id, AmoScenario.is_active.is_(True))
            .order_by(AmoScenario.position, AmoScenario.id)
        )
    ).all()
    lines: dict[str, int] = {}
    for sid, _pos, line in rows:
        if line:
            lines.setdefault(line.lstrip("+"), sid)
    return Directory(pins=pins, line_scenario=lines, first_scenario=rows[0][0] if rows else None)


def apply_event(
    call: AmoCall, state: str, payload: Mapping[str, Any], record: CallRecord | None, d: Directory
) -> bool:
    """Fold one event into the context (§5.3); True when it was the call's ``end``."""
    call_type = str(payload.get("type", ""))
    if state == "new" or not call.direction:
        _open(call, call_type, payload, record, d)
    if call.classification == IGNORED:
        return False
    from_pin = str(payload.get("from_pin") or "") or None
    request_pin = str(payload.get("request_pin") or "") or None
    if state == "calling" and request_pin:
        call.rung_pins = [*(call.rung_pins or []), request_pin]
    elif state == "connected":
        pin = request_pin if call.direction == "incoming" else (from_pin or request_pin)
        answered = list(call.answered_pins or [])
        if pin and (not answered or answered[-1] != pin):  # a pin different from the last: a transfer
            call.answered_pins = [*answered, pin]
    elif state == "end":
        return True
    return False


def _open(
    call: AmoCall, call_type: str, payload: Mapping[str, Any], record: CallRecord | None, d: Directory
) -> None:
    """``new`` (or the first event seen): direction, client, line, manager, scenario (F8)."""
    kind = record.call_kind if record is not None else "normal"
    call.call_kind = kind
    if call_type == "incoming":
        client = client_digits(str(payload.get("from_number", "")))
        line = (record.line if record is not None else None) or user_part(
            str(payload.get("request_number", ""))
        )
        call.direction = "incoming"
        call.line = (line or "").lstrip("+")[:16]
        call.scenario_id = d.line_scenario.get(call.line)
    elif call_type == "outbound":
        client = client_digits(str(payload.get("request_number", "")))
        call.direction = "outgoing"
        call.manager_pin = str(payload.get("from_pin") or "") or None
        call.line = ((record.line if record is not None else None) or "").lstrip("+")[:16]
        call.scenario_id = d.line_scenario.get(call.line, d.first_scenario)
    else:
        client = None
        call.direction = call_type or "internal"
    call.client_e164 = client or ""
    if (
        call_type not in ("incoming", "outbound")
        or client is None
        or kind == "autoinformer"
        or (call_type == "outbound" and call.manager_pin not in d.pins)
    ):
        call.classification = IGNORED


class CallConsumer(BackgroundLoop):
    """Call events into contexts and ``amo.finish`` jobs: one pass with ``consume_once``, forever with
    ``start`` (a ``BackgroundLoop``); ``wake`` after a commit of events (the bus), polls every
    ``interval_s`` as a net. With ``leases`` (several processes on PostgreSQL) only the events of the
    accounts this process holds."""

    name = "amo-calls"
    failure_event = "amo.calls_pass_failed"  # the database away: logged and backed off
    max_backoff_s = MAX_BACKOFF_S

    def __init__(
        self,
        core: Core,
        *,
        on_enqueued: Callable[[], None] | None = None,
        batch: int = BATCH,
        interval_s: float = INTERVAL_S,
        leases: AccountLeases | None = None,
    ) -> None:
        self.core = core
        self.on_enqueued = on_enqueued
        self.leases = leases  # several processes: only the accounts this one holds (lease.py)
        self._owned: frozenset[int] = frozenset()
        self.batch = batch
        self.interval_s = interval_s
        self._cursor: dt.datetime | None = None
        self._full_at = 0.0  # monotonic time of the last pass over the late window
        self._seen: dict[tuple[uuid.UUID, str, int], dt.datetime] = {}

    def _since(self, now: dt.datetime) -> dt.datetime:
        floor = now - RETENTION
        return floor if self._cursor is None else max(floor, self._cursor - SLACK)

    async def consume_once(self) -> int:
        """One pass; the number of ``amo.finish`` jobs enqueued."""
        now = self.core.clock.now()
        owned: frozenset[int] | None = None
        if self.leases is not None:
            owned = frozenset(self.leases.owned())
            if owned - self._owned:  # an account taken over: look back over its events once
                self._cursor = None
            self._owned = owned
            if not owned:
                return 0
        since = self._since(now)
        mono = self.core.clock.monotonic()
        if self._cursor is not None and mono - self._full_at >= FULL_PASS_S:
            since, self._full_at = min(since, now - LATE_WINDOW), mono
        async with self.core.sessions() as s, s.begin():
            query = (
                select(CallEventRow, CrmBinding.id)
                .join(
                    CrmBinding,
                    and_(
                        CrmBinding.domain_id == CallEventRow.domain_id,
                        CrmBinding.status == "active",
                        CrmBinding.crm_kind == "amocrm",
                    ),
                )
                .outerjoin(
                    AmoCall,
                    and_(AmoCall.binding_id == CrmBinding.id, AmoCall.session_id == CallEventRow.session_id),
                )
                .where(
                    CallEventRow.at >= since,
                    CallEventRow.at >= CrmBinding.connected_at,
                    or_(
                        AmoCall.session_id.is_(None),
                        and_(AmoCall.ended_at.is_(None), AmoCall.classification != IGNORED),
                    ),
                )
                .order_by(CallEventRow.at, CallEventRow.session_id, CallEventRow.seq)
                .limit(self.batch + len(self._seen))
            )
            if owned is not None:
                query = query.where(CrmBinding.external_account_id.in_(sorted(owned)))
            rows = [
                (event, binding_id)
                for event, binding_id in (await s.execute(query)).all()
                if (binding_id, event.session_id, event.seq) not in self._seen
            ]
            if not rows:
                return 0
            by_call: dict[tuple[uuid.UUID, str], list[CallEventRow]] = {}
            for event, binding_id in rows:
                by_call.setdefault((binding_id, event.session_id), []).append(event)
            made = await self._apply(s, by_call, now)
        latest = max(event.at for event, _ in rows)
        for event, binding_id in rows:
            self._seen[(binding_id, event.session_id, event.seq)] = event.at
        if len(rows) < self.batch:
            self._cursor = latest if self._cursor is None else max(self._cursor, latest)
        horizon = self._since(now)
        self._seen = {k: at for k, at in self._seen.items() if at >= horizon}
        if made and self.on_enqueued is not None:
            self.on_enqueued()
        return made

    async def _apply(
        self, s: AsyncSession, by_call: dict[tuple[uuid.UUID, str], list[CallEventRow]], now: dt.datetime
    ) -> int:
        insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
        await s.execute(
            insert(_CALLS)
            .values(
                [
                    {
                        "binding_id": b,
                        "session_id": sid,
                        "created_at": now,
                        "direction": "",
                        "call_kind": "normal",
                        "client_e164": "",
                        "line": "",
                        "lookup": "unknown",
                        "contact_name": "",
                        "rung_pins": [],
                        "answered_pins": [],
                        "route": {},
                        "processed_seqs": [],
                        "steps": {},
                        "classification": "",
                    }
                    for b, sid in by_call
                ]
            )
            .on_conflict_do_nothing()
        )
        sessions = {sid for _, sid in by_call}
        records = {
            r.session_id: r
            for r in await s.scalars(select(CallRecord).where(CallRecord.session_id.in_(sessions)))
        }
        directories: dict[uuid.UUID, Directory] = {}
        made = 0
        for (binding_id, sid), events in by_call.items():
            call = await s.get(AmoCall, (binding_id, sid))
            if call is None or call.ended_at is not None:
                continue
            if binding_id not in directories:
                directories[binding_id] = await _directory(s, binding_id)
            d = directories[binding_id]
            record = records.get(sid)
            done = set(call.processed_seqs or [])
            ended = False
            for event in sorted(events, key=lambda e: e.seq):
                if event.seq in done:
                    continue  # a duplicate delivery
                done.add(event.seq)
                if record is not None and record.domain_id != event.domain_id:
                    continue
                ended = apply_event(call, event.state, event.payload or {}, record, d) or ended
                if call.classification == IGNORED:
                    break
            call.processed_seqs = sorted(done)
            if ended and call.classification != IGNORED:
                call.ended_at = (record.ended_at if record is not None else None) or events[-1].at
                call.classification = classify(
                    record.call_type if record is not None else "incoming",
                    answered_pins=call.answered_pins or [],
                    client_answered=record is not None and record.answered_at is not None,
                )
                await enqueue(s, binding_id=binding_id, kind=FINISH, key=sid, run_after=now)
                made += 1
        return made

    # --- the loop ----------------------------------------------------------------------------------------

    async def run_once(self) -> float | None:
        made = await self.consume_once()
        return 0 if made else None  # a full batch: the next pass at once


class CallJobs:
    """The runtime part (vpbx/amocrm/wiring.py ``AmoRuntime``): the consumer, woken by every call event on
    the bus (published after its commit), and the job runner with ``amo.finish``, woken by the consumer.

    The amoCRM clients are the runtime's shared pool when it has one (one limiter per account for all
    traffic, §2.5), else a pool of this part's own."""

    def __init__(self, core: Core, *, bus: EventBus | None, clients: AmoClients | None = None) -> None:
        self.core = core
        self.bus = bus
        self._own_clients: AmoClientPool | None = None
        if clients is None:
            from vpbx.amocrm.client import AmoClientPool

            clients = self._own_clients = AmoClientPool(core)
        settings = FinishSettings(
            source_name=core.settings.amocrm.source_name, origin=public_origin(core.settings)
        )
        handlers = {FINISH: FinishHandler(settings), AI_RESULT: AiResultHandler(settings)}
        amo = core.settings.amocrm
        self.runner = JobRunner(
            core,
            clients,
            handlers,  # type: ignore[arg-type]
            lease_s=amo.job_lease_s,
            schedule=[s * amo.job_retry_scale for s in RETRY_SCHEDULE_S],
            hourly_s=HOURLY_S * amo.job_retry_scale,
        )
        leases = getattr(clients, "leases", None)  # the runtime's pool on PostgreSQL (wiring.py)
        self.consumer = CallConsumer(
            core, on_enqueued=self.runner.wake, leases=leases if isinstance(leases, AccountLeases) else None
        )
        from vpbx.amocrm.relink import RELINK, RelinkHandler

        self.runner.handlers[RELINK] = RelinkHandler()  # reissued recording links (the cabinet)

    @classmethod
    def for_runtime(cls, runtime: Any) -> CallJobs:
        bus = getattr(runtime.app.state, "bus", None) if runtime.app is not None else None
        return cls(runtime.core, bus=bus, clients=getattr(runtime, "clients", None))

    async def _on_event(self, _event: CallEvent) -> None:
        self.consumer.wake()

    async def start(self) -> None:
        if self.bus is not None:
            self.bus.subscribe("amocrm-calls", self._on_event)
        await self.runner.start()
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.runner.stop()
        if self._own_clients is not None:
            await self._own_clients.aclose()
