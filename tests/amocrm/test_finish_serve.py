"""Real calls on ``vpbx serve`` → amoCRM (amocrm.md §5, §6 examples 1, 8 and 14): a SIPp carrier calls the
line (or takes an outside call through the IP trunk), SIPp phones answer, the engine publishes the events
and commits the history, and the serve process's own consumer and job runner write to the amoCRM
emulator, which runs in this process. The domain is bound to demo.amocrm.ru with tokens issued by the
emulator's token endpoint."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import secrets
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tests.amocrm.emu_kit import DEMO, Emu, emulator
from tests.amocrm.unit.jobs_kit import bind_demo
from tests.integration.peers.audio import make_silence
from tests.integration.peers.baresip import Account, Baresip
from tests.integration.peers.net import free_port_block, wait_until
from tests.integration.peers.process import require_binary
from tests.integration.peers.sipp import SippProcess, SippResult, run_sipp, scenario_path
from tests.integration.peers.vpbx import DEFAULT_DOMAIN, Setup, _env, provision
from tests.integration.test_calls import USERS, Server, bind, callee_run, caller_run, running
from tests.integration.test_history import _Handle, serve
from tests.integration.test_incoming_calls import CARRIER_IP, carrier_run, line_to
from tests.integration.test_outbound_calls import carrier_trunk
from vpbx.amocrm.oauth import TokenPair
from vpbx.app import Core, build_core
from vpbx.settings import Settings
from vpbx.store.models import CrmJob

pytestmark = pytest.mark.peers

NEW = "79031112233"
WAIT_S = 60.0  # a bound, not a speed
OUTAGE_S = 60.0  # example 14: amoCRM down for a minute (the acceptance)


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


# not the call's finish: the running PBX's E17 subscription and 10-minute E1 users read, and the pop-up's
# server fallback E16 (no widget tab is open in these tests)
ACCOUNT_UPKEEP = {"/api/v4/webhooks", "/api/v4/users", "/api/v2/events"}


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
        log = [e for e in await emu.log(DEMO) if "/api/" in e["path"] and e["path"] not in ACCOUNT_UPKEEP]

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


async def test_example_14_amocrm_down_and_kill_9_nothing_lost_nothing_doubled(tmp_path: Path) -> None:
    """amoCRM hangs; ten calls from ten new numbers end meanwhile; ``vpbx serve`` is killed with SIGKILL while
    their jobs wait (some leased, mid-request); a second ``vpbx serve`` on the same database takes over while
    amoCRM is still down, amoCRM comes back after a minute and the jobs finish: 10 contacts, 10 leads,
    10 tasks and 10 notes. §5.7's retry waits and the job lease are shortened by settings, so the second
    process retries many times during the outage and takes over the killed one's leased jobs once their
    lease ends."""
    for program in ("sipsak", "sipp"):
        require_binary(program)
    calls = 10
    numbers = [f"7903555{n:04d}" for n in range(calls)]
    async with emulator() as emu:
        workdir = tmp_path / "vpbx"
        data = workdir / "data"
        data.mkdir(parents=True)
        events_file = tmp_path / "events.jsonl"
        secret = secrets.token_urlsafe(40)
        env = _env(
            data,
            DEFAULT_DOMAIN,
            secret,
            {
                "VPBX_DEBUG_CALL_EVENTS_FILE": str(events_file),
                "VPBX_AMOCRM__JOB_RETRY_SCALE": "0.005",  # 10 s, 30 s … 30 min, 1 h → 0.05 s … 9 s, 18 s
                "VPBX_AMOCRM__JOB_LEASE_S": "6",
                **amo_env(emu),
            },
        )
        settings = Settings(
            env="test", secret_key=secret, data_dir=data, database_url=env["VPBX_DATABASE_URL"]
        )  # type: ignore[arg-type]
        await provision(settings, DEFAULT_DOMAIN, USERS, setup=await bound(emu, line_to("user")))
        await emu.down(WAIT_S * 10, mode="hang")  # for a minute (ended below)
        outage_ends = time.monotonic() + OUTAGE_S
        async with serve(workdir, data, env, "first") as (service, proc):
            server = Server(vpbx=_Handle(service, proc), events_file=events_file)  # type: ignore[arg-type]
            async with SippProcess.running(callee_run("uas_answer", calls=calls), tmp_path) as phone:
                await bind(server, "102", phone)

                async def call(number: str) -> SippResult:
                    run = dataclasses.replace(
                        carrier_run(server, calls=1, duration_ms=300),
                        keys={"domain": service.host, "caller": number},
                    )
                    return await run_sipp(run, tmp_path)

                for result in await asyncio.gather(*map(call, numbers)):  # at the same time
                    assert result.ok, result.describe()
            await server.calls(ended=calls)

            async def queued() -> bool:
                return len(await jobs_of(settings)) == calls

            await wait_until(queued, timeout_s=WAIT_S, what="ten amo.finish jobs")
            os.kill(proc.pid, signal.SIGKILL)
        assert not created(await emu.state(DEMO), "notes")  # amoCRM is still down
        async with serve(workdir, data, env, "second"):
            await asyncio.sleep(max(0.0, outage_ends - time.monotonic()))  # the second retries meanwhile
            assert not created(await emu.state(DEMO), "notes")
            assert any(j.attempts for j in await jobs_of(settings))  # they were tried, and failed
            await emu.down(0)  # amoCRM is back after a minute
            state = await wait_created(emu, "notes", calls, timeout_s=WAIT_S * 6)
            await wait_until(lambda: all_done(settings, calls), timeout_s=WAIT_S, what="every job done")
        state = await emu.state(DEMO)

    for kind in ("contacts", "leads", "tasks", "notes"):
        assert len(created(state, kind)) == calls, kind
    phones = {
        v["value"]
        for c in created(state, "contacts")
        for f in c.get("custom_fields_values") or []
        if f.get("field_code") == "PHONE"
        for v in f["values"]
    }
    assert phones == {f"+{n}" for n in numbers}


async def jobs_of(settings: Settings) -> list[Any]:
    core = build_core(settings)
    try:
        async with core.sessions() as s:
            return list(await s.scalars(select(CrmJob)))
    finally:
        await core.engine.dispose()


async def all_done(settings: Settings, count: int) -> bool:
    jobs = await jobs_of(settings)
    return len(jobs) == count and all(j.state == "done" for j in jobs)


async def test_example_7_a_blind_transfer_makes_the_target_responsible(tmp_path: Path) -> None:
    """The carrier's call rings 102 (baresip, auto-answer), who REFERs it to 103 (baresip); 103 hangs up. The
    contact, deal and task get 103's manager (5003), and so does the note (§5.5 «Принявший вызов» with
    «Обновлять ответственного при переводе звонка»)."""
    require_binary("baresip")
    client = "79037778899"
    async with emulator() as emu:
        setup = await bound(emu, line_to("user"))
        async with (
            running(tmp_path, env=amo_env(emu), setup=setup) as server,
            Baresip.start(
                tmp_path, name="bob", audio_source=await make_silence(tmp_path / "b.wav", 30)
            ) as bob,
            Baresip.start(
                tmp_path, name="carol", audio_source=await make_silence(tmp_path / "c.wav", 30)
            ) as carol,
        ):
            await bob.register(Account.on(server.service, "102", answermode="auto"))
            await carol.register(Account.on(server.service, "103", answermode="auto"))
            run = carrier_run(server, scenario="uac_call_wait_bye", calls=1)
            run = dataclasses.replace(run, keys={**run.keys, "caller": client})
            async with SippProcess.running(run, tmp_path) as customer:
                await bob.wait_event("CALL_ESTABLISHED")
                await bob.command("transfer", f"sip:103@{server.service.domain}")
                await carol.wait_event("CALL_ESTABLISHED")
                await bob.wait_event("CALL_CLOSED")
                await carol.hangup()
                await carol.wait_event("CALL_CLOSED")
                hung_up = await customer.wait()
            [events] = (await server.calls(ended=1)).values()
            state = await wait_created(emu, "notes", 1)

    assert hung_up.ok, hung_up.describe()
    assert [(e["state"], e.get("request_pin")) for e in events if e["state"] == "connected"] == [
        ("connected", "102"),
        ("connected", "103"),
    ]
    entities = [*created(state, "contacts"), *created(state, "leads"), *created(state, "tasks")]
    assert len(entities) == 3 and {e["responsible_user_id"] for e in entities} == {5003}
    [note] = created(state, "notes")
    assert note["params"]["call_responsible"] == 5003 and note["params"]["uniq"] == events[0]["session_id"]
