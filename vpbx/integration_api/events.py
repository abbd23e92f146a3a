"""``call_events`` (integration-api.md §5.2): the pump that turns the call history's events outbox
(``CallEventRow``, written with the call's state by vpbx/pbx/history.py) into ``ApiDelivery`` rows.

Durable without a cursor table: an event is pending for the API while no delivery ``(call_events, session_id,
seq)`` exists (the outbox's unique key), so a restart re-reads what it had not turned yet and never makes one
twice. Only domains with the service on, «Отправлять уведомления о вызовах» on, the event's type and state
toggled on and the event not older than the settings' ``events_since`` (enabling the service does not send old
calls) get a delivery; the others' events are passed over.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping
from typing import Any, cast

from sqlalchemy import Table, and_, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.background import BackgroundLoop
from vpbx.billing import INTEGRATION_API
from vpbx.billing.service import service
from vpbx.integration_api.core import dumps, moscow
from vpbx.logs import get_logger
from vpbx.store.models import ApiDelivery, ApiSettings, CallEventRow, CallRecord, DomainService

log = get_logger("vpbx.integration_api.events")

METHOD = "call_events"
STATES = ("new", "calling", "connected", "disconnected", "end")
TYPES = ("incoming", "outbound", "internal")
RETENTION = dt.timedelta(days=7)  # older events are past the outbox's retention: never turned
SLACK = dt.timedelta(seconds=60)  # events commit in groups, not strictly in ``at`` order


def body(payload: Mapping[str, Any], at: dt.datetime | None = None) -> dict[str, str]:
    """The wire body of one event (§5.2): the example's key order, Moscow time, keys that do not apply
    left out, ``is_record`` as a string, nothing else (no ``seq``, no URIs, no extras)."""
    stamp = payload.get("timestamp")
    when = dt.datetime.fromisoformat(stamp) if isinstance(stamp, str) else at
    if when is None:
        raise ValueError("an event without a time")
    out: dict[str, str] = {
        "state": str(payload["state"]).strip(),
        "type": str(payload["type"]),
        "session_id": str(payload["session_id"]),
        "timestamp": moscow(when),
        "from_number": str(payload.get("from_number", "")),
    }
    if payload.get("from_pin"):
        out["from_pin"] = str(payload["from_pin"])
    out["request_number"] = str(payload.get("request_number", ""))
    if payload.get("request_pin"):
        out["request_pin"] = str(payload["request_pin"])
    if out["state"] == "disconnected" and payload.get("disconnect_reason") is not None:
        out["disconnect_reason"] = str(payload["disconnect_reason"])
    if out["state"] == "end" and payload.get("is_record") is not None:
        record = payload["is_record"]
        out["is_record"] = record if isinstance(record, str) else "true" if record else "false"
    out["domain"] = str(payload.get("domain", ""))
    return out


def wanted(settings: ApiSettings, state: str, call_type: str, call_kind: str | None) -> bool:
    """The domain's toggles (§5.2): all notifications, the type, the state, autoinformer calls."""
    if not settings.send_events:
        return False
    if call_type not in (settings.event_types or []) or state not in (settings.event_states or []):
        return False
    return not (call_kind == "autoinformer" and not settings.send_autoinformer_events)


_INSERT_DELIVERY = insert(cast(Table, ApiDelivery.__table__))
_COUNTED = service(INTEGRATION_API).counted


async def _enabled_settings(s: AsyncSession, domains: set[uuid.UUID]) -> dict[uuid.UUID, ApiSettings]:
    """The settings of those of ``domains`` with the service on (as ``billing.is_enabled`` reads it), in one
    query."""
    if not domains:
        return {}
    rows = await s.execute(
        select(ApiSettings, DomainService.enabled, DomainService.counter)
        .join(
            DomainService,
            and_(DomainService.domain_id == ApiSettings.domain_id, DomainService.code == INTEGRATION_API),
        )
        .where(ApiSettings.domain_id.in_(domains))
    )
    return {
        settings.domain_id: settings
        for settings, enabled, counter in rows
        if (counter > 0 if _COUNTED else enabled)
    }


class EventPump(BackgroundLoop):
    """Call events into ``call_events`` deliveries: one pass with ``pump_once``, forever with ``run`` (a
    ``BackgroundLoop``: the database away is logged and backed off); ``on_made`` is called after a pass that
    made deliveries, and the next pass follows at once."""

    name = "api-event-pump"
    failure_event = "api.event_pump_failed"

    def __init__(
        self,
        core: Any,
        *,
        batch: int = 500,
        interval_s: float = 0.5,
        clock: Any = None,
        on_made: Callable[[], None] | None = None,
    ) -> None:
        self.core = core
        self.on_made = on_made
        self.clock = clock or core.clock
        self.batch = batch
        self.interval_s = interval_s
        self._cursor: dt.datetime | None = (
            None  # events older than this minus SLACK were seen in this process
        )
        self._passed: dict[tuple[str, int], dt.datetime] = {}  # events passed over, within the slack window

    def _since(self, now: dt.datetime) -> dt.datetime:
        floor = now - RETENTION
        return floor if self._cursor is None else max(floor, self._cursor - SLACK)

    async def pump_once(self) -> int:
        """One pass: up to ``batch`` events turned or passed over; the number of deliveries made."""
        now: dt.datetime = self.clock.now()
        since = self._since(now)
        made = 0
        async with self.core.sessions() as s:
            query = (
                select(CallEventRow, CallRecord.call_kind)
                .join(ApiSettings, ApiSettings.domain_id == CallEventRow.domain_id)
                .outerjoin(CallRecord, CallRecord.session_id == CallEventRow.session_id)
                .outerjoin(
                    ApiDelivery,
                    and_(
                        ApiDelivery.method == METHOD,
                        ApiDelivery.session_id == CallEventRow.session_id,
                        ApiDelivery.seq == CallEventRow.seq,
                    ),
                )
                .where(
                    ApiDelivery.id.is_(None),
                    CallEventRow.at >= since,
                    (ApiSettings.events_since.is_(None)) | (CallEventRow.at >= ApiSettings.events_since),
                )
                .order_by(CallEventRow.at, CallEventRow.session_id, CallEventRow.seq)
                .limit(self.batch + len(self._passed))
            )
            rows = (await s.execute(query)).all()
            settings = await _enabled_settings(s, {event.domain_id for event, _ in rows})
            made_rows: list[dict[str, Any]] = []
            latest = self._cursor
            for event, call_kind in rows:
                key = (event.session_id, event.seq)
                if key in self._passed:
                    continue
                cfg = settings.get(event.domain_id)
                payload = event.payload or {}
                if cfg is None or not wanted(cfg, event.state, str(payload.get("type", "")), call_kind):
                    self._passed[key] = event.at
                else:
                    try:
                        wire = body(payload, event.at)
                    except (KeyError, ValueError, TypeError):
                        log.warning("api.event_unreadable", session_id=event.session_id, seq=event.seq)
                        self._passed[key] = event.at
                    else:  # enqueue()'s row (core.py), many in one statement
                        made_rows.append(
                            {
                                "id": uuid.uuid4(),
                                "domain_id": event.domain_id,
                                "method": METHOD,
                                "session_id": event.session_id,
                                "seq": event.seq,
                                "body": dumps(wire).decode(),
                                "test": False,
                                "created_at": event.at,
                                "next_at": now,
                            }
                        )
                latest = event.at if latest is None else max(latest, event.at)
            try:
                if made_rows:
                    await s.execute(_INSERT_DELIVERY, made_rows)
                    made = len(made_rows)
                await s.commit()
            except IntegrityError:  # another writer made one of them: the next pass sees it
                await s.rollback()
                return 0
        if latest is not None and len(rows) < self.batch:
            self._cursor = latest
        horizon = self._since(now)
        self._passed = {k: at for k, at in self._passed.items() if at >= horizon}
        return made

    async def run_once(self) -> float | None:
        made = await self.pump_once()
        if not made:
            return None
        if self.on_made is not None:
            self.on_made()
        return 0.0  # there may be more: the next pass now
