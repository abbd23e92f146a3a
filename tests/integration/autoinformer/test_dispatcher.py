"""The dispatcher on SQLite and PostgreSQL (autoinformer.md §3.3–§3.5, §4, §7, §12)."""

from __future__ import annotations

import asyncio
import datetime as dt

from sqlalchemy import func, select, update

from tests.integration.autoinformer.conftest import LINE, START, World
from vpbx.autoinformer import status
from vpbx.autoinformer.dispatcher import dispatch_key
from vpbx.pbx.broadcast import broadcast_ids
from vpbx.store.models import (
    AiAttempt,
    AiCampaign,
    AiContact,
    AiStopEntry,
    CallRecord,
    Domain,
    DomainService,
)

MINUTE = dt.timedelta(minutes=1)


async def run_ticks(world: World, d: object, n: int = 1, step_s: float = 1.0) -> int:
    started = 0
    for _ in range(n):
        started += await d.tick()  # type: ignore[attr-defined]
        await d.drain()  # type: ignore[attr-defined]
        world.clock.advance(step_s)
    return started


async def test_claims_dial_with_ids_from_the_key_and_record_results(world: World) -> None:
    cid = await world.campaign()
    contacts = await world.contacts(cid, "79161110001", "79161110002", "79161110003")
    d = world.dispatcher()
    assert await d.tick() == 2  # at most 2 new attempts a second per campaign
    await d.drain()
    world.clock.advance(1)
    assert await d.tick() == 1
    await d.drain()
    attempts = await world.attempts(cid)
    assert len(attempts) == 3
    for a in attempts:
        assert a.state == "done" and a.outcome == "success" and a.criterion_met
        assert a.dispatch_key == dispatch_key(cid, a.contact_id, 1, 0)
        assert (a.session_id, a.call_id) == broadcast_ids(a.dispatch_key)
    req = world.dialer.requests[0]
    assert req.caller_id == LINE and req.message_prompt_id.startswith("msg-") and req.ring_timeout_s == 30
    assert {r.call_id for r in world.dialer.requests} == {a.call_id for a in attempts}
    for c in contacts:
        row = await world.contact(c)
        assert (row.status, row.attempts_made, row.last_outcome) == ("succeeded", 1, "success")
    camp = await world.campaign_row(cid)
    assert camp.first_attempt_at == START
    assert camp.status == "running"
    await d.tick()  # every contact final, auto_complete → completed
    assert (await world.campaign_row(cid)).status == "completed"


async def test_completion_makes_the_report_e_mail_due_once(world: World) -> None:
    """§6: the move to completed marks a campaign with report addresses for the report mailer."""
    cid = await world.campaign(report_emails=["boss@acme.example"])
    plain = await world.campaign()
    for c in (cid, plain):
        await world.contacts(c, "79161110001")
    d = world.dispatcher()
    await run_ticks(world, d, 3)
    assert (await world.campaign_row(cid)).status == "completed"
    assert (await world.campaign_row(cid)).report_mail == "due"
    assert (await world.campaign_row(plain)).report_mail is None


async def test_auto_complete_off_stays_running(world: World) -> None:
    cid = await world.campaign(auto_complete=False)
    await world.contacts(cid, "79161110001")
    d = world.dispatcher()
    await run_ticks(world, d, 3)
    assert (await world.campaign_row(cid)).status == "running"


async def test_two_dispatchers_racing_never_insert_two_attempts_for_one_key(world: World) -> None:
    # several fresh campaigns: the first claims of each also race to set its first_attempt_at
    campaigns = [await world.campaign(concurrency=100) for _ in range(6)]
    phones = [f"7916222{i:04d}" for i in range(18)]
    for k, cid in enumerate(campaigns):
        await world.contacts(cid, *phones[k * 3 : k * 3 + 3])
    a, b = world.dispatcher("node-a"), world.dispatcher("node-a")  # two workers of one node: same lease
    for _ in range(10):
        await asyncio.gather(a.tick(), b.tick())
        await asyncio.gather(a.drain(), b.drain())
        world.clock.advance(0.5)
    attempts = await world.attempts()
    keys = [x.dispatch_key for x in attempts]
    assert len(keys) == len(set(keys)) == len(phones)
    assert world.dialer.duplicates == 0
    assert sorted(world.dialer.numbers()) == sorted(phones)
    for cid in campaigns:
        assert (await world.campaign_row(cid)).first_attempt_at == START


async def test_lease_keeps_a_second_node_away_until_it_expires(world: World) -> None:
    cid = await world.campaign(concurrency=1)
    await world.contacts(cid, "79161110001", "79161110002")
    gate = world.dialer.gates["79161110001"] = asyncio.Event()
    a, b = world.dispatcher("node-a"), world.dispatcher("node-b")
    assert await a.tick() == 1
    assert await b.tick() == 0  # node-a holds the campaign
    assert (await world.campaign_row(cid)).lease_owner == "node-a"
    world.clock.advance(16)  # node-a stops renewing (it is "dead"); the lease runs out
    assert await b.tick() == 1
    assert (await world.campaign_row(cid)).lease_owner == "node-b"
    assert await a.tick() == 0  # node-a lost it and claims nothing
    gate.set()
    await asyncio.gather(a.drain(), b.drain())
    assert world.dialer.duplicates == 0


async def test_pause_committed_before_the_claim_stops_it(world: World) -> None:
    cid = await world.campaign()
    [contact] = await world.contacts(cid, "79161110001")

    async def render_then_pause(s: object, campaign: AiCampaign, c: AiContact) -> str:
        async with world.sessions() as other:  # the admin's pause lands between selection and claim
            row = await other.get(AiCampaign, cid)
            assert row is not None
            await status.set_status(other, row, "paused", domain="d", actor="api", now=world.clock.now())
            await other.commit()
        return "msg"

    d = world.dispatcher(render=render_then_pause)
    assert await d.tick() == 0
    assert await world.attempts(cid) == []
    assert world.dialer.requests == []
    row = await world.contact(contact)
    assert (row.status, row.attempts_made) == ("pending", 0)


async def test_pause_after_the_claim_lets_the_call_finish_and_claims_nothing_more(world: World) -> None:
    cid = await world.campaign(concurrency=1)
    first, second = await world.contacts(cid, "79161110001", "79161110002")
    gate = world.dialer.gates["79161110001"] = asyncio.Event()
    world.dialer.script["79161110001"] = ["busy"]
    d = world.dispatcher()
    assert await d.tick() == 1
    async with world.sessions() as s:
        row = await s.get(AiCampaign, cid)
        assert row is not None
        await status.set_status(s, row, "paused", domain="d", actor="api", now=world.clock.now())
        await s.commit()
    gate.set()
    await d.drain()
    c = await world.contact(first)
    assert c.status == "waiting_retry" and c.last_outcome == "busy"
    world.clock.advance(3600 * 2)
    assert await run_ticks(world, d, 2) == 0
    assert (await world.contact(second)).status == "pending"
    assert world.dialer.numbers() == ["79161110001"]


async def test_restart_closes_an_attempt_committed_before_its_invite(world: World) -> None:
    cid = await world.campaign()
    [contact] = await world.contacts(cid, ["79161110001", "79161110002"])
    key = dispatch_key(cid, contact, 1, 0)
    sid, call_id = broadcast_ids(key)
    async with world.sessions() as s:  # what a claim left when the process died before the INVITE
        s.add(
            AiAttempt(
                domain_id=world.domain_id,
                campaign_id=cid,
                contact_id=contact,
                attempt_no=1,
                number_index=0,
                dispatch_key=key,
                phone="79161110001",
                state="dialing",
                started_at=START,
                session_id=sid,
                call_id=call_id,
            )
        )
        c = await s.get(AiContact, contact)
        assert c is not None
        c.status, c.attempts_made = "in_progress", 1
        camp = await s.get(AiCampaign, cid)
        assert camp is not None
        camp.lease_owner, camp.lease_until = "dead-node", START - MINUTE
        await s.commit()
    world.clock.advance(120)
    d = world.dispatcher()
    assert await d.reconcile() == 1
    [a] = await world.attempts(cid)
    assert (a.state, a.outcome, a.detail) == ("done", "failed", "dispatcher_restart")
    c = await world.contact(contact)
    assert c.status == "waiting_retry" and c.attempts_made == 1
    assert c.next_attempt_at is not None and c.next_attempt_at >= world.clock.now() + 60 * MINUTE
    assert await run_ticks(world, d, 3) == 0  # never immediately
    assert world.dialer.requests == []
    world.clock.set(c.next_attempt_at)
    assert await run_ticks(world, d, 1) == 1
    # the round goes on with the next number, but only after the interval (a restart never redials at once)
    attempts = await world.attempts(cid)
    assert [(x.attempt_no, x.number_index) for x in attempts] == [(1, 0), (1, 1)]
    assert world.dialer.numbers() == ["79161110002"]
    assert call_id not in world.dialer.seen  # the old key is never dialled


async def test_restart_takes_the_result_from_the_call_history(world: World) -> None:
    cid = await world.campaign()
    [contact] = await world.contacts(cid, "79161110001")
    key = dispatch_key(cid, contact, 1, 0)
    sid, call_id = broadcast_ids(key)
    async with world.sessions() as s:
        s.add(
            AiAttempt(
                domain_id=world.domain_id,
                campaign_id=cid,
                contact_id=contact,
                attempt_no=1,
                number_index=0,
                dispatch_key=key,
                phone="79161110001",
                state="in_call",
                started_at=START,
                session_id=sid,
                call_id=call_id,
            )
        )
        s.add(
            CallRecord(
                session_id=sid,
                domain_id=world.domain_id,
                call_type="outbound",
                call_kind="autoinformer",
                started_at=START,
                ended_at=START + dt.timedelta(seconds=3),
                status_code=486,
            )
        )
        c = await s.get(AiContact, contact)
        assert c is not None
        c.status = "in_progress"
        await s.commit()
    d = world.dispatcher()
    assert await d.reconcile() == 1
    [a] = await world.attempts(cid)
    assert (a.outcome, a.sip_code, a.detail) == ("busy", 486, None)
    assert (await world.contact(contact)).status == "waiting_retry"


async def test_end_at_completes_and_expires_the_rest(world: World) -> None:
    cid = await world.campaign(
        schedule={"start_at": "2026-06-16 09:00:00", "end_at": "2026-06-16 12:30:00"}, concurrency=1
    )
    first, second = await world.contacts(cid, "79161110001", "79161110002")
    gate = world.dialer.gates["79161110001"] = asyncio.Event()
    world.dialer.script["79161110001"] = ["busy"]
    d = world.dispatcher()
    assert await d.tick() == 1
    world.clock.advance(31 * 60)  # 12:31 Moscow
    await d.tick()
    assert (await world.campaign_row(cid)).status == "completed"
    assert (await world.contact(second)).status == "expired"
    gate.set()
    await d.drain()  # the call in progress finishes normally, then its contact expires too
    c = await world.contact(first)
    assert (c.status, c.last_outcome) == ("expired", "busy")


async def test_scheduled_starts_at_start_at(world: World) -> None:
    cid = await world.campaign(status="scheduled", schedule={"start_at": "2026-06-16 12:10:00"})
    await world.contacts(cid, "79161110001")
    d = world.dispatcher()
    assert await d.tick() == 0
    assert (await world.campaign_row(cid)).status == "scheduled"
    world.clock.advance(10 * 60)
    assert await d.tick() == 1
    assert (await world.campaign_row(cid)).status == "running"


async def test_channel_budget_limit_3_busy_2_reserve_1_starts_nothing_and_uses_no_attempt(
    world: World,
) -> None:
    await world.edit_domain(lambda dm: setattr(dm, "channel_limit", 3))
    cid = await world.campaign()
    [contact] = await world.contacts(cid, "79161110001")
    world.busy[world.domain_id] = 2
    d = world.dispatcher()
    assert await run_ticks(world, d, 3) == 0
    assert await world.attempts(cid) == []
    c = await world.contact(contact)
    assert (c.status, c.attempts_made) == ("pending", 0)
    world.busy[world.domain_id] = 1  # a channel frees up
    assert await run_ticks(world, d, 1) == 1


async def test_effective_concurrency_counts_own_calls_and_shares_round_robin(world: World) -> None:
    await world.edit_domain(lambda dm: setattr(dm, "channel_limit", 4))  # 4 − reserve 1 = 3 for campaigns
    a = await world.campaign(concurrency=5)
    b = await world.campaign(concurrency=5)
    pa = [f"7916333{i:04d}" for i in range(4)]
    pb = [f"7916444{i:04d}" for i in range(4)]
    await world.contacts(a, *pa)
    await world.contacts(b, *pb)
    for p in pa + pb:
        world.dialer.gates[p] = asyncio.Event()
    d = world.dispatcher()
    assert await d.tick() == 3
    world.clock.advance(1)
    assert await d.tick() == 0  # three calls up: the budget is used
    dialled = world.dialer.numbers()
    assert {n[:7] for n in dialled} == {"7916333", "7916444"}  # both campaigns got a share
    for gate in world.dialer.gates.values():
        gate.set()
    await d.drain()


async def test_financial_block_moves_to_error_and_resume_continues(world: World) -> None:
    cid = await world.campaign(concurrency=1)
    _first, second = await world.contacts(cid, "79161110001", "79161110002")
    d = world.dispatcher()
    assert await run_ticks(world, d, 1) == 1
    await world.edit_domain(lambda dm: setattr(dm, "status", "blocked"))
    assert await run_ticks(world, d, 2) == 0
    camp = await world.campaign_row(cid)
    assert (camp.status, camp.error_reason) == ("error", "domain_blocked")
    assert (await world.contact(second)).status == "pending"
    await world.edit_domain(lambda dm: setattr(dm, "status", "active"))
    async with world.sessions() as s:  # the admin resumes once the block is lifted
        row = await s.get(AiCampaign, cid)
        assert row is not None
        await status.set_status(s, row, "running", domain="d", actor="api", now=world.clock.now())
        await s.commit()
    assert await run_ticks(world, d, 1) == 1
    assert (await world.contact(second)).status == "succeeded"
    assert world.dialer.numbers() == ["79161110001", "79161110002"]


async def test_error_causes(world: World) -> None:
    cid = await world.campaign(caller_id="74950000000")
    await world.contacts(cid, "79161110001")
    d = world.dispatcher()
    await d.tick()
    camp = await world.campaign_row(cid)
    assert (camp.status, camp.error_reason) == ("error", "caller_id_unavailable")
    cid2 = await world.campaign(message={"segments": [{"type": "file", "file_id": "ab" * 16}]})
    await d.tick()
    assert (await world.campaign_row(cid2)).error_reason == "audio_unavailable"
    assert world.dialer.requests == []
    # the service switched off, then the domain blocked: read with the pass's campaign query
    cid3 = await world.campaign()
    async with world.sessions() as s:
        await s.execute(
            update(DomainService).where(DomainService.domain_id == world.domain_id).values(enabled=False)
        )
        await s.commit()
    await d.tick()
    assert (await world.campaign_row(cid3)).error_reason == "service_disabled"
    cid4 = await world.campaign()
    async with world.sessions() as s:
        await s.execute(update(Domain).where(Domain.id == world.domain_id).values(status="blocked"))
        await s.commit()
    await d.tick()
    assert (await world.campaign_row(cid4)).error_reason == "domain_blocked"
    assert world.dialer.requests == []


async def test_stop_list_before_an_attempt_excludes(world: World) -> None:
    cid = await world.campaign()
    [contact] = await world.contacts(cid, "79161110001")
    async with world.sessions() as s:
        s.add(AiStopEntry(domain_id=world.domain_id, phone="79161110001", source="manual"))
        await s.commit()
    d = world.dispatcher()
    assert await d.tick() == 0
    assert (await world.contact(contact)).status == "excluded"
    assert await world.attempts(cid) == []


async def test_outside_the_window_waits_without_using_an_attempt(world: World) -> None:
    cid = await world.campaign(
        schedule={"start_at": "2026-06-16 09:00:00", "windows": [{"from": "15:00", "to": "19:00"}]}
    )
    [contact] = await world.contacts(cid, "79161110001")
    d = world.dispatcher()
    assert await d.tick() == 0
    c = await world.contact(contact)
    assert (c.status, c.attempts_made) == ("pending", 0)
    assert c.next_attempt_at == START + dt.timedelta(hours=3)  # 15:00 Moscow
    world.clock.set(START + dt.timedelta(hours=3))
    assert await d.tick() == 1


async def test_recipient_zone_utc7_window_opens_at_6_moscow(world: World) -> None:
    world.clock.set(dt.datetime(2026, 6, 16, 2, 0, tzinfo=dt.UTC))  # 05:00 Moscow, 09:00 Novosibirsk
    cid = await world.campaign(
        schedule={"start_at": "2026-06-16 01:00:00", "windows": [{"from": "10:00", "to": "13:00"}]}
    )
    [nsk] = await world.contacts(cid, "73832000001", tz="Asia/Novosibirsk")
    [msk] = await world.contacts(cid, "74952000001")
    d = world.dispatcher()
    assert await d.tick() == 0
    world.clock.set(dt.datetime(2026, 6, 16, 3, 0, tzinfo=dt.UTC))  # 06:00 Moscow = 10:00 Novosibirsk
    assert await d.tick() == 1
    await d.drain()
    assert world.dialer.numbers() == ["73832000001"]
    assert (await world.contact(nsk)).status == "succeeded"
    assert (await world.contact(msk)).next_attempt_at == dt.datetime(2026, 6, 16, 7, 0, tzinfo=dt.UTC)


async def test_busy_retries_after_the_interval_inside_a_window(world: World) -> None:
    cid = await world.campaign()
    [contact] = await world.contacts(cid, "79161110001")
    world.dialer.script["79161110001"] = ["busy", "success"]
    d = world.dispatcher()
    assert await run_ticks(world, d, 1) == 1
    c = await world.contact(contact)
    [a1] = await world.attempts(cid)
    assert c.status == "waiting_retry" and a1.ended_at is not None
    assert c.next_attempt_at is not None and c.next_attempt_at - a1.ended_at >= 60 * MINUTE
    assert await run_ticks(world, d, 5, step_s=600) == 0  # 50 minutes: not yet
    world.clock.set(c.next_attempt_at)
    assert await run_ticks(world, d, 1) == 1
    a = await world.attempts(cid)
    assert [(x.attempt_no, x.outcome) for x in a] == [(1, "busy"), (2, "success")]
    assert (await world.contact(contact)).status == "succeeded"


async def test_numbers_of_one_contact_ring_one_after_another_and_success_ends_it(world: World) -> None:
    cid = await world.campaign()
    [contact] = await world.contacts(cid, ["79161110001", "79161110002", "79161110003"])
    world.dialer.script["79161110001"] = ["busy"]
    d = world.dispatcher()
    await run_ticks(world, d, 4)
    assert world.dialer.numbers() == ["79161110001", "79161110002"]
    assert world.dialer.overlaps == []
    c = await world.contact(contact)
    assert (c.status, c.attempts_made) == ("succeeded", 1)
    assert [(a.attempt_no, a.number_index) for a in await world.attempts(cid)] == [(1, 0), (1, 1)]


async def test_dropped_numbers_leave_later_rounds_and_all_invalid_is_invalid_number(world: World) -> None:
    cid = await world.campaign()
    [contact] = await world.contacts(cid, ["79161110001", "79161110002"])
    world.dialer.script["79161110001"] = ["invalid"]
    world.dialer.script["79161110002"] = ["no_answer", "invalid"]
    d = world.dispatcher()
    await run_ticks(world, d, 3)
    c = await world.contact(contact)
    assert c.dropped == [0] and c.status == "waiting_retry"
    assert c.next_attempt_at is not None
    world.clock.set(c.next_attempt_at)
    await run_ticks(world, d, 3)
    assert world.dialer.numbers() == ["79161110001", "79161110002", "79161110002"]
    c = await world.contact(contact)
    assert (c.status, c.attempts_made) == ("invalid_number", 2)


async def test_opt_out_puts_every_number_on_the_stop_list(world: World) -> None:
    cid = await world.campaign()
    [contact] = await world.contacts(cid, ["79161110001", "79161110002"])
    world.dialer.script["79161110001"] = ["opt_out"]
    d = world.dispatcher()
    await run_ticks(world, d, 2)
    c = await world.contact(contact)
    assert c.status == "opted_out" and c.digits == "9"
    [a] = await world.attempts(cid)
    assert (a.outcome, a.criterion_met) == ("opted_out", True)
    async with world.sessions() as s:
        stop = (await s.execute(select(AiStopEntry.phone, AiStopEntry.source, AiStopEntry.campaign_id))).all()
    assert sorted(stop) == [("79161110001", "opt_out", cid), ("79161110002", "opt_out", cid)]
    # another campaign of the domain never calls it again
    other = await world.campaign()
    [again] = await world.contacts(other, "79161110002")
    await run_ticks(world, d, 1)
    assert (await world.contact(again)).status == "excluded"


async def test_collections_cap_waits_for_the_next_allowed_day(world: World) -> None:
    earlier = await world.campaign(auto_complete=False)
    cid = await world.campaign(compliance_profile="collections")
    [first] = await world.contacts(earlier, "79161110001")
    d = world.dispatcher()
    await run_ticks(world, d, 1)  # answered today in another campaign of the domain
    assert (await world.contact(first)).status == "succeeded"
    [contact] = await world.contacts(cid, "79161110001")
    await run_ticks(world, d, 2)
    c = await world.contact(contact)
    assert (c.status, c.detail, c.attempts_made) == ("waiting_retry", "frequency_cap", 0)
    assert c.next_attempt_at == dt.datetime(2026, 6, 17, 7, 0, tzinfo=dt.UTC)  # tomorrow 10:00 Moscow
    world.clock.set(c.next_attempt_at)
    assert await run_ticks(world, d, 1) == 1
    assert (await world.contact(contact)).status == "succeeded"


async def test_daily_attempt_cap(world: World) -> None:
    from vpbx.store.models import PlatformSetting

    async with world.sessions() as s:
        s.add(PlatformSetting(key="autoinformer.limits", value={"daily_attempts": 2}))
        await s.commit()
    cid = await world.campaign()
    await world.contacts(cid, "79161110001", "79161110002", "79161110003")
    d = world.dispatcher()
    assert await run_ticks(world, d, 3) == 2
    async with world.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(AiAttempt)) == 2


async def test_the_other_domain_is_untouched(world: World) -> None:
    async with world.sessions() as s:
        other = Domain(name="other.vpbx.test")
        s.add(other)
        await s.commit()
    cid = await world.campaign()
    await world.contacts(cid, "79161110001")
    async with world.sessions() as s:
        s.add(AiStopEntry(domain_id=other.id, phone="79161110001", source="manual"))
        await s.commit()
    d = world.dispatcher()
    assert await run_ticks(world, d, 1) == 1  # another domain's stop list never affects this one


async def test_a_library_file_gone_while_rendering_is_the_campaigns_error(world: World) -> None:
    from vpbx.errors import VpbxError

    class AudioGone(VpbxError):
        code = "audio-unavailable"

    async def render(s: object, campaign: AiCampaign, contact: AiContact) -> str:
        raise AudioGone("Audio file unavailable")

    cid = await world.campaign()
    [contact] = await world.contacts(cid, "79161110001")
    d = world.dispatcher(render=render)
    assert await d.tick() == 0
    camp = await world.campaign_row(cid)
    assert (camp.status, camp.error_reason) == ("error", "audio_unavailable")
    c = await world.contact(contact)
    assert (c.status, c.render_failures) == ("pending", 0)


async def test_a_contact_the_renderer_gives_up_on_ends_as_error(world: World) -> None:
    async def render(s: object, campaign: AiCampaign, contact: AiContact) -> str | None:
        contact.render_failures += 1
        if contact.render_failures >= 3:
            contact.status, contact.detail = "error", "tts_failed"
        return None

    cid = await world.campaign()
    [contact] = await world.contacts(cid, "79161110001")
    d = world.dispatcher(render=render)
    assert await run_ticks(world, d, 4) == 0
    c = await world.contact(contact)
    assert (c.status, c.detail, c.attempts_made) == ("error", "tts_failed", 0)
    assert world.dialer.requests == []


async def test_the_keys_tts_segments_go_to_the_engine_as_rendered_prompts(world: World) -> None:
    """§3.5: confirm's and opt_out's TTS confirmation reaches the engine as the prompt the renderer made for
    the contact; a contact whose confirmation cannot be rendered is not dialled and the failure is its own."""
    rendered: list[str] = []

    async def render_keys(s: object, campaign: AiCampaign, contact: AiContact) -> dict[str, str] | None:
        if contact.phones[0].endswith("2"):
            contact.render_failures += 1
            return None
        rendered.append(contact.phones[0])
        return {"1": f"confirm-{contact.id.hex}", "9": f"optout-{contact.id.hex}"}

    tts = {"type": "tts", "text": "Спасибо"}
    cid = await world.campaign(
        dtmf={
            "actions": {
                "1": {"action": "confirm", "segment": tts},
                "9": {"action": "opt_out", "segment": tts},
                "2": {"action": "repeat"},
            }
        }
    )
    ok, failing = await world.contacts(cid, "79161110001", "79161110002")
    d = world.dispatcher(render_keys=render_keys)
    assert await run_ticks(world, d, 2) == 1
    [req] = world.dialer.requests
    assert req.number == "79161110001" and rendered == ["79161110001"]
    assert req.actions["1"].action == "confirm" and req.actions["1"].prompt_id == f"confirm-{ok.hex}"
    assert req.actions["9"].action == "opt_out" and req.actions["9"].prompt_id == f"optout-{ok.hex}"
    assert req.actions["2"].prompt_id is None
    c = await world.contact(failing)
    assert (c.status, c.attempts_made) == ("pending", 0) and c.render_failures >= 1


async def test_start_runs_ticks_and_stop_records_the_calls_and_releases_the_lease(world: World) -> None:
    cid = await world.campaign()
    [contact] = await world.contacts(cid, "79161110001")
    gate = world.dialer.gates["79161110001"] = asyncio.Event()
    d = world.dispatcher()
    await d.start()
    try:
        async with asyncio.timeout(10):
            await world.dialer.started.wait()
    finally:
        gate.set()
        await d.stop()
    c = await world.contact(contact)
    assert c.status == "succeeded"
    camp = await world.campaign_row(cid)
    assert camp.lease_owner is None


async def test_in_window_follows_the_contacts_zones(world: World) -> None:
    from vpbx.autoinformer.dispatcher import in_window

    cid = await world.campaign(
        schedule={"start_at": "2026-06-16 01:00:00", "windows": [{"from": "10:00", "to": "13:00"}]}
    )
    async with world.sessions() as s:
        camp, dom = await s.get(AiCampaign, cid), await s.get(Domain, world.domain_id)
        assert camp is not None and dom is not None
        six_msk = dt.datetime(2026, 6, 16, 3, 0, tzinfo=dt.UTC)
        assert not await in_window(s, camp, dom, six_msk)  # no contacts: the domain's zone, 06:00 there
        await world.contacts(cid, "73832000001", tz="Asia/Novosibirsk")
        assert await in_window(s, camp, dom, six_msk)  # 10:00 for the Novosibirsk recipient
        assert not await in_window(s, camp, dom, six_msk - MINUTE)


async def test_a_contact_whose_rounds_are_used_up_is_finished_without_a_call(world: World) -> None:
    cid = await world.campaign(attempts={"max": 1, "interval_min": 60, "retry_on": ["busy"]})
    [contact] = await world.contacts(cid, "79161110001")
    key = dispatch_key(cid, contact, 1, 0)
    sid, call_id = broadcast_ids(key)
    async with world.sessions() as s:  # the only round was dialled; the contact still waits for a retry
        s.add(
            AiAttempt(
                domain_id=world.domain_id,
                campaign_id=cid,
                contact_id=contact,
                attempt_no=1,
                number_index=0,
                dispatch_key=key,
                phone="79161110001",
                state="done",
                outcome="busy",
                started_at=START,
                ended_at=START,
                session_id=sid,
                call_id=call_id,
            )
        )
        c = await s.get(AiContact, contact)
        assert c is not None
        c.status, c.attempts_made, c.next_attempt_at = "waiting_retry", 1, world.clock.now()
        await s.commit()
    d = world.dispatcher()
    assert await run_ticks(world, d, 2) == 0
    c = await world.contact(contact)
    assert (c.status, c.next_attempt_at) == ("attempts_exhausted", None)
    assert [a.attempt_no for a in await world.attempts(cid)] == [1]
    assert world.dialer.requests == []
