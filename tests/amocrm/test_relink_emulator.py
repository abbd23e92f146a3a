"""Reissuing a revoked recording link (amocrm.md §5.5) against the emulator with the real client: the new
token's ``amo.relink`` job edits the call's note (``PATCH /api/v4/contacts/notes/{id}``) with the new link,
and falls back to a new text note on the contact when that note is gone."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import select
from starlette.applications import Starlette

from tests.amocrm.emu_kit import DEMO, Emu, emulator
from tests.amocrm.test_finish_emulator import NEW, created, emu_world
from tests.amocrm.unit.jobs_kit import World
from vpbx.amocrm.jobs import JobRunner
from vpbx.amocrm.recordings import recording_route, revoke_links
from vpbx.amocrm.relink import RELINK, RelinkHandler, reissue_link
from vpbx.settings import Settings
from vpbx.store.models import AmoCall, AmoRecordingLink, CrmBinding, CrmJob, Recording

MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb" * 64


@pytest.fixture
async def emu() -> AsyncIterator[Emu]:
    async with emulator() as e:
        yield e


@pytest.fixture
async def world(settings: Settings, emu: Emu) -> AsyncIterator[World]:
    w, pool = await emu_world(settings, emu)
    w.runner.handlers[RELINK] = RelinkHandler()
    try:
        yield w
    finally:
        await pool.aclose()
        await w.core.engine.dispose()


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[1].removesuffix(".mp3")


async def test_reissue_edits_the_call_note_and_the_old_link_dies(world: World, emu: Emu) -> None:
    core = world.core
    sid = await world.incoming(NEW, answered=["101"], talk_s=60, is_record=True)
    await world.settle()
    [note] = created(await emu.state(DEMO), "notes")
    old = note["params"]["link"]
    assert note["note_type"] == "call_in" and (await world.call_row(sid)).steps["note"]["id"] == note["id"]
    name = core.recordings.new_name(world.domain_id, sid, core.clock.now())
    core.recordings.path(name).parent.mkdir(parents=True, exist_ok=True)
    core.recordings.path(name).write_bytes(MP3)
    async with core.sessions() as s, s.begin():
        s.add(Recording(domain_id=world.domain_id, session_id=sid, status="ready", path=name))
    rec = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=Starlette(routes=[recording_route(core)])), base_url="http://t"
    )
    async with rec:
        old_path = "/" + old.split("/", 3)[3]
        assert (await rec.get(old_path)).status_code == 200
        async with core.sessions() as s, s.begin():
            assert await revoke_links(s, world.binding_id, core.clock.now(), token=token_of(old)) == 1
        assert (await rec.get(old_path)).status_code == 404  # revoked: the old URL is dead
        async with core.sessions() as s, s.begin():
            new = await reissue_link(s, world.binding_id, token_of(old), core.clock.now())
        assert new is not None and new != token_of(old)
        before = len(await emu.log(DEMO))
        await world.runner.run_until_idle()
        assert (await rec.get(f"/rec/amo/{new}.mp3")).status_code == 200
    assert [(j.kind, j.state) for j in await world.jobs() if j.kind == RELINK] == [(RELINK, "done")]
    [edited] = created(await emu.state(DEMO), "notes")  # the same note, no second one
    assert edited["id"] == note["id"] and edited["note_type"] == "call_in"
    assert edited["params"]["link"].endswith(f"/rec/amo/{new}.mp3")
    assert {k: v for k, v in edited["params"].items() if k != "link"} == {
        k: v for k, v in note["params"].items() if k != "link"
    }
    writes = [(e["method"], e["path"]) for e in (await emu.log(DEMO))[before:] if e["method"] != "GET"]
    assert writes == [("PATCH", f"/api/v4/contacts/notes/{note['id']}")]


async def test_a_gone_note_gets_a_new_text_note_with_the_link(world: World, emu: Emu) -> None:
    core = world.core
    now = core.clock.now() - dt.timedelta(minutes=1)
    async with core.sessions() as s:
        s.add(
            AmoCall(
                binding_id=world.binding_id,
                session_id="s-rec",
                direction="incoming",
                contact_id=9001,
                steps={"note": {"state": "done", "id": 40999999, "attempts": 1}},  # no such note
            )
        )
        s.add(
            AmoRecordingLink(
                token="r" * 32,
                domain_id=world.domain_id,
                binding_id=world.binding_id,
                session_id="s-rec",
                revoked_at=now,
            )
        )
        await s.commit()
    async with core.sessions() as s:
        token = await reissue_link(s, world.binding_id, "r" * 32, now)
        assert token is not None and token != "r" * 32
        assert await reissue_link(s, world.binding_id, "r" * 32, now) == token  # twice: the same live link
        await s.commit()
    runner = JobRunner(core, world.runner.clients, {RELINK: RelinkHandler()})
    assert await runner.run_due() == 1
    await runner.drain()
    async with core.sessions() as s:
        jobs = list(await s.scalars(select(CrmJob)))
        assert [(j.kind, j.state) for j in jobs] == [(RELINK, "done")]
    log = await emu.log(DEMO)
    assert not [e for e in log if e["method"] == "PATCH"]  # the note is not among the contact's notes
    assert len([e for e in log if e["method"] == "POST" and e["path"] == "/api/v4/contacts/notes"]) == 1
    state = await emu.state(DEMO)
    texts = [n for n in state["notes"] if n.get("entity_id") == 9001 and n.get("note_type") == "common"]
    assert len(texts) == 1 and f"/rec/amo/{token}.mp3" in texts[0]["params"]["text"]


async def test_in_calls_api_mode_the_note_on_the_deal_is_edited(world: World, emu: Emu) -> None:
    core = world.core
    async with core.sessions() as s, s.begin():
        binding = await s.get(CrmBinding, world.binding_id)
        assert binding is not None
        binding.options = {"call_log_mode": "calls_api"}
    sid = await world.incoming("79161234567", answered=["101"], talk_s=40, is_record=True)  # Анна: deal 8001
    await world.settle()
    [note] = created(await emu.state(DEMO), "notes")
    assert (note["entity_type"], note["entity_id"]) == ("leads", 8001)
    step = (await world.call_row(sid)).steps["note"]
    assert (step["id"], step["on"], step["on_id"]) == (note["id"], "leads", 8001)
    async with core.sessions() as s, s.begin():
        await revoke_links(s, world.binding_id, core.clock.now())
        new = await reissue_link(s, world.binding_id, token_of(note["params"]["link"]), core.clock.now())
    before = len(await emu.log(DEMO))
    await world.runner.run_until_idle()
    [edited] = created(await emu.state(DEMO), "notes")
    assert edited["id"] == note["id"] and edited["params"]["link"].endswith(f"/rec/amo/{new}.mp3")
    writes = [(e["method"], e["path"]) for e in (await emu.log(DEMO))[before:] if e["method"] != "GET"]
    assert writes == [("PATCH", f"/api/v4/leads/notes/{note['id']}")]
