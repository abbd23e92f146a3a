"""Reissuing a revoked recording link (amocrm.md §5.5) against the emulator with the real client: the new
token's ``amo.relink`` job adds a note with the new link on the call's contact, once."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from tests.amocrm.emu_kit import DEMO, Emu, emulator
from tests.amocrm.test_finish_emulator import emu_world
from tests.amocrm.unit.jobs_kit import World
from vpbx.amocrm.jobs import JobRunner
from vpbx.amocrm.relink import RELINK, RelinkHandler, reissue_link
from vpbx.settings import Settings
from vpbx.store.models import AmoCall, AmoRecordingLink, CrmJob


@pytest.fixture
async def emu() -> AsyncIterator[Emu]:
    async with emulator() as e:
        yield e


async def test_reissued_link_reaches_the_contact(settings: Settings, emu: Emu) -> None:
    w, pool = await emu_world(settings, emu)
    try:
        await _flow(w, emu, pool)
    finally:
        await pool.aclose()
        await w.core.engine.dispose()


async def _flow(w: World, emu: Emu, pool: object) -> None:
    core = w.core
    now = core.clock.now()
    async with core.sessions() as s:
        s.add(AmoCall(binding_id=w.binding_id, session_id="s-rec", direction="incoming", contact_id=9001))
        s.add(
            AmoRecordingLink(
                token="r" * 32,
                domain_id=w.domain_id,
                binding_id=w.binding_id,
                session_id="s-rec",
                revoked_at=now,
            )
        )
        await s.commit()
    async with core.sessions() as s:
        token = await reissue_link(s, w.binding_id, "r" * 32, now)
        assert token is not None and token != "r" * 32
        assert await reissue_link(s, w.binding_id, "r" * 32, now) == token  # twice: the same live link
        await s.commit()
    runner = JobRunner(core, pool, {RELINK: RelinkHandler()})  # type: ignore[arg-type]
    assert await runner.run_once() == 1
    await runner.drain()
    async with core.sessions() as s:
        jobs = list(await s.scalars(select(CrmJob)))
        assert [(j.kind, j.state) for j in jobs] == [(RELINK, "done")]
    notes = [
        e for e in await emu.log(DEMO) if e["method"] == "POST" and e["path"] == "/api/v4/contacts/notes"
    ]
    assert len(notes) == 1
    state = await emu.state(DEMO)
    texts = [n for n in state["notes"] if n.get("entity_id") == 9001 and n.get("note_type") == "common"]
    assert len(texts) == 1 and f"/rec/amo/{token}.mp3" in texts[0]["params"]["text"]
