"""The call-events consumer (amocrm.md §5.1–5.3) and the job runner's leases (§5.6–5.7): a restart re-reads
without applying an event twice, a job whose worker died (``kill -9``: its lease expires) is taken over, a
live lease is never taken, and another domain's calls never reach a binding."""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import uuid

from sqlalchemy import select, update

from tests.amocrm.unit.fake_amo import FakeAmo, FakeClients
from tests.amocrm.unit.jobs_kit import DOMAIN, LINE, World
from vpbx.amocrm.calls import FINISH, CallConsumer, CallJobs
from vpbx.amocrm.errors import AmoReauthRequired, AmoServerError
from vpbx.amocrm.finish import FinishHandler, FinishSettings
from vpbx.amocrm.jobs import JobRunner, queue_health, release_held, retry_dead
from vpbx.app import build_core
from vpbx.pbx import domains
from vpbx.pbx.bus import CallEvent, SessionId
from vpbx.pbx.history import apply_events
from vpbx.settings import AmoSettings, Settings
from vpbx.store.models import AmoCall, CrmBinding, CrmJob

NEW = "79031112233"


async def test_a_restarted_consumer_applies_each_event_once(world: World) -> None:
    sid = "s-restart"
    frm = {"from_number": f"sip:{NEW}@{DOMAIN}"}
    await world.event(sid, "new", "incoming", request_number=f"sip:{LINE}@{DOMAIN}", line=LINE, **frm)
    await world.event(sid, "calling", "incoming", request_pin="101", **frm)
    await world.event(sid, "connected", "incoming", request_pin="101", **frm)
    assert await world.consumer.consume_once() == 0
    restarted = CallConsumer(world.core)  # no cursor, nothing seen: reads everything again
    world.clock.advance(60)
    await world.event(sid, "disconnected", "incoming", request_pin="101", disconnect_reason="5", **frm)
    await world.event(sid, "end", "incoming", request_pin="101", is_record=False, **frm)
    assert await restarted.consume_once() == 1
    assert await CallConsumer(world.core).consume_once() == 0  # a finished call is passed over in SQL
    call = await world.call_row(sid)
    assert call.rung_pins == ["101"] and call.answered_pins == ["101"]
    assert call.processed_seqs == [1, 2, 3, 4, 5] and call.classification == "incoming"
    assert call.client_e164 == NEW and call.line == LINE and call.direction == "incoming"
    assert call.scenario_id == world.scenario_id
    [job] = await world.jobs()
    assert (job.kind, job.key, job.state) == (FINISH, sid, "pending")


async def test_a_context_inserted_by_the_routing_hook_keeps_its_columns(world: World) -> None:
    sid = "s-routed"
    async with world.core.sessions() as s, s.begin():  # what vpbx/amocrm/routing.py writes at routing time
        s.add(
            AmoCall(
                binding_id=world.binding_id,
                session_id=sid,
                direction="incoming",
                lookup="hit",
                contact_id=9001,
                contact_name="Анна Смирнова",
                responsible_user_id=5001,
                route={"step": "responsible", "why": "contact", "pin": "101"},
            )
        )
    world.amo.add_contact(9001, "Анна Смирнова", "+79161234567", 5001)
    await world.event(sid, "new", "incoming", from_number=f"sip:79161234567@{DOMAIN}", line=LINE)
    await world.event(sid, "end", "incoming", from_number=f"sip:79161234567@{DOMAIN}", is_record=False)
    await world.settle()
    call = await world.call_row(sid)
    assert call.route == {"step": "responsible", "why": "contact", "pin": "101"} and call.contact_id == 9001
    assert call.classification == "missed.existing"
    assert "search_contacts" not in world.amo.requests  # the hook's lookup is reused


async def test_a_dead_workers_job_is_taken_over_when_its_lease_expires(world: World) -> None:
    await world.incoming(NEW, answered=["101"])
    await world.consumer.consume_once()
    now = world.clock.now()
    async with world.core.sessions() as s, s.begin():  # a worker claimed it, then died (kill -9)
        await s.execute(
            update(CrmJob).values(
                state="running", lease_owner="dead", lease_until=now + dt.timedelta(seconds=120)
            )
        )
    assert await world.runner.run_due() == 0  # a live lease is never taken
    world.clock.advance(121)
    await world.runner.run_until_idle()
    [job] = await world.jobs()
    assert job.state == "done" and job.lease_owner == "" and len(world.amo.notes) == 1


async def test_two_runners_never_run_one_job(world: World) -> None:
    for n in range(5):
        await world.incoming(f"7903111220{n}", answered=["101"])
    await world.consumer.consume_once()
    handler = FinishHandler(FinishSettings(), world.runner.handlers[FINISH].locks)  # type: ignore[attr-defined]
    other = JobRunner(world.core, FakeClients(world.amo), {FINISH: handler}, owner="other")
    started = await world.runner.run_due() + await other.run_due()
    await world.runner.drain()
    await other.drain()
    assert started == 5
    assert [j.state for j in await world.jobs()] == ["done"] * 5
    assert world.amo.requests.count("create_contacts") == 5 and len(world.amo.contacts) == 5


async def test_another_domains_calls_never_reach_the_binding(world: World) -> None:
    async with world.core.sessions() as s:
        other = await domains.create_domain(s, domains.DomainInput(name="b.vpbx.test"))
        await s.commit()
    event = CallEvent(
        session_id=SessionId("s-other"),
        seq=1,
        state="new",
        type="incoming",
        domain_id=other.id,
        domain="b.vpbx.test",
        timestamp=world.clock.now(),
        from_number=f"sip:{NEW}@b.vpbx.test",
        line=LINE,
    )
    end = dataclasses.replace(event, seq=2, state="end", is_record=False)
    async with world.core.sessions() as s, s.begin():
        await apply_events(s, [event, end], "node-1")
    assert await world.consumer.consume_once() == 0
    async with world.core.sessions() as s:
        assert not list(await s.scalars(select(AmoCall)))
    # and a second binding (domain b ↔ another account) gets only its own
    async with world.core.sessions() as s, s.begin():
        binding = CrmBinding(
            domain_id=other.id,
            external_account_id=30000002,
            hook_secret=secrets.token_hex(8),
            connected_at=world.clock.now() - dt.timedelta(days=1),
        )
        s.add(binding)
        await s.flush()
        b2 = binding.id
    sid = await world.incoming(NEW, answered=["101"])
    await world.consumer.consume_once()
    async with world.core.sessions() as s:
        jobs = {j.key: j.binding_id for j in await s.scalars(select(CrmJob))}
    assert jobs == {sid: world.binding_id, "s-other": b2}


async def test_queue_health_counts_what_waits(world: World) -> None:
    world.amo.fail("search_contacts", AmoServerError("503", status=503), times=2)
    first = await world.incoming(NEW, answered=["101"])
    await world.incoming("79031112244", answered=["101"])
    await world.settle()
    async with world.core.sessions() as s:
        health = await queue_health(s, world.binding_id)
    assert health["pending"] == 2 and health["dead"] == health["held"] == 0
    assert health["oldest_waiting_at"] is not None
    async with world.core.sessions() as s, s.begin():
        await s.execute(update(CrmJob).where(CrmJob.key == first).values(state="dead"))
    async with world.core.sessions() as s:
        job = await s.scalar(select(CrmJob).where(CrmJob.key == first))
        assert job is not None
        assert await retry_dead(s, world.binding_id, job.id, world.clock.now())
        assert not await retry_dead(s, uuid.uuid4(), job.id, world.clock.now())  # another binding's: no
        await s.commit()
        health = await queue_health(s, world.binding_id)
    assert health["pending"] == 2 and health["dead"] == 0


async def test_held_jobs_wait_for_the_reprobe_or_a_release(world: World) -> None:
    world.amo.fail("search_contacts", AmoReauthRequired("revoked"), times=2)
    await world.incoming(NEW, answered=["101"])
    await world.incoming("79031112244", answered=["101"])
    await world.settle()
    assert {j.state for j in await world.jobs()} == {"held"}
    world.clock.advance(60)
    await world.runner.run_until_idle()
    assert {j.state for j in await world.jobs()} == {"held"}  # the re-probe is hourly
    async with world.core.sessions() as s, s.begin():
        assert await release_held(s, uuid.uuid4(), world.clock.now()) == 0  # another binding's: none
        assert await release_held(s, world.binding_id, world.clock.now()) == 2
    await world.runner.run_until_idle()
    assert {j.state for j in await world.jobs()} == {"done"} and len(world.amo.notes) == 2


async def test_the_serve_runner_takes_its_retry_waits_and_lease_from_the_settings(settings: Settings) -> None:
    """``vpbx serve``'s runner (``CallJobs``): §5.7's schedule and lease by default; tests scale them."""
    for amo, schedule, hourly, lease in (
        (AmoSettings(), (10, 30, 120, 600, 1800), 3600, 120),
        (AmoSettings(job_retry_scale=0.5, job_lease_s=6), (5, 15, 60, 300, 900), 1800, 6),
    ):
        core = build_core(settings.model_copy(update={"amocrm": amo}))
        jobs = CallJobs(core, bus=None, clients=FakeClients(FakeAmo()))  # type: ignore[arg-type]
        try:
            runner = jobs.runner
            assert (runner.schedule, runner.hourly_s, runner.lease) == (
                schedule,
                hourly,
                dt.timedelta(seconds=lease),
            )
        finally:
            await core.engine.dispose()
