"""The call history: session_log, the projector, group commit, the spool and the start-up reconciler."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.helpers import Tenant
from tests.unit.pbx.b2bua_kit import RecordingBus
from vpbx.app import Core
from vpbx.pbx.bus import CallEvent, CallState, SessionId
from vpbx.pbx.history import (
    SPOOL_FILE,
    SqlCallJournal,
    apply_events,
    event_from_dict,
    event_to_dict,
    open_record,
    project,
    read_spool,
    reconcile,
    session_log_string,
)
from vpbx.settings import Settings, default_node_id
from vpbx.store import create_engine, session_factory
from vpbx.store.models import CallEventRow, CallRecord

# integration-api.md §4 fixture F: started 2025-06-12 11:00:00 MSK, answered by 501, 95 s talk
F_SESSION = SessionId("534dbe28-7e58-4705-89a4-26a308405464")
F_START = dt.datetime(2025, 6, 12, 8, 0, 0, tzinfo=dt.UTC)
DOMAIN = "demo.vpbx.example"
NODE = "node-a"
DOWN_URL = "postgresql+asyncpg://vpbx:vpbx@127.0.0.1:1/nowhere"  # nothing listens on port 1


def at(seconds: float) -> dt.datetime:
    return F_START + dt.timedelta(seconds=seconds)


def f_events(domain_id: uuid.UUID, session: SessionId = F_SESSION) -> list[CallEvent]:
    """Fixture F's five events as the engine publishes them (integration-api.md §5.2)."""
    caller = {"from_number": f"sip:79161234567@{DOMAIN}", "from_uri": f"sip:79161234567@{DOMAIN}"}
    line = {"request_number": f"sip:74951234567@{DOMAIN}", "request_uri": f"sip:74951234567@{DOMAIN}"}
    ivanov = {"request_number": f"ivanov@{DOMAIN}", "request_pin": "501", "request_uri": f"sip:501@{DOMAIN}"}

    def ev(seq: int, state: CallState, seconds: float, **kw: object) -> CallEvent:
        return CallEvent(
            session_id=session,
            seq=seq,
            state=state,
            type="incoming",
            domain_id=domain_id,
            domain=DOMAIN,
            timestamp=at(seconds),
            line="74951234567",
            **caller,  # type: ignore[arg-type]
            **kw,  # type: ignore[arg-type]
        )

    return [
        ev(1, "new", 0.120, **line),
        ev(2, "calling", 0.410, **ivanov),
        ev(3, "connected", 6.002, **ivanov),
        ev(4, "disconnected", 101.350, disconnect_reason="5", **ivanov),
        ev(5, "end", 101.360, is_record=True, extra={"end_reason": "normal"}, **ivanov),
    ]


# --- pure ---------------------------------------------------------------------------------------------------


def test_session_log_string_is_the_spec_example() -> None:
    entries = [[0, "ct", "501"], [6, "cc", "501"], [101, "cd", "501"]]
    assert session_log_string(entries) == "0:ct:501;6:cc:501;101:cd:501;"
    assert session_log_string([(0, "ct", "89035037889"), (5, "cc", "89035037889")]) == (
        "0:ct:89035037889;5:cc:89035037889;"
    )
    assert session_log_string([]) == ""


def test_the_projector_turns_fixture_f_into_its_call_info() -> None:
    events = f_events(uuid.uuid4())
    record = open_record(events[0], NODE)
    for e in events:
        project(record, e)

    assert session_log_string(record.session_log) == "0:ct:501;6:cc:501;101:cd:501;"
    assert int(record.started_at.timestamp()) == 1749715200  # start_call_date
    assert record.answered_at == at(6.002) and record.ended_at == at(101.360)
    assert record.duration_s == 95
    assert (record.caller_number, record.caller_pin) == (f"sip:79161234567@{DOMAIN}", None)
    assert record.callee_number == f"sip:74951234567@{DOMAIN}"  # dest_number: the line
    assert (record.answering_uri, record.answering_pin) == (f"ivanov@{DOMAIN}", "501")
    assert record.line == "74951234567" and record.node_id == NODE
    assert record.is_record is True and record.is_voicemail is False
    assert (record.status_code, record.status_text) == (None, None)
    assert record.end_reason == "normal" and record.last_seq == 5


def test_the_projector_logs_pickups_transfers_voicemail_and_an_unanswered_status() -> None:
    d = uuid.uuid4()
    first = f_events(d)[0]
    record = open_record(first, NODE)
    project(record, first)

    def ev(seq: int, state: CallState, seconds: float, pin: str, **kw: object) -> CallEvent:
        return CallEvent(
            session_id=F_SESSION,
            seq=seq,
            state=state,
            type="incoming",
            domain_id=d,
            domain=DOMAIN,
            timestamp=at(seconds),
            request_number=f"user{pin}@{DOMAIN}",
            request_pin=pin,
            **kw,  # type: ignore[arg-type]
        )

    for e in [
        ev(2, "calling", 1, "501"),
        ev(3, "connected", 4, "502", extra={"pickup": "true"}),
        ev(4, "disconnected", 10, "502", disconnect_reason="0", extra={"transfer_to": "503"}),
        ev(5, "connected", 12, "503"),
        ev(6, "disconnected", 20, "503", disconnect_reason="5"),
        ev(7, "end", 20, "503", extra={"voicemail": "true", "end_reason": "normal"}),
    ]:
        project(record, e)

    assert session_log_string(record.session_log) == (
        "1:ct:501;4:pu:502;4:cc:502;10:cd:502;10:tr:503;12:cc:503;20:cd:503;20:vm:503;"
    )
    assert record.answering_pin == "502"  # the first answering party
    assert record.duration_s == 16 and record.is_voicemail

    busy = open_record(first, NODE)
    project(busy, first)
    project(
        busy,
        CallEvent(
            session_id=F_SESSION,
            seq=2,
            state="end",
            type="incoming",
            domain_id=d,
            domain=DOMAIN,
            timestamp=at(3),
            request_number=f"sip:74951234567@{DOMAIN}",
            extra={"status_code": "486", "status_text": "Busy Here", "end_reason": "busy"},
        ),
    )
    assert (busy.status_code, busy.status_text, busy.end_reason) == (486, "Busy Here", "busy")
    assert busy.answered_at is None and busy.duration_s == 0 and busy.session_log == []


def test_spool_lines_round_trip_and_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    events = f_events(uuid.uuid4())
    path = tmp_path / SPOOL_FILE
    lines = [json.dumps(event_to_dict(e)) for e in events]
    path.write_text("\n".join(lines) + "\n" + lines[0][:40])  # a write cut short by kill -9

    assert read_spool(path) == events
    assert [event_from_dict(json.loads(line)) for line in lines] == events
    with pytest.raises(ValueError):
        event_from_dict({**json.loads(lines[0]), "state": "exploded"})


def test_node_id_defaults_to_the_host_name(tmp_path: Path) -> None:
    s = Settings(env="test", data_dir=tmp_path)  # type: ignore[arg-type]
    assert s.node_id == default_node_id() and s.node_id
    assert Settings(env="test", data_dir=tmp_path, node_id="pbx-2").node_id == "pbx-2"  # type: ignore[arg-type]


# --- on the database (SQLite) -------------------------------------------------------------------------------


async def records(core: Core) -> list[CallRecord]:
    async with core.sessions() as s:
        return list(await s.scalars(select(CallRecord).order_by(CallRecord.started_at)))


async def outbox(core: Core, session: str) -> list[CallEventRow]:
    async with core.sessions() as s:
        rows = await s.scalars(
            select(CallEventRow).where(CallEventRow.session_id == session).order_by(CallEventRow.seq)
        )
        return list(rows)


@pytest.fixture
async def down() -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on a database that does not answer (connection refused)."""
    engine = create_engine(DOWN_URL)
    yield session_factory(engine)
    await engine.dispose()


async def test_applying_events_twice_writes_them_once(core: Core, t1: Tenant) -> None:
    events = f_events(t1.id)
    async with core.sessions() as s, s.begin():
        assert (await apply_events(s, events[:3], NODE))[F_SESSION].last_seq == 3
    async with core.sessions() as s, s.begin():
        assert (await apply_events(s, events, NODE))[F_SESSION].last_seq == 5  # 1-3 are already there
    async with core.sessions() as s, s.begin():
        assert await apply_events(s, events, NODE) == {}  # nothing left to write

    [record] = await records(core)
    assert record.ended_at == at(101.360) and record.duration_s == 95
    assert session_log_string(record.session_log) == "0:ct:501;6:cc:501;101:cd:501;"
    rows = await outbox(core, F_SESSION)
    assert [(r.seq, r.state) for r in rows] == [
        (1, "new"),
        (2, "calling"),
        (3, "connected"),
        (4, "disconnected"),
        (5, "end"),
    ]
    assert rows[3].payload["disconnect_reason"] == "5" and rows[4].payload["is_record"] == "true"
    assert rows[0].domain_id == t1.id and rows[0].at == at(0.120)


async def test_concurrent_calls_are_committed_in_shared_transactions(
    core: Core, t1: Tenant, tmp_path: Path
) -> None:
    journal = SqlCallJournal(core.sessions, node_id=NODE, spool_path=tmp_path / SPOOL_FILE)
    await journal.start()
    sessions = [SessionId(str(uuid.uuid4())) for _ in range(40)]

    async def one_call(sid: SessionId) -> None:
        for event in f_events(t1.id, sid):
            await journal.append(event)

    try:
        async with asyncio.timeout(30):
            await asyncio.gather(*(one_call(sid) for sid in sessions))
    finally:
        await journal.stop()

    found = await records(core)
    assert len(found) == 40 and all(r.ended_at is not None and r.last_seq == 5 for r in found)
    assert journal.batches < 40 * 5  # appends of concurrent calls share commits
    assert journal.spooled == 0 and not journal.spool_pending
    async with core.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(CallEventRow)) == 200


async def test_a_dead_database_spools_and_the_spool_is_replayed_in_order(
    core: Core, t1: Tenant, tmp_path: Path, down: async_sessionmaker[AsyncSession]
) -> None:
    spool = tmp_path / SPOOL_FILE
    journal = SqlCallJournal(down, node_id=NODE, spool_path=spool, commit_timeout_s=2.0, retry_s=0.05)
    await journal.start()
    events = f_events(t1.id)
    try:
        async with asyncio.timeout(30):
            for event in events[:4]:
                await journal.append(event)  # returns: the engine never waits on a dead database
            assert len(read_spool(spool)) == 4 and journal.spooled == 4
            assert await records(core) == []

            journal.sessions = core.sessions  # the database is back
            await journal.append(events[4])
    finally:
        await journal.stop()

    assert not spool.exists()
    [record] = await records(core)
    assert record.ended_at is not None and record.last_seq == 5
    assert session_log_string(record.session_log) == "0:ct:501;6:cc:501;101:cd:501;"
    assert [r.seq for r in await outbox(core, F_SESSION)] == [1, 2, 3, 4, 5]


async def test_a_database_lost_mid_call_loses_nothing_of_the_call(
    core: Core, t1: Tenant, tmp_path: Path, down: async_sessionmaker[AsyncSession]
) -> None:
    spool = tmp_path / SPOOL_FILE
    journal = SqlCallJournal(core.sessions, node_id=NODE, spool_path=spool, retry_s=0.05)
    await journal.start()
    events = f_events(t1.id)
    try:
        async with asyncio.timeout(30):
            for event in events[:2]:
                await journal.append(event)  # committed; the journal keeps the live record
            journal.sessions = down
            await journal.append(events[2])  # `connected` goes to the spool
            assert journal.spooled == 1
            journal.sessions = core.sessions
            for event in events[3:]:
                await journal.append(event)
    finally:
        await journal.stop()

    assert not spool.exists()
    [record] = await records(core)
    assert record.answered_at == at(6.002) and record.duration_s == 95 and record.last_seq == 5
    assert session_log_string(record.session_log) == "0:ct:501;6:cc:501;101:cd:501;"
    assert [r.seq for r in await outbox(core, F_SESSION)] == [1, 2, 3, 4, 5]


async def test_a_spool_left_by_a_crash_is_replayed_at_start(core: Core, t1: Tenant, tmp_path: Path) -> None:
    spool = tmp_path / SPOOL_FILE
    events = f_events(t1.id)
    spool.write_text("".join(json.dumps(event_to_dict(e)) + "\n" for e in events[:3]))
    async with core.sessions() as s, s.begin():  # the first event had been committed before the outage
        await apply_events(s, events[:1], NODE)

    journal = SqlCallJournal(core.sessions, node_id=NODE, spool_path=spool)
    await journal.start()
    await journal.stop()

    assert not spool.exists()
    assert [r.seq for r in await outbox(core, F_SESSION)] == [1, 2, 3]


async def test_an_event_the_database_refuses_is_dropped_and_its_batch_still_commits(
    core: Core, t1: Tenant, tmp_path: Path
) -> None:
    good = f_events(t1.id)
    orphan = f_events(uuid.uuid4(), SessionId(str(uuid.uuid4())))[0]  # a domain that does not exist
    journal = SqlCallJournal(core.sessions, node_id=NODE, spool_path=tmp_path / SPOOL_FILE)
    await journal.start()
    try:
        async with asyncio.timeout(30):
            await asyncio.gather(journal.append(orphan), *(journal.append(e) for e in good[:2]))
    finally:
        await journal.stop()

    [record] = await records(core)
    assert record.session_id == F_SESSION and record.last_seq == 2
    assert not journal.spool_pending


async def test_the_reconciler_closes_what_a_crash_left_open_once(core: Core, t1: Tenant) -> None:
    talking, ringing, elsewhere = (SessionId(str(uuid.uuid4())) for _ in range(3))
    async with core.sessions() as s, s.begin():
        await apply_events(s, f_events(t1.id, talking)[:3], NODE)  # new, calling, connected
        await apply_events(s, f_events(t1.id, ringing)[:2], NODE)  # new, calling
        await apply_events(s, f_events(t1.id, elsewhere)[:3], "node-b")  # another node's live call
        await apply_events(s, f_events(t1.id)[:5], NODE)  # fixture F: finished
    bus = RecordingBus()

    assert await reconcile(core.sessions, node_id=NODE, bus=bus) == 2

    by_id = {r.session_id: r for r in await records(core)}
    for sid, last in ((talking, at(6.002)), (ringing, at(0.410))):
        r = by_id[sid]
        assert r.ended_at == last and r.end_reason == "recovered"
    assert by_id[talking].duration_s == 0 and by_id[talking].answered_at == at(6.002)
    assert session_log_string(by_id[talking].session_log) == "0:ct:501;6:cc:501;6:cd:501;"
    assert by_id[elsewhere].ended_at is None
    assert by_id[F_SESSION].end_reason == "normal"
    talked = await outbox(core, talking)
    assert [(r.seq, r.state) for r in talked][3:] == [(4, "disconnected"), (5, "end")]
    assert talked[3].payload["disconnect_reason"] == "5"
    assert talked[4].payload["is_record"] == "false" and talked[4].payload["request_pin"] == "501"
    assert [(r.seq, r.state) for r in await outbox(core, ringing)][2:] == [(3, "end")]
    published = sorted((e.session_id, e.seq, e.state) for e in bus.events)
    assert published == sorted([(talking, 4, "disconnected"), (talking, 5, "end"), (ringing, 3, "end")])
    assert all(e.extra == {"end_reason": "recovered"} for e in bus.events if e.state == "end")

    again = RecordingBus()
    assert await reconcile(core.sessions, node_id=NODE, bus=again) == 0
    assert again.events == []
    async with core.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(CallEventRow)) == 3 + 2 + 3 + 5 + 3
