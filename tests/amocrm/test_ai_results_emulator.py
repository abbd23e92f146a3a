"""``amo.ai_result`` against the amoCRM emulator over real HTTP with the real client: autoinformer contacts
that reached a final status (their dials stored as the dispatcher stores them) are queued through the
dispatcher's own ``events.number_finished`` and written by the job runner: one call note per contact whose
number amoCRM knows, none for an unknown number, a task with «Создавать задачу в amoCRM», nothing twice on a
re-run, nothing queued for a domain without a binding."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.amocrm.emu_kit import DEMO, Emu, emulator
from tests.amocrm.test_finish_emulator import api_calls, created, emu_world
from tests.amocrm.unit.conftest import world_settings
from tests.amocrm.unit.jobs_kit import World
from tests.autoinformer.campaign_kit import add_campaign, running_spec
from vpbx.amocrm.ai_results import KIND, AiResultHandler, result_key
from vpbx.amocrm.finish import FinishSettings
from vpbx.amocrm.jobs import enqueue
from vpbx.autoinformer import events
from vpbx.autoinformer.schemas import CampaignSpec
from vpbx.pbx import domains
from vpbx.pbx.broadcast import broadcast_ids
from vpbx.settings import Settings
from vpbx.store.models import AiAttempt, AiCampaign, AiContact, CallRecord, CrmJob

KNOWN = "79161234567"  # Анна Смирнова (9001) in the demo fixture, responsible 5001
KNOWN_8 = "79167654321"  # Олег Ким (9002), stored there as 8 916 765-43-21
UNKNOWN = "79031112233"
ORIGIN = "https://pbx.example"
__all__ = ["world_settings"]  # SQLite and PostgreSQL (tests/amocrm/unit/conftest.py)


@pytest.fixture
async def emu() -> AsyncIterator[Emu]:
    async with emulator() as e:
        yield e


@pytest.fixture
async def world(world_settings: Settings, emu: Emu) -> AsyncIterator[World]:
    w, pool = await emu_world(world_settings, emu)
    w.runner.handlers[KIND] = AiResultHandler(FinishSettings(source_name="Виртуальная АТС", origin=ORIGIN))
    try:
        yield w
    finally:
        await pool.aclose()
        await w.core.engine.dispose()


async def finish_contacts(
    w: World,
    domain_id: uuid.UUID,
    spec: CampaignSpec,
    results: list[tuple[str | list[str], str, str, bool]],
) -> tuple[AiCampaign, list[AiContact]]:
    """A campaign whose contacts were each dialled once (phone(s), outcome, final status, recorded) and
    reached their final status: the dispatcher's ``number_finished`` for each, in one transaction."""
    now = w.clock.now()
    async with w.core.sessions() as s, s.begin():
        campaign = await add_campaign(s, domain_id, spec, [p for p, *_ in results], status="running")
        await s.flush()
        contacts = list(
            await s.scalars(
                select(AiContact).where(AiContact.campaign_id == campaign.id).order_by(AiContact.row_no)
            )
        )
        for contact, (_phones, outcome, status, recorded) in zip(contacts, results, strict=True):
            key = f"{campaign.id.hex}:{contact.id.hex}:1:0"
            session_id, call_id = broadcast_ids(key)
            answered = outcome in ("success", "answered_incomplete", "opted_out")
            s.add(
                AiAttempt(
                    domain_id=domain_id,
                    campaign_id=campaign.id,
                    contact_id=contact.id,
                    attempt_no=1,
                    number_index=0,
                    dispatch_key=key,
                    phone=contact.phones[0],
                    state="done",
                    started_at=now - dt.timedelta(seconds=40),
                    answered_at=now - dt.timedelta(seconds=30) if answered else None,
                    ended_at=now,
                    outcome=outcome,
                    listen_s=12.0 if answered else 0.0,
                    digits="9" if outcome == "opted_out" else "",
                    session_id=session_id,
                    call_id=call_id,
                )
            )
            if recorded:
                s.add(
                    CallRecord(
                        domain_id=domain_id,
                        session_id=session_id,
                        call_type="outbound",
                        started_at=now - dt.timedelta(seconds=40),
                        ended_at=now,
                        is_record=True,
                    )
                )
            contact.status, contact.last_outcome, contact.attempts_made = status, outcome, 1
            contact.last_session_id, contact.last_attempt_at = session_id, now
            contact.best_listen_s = 12.0 if answered else None
            contact.digits = "9" if outcome == "opted_out" else ""
            await events.number_finished(
                s, domain="demo.vpbx.test", campaign=campaign, contact=contact, at=now
            )
    return campaign, contacts


def ai_notes(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [n for n in created(state, "notes") if "Автоинформатор" in str(n["params"].get("call_result"))]


async def ai_jobs(w: World) -> list[CrmJob]:
    return [j for j in await w.jobs() if j.kind == KIND]


async def test_one_note_per_known_contact_none_for_unknown_and_nothing_twice(world: World, emu: Emu) -> None:
    w = world
    spec = running_spec("Напоминание об оплате", record=True)
    campaign, contacts = await finish_contacts(
        w,
        w.domain_id,
        spec,
        [
            (KNOWN, "success", "succeeded", True),
            (UNKNOWN, "success", "succeeded", False),
            ([UNKNOWN[:-1] + "4", KNOWN_8], "busy", "attempts_exhausted", False),  # the 2nd number is known
        ],
    )
    jobs = await ai_jobs(w)
    assert sorted(j.key for j in jobs) == sorted(f"{campaign.id.hex}:{c.id.hex}" for c in contacts)
    await w.runner.run_until_idle()
    assert {j.state for j in await ai_jobs(w)} == {"done"}
    state = await emu.state(DEMO)
    notes = {n["entity_id"]: n for n in ai_notes(state)}
    assert sorted(notes) == [9001, 9002]
    anna, oleg = notes[9001], notes[9002]
    assert anna["note_type"] == "call_out"
    assert anna["params"]["uniq"] == contacts[0].last_session_id
    assert anna["params"]["phone"] == "+" + KNOWN
    assert anna["params"]["call_status"] == 4
    assert anna["params"]["duration"] == 30
    assert "«Напоминание об оплате»" in anna["params"]["call_result"]
    assert "Успешно" in anna["params"]["call_result"] and "прослушано 12 с" in anna["params"]["call_result"]
    assert anna["params"]["link"].startswith(ORIGIN + "/rec/amo/")
    assert oleg["params"]["call_status"] == 7 and "link" not in oleg["params"]
    assert "Попытки исчерпаны" in oleg["params"]["call_result"]
    assert not created(state, "contacts")  # the unknown number makes no contact
    assert not created(state, "tasks")  # the option is off

    # the same contacts finishing again queue nothing; a re-run of the done jobs writes nothing
    async with w.core.sessions() as s, s.begin():
        camp = await s.get(AiCampaign, campaign.id)
        assert camp is not None
        for c in contacts:
            row = await s.get(AiContact, c.id)
            assert row is not None
            await events.number_finished(
                s, domain="demo.vpbx.test", campaign=camp, contact=row, at=w.clock.now()
            )
        await s.execute(
            update(CrmJob).where(CrmJob.kind == KIND).values(state="pending", run_after=w.clock.now())
        )
    assert len(await ai_jobs(w)) == 3
    w.clock.advance(600)  # past the phone cache's negative TTL: only the ledger keeps the lookups away
    before = len(await api_calls(emu))
    await w.runner.run_until_idle()
    assert len(await api_calls(emu)) == before  # the ledger: every step already done or skipped
    assert len(ai_notes(await emu.state(DEMO))) == 2


async def test_an_in_flight_note_is_verified_not_sent_again(world: World, emu: Emu) -> None:
    w = world
    _campaign, [contact] = await finish_contacts(
        w, w.domain_id, running_spec("Проверка"), [(KNOWN, "success", "succeeded", False)]
    )
    await w.runner.run_until_idle()
    assert len(ai_notes(await emu.state(DEMO))) == 1
    # as if the answer to the note's POST had been lost: the step is in flight, the job runs again
    [job] = await ai_jobs(w)
    steps = dict(job.payload["steps"])
    steps["note"] = {**steps["note"], "state": "in_flight", "id": None}
    async with w.core.sessions() as s, s.begin():
        await s.execute(
            update(CrmJob)
            .where(CrmJob.id == job.id)
            .values(state="pending", run_after=w.clock.now(), payload={**job.payload, "steps": steps})
        )
    await w.runner.run_until_idle()
    assert len(ai_notes(await emu.state(DEMO))) == 1
    [job] = await ai_jobs(w)
    assert job.payload["steps"]["note"]["state"] == "done" and job.payload["steps"]["note"]["adopted"]
    assert contact.last_session_id


async def test_the_task_option_adds_a_task_on_the_contact(world: World, emu: Emu) -> None:
    w = world
    spec = running_spec(
        "С задачей", amocrm_task={"text": "Перезвонить клиенту", "responsible": "5003", "due_days": 2}
    )
    await finish_contacts(
        w,
        w.domain_id,
        spec,
        [(KNOWN, "opted_out", "opted_out", False), (UNKNOWN, "success", "succeeded", False)],
    )
    await w.runner.run_until_idle()
    state = await emu.state(DEMO)
    [note] = ai_notes(state)
    assert "нажато: 9" in note["params"]["call_result"]
    [task] = created(state, "tasks")
    assert task["text"] == "Перезвонить клиенту"
    assert task["entity_type"] == "contacts" and task["entity_id"] == 9001
    assert task["responsible_user_id"] == 5003
    assert int(task["complete_till"]) > int((w.clock.now() + dt.timedelta(days=1)).timestamp())
    # the job again: no second task
    async with w.core.sessions() as s, s.begin():
        await s.execute(
            update(CrmJob).where(CrmJob.kind == KIND).values(state="pending", run_after=w.clock.now())
        )
    await w.runner.run_until_idle()
    assert len(created(await emu.state(DEMO), "tasks")) == 1


async def test_a_domain_without_a_binding_queues_nothing(world: World, emu: Emu) -> None:
    w = world
    async with w.core.sessions() as s:
        other = await domains.create_domain(
            s, domains.DomainInput(name=f"other-{secrets.token_hex(3)}.vpbx.test")
        )
        await s.commit()
        other_id = other.id
    await finish_contacts(w, other_id, running_spec("Чужая"), [(KNOWN, "success", "succeeded", False)])
    assert not await ai_jobs(w)
    async with w.core.sessions() as s:
        assert not list(await s.scalars(select(CrmJob).where(CrmJob.kind == KIND)))
    await w.runner.run_until_idle()
    assert not ai_notes(await emu.state(DEMO))


async def test_a_job_naming_another_domains_campaign_writes_nothing(world: World, emu: Emu) -> None:
    w = world
    async with w.core.sessions() as s:
        other = await domains.create_domain(
            s, domains.DomainInput(name=f"other-{secrets.token_hex(3)}.vpbx.test")
        )
        await s.commit()
        other_id = other.id
    campaign, [contact] = await finish_contacts(
        w, other_id, running_spec("Чужая"), [(KNOWN, "success", "succeeded", False)]
    )
    async with w.core.sessions() as s, s.begin():  # a forged job on this domain's binding
        await enqueue(
            s,
            binding_id=w.binding_id,
            kind=KIND,
            key=result_key(campaign.id, contact.id),
            payload={"campaign_id": campaign.id.hex, "contact_id": contact.id.hex},
            run_after=w.clock.now(),
        )
    await w.runner.run_until_idle()
    assert [j.state for j in await ai_jobs(w)] == ["done"]
    assert not ai_notes(await emu.state(DEMO))
    assert not await api_calls(emu)


async def test_a_contact_never_dialled_queues_nothing(world: World) -> None:
    w = world
    async with w.core.sessions() as s, s.begin():
        campaign = await add_campaign(s, w.domain_id, running_spec("Остановлена"), [KNOWN], status="stopped")
        await s.flush()
        contact = await s.scalar(select(AiContact).where(AiContact.campaign_id == campaign.id))
        assert contact is not None
        contact.status = "cancelled"
        await events.number_finished(
            s, domain="demo.vpbx.test", campaign=campaign, contact=contact, at=w.clock.now()
        )
    assert not await ai_jobs(w)
