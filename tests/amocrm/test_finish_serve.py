"""Real calls on ``vpbx serve`` → amoCRM (amocrm.md §5, §6 examples 1, 8 and 14): a SIPp carrier calls the
line (or takes an outside call through the IP trunk), SIPp phones answer, the engine publishes the events
and commits the history, and the serve process's own consumer and job runner write to the amoCRM
emulator, which runs in this process. The domain is bound to demo.amocrm.ru with tokens issued by the
emulator's token endpoint."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from tests.amocrm.emu_kit import DEMO, Emu, emulator
from tests.amocrm.unit.jobs_kit import bind_demo
from tests.integration.peers.net import free_port_block, wait_until
from tests.integration.peers.sipp import SippProcess, run_sipp, scenario_path
from tests.integration.peers.vpbx import Setup
from tests.integration.test_calls import bind, callee_run, caller_run, running
from tests.integration.test_incoming_calls import CARRIER_IP, carrier_run, line_to
from tests.integration.test_outbound_calls import carrier_trunk
from vpbx.amocrm.oauth import TokenPair
from vpbx.app import Core

pytestmark = pytest.mark.peers

NEW = "79031112233"
WAIT_S = 60.0  # a bound, not a speed


def amo_env(emu: Emu) -> dict[str, str]:
    return {
        "VPBX_AMOCRM__CLIENT_ID": emu.client_id,
        "VPBX_AMOCRM__CLIENT_SECRET": emu.client_secret,
        "VPBX_AMOCRM__API_URL_TEMPLATE": emu.api_url_template,
        "VPBX_AMOCRM__EXTRA_HOSTS": f'["{DEMO}"]',
        "VPBX_PUBLIC_URL": "https://pbx.example",
    }


async def bound(emu: Emu, inner: Setup) -> Setup:
    """``inner`` (trunk, line, rule), then §6's binding with a token pair from the emulator."""
    pair = await emu.token_pair(DEMO)
    tokens = TokenPair(
        access_token=pair["access_token"],
        refresh_token=pair["refresh_token"],
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=int(pair["expires_in"])),
    )

    async def setup(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
        await inner(s, core, domain_id)
        await bind_demo(s, core.box, domain_id, tokens=tokens)

    return setup


def created(state: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in state[kind] if int(e["id"]) >= 10_000_000]


async def wait_created(emu: Emu, kind: str, count: int, timeout_s: float = WAIT_S) -> dict[str, Any]:
    state: dict[str, Any] = {}

    async def enough() -> bool:
        nonlocal state
        state = await emu.state(DEMO)
        return len(created(state, kind)) >= count

    await wait_until(enough, timeout_s=timeout_s, what=f"{count} new {kind} in the emulator")
    return state


def refusing_trunk(tmp_path: Path, code: int) -> Path:
    path = tmp_path / f"uas_trunk_final_{code}.xml"
    path.write_text(scenario_path("uas_trunk_final").read_text().replace("FINAL_CODE", str(code)))
    return path


async def test_example_1_a_new_clients_call_makes_contact_lead_task_and_note(tmp_path: Path) -> None:
    async with emulator() as emu:
        setup = await bound(emu, line_to("user"))  # the line's rule rings 102
        async with (
            running(tmp_path, env=amo_env(emu), setup=setup) as server,
            SippProcess.running(callee_run("uas_answer"), tmp_path) as phone,
        ):
            await bind(server, "102", phone)
            run = carrier_run(server, calls=1, duration_ms=2000)
            run = dataclasses.replace(run, keys={**run.keys, "caller": NEW})
            caller = await run_sipp(run, tmp_path)
            [events] = (await server.calls(ended=1)).values()
            state = await wait_created(emu, "notes", 1)
        log = [e for e in await emu.log(DEMO) if "/api/" in e["path"]]

    assert caller.ok, caller.describe()
    sid = events[0]["session_id"]
    assert [(e["method"], e["path"]) for e in log] == [
        ("GET", "/api/v4/contacts"),
        ("GET", "/api/v4/contacts"),
        ("POST", "/api/v4/contacts"),
        ("POST", "/api/v4/leads"),
        ("POST", "/api/v4/tasks"),
        ("POST", "/api/v4/contacts/notes"),
    ]
    [contact] = created(state, "contacts")
    [lead] = created(state, "leads")
    [task] = created(state, "tasks")
    [note] = created(state, "notes")
    assert contact["name"] == f"Новый клиент +{NEW}" and contact["responsible_user_id"] == 5002
    assert lead["name"] == f"Звонок +{NEW}" and lead["responsible_user_id"] == 5002
    assert (task["entity_type"], task["entity_id"], task["text"]) == (
        "leads",
        lead["id"],
        f"Перезвонить +{NEW}",
    )
    assert note["note_type"] == "call_in" and note["entity_id"] == contact["id"]
    params = note["params"]
    assert params["uniq"] == sid and params["call_status"] == 4 and params["phone"] == f"+{NEW}"
    assert 1 <= params["duration"] <= 4 and params["call_responsible"] == 5002
    assert params["source"] == "Виртуальная АТС"


async def test_example_8_outgoing_calls_log_on_the_existing_contact(tmp_path: Path) -> None:
    port = free_port_block(1)
    async with emulator() as emu:
        setup = await bound(emu, carrier_trunk(port))
        async with running(tmp_path, env=amo_env(emu), setup=setup) as server:
            trunk = callee_run("uas_trunk", calls=100_000, local_ip=CARRIER_IP, local_port=port)
            async with SippProcess.running(trunk, tmp_path) as carrier:
                await carrier.wait_listening()
                talked = await run_sipp(
                    caller_run(
                        server, "uac_call", caller="102", callee="89161234567", calls=1, duration_ms=2000
                    ),
                    tmp_path,
                )
                await server.calls(ended=1)
                await carrier.stop()
            refusing = callee_run(
                refusing_trunk(tmp_path, 480), calls=100_000, local_ip=CARRIER_IP, local_port=port
            )  # type: ignore[arg-type]
            async with SippProcess.running(refusing, tmp_path) as carrier:
                await carrier.wait_listening()
                scenario = tmp_path / "uac_rejected_480.xml"
                scenario.write_text(scenario_path("uac_rejected").read_text().replace("FINAL_CODE", "480"))
                unanswered = await run_sipp(
                    caller_run(server, scenario, caller="102", callee="89161234567", calls=1), tmp_path
                )
                calls = await server.calls(ended=2)
                state = await wait_created(emu, "notes", 2)
                await carrier.stop()

    assert talked.ok, talked.describe()
    assert unanswered.ok, unanswered.describe()
    first, second = sorted(calls, key=lambda sid: calls[sid][0]["timestamp"])
    notes = {n["params"]["uniq"]: n for n in created(state, "notes")}
    assert set(notes) == {first, second}
    assert all(n["note_type"] == "call_out" and n["entity_id"] == 9001 for n in notes.values())
    assert notes[first]["params"]["call_status"] == 4 and notes[first]["params"]["duration"] >= 1
    assert notes[second]["params"]["call_status"] == 6 and notes[second]["params"]["duration"] == 0
    assert {n["params"]["call_responsible"] for n in notes.values()} == {5002}
    assert not created(state, "contacts") and not created(state, "leads")  # «Исходящие» tabs are off
