"""The durable call history (telephony.md §3.7 "CDR", §9.3 rule 5; integration-api.md §4.4, §5.2).

Every call event goes through a ``CallJournal`` before it reaches the bus: ``SqlCallJournal`` writes the
event into the outbox (``CallEventRow``) and folds it into the call's ``CallRecord`` in one transaction, so
``end`` is on the bus only once the closed record is committed. Appends from concurrent calls are grouped:
one writer task commits whatever is queued (up to ``max_batch`` events) in one transaction, and each caller
waits for its own batch.

The engine never waits on a dead database for long: a batch whose commit fails or takes longer than
``commit_timeout_s`` is appended to an fsync'd JSON-lines spool file, and so is every later batch while the
spool is not empty (events of one call stay in order). The writer replays the spool every ``retry_s`` and at
start-up, then deletes it. Applying an event twice changes nothing (``CallRecord.last_seq``), so a batch that
committed just as its timeout fired, then replayed, is harmless.

At start-up, before the node takes calls, ``reconcile`` closes the records this node left open when it
died: ended at its last event, ``end_reason`` ``recovered``, with the missing ``disconnected`` (if the call
was connected) and ``end`` written to the outbox and published.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import json
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast, get_args

from prometheus_client import Counter
from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from vpbx.logs import get_logger
from vpbx.pbx.bus import CallEvent, CallKind, CallState, CallType, EventBus, SessionId
from vpbx.pbx.calls import REASON_NORMAL, event_json
from vpbx.store.models import CallEventRow, CallRecord

log = get_logger("vpbx.pbx.history")

MAX_BATCH = 256  # events per transaction
COMMIT_TIMEOUT_S = 5.0  # a commit slower than this sends its batch to the spool
SPOOL_WRITE_TIMEOUT_S = 5.0
RETRY_S = 1.0  # replay attempts of the spool while the database is down
MAX_LIVE_RECORDS = 200_000  # records of live calls kept by the journal (so a batch reads none)
MAX_PENDING = 100_000  # events queued for the writer; beyond that they are dropped (and counted)
SPOOL_FILE = "call-history.spool.jsonl"
RECONCILE_CHUNK = 500  # open records closed per transaction at start-up
END_RECOVERED = "recovered"
END_NORMAL = "normal"

# session_log codes (integration-api.md §4.4): ct ringing, cc connected, cd disconnected (wire);
# tr transfer, pu pick-up, vm voicemail (ours)
LOG_CALLING, LOG_CONNECTED, LOG_DISCONNECTED = "ct", "cc", "cd"
LOG_TRANSFER, LOG_PICKUP, LOG_VOICEMAIL = "tr", "pu", "vm"

HISTORY_BATCHES = Counter("vpbx_history_batches_total", "Call history transactions committed")
HISTORY_EVENTS = Counter("vpbx_history_events_total", "Call events by where they went", ["outcome"])


class CallJournal(Protocol):
    """Where every call event is made durable before it is published (telephony.md §3.7)."""

    async def append(self, event: CallEvent) -> None:
        """Return once ``event`` is committed (or spooled); never raise for a database failure."""
        ...


# --- session_log and the projector: pure --------------------------------------------------------------------


def session_log_string(entries: Iterable[Sequence[object]]) -> str:
    """The compact protocol of integration-api.md §4.4: ``0:ct:501;6:cc:501;101:cd:501;``."""
    return "".join(f"{int(str(offset))}:{code}:{party};" for offset, code, party in entries)


def log_party(pin: str | None, number: str) -> str:
    """A party as session_log names it: a user's PIN, else an outside number's digits."""
    if pin:
        return pin
    user = number.removeprefix("sip:").split("@", 1)[0]
    return user.lstrip("+")


@dataclass(slots=True, kw_only=True)
class RecordState:
    """A call record's columns as plain values (``CallRecord``'s names): what the projector changes and the
    journal keeps for live calls, so a batch needs no read and no ORM unit of work."""

    id: uuid.UUID
    session_id: str
    domain_id: uuid.UUID
    node_id: str
    call_type: str
    call_kind: str
    started_at: dt.datetime
    answered_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    end_reason: str | None = None
    duration_s: int = 0
    caller_number: str = ""
    caller_pin: str | None = None
    caller_uri: str = ""
    callee_number: str = ""
    callee_pin: str | None = None
    callee_uri: str = ""
    line: str | None = None
    answering_uri: str | None = None
    answering_pin: str | None = None
    status_code: int | None = None
    status_text: str | None = None
    is_record: bool = False
    is_voicemail: bool = False
    session_log: list[Any] = field(default_factory=list)
    last_seq: int = 0

    def columns(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _COLUMNS}


_COLUMNS = tuple(f.name for f in dataclasses.fields(RecordState))
# what the events change after the record is opened
_CHANGING = (
    "answered_at",
    "ended_at",
    "end_reason",
    "duration_s",
    "line",
    "answering_uri",
    "answering_pin",
    "status_code",
    "status_text",
    "is_record",
    "is_voicemail",
    "session_log",
    "last_seq",
)
_RECORDS = cast(Table, CallRecord.__table__)
_INSERT_RECORD = insert(_RECORDS)
_UPDATE_RECORD = (
    update(_RECORDS)
    .where(_RECORDS.c.session_id == bindparam("b_session_id"))
    .values({name: bindparam(f"b_{name}") for name in _CHANGING})
)
_INSERT_EVENT = insert(cast(Table, CallEventRow.__table__))


def open_record(event: CallEvent, node_id: str) -> RecordState:
    """A call's record as its first event (``new``) opens it."""
    line = event.line
    if not line and event.type == "incoming" and event.state == "new":
        line = log_party(None, event.request_number) or None  # an incoming `new` names the line
    return RecordState(
        id=uuid.uuid4(),
        session_id=event.session_id,
        domain_id=event.domain_id,
        node_id=node_id,
        call_type=event.type,
        call_kind=event.call_kind,
        started_at=event.timestamp,
        caller_number=event.from_number,
        caller_pin=event.from_pin or None,
        caller_uri=event.from_uri,
        callee_number=event.request_number,
        callee_pin=event.request_pin or None,
        callee_uri=event.request_uri,
        line=line or None,
    )


def _offset_s(record: RecordState, at: dt.datetime) -> int:
    # seconds from start_call_date (Unix seconds), as in integration-api.md §4.4's example
    return max(0, int(at.timestamp()) - int(record.started_at.timestamp()))


def project(record: RecordState, event: CallEvent) -> None:
    """Fold one event into its call's record (the caller has checked ``event.seq > record.last_seq``)."""
    offset = _offset_s(record, event.timestamp)
    party = log_party(event.request_pin, event.request_number)
    entries = record.session_log
    if event.state == "calling":
        entries.append([offset, LOG_CALLING, party])
    elif event.state == "connected":
        if event.extra.get("pickup") == "true":
            entries.append([offset, LOG_PICKUP, party])
        entries.append([offset, LOG_CONNECTED, party])
        if record.answered_at is None:
            record.answered_at = event.timestamp
            record.answering_uri = event.request_number
            record.answering_pin = event.request_pin or None
    elif event.state == "disconnected":
        entries.append([offset, LOG_DISCONNECTED, party])
        if event.extra.get("transfer_to"):
            entries.append([offset, LOG_TRANSFER, event.extra["transfer_to"]])
    elif event.state == "end":
        record.ended_at = event.timestamp
        record.end_reason = event.extra.get("end_reason") or END_NORMAL
        if record.answered_at is not None:
            record.duration_s = max(0, int((event.timestamp - record.answered_at).total_seconds()))
        record.is_record = bool(record.is_record or event.is_record)
        if event.extra.get("voicemail") == "true":
            record.is_voicemail = True
            entries.append([offset, LOG_VOICEMAIL, party])
        code = event.extra.get("status_code", "")
        if code.isdigit():
            record.status_code = int(code)
            record.status_text = event.extra.get("status_text") or None
    if event.line and not record.line:
        record.line = event.line
    record.last_seq = event.seq


async def apply_events(
    s: AsyncSession,
    events: Sequence[CallEvent],
    node_id: str,
    live: dict[str, RecordState] | None = None,
) -> dict[str, RecordState]:
    """Write ``events`` into the outbox and their records, in the caller's transaction; events already
    applied are skipped. ``live`` holds records as last committed (those not in it are read); its records
    are changed in place, so a caller whose transaction fails must drop them. Returns the records this
    batch wrote, as they are now."""
    live = live or {}
    work: dict[str, RecordState] = {}
    missing = [sid for sid in {e.session_id for e in events} if sid not in live]
    if missing:
        for row in await s.execute(select(_RECORDS).where(_RECORDS.c.session_id.in_(missing))):
            values = dict(row._mapping)
            values["session_log"] = list(values["session_log"] or [])
            work[values["session_id"]] = RecordState(**values)
    new: set[str] = set()
    rows: list[dict[str, Any]] = []
    for event in events:
        record = work.get(event.session_id)
        if record is None:
            cached = live.get(event.session_id)
            if cached is not None:
                record = work[event.session_id] = cached
            else:
                record = work[event.session_id] = open_record(event, node_id)
                new.add(event.session_id)
        if event.seq <= record.last_seq:
            continue  # already written (a replayed spool, a retried batch)
        project(record, event)
        rows.append(
            {
                "id": uuid.uuid4(),
                "session_id": event.session_id,
                "seq": event.seq,
                "domain_id": event.domain_id,
                "state": event.state,
                "at": event.timestamp,
                "payload": event_json(event),
            }
        )
    if not rows:
        return {}
    touched = {r["session_id"] for r in rows}
    # multi-row statements: a fraction of the ORM's cost per event (bench/journal_bench.py)
    inserts = [work[sid].columns() for sid in touched if sid in new]
    if inserts:
        await s.execute(_INSERT_RECORD, inserts)
    updates = [
        {f"b_{name}": getattr(work[sid], name) for name in ("session_id", *_CHANGING)}
        for sid in touched
        if sid not in new
    ]
    if updates:
        await s.execute(_UPDATE_RECORD, updates)
    await s.execute(_INSERT_EVENT, rows)
    return {sid: work[sid] for sid in touched}


# --- the spool: events as JSON lines ------------------------------------------------------------------------


def event_to_dict(event: CallEvent) -> dict[str, Any]:
    return {
        "session_id": event.session_id,
        "seq": event.seq,
        "state": event.state,
        "type": event.type,
        "call_kind": event.call_kind,
        "domain_id": str(event.domain_id),
        "domain": event.domain,
        "timestamp": event.timestamp.isoformat(),
        "from_number": event.from_number,
        "from_pin": event.from_pin,
        "from_uri": event.from_uri,
        "request_number": event.request_number,
        "request_pin": event.request_pin,
        "request_uri": event.request_uri,
        "line": event.line,
        "disconnect_reason": event.disconnect_reason,
        "is_record": event.is_record,
        "extra": dict(event.extra),
    }


def _literal(value: object, allowed: tuple[str, ...], name: str) -> Any:
    if value not in allowed:
        raise ValueError(f"bad {name}: {value!r}")
    return value


def event_from_dict(d: dict[str, Any]) -> CallEvent:
    """The inverse of ``event_to_dict``; ``ValueError`` (or ``KeyError``/``TypeError``) on a bad line."""
    timestamp = dt.datetime.fromisoformat(d["timestamp"])
    if timestamp.tzinfo is None:
        raise ValueError("naive timestamp")
    extra = d.get("extra") or {}
    return CallEvent(
        session_id=SessionId(str(d["session_id"])),
        seq=int(d["seq"]),
        state=_literal(d["state"], get_args(CallState), "state"),
        type=_literal(d["type"], get_args(CallType), "type"),
        call_kind=_literal(d.get("call_kind", "normal"), get_args(CallKind), "call_kind"),
        domain_id=uuid.UUID(d["domain_id"]),
        domain=str(d["domain"]),
        timestamp=timestamp,
        from_number=str(d.get("from_number", "")),
        from_pin=d.get("from_pin"),
        from_uri=str(d.get("from_uri", "")),
        request_number=str(d.get("request_number", "")),
        request_pin=d.get("request_pin"),
        request_uri=str(d.get("request_uri", "")),
        line=d.get("line"),
        disconnect_reason=d.get("disconnect_reason"),
        is_record=d.get("is_record"),
        extra={str(k): str(v) for k, v in extra.items()},
    )


def _append_fsync(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_spool(path: Path) -> list[CallEvent]:
    """The spooled events in order; an unreadable line (a write cut short by a crash) is skipped."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    events = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            events.append(event_from_dict(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            log.warning("history.spool_bad_line", path=str(path), line=n)
    return events


# --- the SQL journal ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    event: CallEvent
    done: asyncio.Future[None]


class SqlCallJournal:
    """The ``CallJournal`` over the database, with group commit and a spool (see the module docstring)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        node_id: str,
        spool_path: Path,
        max_batch: int = MAX_BATCH,
        commit_timeout_s: float = COMMIT_TIMEOUT_S,
        retry_s: float = RETRY_S,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.sessions = sessions
        self.node_id = node_id
        self.spool_path = spool_path
        self.max_batch = max_batch
        self.commit_timeout_s = commit_timeout_s
        self.retry_s = retry_s
        self.max_pending = max_pending
        # a caller waits for its commit, or for the spool write after a failed one
        self.append_timeout_s = commit_timeout_s + SPOOL_WRITE_TIMEOUT_S + 1.0
        self.batches = 0  # transactions committed (the benchmark reports events per batch)
        self.spooled = 0  # events written to the spool
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_replay = 0.0
        self._stopping = False
        self._live: dict[str, RecordState] = {}  # records of live calls as last committed
        # called after every commit of events (no arguments, must not block): e.g. the Integration API's
        # call_events pump, woken at once instead of at its next poll
        self.on_commit: list[Callable[[], None]] = []

    @property
    def spool_pending(self) -> bool:
        return self.spool_path.exists()

    async def start(self) -> None:
        """Replay a spool left by the last run (if the database answers), then start the writer."""
        await self.replay()
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="call-journal")

    async def stop(self, timeout_s: float = COMMIT_TIMEOUT_S + SPOOL_WRITE_TIMEOUT_S) -> None:
        """Write what is queued (within ``timeout_s``), stop the writer, try the spool once more."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(task)
        except TimeoutError:
            log.warning("history.stop_timeout", pending=len(self._queue))
        except Exception:
            log.exception("history.writer_failed")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if self.spool_pending:  # a last attempt; what stays is replayed at the next start
            await self.replay()
        for p in self._queue:  # never written: their callers stop waiting
            if not p.done.done():
                p.done.set_result(None)
        self._queue.clear()

    async def append(self, event: CallEvent) -> None:
        if self._task is None or self._task.done():  # not started (tests), stopped, or failed: inline
            await self._write([event])
            return
        if len(self._queue) >= self.max_pending:
            HISTORY_EVENTS.labels("dropped").inc()
            log.error("history.overflow", session_id=event.session_id, seq=event.seq)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(event, done))
        self._wake.set()
        try:
            async with asyncio.timeout(self.append_timeout_s):
                await asyncio.shield(done)
        except TimeoutError:
            log.warning("history.append_timeout", session_id=event.session_id, seq=event.seq)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wake.clear()
                try:
                    async with asyncio.timeout(self.retry_s):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                if not self._queue:
                    if self.spool_pending and loop.time() >= self._next_replay:
                        try:
                            await self.replay()
                        except Exception:  # the spool unreadable: logged, tried again later
                            log.exception("history.replay_failed")
                    continue
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            try:
                await self._write([p.event for p in batch])
            except asyncio.CancelledError:
                self._queue.extendleft(reversed(batch))  # stop() releases their callers
                raise
            except Exception:  # _write handles database failures; this is a bug, logged, and we go on
                log.exception("history.write_failed", events=len(batch))
            for p in batch:
                if not p.done.done():
                    p.done.set_result(None)

    async def _write(self, events: list[CallEvent]) -> None:
        """Commit ``events``, or spool them; the spool keeps them while it holds older ones."""
        if self.spool_pending:
            if asyncio.get_running_loop().time() >= self._next_replay:
                await self.replay()
            if self.spool_pending:
                await self._spool(events)
                return
        try:
            await self._commit(events)
        except (IntegrityError, DataError):
            await self._commit_each(events)
        except Exception as e:
            log.warning("history.database_unavailable", error=repr(e)[:200], events=len(events))
            self._next_replay = asyncio.get_running_loop().time() + self.retry_s
            await self._spool(events)

    async def _commit(self, events: Sequence[CallEvent]) -> None:
        try:
            async with asyncio.timeout(self.commit_timeout_s):
                async with self.sessions() as s, s.begin():
                    done = await apply_events(s, events, self.node_id, self._live)
        except BaseException:
            self._live.clear()  # it may have committed after all: read the records again next time
            raise
        for sid, record in done.items():
            if record.ended_at is None:
                self._live[sid] = record
            else:
                self._live.pop(sid, None)
        if len(self._live) > MAX_LIVE_RECORDS:  # records of calls that never ended (a bug elsewhere)
            self._live.clear()
        self.batches += 1
        HISTORY_BATCHES.inc()
        HISTORY_EVENTS.labels("committed").inc(len(events))
        for listener in self.on_commit:
            try:
                listener()
            except Exception:  # a listener's bug never fails the journal
                log.exception("history.listener_failed")

    async def _commit_each(self, events: Sequence[CallEvent]) -> None:
        """A batch the database refused as data: one transaction per event, the refused ones dropped."""
        for i, event in enumerate(events):
            try:
                await self._commit([event])
            except (IntegrityError, DataError) as e:
                HISTORY_EVENTS.labels("dropped").inc()
                log.error(
                    "history.event_refused", session_id=event.session_id, seq=event.seq, error=repr(e)[:200]
                )
            except Exception:
                await self._spool(list(events[i:]))
                return

    async def _spool(self, events: Sequence[CallEvent]) -> None:
        data = b"".join(json.dumps(event_to_dict(e), ensure_ascii=False).encode() + b"\n" for e in events)
        try:
            async with asyncio.timeout(SPOOL_WRITE_TIMEOUT_S):
                await asyncio.to_thread(_append_fsync, self.spool_path, data)
        except Exception:
            HISTORY_EVENTS.labels("dropped").inc(len(events))
            log.exception("history.spool_failed", path=str(self.spool_path), events=len(events))
            return
        self.spooled += len(events)
        HISTORY_EVENTS.labels("spooled").inc(len(events))

    async def replay(self) -> bool:
        """Commit the spooled events in order and delete the spool: True when it is gone."""
        if not self.spool_pending:
            return True
        self._next_replay = asyncio.get_running_loop().time() + self.retry_s
        try:
            events = await asyncio.to_thread(read_spool, self.spool_path)
        except OSError as e:
            log.error("history.spool_unreadable", path=str(self.spool_path), error=repr(e)[:200])
            return False
        try:
            for i in range(0, len(events), self.max_batch):
                chunk = events[i : i + self.max_batch]
                try:
                    await self._commit(chunk)
                except (IntegrityError, DataError):
                    for event in chunk:
                        try:
                            await self._commit([event])
                        except (IntegrityError, DataError):
                            HISTORY_EVENTS.labels("dropped").inc()
                            log.error("history.event_refused", session_id=event.session_id, seq=event.seq)
        except Exception as e:
            log.warning("history.replay_failed", error=repr(e)[:200], events=len(events))
            return False
        await asyncio.to_thread(self.spool_path.unlink, missing_ok=True)
        log.info("history.spool_replayed", events=len(events))
        return True


# --- the start-up reconciler --------------------------------------------------------------------------------


def _recovered_events(record: CallRecord, rows: Sequence[CallEventRow]) -> list[CallEvent]:
    """The events an open record is missing: ``disconnected`` if it was connected, then ``end``."""
    last = rows[-1] if rows else None
    at = last.at if last is not None else record.started_at
    payload: dict[str, Any] = dict(last.payload) if last is not None else {}
    connected = False
    for row in rows:
        if row.state == "connected":
            connected = True
        elif row.state == "disconnected":
            connected = False
    session_id = SessionId(record.session_id)
    call_type: CallType = _literal(record.call_type, get_args(CallType), "type")
    call_kind: CallKind = _literal(record.call_kind, get_args(CallKind), "call_kind")
    request_pin = payload.get("request_pin", record.callee_pin)

    def event(seq: int, state: CallState, **kw: Any) -> CallEvent:
        return CallEvent(
            session_id=session_id,
            seq=seq,
            state=state,
            type=call_type,
            call_kind=call_kind,
            domain_id=record.domain_id,
            domain=str(payload.get("domain", "")),
            timestamp=at,
            from_number=record.caller_number,
            from_pin=record.caller_pin,
            from_uri=record.caller_uri,
            request_number=str(payload.get("request_number", record.callee_number)),
            request_pin=str(request_pin) if request_pin else None,
            request_uri=str(payload.get("request_uri", record.callee_uri)),
            line=record.line,
            **kw,
        )

    seq = record.last_seq
    events = []
    if connected:
        seq += 1
        events.append(event(seq, "disconnected", disconnect_reason=REASON_NORMAL))
    events.append(event(seq + 1, "end", is_record=record.is_record, extra={"end_reason": END_RECOVERED}))
    return events


async def reconcile(
    sessions: async_sessionmaker[AsyncSession],
    *,
    node_id: str,
    bus: EventBus | None = None,
    max_records: int = 1_000_000,
) -> int:
    """Close the calls this node left open (it died mid-call): ended at their last event, ``end_reason``
    ``recovered``, their missing events in the outbox and on ``bus``. Returns how many were closed; a second
    run closes none."""
    closed = 0
    for _ in range(max_records // RECONCILE_CHUNK + 1):
        published: list[CallEvent] = []
        async with sessions() as s, s.begin():
            records = list(
                await s.scalars(
                    select(CallRecord)
                    .where(CallRecord.ended_at.is_(None), CallRecord.node_id == node_id)
                    .order_by(CallRecord.started_at)
                    .limit(RECONCILE_CHUNK)
                )
            )
            if not records:
                break
            rows_by: dict[str, list[CallEventRow]] = {r.session_id: [] for r in records}
            rows = await s.scalars(
                select(CallEventRow)
                .where(CallEventRow.session_id.in_(list(rows_by)))
                .order_by(CallEventRow.session_id, CallEventRow.seq)
            )
            for row in rows:
                rows_by[row.session_id].append(row)
            for record in records:
                published += _recovered_events(record, rows_by[record.session_id])
            await apply_events(s, published, node_id)
        closed += len(records)
        log.info("history.recovered", calls=len(records))
        if bus is not None:
            for e in published:
                await bus.publish(e)
    return closed


__all__ = [
    "END_RECOVERED",
    "SPOOL_FILE",
    "CallJournal",
    "RecordState",
    "SqlCallJournal",
    "apply_events",
    "event_from_dict",
    "event_to_dict",
    "log_party",
    "open_record",
    "project",
    "read_spool",
    "reconcile",
    "session_log_string",
]
