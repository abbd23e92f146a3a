"""amo.finish against the amoCRM emulator over real HTTP with the real client (limiter, tokens): the call
events are written through the call history's own ``apply_events`` (vpbx/pbx/history.py), then the
consumer and the job runner run in this process. §6's examples 1, 6, 7, 8, 15, 16 and 17, counted in the
emulator's request log. The same flows from real calls on ``vpbx serve`` are in
tests/amocrm/test_finish_serve.py."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.amocrm.emu_kit import DEMO, Emu, emulator
from tests.amocrm.unit.jobs_kit import World, make_world
from vpbx.amocrm.client import AmoClientPool
from vpbx.amocrm.oauth import TokenPair
from vpbx.app import build_core
from vpbx.clock import FakeClock
from vpbx.settings import AmoSettings, Settings

NEW = "79031112233"
WAIT_S = 60.0


async def emu_world(settings: Settings, emu: Emu) -> tuple[World, AmoClientPool]:
    amo = AmoSettings(
        client_id=emu.client_id,
        client_secret=emu.client_secret,  # type: ignore[arg-type]
        api_url_template=emu.api_url_template,
        extra_hosts=[DEMO],
    )
    # the calls happen in the last minutes (the fake clock moves by their lengths), so amoCRM's created_at of
    # what they make comes after their end, as it does for real
    clock = FakeClock(dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=30))
    core = build_core(settings.model_copy(update={"amocrm": amo}), clock)
    pair = await emu.token_pair(DEMO)
    tokens = TokenPair(
        access_token=pair["access_token"],
        refresh_token=pair["refresh_token"],
        expires_at=clock.now() + dt.timedelta(seconds=int(pair["expires_in"])),
    )
    pool = AmoClientPool(core)
    return await make_world(core, clock, clients=pool, tokens=tokens), pool


@pytest.fixture
async def emu() -> AsyncIterator[Emu]:
    async with emulator() as e:
        yield e


@pytest.fixture
async def world(settings: Settings, emu: Emu) -> AsyncIterator[World]:
    w, pool = await emu_world(settings, emu)
    try:
        yield w
    finally:
        await pool.aclose()
        await w.core.engine.dispose()


async def api_calls(emu: Emu) -> list[tuple[str, str, str]]:
    """(method, path, query) of every API request the account saw (the token endpoint excluded)."""
    return [(e["method"], e["path"], e.get("query", "")) for e in await emu.log(DEMO) if "/api/" in e["path"]]


def created(state: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The entities of the emulator's state not in the demo fixture (fixture ids are below 10000000)."""
    return [e for e in state[kind] if int(e["id"]) >= 10_000_000]


async def test_example_1_new_client_exactly_six_requests(world: World, emu: Emu) -> None:
    sid = await world.incoming(NEW, answered=["101"], talk_s=95, is_record=True)
    await world.settle()
    calls = await api_calls(emu)
    assert [(m, p) for m, p, _ in calls] == [
        ("GET", "/api/v4/contacts"),  # the lookup (here the finish's: no routing hook in this process)
        ("GET", "/api/v4/contacts"),  # the re-check under the phone lock
        ("POST", "/api/v4/contacts"),
        ("POST", "/api/v4/leads"),
        ("POST", "/api/v4/tasks"),
        ("POST", "/api/v4/contacts/notes"),
    ]
    assert "query=9031112233" in calls[0][2]
    state = await emu.state(DEMO)
    [contact] = created(state, "contacts")
    assert contact["name"] == "Новый клиент +79031112233" and contact["responsible_user_id"] == 5001
    [lead] = created(state, "leads")
    assert lead["name"] == "Звонок +79031112233" and (lead["pipeline_id"], lead["status_id"]) == (7000, 7001)
    assert lead["responsible_user_id"] == 5001
    assert {"contact_id": contact["id"], "lead_id": lead["id"], "is_main": True} in state["links"]
    [task] = created(state, "tasks")
    call = await world.call_row(sid)
    assert call.ended_at is not None
    assert (task["text"], task["entity_type"], task["entity_id"]) == (
        "Перезвонить +79031112233",
        "leads",
        lead["id"],
    )
    assert (
        task["complete_till"] == int(call.ended_at.timestamp()) + 3600 and task["responsible_user_id"] == 5001
    )
    [note] = created(state, "notes")
    assert note["note_type"] == "call_in" and note["entity_id"] == contact["id"]
    params = note["params"]
    assert (params["duration"], params["call_status"], params["uniq"]) == (95, 4, sid)
    assert params["link"].endswith(".mp3") and params["call_responsible"] == 5001


async def test_example_6_missed_new_client_task_only(world: World, emu: Emu) -> None:
    await world.incoming("79035550000", answered=[], rung=["101", "102"])
    await world.settle()
    state = await emu.state(DEMO)
    assert not created(state, "contacts") and not created(state, "leads") and not created(state, "notes")
    [task] = created(state, "tasks")
    assert task["text"] == "Пропущенный звонок +79035550000" and task["responsible_user_id"] == 5002
    assert not task.get("entity_id")
    assert [p for _m, p, _q in await api_calls(emu)] == ["/api/v4/contacts", "/api/v4/tasks"]  # lookup + task


async def test_example_7_transfer_responsible_5002(world: World, emu: Emu) -> None:
    sid = await world.incoming("79037778899", answered=["101", "102"])
    await world.settle()
    state = await emu.state(DEMO)
    entities = [*created(state, "contacts"), *created(state, "leads"), *created(state, "tasks")]
    assert len(entities) == 3 and {e["responsible_user_id"] for e in entities} == {5002}
    [note] = created(state, "notes")
    assert note["params"]["call_responsible"] == 5002 and note["params"]["uniq"] == sid


async def test_example_8_outgoing_note_on_9001(world: World, emu: Emu) -> None:
    talked = await world.outgoing("102", "89161234567", answered=True, talk_s=40)
    missed = await world.outgoing("102", "89161234567", answered=False)
    await world.settle()
    notes = {n["params"]["uniq"]: n for n in created(await emu.state(DEMO), "notes")}
    assert set(notes) == {talked, missed}
    assert all(n["note_type"] == "call_out" and n["entity_id"] == 9001 for n in notes.values())
    assert (notes[talked]["params"]["call_status"], notes[talked]["params"]["duration"]) == (4, 40)
    assert (notes[missed]["params"]["call_status"], notes[missed]["params"]["duration"]) == (6, 0)


async def test_example_15_apply_then_drop_adopts_one_contact(world: World, emu: Emu) -> None:
    await emu.fault(method="POST", path_regex=r"^/api/v4/contacts$", account=DEMO, apply_then_drop=True)
    sid = await world.incoming(NEW, answered=["101"])
    await world.settle()
    [job] = await world.jobs()
    assert job.state == "pending" and job.attempts == 1  # unknown outcome: retried after 10 s
    world.clock.advance(10)
    await world.runner.run_until_idle()
    state = await emu.state(DEMO)
    assert len(created(state, "contacts")) == 1
    assert [len(created(state, k)) for k in ("leads", "tasks", "notes")] == [1, 1, 1]
    steps = (await world.call_row(sid)).steps
    assert steps["contact"]["adopted"] and steps["contact"]["id"] == created(state, "contacts")[0]["id"]


async def test_example_16_duplicate_end_and_rerun(world: World, emu: Emu) -> None:
    sid = await world.incoming(NEW, answered=["101"])
    await world.event(sid, "end", "incoming", from_number=f"sip:{NEW}@x", is_record=False)
    await world.settle()
    from sqlalchemy import update

    from vpbx.store.models import CrmJob

    async with world.core.sessions() as s, s.begin():  # «re-run by hand»
        await s.execute(update(CrmJob).values(state="pending", run_after=world.clock.now()))
    before = len(await api_calls(emu))
    await world.runner.run_until_idle()
    assert len(await api_calls(emu)) == before
    state = await emu.state(DEMO)
    assert [len(created(state, k)) for k in ("contacts", "leads", "tasks", "notes")] == [1, 1, 1, 1]


async def test_example_17_429_storm_everything_arrives_and_no_403(settings: Settings) -> None:
    async with emulator(rate_limit_rps=2) as emu:
        world, pool = await emu_world(settings, emu)
        try:
            numbers = [f"790311{n:05d}" for n in range(5)]  # 30 requests: more than the 4 parallel jobs
            for number in numbers:
                await world.incoming(number, answered=["101"])
            while await world.consumer.consume_once():
                pass
            async with asyncio.timeout(WAIT_S * 4):
                while True:
                    await world.runner.run_until_idle(timeout_s=WAIT_S * 4)
                    jobs = await world.jobs()
                    if all(j.state == "done" for j in jobs):
                        break
                    assert all(j.state in ("pending", "running") for j in jobs), [j.state for j in jobs]
                    world.clock.advance(
                        max(1.0, min((j.run_after - world.clock.now()).total_seconds() for j in jobs))
                    )
            state = await emu.state(DEMO)
            assert [len(created(state, k)) for k in ("contacts", "leads", "tasks", "notes")] == [5] * 4
            statuses = [int(e["status"]) for e in await emu.log(DEMO)]
            assert 429 in statuses and 403 not in statuses
            health = pool.health(30000001)  # demo.amocrm.ru
            assert health["count_429"] == statuses.count(429) and health["rate"] < 5.0  # paused and halved
        finally:
            await pool.aclose()
            await world.core.engine.dispose()


async def use_complex(world: World) -> None:
    from vpbx.store.models import CrmBinding

    async with world.core.sessions() as s, s.begin():
        binding = await s.get(CrmBinding, world.binding_id)
        assert binding is not None
        binding.options = {"use_complex_create": True}


async def test_complex_create_makes_contact_and_deal_in_one_request(world: World, emu: Emu) -> None:
    await use_complex(world)
    sid = await world.incoming(NEW, answered=["101"])
    await world.settle()
    assert [(m, p) for m, p, _ in await api_calls(emu)] == [
        ("GET", "/api/v4/contacts"),
        ("GET", "/api/v4/contacts"),
        ("POST", "/api/v4/leads/complex"),
        ("POST", "/api/v4/tasks"),
        ("POST", "/api/v4/contacts/notes"),
    ]  # §5.9: five with use_complex_create
    state = await emu.state(DEMO)
    [contact], [lead], [task], [note] = (created(state, k) for k in ("contacts", "leads", "tasks", "notes"))
    assert contact["name"] == f"Новый клиент +{NEW}" and lead["name"] == f"Звонок +{NEW}"
    assert {"contact_id": contact["id"], "lead_id": lead["id"], "is_main": True} in state["links"]
    assert (task["entity_type"], task["entity_id"]) == ("leads", lead["id"]) and note["entity_id"] == contact[
        "id"
    ]
    steps = (await world.call_row(sid)).steps
    assert (steps["contact"]["id"], steps["lead"]["id"]) == (contact["id"], lead["id"])


async def test_complex_create_lost_answer_adopts_both(world: World, emu: Emu) -> None:
    await use_complex(world)
    await emu.fault(method="POST", path_regex=r"^/api/v4/leads/complex$", account=DEMO, apply_then_drop=True)
    sid = await world.incoming(NEW, answered=["101"])
    await world.settle()
    world.clock.advance(10)
    await world.runner.run_until_idle()
    state = await emu.state(DEMO)
    assert [len(created(state, k)) for k in ("contacts", "leads", "tasks", "notes")] == [1, 1, 1, 1]
    steps = (await world.call_row(sid)).steps
    assert steps["contact"]["adopted"] and steps["lead"]["adopted"]
