"""amo.finish end to end over the real call history, consumer, runner and ledger, with an in-memory amoCRM
(FakeAmo): §6's examples 1, 3, 6, 7, 8, 15 and 16 at the unit level, plus the ledger's verification
rules (§5.6) and the failure table (§5.7)."""

from __future__ import annotations

import copy
import datetime as dt
import zoneinfo
from typing import Any

from sqlalchemy import select

from tests.amocrm.unit.jobs_kit import DOMAIN, World
from vpbx.amocrm.errors import (
    AmoEntityNotFound,
    AmoForbidden,
    AmoRateLimited,
    AmoServerError,
    AmoUnknownOutcome,
    AmoValidationError,
    Violation,
)
from vpbx.store.models import AmoCall, AmoPhoneCache, AmoRecordingLink, CrmBinding, CrmJob

NEW = "79031112233"


async def test_example_1_new_client_incoming(world: World) -> None:
    sid = await world.incoming(NEW, answered=["101"], talk_s=95, is_record=True)
    await world.settle()
    amo = world.amo
    # lookup, re-check under the phone lock, contact, lead, task, note: six requests
    assert amo.requests == [
        "search_contacts",
        "search_contacts",
        "create_contacts",
        "create_leads",
        "create_tasks",
        "add_notes",
    ]
    [contact] = amo.contacts.values()
    assert contact["name"] == "Новый клиент +79031112233"
    assert contact["responsible_user_id"] == 5001
    assert contact["_embedded"]["tags"] == [{"name": "Входящий звонок"}]
    assert contact["custom_fields_values"] == [
        {"field_code": "PHONE", "values": [{"value": "+79031112233", "enum_code": "WORK"}]},
        {"field_id": 104, "values": [{"value": "Звонок на +74951234567"}]},
    ]
    [lead] = amo.leads.values()
    assert (lead["name"], lead["pipeline_id"], lead["status_id"]) == ("Звонок +79031112233", 7000, 7001)
    assert lead["responsible_user_id"] == 5001
    assert lead["custom_fields_values"] == [{"field_id": 201, "values": [{"enum_id": 2011}]}]
    assert lead["_embedded"]["contacts"] == [{"id": contact["id"], "is_main": True}]
    assert lead["request_id"] == f"{sid}:lead"
    [task] = amo.tasks.values()
    call = await world.call_row(sid)
    assert call.ended_at is not None
    assert (task["text"], task["entity_type"], task["entity_id"]) == (
        "Перезвонить +79031112233",
        "leads",
        lead["id"],
    )
    assert task["responsible_user_id"] == 5001 and task["task_type_id"] == 1
    assert task["complete_till"] == int(call.ended_at.timestamp()) + 3600
    [note] = amo.notes.values()
    assert (note["entity_type"], note["entity_id"], note["note_type"]) == (
        "contacts",
        contact["id"],
        "call_in",
    )
    params = note["params"]
    assert params["duration"] == 95 and params["call_status"] == 4 and params["uniq"] == sid
    assert params["call_result"] == "Разговор состоялся" and params["source"] == "Виртуальная АТС"
    assert params["phone"] == "+79031112233" and params["call_responsible"] == 5001
    assert note["created_by"] == note["responsible_user_id"] == 5001
    assert params["link"].startswith("https://pbx.example/rec/amo/") and params["link"].endswith(".mp3")
    async with world.core.sessions() as s:
        [link] = await s.scalars(select(AmoRecordingLink))
        cached = await s.get(AmoPhoneCache, (world.binding_id, "9031112233"))
    assert params["link"].endswith(f"/{link.token}.mp3") and link.session_id == sid
    assert cached is not None and cached.contact_id == contact["id"] and not cached.negative
    assert call.classification == "incoming.new"
    assert {k: v["state"] for k, v in call.steps.items()} == {
        "contact": "done",
        "lead": "done",
        "task": "done",
        "responsible": "skipped",
        "note": "done",
    }
    [job] = await world.jobs()
    assert job.state == "done"


async def test_example_3_existing_client_with_an_active_lead_gets_a_note_only(world: World) -> None:
    world.amo.add_contact(9001, "Анна Смирнова", "+79161234567", 5001, leads=[8001])
    world.amo.leads[8001] = {"id": 8001, "name": "Поставка", "status_id": 7002, "updated_at": 1}
    sid = await world.incoming("79161234567", answered=["101"])
    await world.settle()
    assert list(world.amo.leads) == [8001] and not world.amo.contacts[9001].get("request_id")
    [note] = world.amo.notes.values()
    assert note["entity_id"] == 9001 and note["params"]["uniq"] == sid
    assert (await world.call_row(sid)).classification == "incoming.existing"


async def test_example_6_missed_new_client_task_only(world: World) -> None:
    sid = await world.incoming("79035550000", answered=[], rung=["101", "102"])
    await world.settle()
    amo = world.amo
    assert not amo.contacts and not amo.leads and not amo.notes
    [task] = amo.tasks.values()
    call = await world.call_row(sid)
    assert task["text"] == "Пропущенный звонок +79035550000" and task["responsible_user_id"] == 5002
    assert "entity_id" not in task
    assert call.ended_at is not None and task["complete_till"] == int(call.ended_at.timestamp()) + 1800
    assert call.classification == "missed.new" and call.rung_pins == ["101", "102"]


async def test_example_7_transfer_makes_the_target_responsible(world: World) -> None:
    sid = await world.incoming("79037778899", answered=["101", "102"])
    await world.settle()
    amo = world.amo
    [contact], [lead], [task], [note] = (
        list(d.values()) for d in (amo.contacts, amo.leads, amo.tasks, amo.notes)
    )
    assert (
        contact["responsible_user_id"] == lead["responsible_user_id"] == task["responsible_user_id"] == 5002
    )
    assert note["params"]["call_responsible"] == 5002
    assert (await world.call_row(sid)).answered_pins == ["101", "102"]


async def test_example_7_with_the_option_off_the_first_who_answered_keeps_it(world: World) -> None:
    async with world.core.sessions() as s:
        from vpbx.store.models import AmoScenario

        scenario = await s.get(AmoScenario, world.scenario_id)
        assert scenario is not None
        doc = copy.deepcopy(scenario.document)
        doc["events"]["incoming"]["new"]["update_responsible_on_transfer"] = False
        scenario.document = doc
        await s.commit()
    await world.incoming("79037778899", answered=["101", "102"])
    await world.settle()
    amo = world.amo
    assert {e["responsible_user_id"] for d in (amo.contacts, amo.leads, amo.tasks) for e in d.values()} == {
        5001
    }


async def test_transfer_after_an_adopted_contact_patches_its_responsible(world: World) -> None:
    world.amo.add_contact(9100, "Уже есть", "+79037778899", 5003)
    async with world.core.sessions() as s:  # routing saw no contact (a manager made it meanwhile)
        s.add(AmoPhoneCache(binding_id=world.binding_id, phone_key="9037778899", negative=True))
        await s.commit()
    sid = await world.incoming("79037778899", answered=["101", "102"])
    # the routing hook's verdict: a miss (so the client is new), then the re-check adopts 9100
    await world.consumer.consume_once()
    async with world.core.sessions() as s, s.begin():
        call = await s.get(AmoCall, (world.binding_id, sid))
        assert call is not None
        call.lookup = "miss"
    await world.runner.run_until_idle()
    assert len(world.amo.contacts) == 1 and world.amo.contacts[9100]["responsible_user_id"] == 5002
    assert "update_contact" in world.amo.requests
    steps = (await world.call_row(sid)).steps
    assert steps["contact"]["adopted"] and steps["responsible"]["state"] == "done"


async def test_example_8_outgoing_note_on_the_existing_contact(world: World) -> None:
    world.amo.add_contact(9001, "Анна Смирнова", "+79161234567", 5001, leads=[8001])
    sid = await world.outgoing("102", "79161234567", answered=True, talk_s=30)
    missed = await world.outgoing("102", "79161234567", answered=False)
    await world.settle()
    notes = {n["params"]["uniq"]: n for n in world.amo.notes.values()}
    assert notes[sid]["note_type"] == "call_out" and notes[sid]["params"]["call_status"] == 4
    assert notes[sid]["params"]["duration"] == 30 and notes[sid]["entity_id"] == 9001
    assert notes[sid]["params"]["call_responsible"] == 5002
    assert notes[missed]["params"]["call_status"] == 6 and notes[missed]["params"]["duration"] == 0
    assert notes[missed]["params"]["call_result"] == "Не дозвонился"
    assert (await world.call_row(missed)).classification == "failed_outgoing.existing"


async def test_outgoing_from_an_unmapped_extension_and_internal_calls_are_ignored(world: World) -> None:
    ignored = await world.outgoing("104", "79161234567", answered=True)
    internal = "s-internal"
    await world.event(internal, "new", "internal", from_pin="101", request_pin="102")
    await world.event(internal, "end", "internal", from_pin="101", request_pin="102", is_record=False)
    hidden = "s-hidden"
    await world.event(
        hidden, "new", "incoming", from_number="sip:anonymous@x", request_number="sip:74951234567@x"
    )
    await world.event(hidden, "end", "incoming", from_number="sip:anonymous@x", is_record=False)
    await world.settle()
    assert not await world.jobs() and not world.amo.requests
    for sid in (ignored, internal, hidden):
        assert (await world.call_row(sid)).classification == "ignored"


async def test_example_15_lost_answer_is_verified_and_adopted(world: World) -> None:
    world.amo.fail("create_contacts", AmoUnknownOutcome("connection dropped"), apply=True)
    sid = await world.incoming(NEW, answered=["101"])
    await world.settle()
    [job] = await world.jobs()
    assert job.state == "pending" and job.attempts == 1
    assert (await world.call_row(sid)).steps["contact"]["state"] == "in_flight"
    world.clock.advance(10)  # the first retry
    await world.runner.run_until_idle()
    assert len(world.amo.contacts) == 1 and len(world.amo.leads) == 1 and len(world.amo.notes) == 1
    steps = (await world.call_row(sid)).steps
    assert steps["contact"]["adopted"] and steps["contact"]["id"] == next(iter(world.amo.contacts))
    assert (await world.jobs())[0].state == "done"


async def test_a_5xx_after_a_lead_was_written_is_verified_not_resent(world: World) -> None:
    world.amo.fail("create_leads", AmoServerError("502", status=502), apply=True)
    world.amo.fail("create_tasks", AmoServerError("504", status=504), apply=True)
    await world.incoming(NEW, answered=["101"])
    await world.settle()
    for _ in range(2):
        world.clock.advance(30)
        await world.runner.run_until_idle()
    assert len(world.amo.leads) == 1 and len(world.amo.tasks) == 1 and len(world.amo.notes) == 1
    assert world.amo.requests.count("create_leads") == 1 and world.amo.requests.count("create_tasks") == 1
    [job] = await world.jobs()
    assert job.state == "done" and job.attempts == 2


async def test_example_16_end_twice_and_a_rerun_make_one_set(world: World) -> None:
    sid = await world.incoming(NEW, answered=["101"])
    await world.settle()
    await world.event(sid, "end", "incoming", from_number=f"sip:{NEW}@x", is_record=False)  # a late duplicate
    world.consumer._cursor = None  # a restart: everything re-read
    world.consumer._seen.clear()
    await world.settle()
    async with world.core.sessions() as s, s.begin():  # the job re-run by hand
        job = await s.scalar(select(CrmJob))
        assert job is not None
        job.state, job.run_after = "pending", world.clock.now()
    before = len(world.amo.requests)
    await world.runner.run_until_idle()
    assert len(world.amo.requests) == before  # every step done: nothing sent
    assert [len(d) for d in (world.amo.contacts, world.amo.leads, world.amo.tasks, world.amo.notes)] == [
        1
    ] * 4
    assert len(await world.jobs()) == 1


async def test_a_400_fails_the_step_and_the_task_goes_to_the_contact(world: World) -> None:
    world.amo.fail(
        "create_leads", AmoValidationError([Violation("0", "NotSupportedChoice", "status_id", "x")])
    )
    sid = await world.incoming(NEW, answered=["101"])
    await world.settle()
    [contact] = world.amo.contacts.values()
    [task] = world.amo.tasks.values()
    assert not world.amo.leads and (task["entity_type"], task["entity_id"]) == ("contacts", contact["id"])
    steps = (await world.call_row(sid)).steps
    assert steps["lead"]["state"] == "failed" and "NotSupportedChoice" in steps["lead"]["last_error"]
    assert (await world.jobs())[0].state == "done"


async def test_429_requeues_without_counting_and_403_holds(world: World) -> None:
    world.amo.fail("create_contacts", AmoRateLimited(retry_after_s=2))
    sid = await world.incoming(NEW, answered=["101"])
    await world.settle()
    [job] = await world.jobs()
    assert job.state == "pending" and job.attempts == 0 and job.last_error == "429"
    assert (await world.call_row(sid)).steps["contact"]["state"] == "pending"  # not applied: no verification
    world.amo.fail("create_leads", AmoForbidden())
    world.clock.advance(2)
    await world.runner.run_until_idle()
    [job] = await world.jobs()
    assert job.state == "held" and job.attempts == 0
    world.clock.advance(600)
    await world.runner.run_until_idle()
    [job] = await world.jobs()
    assert job.state == "done" and len(world.amo.contacts) == len(world.amo.leads) == 1


async def test_retry_schedule_then_dead_after_24_hours(world: World) -> None:
    world.amo.fail("search_contacts", AmoServerError("503", status=503), times=100)
    await world.incoming(NEW, answered=["101"])
    await world.settle()
    waits = []
    for _ in range(30):
        [job] = await world.jobs()
        if job.state != "pending":
            break
        wait = (job.run_after - world.clock.now()).total_seconds()
        waits.append(wait)
        world.clock.advance(wait)
        await world.runner.run_until_idle()
    assert waits[:6] == [10, 30, 120, 600, 1800, 3600]
    [job] = await world.jobs()
    assert job.state == "dead" and world.clock.now() - job.created_at <= dt.timedelta(hours=24)


async def test_a_disabled_binding_drops_its_jobs(world: World) -> None:
    await world.incoming(NEW, answered=["101"])
    await world.consumer.consume_once()
    async with world.core.sessions() as s, s.begin():
        binding = await s.get(CrmBinding, world.binding_id)
        assert binding is not None
        binding.status = "disabled"
    await world.runner.run_until_idle()
    [job] = await world.jobs()
    assert job.state == "dropped" and not world.amo.requests


async def test_calls_api_mode_falls_back_to_a_note_when_no_card_has_the_number(world: World) -> None:
    async with world.core.sessions() as s, s.begin():
        binding = await s.get(CrmBinding, world.binding_id)
        assert binding is not None
        binding.options = {"call_log_mode": "calls_api"}
    world.amo.calls_find_contact = False
    world.amo.fail("add_calls", AmoEntityNotFound("Entity not found"))
    await world.incoming(NEW, answered=["101"])
    await world.settle()
    assert world.amo.requests[-2:] == ["add_calls", "add_notes"]
    [note] = world.amo.notes.values()
    assert note["note_type"] == "call_in"


async def set_document(world: World, change: Any) -> None:
    async with world.core.sessions() as s:
        from vpbx.store.models import AmoScenario

        scenario = await s.get(AmoScenario, world.scenario_id)
        assert scenario is not None
        doc = copy.deepcopy(scenario.document)
        change(doc)
        scenario.document = doc
        await s.commit()


async def test_unsorted_target_group_round_robin_and_end_of_day(world: World) -> None:
    def change(doc: dict[str, Any]) -> None:
        new = doc["events"]["incoming"]["new"]
        new["lead"].update(target="unsorted", pipeline_id=7000, status_id=None)
        new["task"]["responsible"] = {"rule": "group", "group_id": 7}
        new["task"]["deadline"] = {"kind": "end_of_day", "minutes": 60}

    await set_document(world, change)
    world.amo.users_list = [
        {"id": uid, "rights": {"group_id": 7, "is_active": uid != 5003}} for uid in (5001, 5002, 5003)
    ] + [{"id": 5004, "rights": {"group_id": 8, "is_active": True}}]
    first = await world.incoming(NEW, answered=["101"])
    second = await world.incoming("79031112244", answered=["101"])
    await world.settle()
    leads = list(world.amo.leads.values())
    assert len(leads) == 2 and all(lead["unsorted"]["pipeline_id"] == 7000 for lead in leads)
    uniqs = {lead["unsorted"]["metadata"]["uniq"] for lead in leads}
    assert uniqs == {first, second}
    tasks = sorted(world.amo.tasks.values(), key=lambda t: t["id"])
    assert [t["responsible_user_id"] for t in tasks] == [5001, 5002]  # round-robin over the active members
    assert all(t["entity_type"] == "leads" for t in tasks)
    msk = zoneinfo.ZoneInfo("Europe/Moscow")
    for t in tasks:
        till = dt.datetime.fromtimestamp(t["complete_till"], msk)
        assert (till.hour, till.minute) == (23, 59)


async def test_click_to_call_card_hint_names_the_contact(world: World) -> None:
    world.amo.add_contact(9001, "Анна Смирнова", "+79161234567", 5001)
    sid = "s-click"
    async with world.core.sessions() as s, s.begin():  # the widget's /call wrote the card it came from
        s.add(
            AmoCall(binding_id=world.binding_id, session_id=sid, card_hint={"type": "contacts", "id": 9001})
        )
    kw = {
        "from_number": f"user101@{DOMAIN}",
        "from_pin": "101",
        "request_number": f"sip:79161234567@{DOMAIN}",
    }
    await world.event(sid, "new", "outbound", **kw)
    await world.event(sid, "connected", "outbound", **kw)
    world.clock.advance(12)
    await world.event(sid, "end", "outbound", is_record=False, **kw)
    await world.settle()
    assert world.amo.requests == ["add_notes"]  # no lookup: the card named the contact
    [note] = world.amo.notes.values()
    assert note["entity_id"] == 9001 and note["note_type"] == "call_out" and note["params"]["duration"] == 12
