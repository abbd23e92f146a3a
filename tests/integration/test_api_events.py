"""The Integration API's PBX → CRM side with real peers: ``vpbx serve`` with the service on, a SIPp carrier
calling a line, a SIPp phone answering, and a CRM (a real HTTP server in the test process) receiving.

- call_events: the CRM receives new → calling → connected → disconnected → end of the call, each signed with
  the domain's ID and key, in order, matching the engine's events (integration-api.md §5.2).
- get_number_info: the CRM names PIN 103 and the caller: the call rings 103 (not the rule's 102) and the
  phone's INVITE shows the name; a CRM slower than the cap leaves the call to the rules (§5.3).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from tests.integration.peers.sipp import SippProcess, run_sipp
from tests.integration.peers.vpbx import Setup
from tests.integration.test_calls import bind, callee_run, running
from tests.integration.test_incoming_calls import CALLER, LINE, carrier_run, line_to
from tests.integration_api.notify_crm import Answer, Crm, Seen
from vpbx import billing
from vpbx.app import Core
from vpbx.integration_api.core import verify
from vpbx.store.models import ApiSettings

pytestmark = pytest.mark.peers

CLIENT_ID = "0123456789ABCDEF0123456789ABCDEF"
KEY = "FEDCBA9876543210FEDCBA9876543210"
NAME = "Иванов Сергей Петрович"


def with_api(base: Setup, crm: Crm, *, number_info: bool = False) -> Setup:
    """``base`` plus the Integration API on, its CRM address saved (plain HTTP: the encryption mode off)."""

    async def setup(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
        await base(s, core, domain_id)
        await billing.enable(s, domain_id, billing.INTEGRATION_API, core.clock.now())
        s.add(
            ApiSettings(
                domain_id=domain_id,
                client_id=CLIENT_ID,
                sign_key_enc=core.box.seal(KEY),
                crm_url=crm.url,
                tls_required=False,
                number_info=number_info,
            )
        )

    return setup


def events_of(crm: Crm) -> list[Seen]:
    return [r for r in crm.seen if r.path.endswith("/call_events")]


async def test_a_call_sends_its_events_signed_and_in_order(tmp_path: Path) -> None:
    async with (
        Crm().running() as crm,
        running(tmp_path, setup=with_api(line_to("user"), crm)) as server,
        SippProcess.running(callee_run("uas_answer"), tmp_path) as phone,
    ):
        await bind(server, "102", phone)
        caller = await run_sipp(carrier_run(server, calls=1, duration_ms=300), tmp_path)
        answered = await phone.wait()
        [engine] = (await server.calls(ended=1)).values()
        await crm.wait_for(len(engine))
    assert caller.ok, caller.describe()
    assert answered.ok, answered.describe()
    sent = events_of(crm)
    assert [r.json["state"] for r in sent] == [e["state"] for e in engine]
    assert [r.json["state"] for r in sent] == ["new", "calling", "connected", "disconnected", "end"]
    for r in sent:
        assert r.headers["x-client-id"] == CLIENT_ID
        assert verify(CLIENT_ID, r.raw, KEY, r.headers["x-client-sign"])
        assert r.json["session_id"] == engine[0]["session_id"] and r.json["domain"] == server.service.domain
        assert "seq" not in r.json and r.json["type"] == "incoming"
    assert sent[0].json["from_number"] == f"sip:{CALLER}@{server.service.domain}"
    assert sent[1].json["request_pin"] == "102" and sent[4].json["is_record"] == "false"


async def test_get_number_info_routes_the_call_and_names_the_caller(tmp_path: Path) -> None:
    def script(_crm: Crm, req: Seen) -> Answer:
        if req.path.endswith("/get_number_info"):
            return Answer(200, f'{{"result":"0","displayName":"{NAME}","PIN":"103"}}'.encode())
        return Answer(200)

    async with (
        Crm(script).running() as crm,
        running(tmp_path, setup=with_api(line_to("user"), crm, number_info=True)) as server,
        SippProcess.running(callee_run("uas_answer", trace_msg=True), tmp_path) as phone,
    ):
        await bind(server, "103", phone)  # the rule's 102 has no phone: only the CRM's answer reaches one
        caller = await run_sipp(carrier_run(server, calls=1, duration_ms=300), tmp_path)
        answered = await phone.wait()
        [events] = (await server.calls(ended=1)).values()
    assert caller.ok, caller.describe()
    assert answered.ok, answered.describe()
    [asked] = [r for r in crm.seen if r.path.endswith("/get_number_info")]
    assert asked.raw == (
        f'{{"domain":"{server.service.domain}","from_number":"{CALLER}","request_number":"{LINE}"}}'.encode()
    )
    assert verify(CLIENT_ID, asked.raw, KEY, asked.headers["x-client-sign"])
    assert [(e["state"], e.get("request_pin")) for e in events][1:3] == [
        ("calling", "103"),
        ("connected", "103"),
    ]
    invite = (answered.workdir / "messages.log").read_text(encoding="utf-8", errors="replace")
    assert f'From: "{NAME}" <sip:+{CALLER}@' in invite


async def test_a_slow_crm_leaves_the_call_to_the_rules(tmp_path: Path) -> None:
    def script(_crm: Crm, req: Seen) -> Answer:
        if req.path.endswith("/get_number_info"):
            return Answer(200, b'{"result":"0","PIN":"103"}', delay_s=2.0)  # twice the deadline
        return Answer(200)

    env = {"VPBX_ROUTING_HOOK_DEADLINE_S": "1.0"}  # the platform's cap
    async with (
        Crm(script).running() as crm,
        running(tmp_path, env=env, setup=with_api(line_to("user"), crm, number_info=True)) as server,
        SippProcess.running(callee_run("uas_answer"), tmp_path) as phone,
    ):
        await bind(server, "102", phone)
        caller = await run_sipp(carrier_run(server, calls=1, duration_ms=300), tmp_path)
        answered = await phone.wait()
        [events] = (await server.calls(ended=1)).values()
    assert caller.ok, caller.describe()
    assert answered.ok, answered.describe()
    assert len([r for r in crm.seen if r.path.endswith("/get_number_info")]) == 1  # never retried
    assert [(e["state"], e.get("request_pin")) for e in events][1:3] == [
        ("calling", "102"),
        ("connected", "102"),
    ]
