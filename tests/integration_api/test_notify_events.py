"""call_events below the SIP layer: call history events (as the engine's journal writes them) → the pump →
the outbox → the dispatcher → a real HTTP CRM on loopback (integration-api.md §5.1, §5.2)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import email
import email.policy
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from tests.conftest import make_tenant, postgres_database
from tests.helpers import Tenant
from tests.integration.peers.net import free_ports
from tests.integration_api.notify_crm import F_CLIENT_ID, F_KEY, Answer, Crm, Seen, activate
from tests.unit.pbx.test_history import F_START, f_events
from vpbx.app import Core, create_app
from vpbx.clock import FakeClock
from vpbx.integration_api import dispatcher as dispatch
from vpbx.integration_api.events import EventPump
from vpbx.pbx.bus import CallEvent
from vpbx.pbx.history import apply_events
from vpbx.pbx.voicemail import SmtpConfig, SmtpMailer
from vpbx.settings import Settings
from vpbx.store.models import ApiDelivery, ApiLog, ApiSettings, User

F_BODIES = [
    b'{"state":"new","type":"incoming","session_id":"534dbe28-7e58-4705-89a4-26a308405464","timestamp":"2025-06-12 11:00:00.120","from_number":"sip:79161234567@demo.vpbx.example","request_number":"sip:74951234567@demo.vpbx.example","domain":"demo.vpbx.example"}',  # noqa: E501
    b'{"state":"calling","type":"incoming","session_id":"534dbe28-7e58-4705-89a4-26a308405464","timestamp":"2025-06-12 11:00:00.410","from_number":"sip:79161234567@demo.vpbx.example","request_number":"ivanov@demo.vpbx.example","request_pin":"501","domain":"demo.vpbx.example"}',  # noqa: E501
    b'{"state":"connected","type":"incoming","session_id":"534dbe28-7e58-4705-89a4-26a308405464","timestamp":"2025-06-12 11:00:06.002","from_number":"sip:79161234567@demo.vpbx.example","request_number":"ivanov@demo.vpbx.example","request_pin":"501","domain":"demo.vpbx.example"}',  # noqa: E501
    b'{"state":"disconnected","type":"incoming","session_id":"534dbe28-7e58-4705-89a4-26a308405464","timestamp":"2025-06-12 11:01:41.350","from_number":"sip:79161234567@demo.vpbx.example","request_number":"ivanov@demo.vpbx.example","request_pin":"501","disconnect_reason":"5","domain":"demo.vpbx.example"}',  # noqa: E501
    b'{"state":"end","type":"incoming","session_id":"534dbe28-7e58-4705-89a4-26a308405464","timestamp":"2025-06-12 11:01:41.360","from_number":"sip:79161234567@demo.vpbx.example","request_number":"ivanov@demo.vpbx.example","request_pin":"501","is_record":"true","domain":"demo.vpbx.example"}',  # noqa: E501
]
F_FIRST_SIGN = "87253a4f7ff41ecff69a54bcea02da29ee2b7022cc6cfb73ba80a3b5ad0425cf"
WAIT_S = 20.0


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, settings: Settings, core: Core) -> AsyncIterator[Core]:
    """The core on the test's SQLite file, or on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield core
        return
    async with postgres_database() as url:
        app = create_app(settings.model_copy(update={"database_url": url}))
        try:
            yield app.state.core
        finally:
            await app.state.core.engine.dispose()


async def write_events(core: Core, events: list[CallEvent]) -> None:
    async with core.sessions() as s:
        await apply_events(s, events, "node-a")
        await s.commit()


def recent(domain_id: uuid.UUID, session: str) -> list[CallEvent]:
    """F's call shifted to now, under another session id."""
    shift = dt.datetime.now(dt.UTC) - F_START - dt.timedelta(seconds=120)
    return [
        dataclasses.replace(e, session_id=session, timestamp=e.timestamp + shift)  # type: ignore[arg-type]
        for e in f_events(domain_id)
    ]


@contextlib.asynccontextmanager
async def running(task_of: object) -> AsyncIterator[None]:
    task = asyncio.ensure_future(task_of)  # type: ignore[arg-type]
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def deliveries(core: Core) -> list[ApiDelivery]:
    async with core.sessions() as s:
        return list(await s.scalars(select(ApiDelivery).order_by(ApiDelivery.session_id, ApiDelivery.seq)))


async def out_log(core: Core) -> list[ApiLog]:
    async with core.sessions() as s:
        return list(await s.scalars(select(ApiLog).order_by(ApiLog.at, ApiLog.id)))


class Sink:
    """aiosmtpd's handler: every message received, as bytes."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 OK"


async def until(done: Callable[[list[ApiDelivery]], bool], core: Core) -> None:
    """Wait (bounded) until the outbox's rows satisfy ``done``."""
    async with asyncio.timeout(WAIT_S):
        while not done(await deliveries(core)):  # noqa: ASYNC110 - the table is what is watched
            await asyncio.sleep(0.05)


def states(seen: list[Seen]) -> list[str]:
    return [r.json["state"] for r in seen]


async def test_f_call_is_exactly_the_five_bodies_signed_in_order(db: Core) -> None:
    core = db
    demo = await make_tenant(core, "demo.vpbx.example")
    clock = FakeClock(F_START + dt.timedelta(minutes=5))
    async with Crm().running() as crm:
        await activate(core, demo.id, crm.url, client_id=F_CLIENT_ID, key=F_KEY)
        await write_events(core, f_events(demo.id))
        assert await EventPump(core, clock=clock).pump_once() == 5
        async with running(dispatch.Dispatcher(core, clock=clock).run()):
            seen = await crm.wait_for(5)
            await asyncio.sleep(0.5)  # nothing else follows (no retries)
    assert [r.raw for r in crm.seen] == F_BODIES
    assert all(r.path == "/rt/call_events" and r.headers["x-client-id"] == F_CLIENT_ID for r in seen)
    assert seen[0].headers["x-client-sign"] == F_FIRST_SIGN
    assert [d.status for d in await deliveries(core)] == ["delivered"] * 5
    assert [(r.attempt, r.verdict) for r in await out_log(core)] == [(1, "доставлено")] * 5


async def test_the_calling_toggle_off_leaves_the_other_four_unchanged(core: Core) -> None:
    demo = await make_tenant(core, "demo.vpbx.example")
    clock = FakeClock(F_START + dt.timedelta(minutes=5))
    async with Crm().running() as crm:
        await activate(
            core,
            demo.id,
            crm.url,
            client_id=F_CLIENT_ID,
            key=F_KEY,
            event_states=["new", "connected", "disconnected", "end"],
        )
        await write_events(core, f_events(demo.id))
        assert await EventPump(core, clock=clock).pump_once() == 4
        async with running(dispatch.Dispatcher(core, clock=clock).run()):
            await crm.wait_for(4)
    assert [r.raw for r in crm.seen] == [F_BODIES[i] for i in (0, 2, 3, 4)]


async def test_a_500_is_retried_and_the_next_event_waits(db: Core) -> None:
    core = db
    t1 = await make_tenant(core, "acme.vpbx.test")
    failed: set[str] = set()

    def script(_crm: Crm, req: Seen) -> Answer:
        if req.json["state"] == "connected" and "once" not in failed:
            failed.add("once")
            return Answer(500, b"oops")
        return Answer(200)

    async with Crm(script).running() as crm:
        await activate(core, t1.id, crm.url)
        await write_events(core, recent(t1.id, "s-500"))
        await EventPump(core).pump_once()
        async with running(dispatch.Dispatcher(core).run()):
            seen = await crm.wait_for(6)
    assert states(seen) == ["new", "calling", "connected", "connected", "disconnected", "end"]
    assert seen[2].raw == seen[3].raw  # the same bytes again
    rows = [r for r in await out_log(core) if r.request_body.find('"connected"') > 0]
    assert [(r.attempt, r.status) for r in rows] == [(1, 500), (2, 200)]
    assert "повтор через 1 с" in rows[0].verdict


async def test_a_404_is_not_retried_and_the_call_goes_on(core: Core, t1: Tenant) -> None:
    def script(_crm: Crm, req: Seen) -> Answer:
        return Answer(404) if req.json["state"] == "connected" else Answer(200)

    async with Crm(script).running() as crm:
        await activate(core, t1.id, crm.url)
        await write_events(core, recent(t1.id, "s-404"))
        await EventPump(core).pump_once()
        async with running(dispatch.Dispatcher(core).run()):
            seen = await crm.wait_for(5)
            await asyncio.sleep(1.5)  # a retry would come after 1 s
    assert states(crm.seen) == states(seen) == ["new", "calling", "connected", "disconnected", "end"]
    assert [d.status for d in await deliveries(core)] == [
        "delivered",
        "delivered",
        "failed",
        "delivered",
        "delivered",
    ]
    (row,) = [r for r in await out_log(core) if r.status == 404]
    assert row.verdict.startswith("не доставлено")


async def test_a_restart_mid_way_loses_and_duplicates_nothing(db: Core) -> None:
    core = db
    t1 = await make_tenant(core, "acme.vpbx.test")
    events = recent(t1.id, "s-restart")
    async with Crm().running() as crm:
        await activate(core, t1.id, crm.url)
        await write_events(core, events[:3])
        assert await EventPump(core).pump_once() == 3
        async with running(dispatch.Dispatcher(core).run()):
            await crm.wait_for(2)
        # a new process: the pump and the dispatcher start from the tables alone
        await write_events(core, events[3:])
        pump = EventPump(core)
        assert await pump.pump_once() == 2
        assert await pump.pump_once() == 0
        assert await EventPump(core).pump_once() == 0
        async with running(dispatch.Dispatcher(core).run()):
            await until(lambda ds: all(d.status == "delivered" for d in ds), core)
    firsts = list(dict.fromkeys(states(crm.seen)))
    assert firsts == ["new", "calling", "connected", "disconnected", "end"]
    assert len(await deliveries(core)) == 5


async def test_sustained_failure_suspends_and_resume_sends_in_order(db: Core) -> None:
    core = db
    t1 = await make_tenant(core, "acme.vpbx.test")
    up = asyncio.Event()

    def script(_crm: Crm, _req: Seen) -> Answer:
        return Answer(200) if up.is_set() else Answer(503)

    async def suspended() -> bool:
        async with core.sessions() as s:
            settings = await s.get(ApiSettings, t1.id)
            return settings is not None and settings.suspended_at is not None

    async with core.sessions() as s:
        admin = await s.scalar(select(User).where(User.domain_id == t1.id, User.role == "admin"))
        assert admin is not None
        admin.email = "admin@acme.example"
        await s.commit()
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_ports(1)[0])
    await asyncio.to_thread(controller.start)
    mailer = SmtpMailer(SmtpConfig(host="127.0.0.1", port=controller.port))
    async with Crm(script).running() as crm:
        await activate(core, t1.id, crm.url)
        events = recent(t1.id, "s-down")
        await write_events(core, events[:2])
        pump = EventPump(core)
        await pump.pump_once()
        runner = dispatch.Dispatcher(
            core, retry_delays_s=(0.2, 0.2, 0.2), suspend_after=dt.timedelta(seconds=1.5), mailer=mailer
        )
        async with running(runner.run()):
            async with asyncio.timeout(WAIT_S):
                while not await suspended():  # noqa: ASYNC110 - the table is what is watched
                    await asyncio.sleep(0.05)
            tried = len(crm.seen)
            await write_events(core, events[2:])  # the calls go on: notifications accumulate
            assert await pump.pump_once() == 3
            await asyncio.sleep(1.0)
            assert len(crm.seen) == tried  # nothing is sent while suspended
            up.set()
            assert await dispatch.resume(core, t1.id) == 0
            runner.wake()
            await until(lambda ds: len(ds) == 5 and all(d.status != "pending" for d in ds), core)
    await asyncio.to_thread(controller.stop)
    (mail,) = sink.messages
    parsed = email.message_from_bytes(mail, policy=email.policy.default)
    assert parsed["To"] == "admin@acme.example" and "приостановлена" in str(parsed["Subject"])
    after = states(crm.seen[tried:])  # what was still pending (an event not yet given up, the new ones)
    assert after == [s for s in ("new", "calling", "connected", "disconnected", "end") if s in after]
    assert after[-3:] == ["connected", "disconnected", "end"]
    assert any("приостановлена" in r.verdict for r in await out_log(core))


async def test_only_domains_with_the_service_and_notifications_on_get_deliveries(
    core: Core, t1: Tenant, t2: Tenant
) -> None:
    async with Crm().running() as crm:
        await activate(core, t1.id, crm.url, send_events=False)
        await write_events(core, recent(t1.id, "s-off") + recent(t2.id, "s-none"))
        assert await EventPump(core).pump_once() == 0
        async with core.sessions() as s:
            settings = await s.get(ApiSettings, t1.id)
            assert settings is not None
            settings.send_events = True
            settings.events_since = dt.datetime.now(dt.UTC)  # switched on now: the older call is not sent
            await s.commit()
        assert await EventPump(core).pump_once() == 0
    assert crm.seen == []


async def test_a_delivery_past_the_retention_expires_with_a_log_row(core: Core, t1: Tenant) -> None:
    await activate(core, t1.id, "")
    async with core.sessions() as s:
        s.add(
            ApiDelivery(
                domain_id=t1.id,
                method="call_events",
                session_id="old",
                seq=1,
                body='{"state":"new"}',
                created_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=8),
            )
        )
        await s.commit()
    assert await dispatch.Dispatcher(core).expire_once() == 1
    assert [d.status for d in await deliveries(core)] == ["expired"]
    (row,) = await out_log(core)
    assert row.verdict == dispatch.EXPIRED and row.request_body == '{"state":"new"}'


async def test_an_answer_later_than_the_timeout_is_retried(core: Core, t1: Tenant) -> None:
    slow: set[str] = set()

    def script(_crm: Crm, req: Seen) -> Answer:
        if req.json["state"] == "new" and not slow:
            slow.add("once")
            return Answer(200, delay_s=2.5)
        return Answer(200)

    async with Crm(script).running() as crm:
        await activate(core, t1.id, crm.url, timeout_s=1)
        await write_events(core, recent(t1.id, "s-slow"))
        await EventPump(core).pump_once()
        async with running(dispatch.Dispatcher(core).run()):
            await until(lambda ds: all(d.status == "delivered" for d in ds), core)
    assert states(crm.seen)[:2] == ["new", "new"]
    first = [r for r in await out_log(core) if '"new"' in r.request_body]
    assert [(r.attempt, r.status) for r in first] == [(1, None), (2, 200)]
    assert "Нет ответа за 1 с" in first[0].verdict
