"""The call history export (integration-api.md §4.5, §4.6, §5.4): order validation, the CSV, the builder.

An order (``ApiHistoryOrder``) is written ``pending`` by ``domain_call_history``. ``HistoryExporter``, a task
of ``vpbx serve``, builds pending orders one at a time, oldest first, into
``<data_dir>/api-exports/<domain_id>/<order_id>.zip`` (one entry ``<order_id>.csv``). The transaction that
marks the order ``ready`` (or ``failed``) also puts its one ``history_file_completed`` in the outbox; the
update is conditional on the order still being pending, so an order never gets two. Pending orders are
durable rows, so a restart picks them up again. Finished orders and their files are swept after 7 days.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from vpbx.background import BackgroundLoop
from vpbx.clock import Clock
from vpbx.integration_api.core import EXPORT_FAILED, OK_MESSAGE, bad_field, enqueue, parse_period
from vpbx.logs import get_logger
from vpbx.store.models import ApiHistoryOrder, CallRecord

log = get_logger("vpbx.integration_api.exports")

EXPORT_DIR = "api-exports"  # under data_dir
KEEP = dt.timedelta(days=7)  # §4.5: finished files are kept 7 days
MAX_PENDING = 3  # orders pending per domain (§2.6)
PENDING_RETRY_AFTER_S = 60
POLL_S = 30.0  # the builder also looks for orders this often (another node may have taken one)
SWEEP_INTERVAL_S = 3600.0
FETCH_BATCH = 1000  # call records read per round trip while building

# §4.6 (wire): the columns, in this order
CSV_HEADER = (
    "session_id;call_type;direction;state;orig_number;orig_pin;dest_number;answering_sipuri;answering_pin;"
    "start_call_date;duration;is_voicemail;is_record;is_fax;status_code;status_string"
)
DIRECTIONS = {"incoming": 1, "outbound": 2, "internal": 3}


# --- the order (§4.5) --------------------------------------------------------------------------------------


def _small_int(body: Mapping[str, Any], name: str, allowed: range) -> int:
    value = body.get(name, 0)
    if value is None:
        return 0
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 3:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise bad_field(name)
    return value


def parse_order(body: Mapping[str, Any]) -> dict[str, Any]:
    """A ``domain_call_history`` body as the order's stored parameters; R11 (``ApiError``) when invalid."""
    start_at, end_at = parse_period(body)
    start, end = int(start_at.timestamp()), int(end_at.timestamp())
    direction = _small_int(body, "direction", range(4))
    state = _small_int(body, "state", range(3))
    phone = body.get("phone_number")
    if phone is not None and phone != "":
        if isinstance(phone, int) and not isinstance(phone, bool):
            phone = str(phone)
        if not isinstance(phone, str):
            raise bad_field("phone_number")
        phone = phone.strip().removeprefix("+")
        if not (phone.isascii() and phone.isdigit() and len(phone) <= 20):
            raise bad_field("phone_number")
    else:
        phone = None
    return {"start": start, "end": end, "direction": direction, "state": state, "phone_number": phone}


# --- the CSV (§4.6) ----------------------------------------------------------------------------------------


def call_columns(r: CallRecord) -> list[str | int | bool | None]:
    """A finished call's values as ``call_info`` gives them (§4.4), in the CSV's column order."""
    return [
        r.session_id,
        3 if r.call_kind == "callback" else 1,
        DIRECTIONS[r.call_type],
        1 if r.answered_at is not None else 2,
        r.caller_number,
        r.caller_pin,
        r.callee_number,
        r.answering_uri,
        r.answering_pin,
        str(int(r.started_at.timestamp())),
        r.duration_s,
        r.is_voicemail,
        r.is_record,
        False,  # is_fax: the PBX receives no faxes
        "0" if r.status_code is None else str(r.status_code),
        r.status_text,
    ]


def csv_field(value: str | int | bool | None) -> str:
    """One value: ``true``/``false``, null as empty, RFC 4180 quotes around ``;``, ``"`` or line breaks."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if any(c in text for c in ';"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def csv_line(values: Sequence[str | int | bool | None]) -> str:
    return ";".join(csv_field(v) for v in values) + "\r\n"


def external_digits(r: CallRecord) -> str | None:
    """The outside party's number as digits: the caller of an incoming call, the callee of an outgoing one."""
    if r.call_type == "incoming":
        number = r.caller_number
    elif r.call_type == "outbound":
        number = r.callee_number
    else:
        return None
    user = number.removeprefix("sip:").split("@", 1)[0]
    return "".join(c for c in user if c.isdigit())


def matches(r: CallRecord, params: Mapping[str, Any]) -> bool:
    """The filters SQL does not apply: state and the external number."""
    state = params.get("state") or 0
    if state == 1 and r.answered_at is None:
        return False
    if state == 2 and r.answered_at is not None:
        return False
    phone = params.get("phone_number")
    return not phone or external_digits(r) == phone


# --- files -------------------------------------------------------------------------------------------------


def export_path(data_dir: Path, domain_id: uuid.UUID, order_id: str) -> Path:
    return data_dir / EXPORT_DIR / str(domain_id) / f"{order_id}.zip"


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8", newline="") as f:
        f.write(text)


def _zip(csv: Path, target: Path, entry: str) -> None:
    part = target.with_name(target.name + ".part")
    with zipfile.ZipFile(part, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.write(csv, arcname=entry)
    part.replace(target)
    csv.unlink(missing_ok=True)


def _discard(target: Path, order_id: str) -> None:
    """What a failed build left behind, if anything could be written at all."""
    for p in (target, target.with_name(target.name + ".part"), target.with_name(f"{order_id}.csv.part")):
        with contextlib.suppress(OSError):
            p.unlink(missing_ok=True)


def read_csv(path: Path, order_id: str) -> bytes:
    """The CSV inside a finished export."""
    with zipfile.ZipFile(path) as zf:
        return zf.read(f"{order_id}.csv")


# --- the builder -------------------------------------------------------------------------------------------


class HistoryExporter(BackgroundLoop):
    """Builds pending orders in the background and sweeps expired ones; ``wake`` after a new order."""

    name = "api-history-exports"
    failure_event = "api_export.round_failed"

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        data_dir: Path,
        clock: Clock,
        poll_s: float = POLL_S,
        sweep_interval_s: float = SWEEP_INTERVAL_S,
    ) -> None:
        self.sessions = sessions
        self.data_dir = data_dir
        self.clock = clock
        self.interval_s = poll_s
        self.sweep_interval_s = sweep_interval_s
        self._next_sweep = 0.0  # monotonic

    async def run_once(self) -> float | None:
        await self.build_pending()
        if self.clock.monotonic() >= self._next_sweep:
            await self.sweep()
            self._next_sweep = self.clock.monotonic() + self.sweep_interval_s
        return None

    async def build_pending(self) -> int:
        """Build every pending order, oldest first; how many were finished."""
        done = 0
        async with self.sessions() as s:
            pending = (
                await s.execute(
                    select(ApiHistoryOrder.id, ApiHistoryOrder.domain_id)
                    .where(ApiHistoryOrder.status == "pending")
                    .order_by(ApiHistoryOrder.created_at, ApiHistoryOrder.id)
                )
            ).all()
        for order_id, domain_id in pending:
            if await self.build(order_id, domain_id):
                done += 1
        return done

    async def build(self, order_id: str, domain_id: uuid.UUID) -> bool:
        """Build one order, then mark it ready (or failed) with its notification; False if not pending."""
        target = export_path(self.data_dir, domain_id, order_id)
        try:
            async with self.sessions() as s:
                order = await s.get(ApiHistoryOrder, order_id)
                if order is None or order.status != "pending":
                    return False
                params = dict(order.params)
            await self._write(domain_id, order_id, params, target)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("api_export.failed", order_id=order_id, domain_id=str(domain_id))
            await asyncio.to_thread(_discard, target, order_id)
            return await self._finish(order_id, domain_id, ok=False, path="")
        return await self._finish(order_id, domain_id, ok=True, path=str(target))

    async def _write(self, domain_id: uuid.UUID, order_id: str, params: dict[str, Any], target: Path) -> None:
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        csv = target.with_name(f"{order_id}.csv.part")
        await asyncio.to_thread(csv.write_text, CSV_HEADER + "\r\n", encoding="utf-8", newline="")
        start = dt.datetime.fromtimestamp(int(params["start"]), dt.UTC)
        end = dt.datetime.fromtimestamp(int(params["end"]), dt.UTC)
        stmt = select(CallRecord).where(
            CallRecord.domain_id == domain_id,
            CallRecord.started_at >= start,
            CallRecord.started_at < end,
            CallRecord.ended_at.is_not(None),  # finished calls only, as call_info gives them
        )
        direction = int(params.get("direction") or 0)
        if direction:
            kind = next(k for k, v in DIRECTIONS.items() if v == direction)
            stmt = stmt.where(CallRecord.call_type == kind)
        stmt = stmt.order_by(CallRecord.started_at, CallRecord.session_id).execution_options(
            yield_per=FETCH_BATCH
        )
        rows = 0
        async with self.sessions() as s:
            result = await s.stream_scalars(stmt)
            async for batch in result.partitions(FETCH_BATCH):
                text = "".join(csv_line(call_columns(r)) for r in batch if matches(r, params))
                if text:
                    await asyncio.to_thread(_append, csv, text)
                rows += len(batch)
        await asyncio.to_thread(_zip, csv, target, f"{order_id}.csv")
        log.info("api_export.built", order_id=order_id, domain_id=str(domain_id), scanned=rows)

    async def _finish(self, order_id: str, domain_id: uuid.UUID, *, ok: bool, path: str) -> bool:
        now = self.clock.now()
        async with self.sessions() as s, s.begin():
            changed = await s.execute(
                update(ApiHistoryOrder)
                .where(ApiHistoryOrder.id == order_id, ApiHistoryOrder.status == "pending")
                .values(status="ready" if ok else "failed", path=path, ready_at=now, expires_at=now + KEEP)
            )
            if changed.rowcount != 1:  # type: ignore[attr-defined]
                return False
            result, message = ("0", OK_MESSAGE) if ok else (EXPORT_FAILED.result, EXPORT_FAILED.message)
            payload = {"order_id": order_id, "result": result, "resultMessage": message}
            enqueue(s, domain_id, "history_file_completed", payload)
        return True

    async def sweep(self) -> int:
        """Delete orders (and files) past their 7 days; how many went."""
        now = self.clock.now()
        async with self.sessions() as s:
            expired = (
                await s.execute(
                    select(ApiHistoryOrder.id, ApiHistoryOrder.path).where(ApiHistoryOrder.expires_at <= now)
                )
            ).all()
        for order_id, path in expired:
            if path:
                await asyncio.to_thread(Path(path).unlink, missing_ok=True)
            async with self.sessions() as s, s.begin():
                await s.execute(delete(ApiHistoryOrder).where(ApiHistoryOrder.id == order_id))
        return len(expired)
