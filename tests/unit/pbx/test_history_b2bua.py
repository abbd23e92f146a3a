"""The engine's events as the call history sees them: order, seq, and what ``end`` says about the call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.unit.pbx.b2bua_kit import Pbx, Phone
from vpbx.app import Core
from vpbx.pbx.history import SPOOL_FILE, SqlCallJournal, session_log_string
from vpbx.store.models import CallEventRow, CallRecord

A_HOST, B_HOST = "192.0.2.10", "192.0.2.20"


@pytest.fixture
async def pbx(core: Core, tmp_path: Path) -> AsyncIterator[Pbx]:
    p = await Pbx.create(core)
    journal = SqlCallJournal(core.sessions, node_id="node-a", spool_path=tmp_path / SPOOL_FILE)
    p.b2bua.events.journal = journal
    await journal.start()
    yield p
    await p.node.stop()
    await journal.stop()


@pytest.fixture
def alice(pbx: Pbx) -> Phone:
    return pbx.phone("101", A_HOST)


@pytest.fixture
async def bob(pbx: Pbx) -> Phone:
    phone = pbx.phone("102", B_HOST)
    await pbx.register(phone)
    return phone


async def the_record(core: Core) -> CallRecord:
    async with core.sessions() as s:
        [record] = list(await s.scalars(select(CallRecord)))
        return record


async def test_an_answered_call_publishes_in_order_after_its_record_is_committed(
    core: Core, pbx: Pbx, alice: Phone, bob: Phone
) -> None:
    seen: list[tuple[str, bool]] = []
    publish = pbx.bus.publish

    async def publish_and_look(event):  # type: ignore[no-untyped-def]
        async with core.sessions() as s:
            row = await s.scalar(
                select(CallEventRow).where(
                    CallEventRow.session_id == event.session_id, CallEventRow.seq == event.seq
                )
            )
        seen.append((event.state, row is not None))
        await publish(event)

    pbx.bus.publish = publish_and_look  # type: ignore[method-assign]
    out = await alice.call("102")
    incoming = await bob.ringing()
    await incoming.answer()
    await out.answered()
    await out.send("BYE")
    await bob.expect("BYE")

    events = pbx.bus.events
    assert [e.state for e in events] == ["new", "calling", "connected", "disconnected", "end"]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert all(committed for _state, committed in seen)  # on the bus only once in the outbox
    assert events[-1].extra == {"end_reason": "normal"}
    record = await the_record(core)
    assert record.ended_at is not None and record.end_reason == "normal" and record.answered_at
    assert (record.caller_pin, record.callee_pin, record.answering_pin) == ("101", "102", "102")
    assert record.call_type == "internal" and record.node_id == "node-a"
    assert record.status_code is None and record.last_seq == 5
    assert session_log_string(record.session_log).endswith(":cd:102;")
    assert [c for _o, c, _p in record.session_log] == ["ct", "cc", "cd"]


async def test_a_busy_callee_ends_the_call_with_486(core: Core, pbx: Pbx, alice: Phone, bob: Phone) -> None:
    await alice.call("102")
    incoming = await bob.ringing()
    await incoming.reply(486)
    await alice.expect(486)

    end = pbx.bus.events[-1]
    assert end.state == "end"
    assert end.extra == {"end_reason": "busy", "status_code": "486", "status_text": "Busy Here"}
    record = await the_record(core)
    assert (record.status_code, record.status_text, record.end_reason) == (486, "Busy Here", "busy")
    assert record.answered_at is None and record.duration_s == 0


async def test_a_cancelled_call_ends_with_487(core: Core, pbx: Pbx, alice: Phone, bob: Phone) -> None:
    out = await alice.call("102")
    incoming = await bob.ringing()
    await incoming.reply(180)
    await alice.expect(180)
    await out.cancel()
    await alice.expect(487)

    record = await the_record(core)
    assert (record.status_code, record.end_reason) == (487, "cancelled")
    assert [e.seq for e in pbx.bus.events] == [1, 2, 3]


async def test_nobody_answering_ends_with_480(core: Core, pbx: Pbx, alice: Phone, bob: Phone) -> None:
    await alice.call("102")
    incoming = await bob.ringing()
    await incoming.reply(180)
    await pbx.advance(60.0)
    await alice.expect(480)

    record = await the_record(core)
    assert (record.status_code, record.status_text, record.end_reason) == (
        480,
        "Temporarily Unavailable",
        "no_answer",
    )
    assert [c for _o, c, _p in record.session_log] == ["ct"]


async def test_a_user_without_phones_ends_with_480_and_no_calling(core: Core, pbx: Pbx, alice: Phone) -> None:
    await alice.call("103")
    await alice.expect(480)

    assert [(e.seq, e.state) for e in pbx.bus.events] == [(1, "new"), (2, "end")]
    record = await the_record(core)
    assert record.status_code == 480 and record.session_log == []


async def test_each_contact_rung_is_one_calling_and_one_ct(core: Core, pbx: Pbx, alice: Phone) -> None:
    desk, soft = pbx.phone("102", B_HOST, name="desk"), pbx.phone("102", "192.0.2.21", name="soft")
    await pbx.register(desk)
    await pbx.register(soft)
    out = await alice.call("102")
    on_desk, on_soft = await desk.ringing(), await soft.ringing()
    await on_desk.reply(180)  # a CANCEL waits for a provisional (RFC 3261 §9.1)
    await on_soft.answer()
    await desk.expect("CANCEL")
    await desk.send(on_desk.response(487))
    await out.answered()
    await on_soft.send("BYE")
    await alice.expect("BYE")

    events = pbx.bus.events
    assert [e.state for e in events] == ["new", "calling", "calling", "connected", "disconnected", "end"]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
    record = await the_record(core)
    assert [(c, p) for _o, c, p in record.session_log] == [
        ("ct", "102"),
        ("ct", "102"),
        ("cc", "102"),
        ("cd", "102"),
    ]
    assert record.answering_pin == "102" and record.end_reason == "normal" and record.status_code is None
