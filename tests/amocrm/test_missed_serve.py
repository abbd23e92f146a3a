"""Missed calls from new clients on ``vpbx serve`` → one task each (amocrm.md §5.4, §5.5, §5.9, §6 example 6).

The bench's flow «missed, new, task only» with real peers: a SIPp carrier calls the line from new numbers
back to back at the bench's rate (2 calls/s, one at a time), the line's rule rings 102, whose SIPp phone
answers 486 Busy; then one more new number rings 102 (a SIPp phone that only rings) and the caller hangs up.
Every call is a missed call of a new client: one E4 lookup at routing, then the scenario's «Пропущенные →
Новый клиент» tab makes one task, unattached (no contact is created, so no call note either), for the user
of the last rung extension (rule «Принявший вызов»; the binding's fallback is another user here, so the
two differ).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tests.amocrm.emu_kit import DEMO, emulator
from tests.amocrm.test_finish_serve import ACCOUNT_UPKEEP, all_done, amo_env, bound, created, jobs_of
from tests.integration.peers.net import wait_until
from tests.integration.peers.sipp import SippProcess, run_sipp, scenario_path
from tests.integration.peers.vpbx import Setup
from tests.integration.test_calls import bind, callee_run, running, unbind
from tests.integration.test_incoming_calls import carrier_run, line_to
from vpbx.app import Core, build_core
from vpbx.settings import Settings
from vpbx.store.models import AmoCall, AmoScenario, CrmBinding

pytestmark = pytest.mark.peers

BUSY = [f"7903444{n:04d}" for n in range(4)]
RINGING = "79034449999"
RATE = 2.0  # calls/s, as bench/amo_bench.py
WAIT_S = 60.0  # a bound, not a speed


def carrier_refused(tmp_path: Path, code: int) -> Path:
    """uac_trunk_final.xml expecting ``code``, the caller from an injection file's first field."""
    path = tmp_path / f"uac_trunk_final_{code}.xml"
    text = scenario_path("uac_trunk_final").read_text().replace("FINAL_CODE", str(code))
    path.write_text(text.replace("[caller]", "[field0]"))
    return path


def callers(tmp_path: Path, numbers: list[str]) -> Path:
    path = tmp_path / "callers.csv"
    path.write_text("SEQUENTIAL\n" + "".join(f"{n};\n" for n in numbers))
    return path


def missed_to_last_rung(inner: Setup) -> Setup:
    """The bound domain, with the missed-call task's responsible «Принявший вызов» (for a missed call: the
    user of the last rung extension) and the fallback manager 5001, so the task's 5002 can only come from
    the rung 102."""

    async def setup(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
        await inner(s, core, domain_id)
        await s.execute(
            update(CrmBinding).where(CrmBinding.domain_id == domain_id).values(fallback_user_id=5001)
        )
        row = await s.scalar(select(AmoScenario))
        assert row is not None
        doc: dict[str, Any] = copy.deepcopy(row.document)  # a new value, or the ORM sees no change
        doc["events"]["missed"]["new"]["task"]["responsible"] = {"rule": "answered"}
        row.document = doc
        await s.flush()

    return setup


async def amo_calls(settings: Settings) -> list[AmoCall]:
    core = build_core(settings)
    try:
        async with core.sessions() as s:
            return list(await s.scalars(select(AmoCall)))
    finally:
        await core.engine.dispose()


async def test_every_missed_call_of_a_new_client_makes_one_task(tmp_path: Path) -> None:
    numbers = [*BUSY, RINGING]
    async with emulator(rate_limit_rps=7) as emu:
        setup = missed_to_last_rung(await bound(emu, line_to("user")))
        async with running(tmp_path, env=amo_env(emu), setup=setup) as server:
            data = tmp_path / "vpbx" / "data"
            settings = Settings(
                env="test",
                secret_key="unused-here-0123456789-0123456789-0123456789",  # type: ignore[arg-type]
                data_dir=data,
                database_url=f"sqlite+aiosqlite:///{data / 'vpbx.sqlite3'}",
            )
            async with SippProcess.running(callee_run("uas_busy", calls=len(BUSY)), tmp_path) as busy:
                await bind(server, "102", busy)
                run = carrier_run(server, calls=len(BUSY), rate=RATE, limit=1)
                run = dataclasses.replace(
                    run, scenario=carrier_refused(tmp_path, 486), inf=callers(tmp_path, BUSY)
                )
                refused = await run_sipp(run, tmp_path)
                rung_busy = await busy.wait()
                await unbind(server, "102", busy)
            async with SippProcess.running(callee_run("uas_ring"), tmp_path) as ringing:
                await bind(server, "102", ringing)
                run = carrier_run(server, scenario="uac_cancel", calls=1)
                cancelled = await run_sipp(
                    dataclasses.replace(run, keys={**run.keys, "caller": RINGING}), tmp_path
                )
                rang = await ringing.wait()
            calls = await server.calls(ended=len(numbers))
            await wait_until(
                lambda: all_done(settings, len(numbers)), timeout_s=WAIT_S, what="every amo.finish job done"
            )
            contexts = await amo_calls(settings)
            jobs = await jobs_of(settings)
        state = await emu.state(DEMO)
        log = [e for e in await emu.log(DEMO) if "/api/" in e["path"] and e["path"] not in ACCOUNT_UPKEEP]

    assert refused.ok, refused.describe()
    assert rung_busy.ok, rung_busy.describe()
    assert cancelled.ok, cancelled.describe()
    assert rang.ok, rang.describe()
    assert len(calls) == len(numbers)
    by_client = {c.client_e164: c for c in contexts}
    assert set(by_client) == set(numbers)
    for c in contexts:
        assert (c.direction, c.classification, c.lookup) == ("incoming", "missed.new", "miss"), c.client_e164
        assert (c.rung_pins, c.answered_pins, c.contact_id) == (["102"], [], None), c.client_e164
    assert sorted(j.key for j in jobs) == sorted(c.session_id for c in contexts)
    assert all(j.kind == "amo.finish" and j.state == "done" and j.attempts == 0 for j in jobs)

    tasks = created(state, "tasks")
    assert sorted(t["text"] for t in tasks) == sorted(f"Пропущенный звонок +{n}" for n in numbers)
    ends = {c.client_e164: dt.datetime.fromisoformat(calls[c.session_id][-1]["timestamp"]) for c in contexts}
    for task in tasks:
        number = task["text"].rsplit("+", 1)[1]
        # the user of 102, the last rung (the fallback is 5001)
        assert task["responsible_user_id"] == 5002, number
        assert (task["entity_type"], task["entity_id"]) == (None, None), number  # no contact, no deal
        assert abs(task["complete_till"] - (ends[number].timestamp() + 1800)) <= 1, number
    assert not created(state, "contacts") and not created(state, "leads") and not created(state, "notes")

    # §5.9: lookup 1 + 1 task per call, nothing twice
    searches = sorted(e["query"] for e in log if (e["method"], e["path"]) == ("GET", "/api/v4/contacts"))
    assert searches == sorted(f"query={n[1:]}&with=leads&limit=50" for n in numbers)
    assert [(e["method"], e["path"]) for e in log].count(("POST", "/api/v4/tasks")) == len(numbers)
    assert len(log) == 2 * len(numbers), [(e["method"], e["path"]) for e in log]
