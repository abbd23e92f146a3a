"""Do Not Disturb with real peers (vpbx.pbx.dnd): a **baresip** phone registered as 102 dials *78, the server
answers 480 "DND on" and stores the switch; a SIPp caller then gets 486 while the phone never rings; *79
switches it off and the next SIPp call rings the phone (it answers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from tests.integration.peers.baresip import Account, Baresip, Event
from tests.integration.peers.process import require_binary
from tests.integration.peers.sipp import run_sipp
from tests.integration.test_calls import caller_run, rejected_scenario, running, states
from vpbx.store.models import User

pytestmark = pytest.mark.peers


async def dnd_of(db: Path, pin: str) -> bool:
    engine = create_async_engine(f"sqlite+aiosqlite:///{db}")
    try:
        async with engine.connect() as conn:
            return bool(await conn.scalar(select(User.dnd).where(User.pin == pin)))
    finally:
        await engine.dispose()


async def feature(phone: Baresip, code: str) -> Event:
    """Dial ``code``; the call's CALL_CLOSED (the server's final answer is in its ``param``)."""
    await phone.dial(code)
    return await phone.wait_event("CALL_CLOSED")


async def test_star78_turns_dnd_on_a_call_gets_busy_without_ringing_and_star79_turns_it_off(
    tmp_path: Path,
) -> None:
    require_binary("baresip")
    db = tmp_path / "vpbx" / "data" / "vpbx.sqlite3"
    async with running(tmp_path) as server, Baresip.start(tmp_path, name="bob") as phone:
        await phone.register(Account.on(server.service, "102", answermode="auto"))

        on = await feature(phone, "*78")
        dnd_on = await dnd_of(db, "102")
        busy = await run_sipp(
            caller_run(server, rejected_scenario(tmp_path, 486), caller="101", callee="102", calls=1),
            tmp_path,
        )
        rang_while_dnd = [e for e in phone.events if e.get("direction") == "incoming"]

        off = await feature(phone, "*79")
        dnd_off = await dnd_of(db, "102")
        answered = await run_sipp(
            caller_run(server, "uac_call", caller="101", callee="102", calls=1, duration_ms=200), tmp_path
        )
        incoming = await phone.wait_event("CALL_ESTABLISHED")
        calls = await server.calls(ended=2)

    assert (on.get("param"), off.get("param")) == ("480 DND on", "480 DND off")  # what the phone shows
    assert (dnd_on, dnd_off) == (True, False)
    assert busy.ok, busy.describe()
    assert rang_while_dnd == []
    assert answered.ok, answered.describe()
    assert incoming["direction"] == "incoming"
    refused, taken = sorted(calls.values(), key=lambda events: len(events))
    assert states(refused) == ["new", "end"]  # nobody was rung
    assert states(taken)[:3] == ["new", "calling", "connected"]
