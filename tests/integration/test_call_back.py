"""call_back with real peers (integration-api.md §4.1, telephony.md §3.7): a signed POST to `vpbx serve`'s
/api/call_back; the employee is a SIPp phone bound to 101, the customer's carrier a SIPp UAS behind an IP
trunk on 127.0.0.2. The carrier must get the INVITE with the number in its format and the domain's line as
caller ID; the events and the call's history record (call_kind callback) are read back."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from tests.integration.peers.baresip import Account, Baresip
from tests.integration.peers.net import free_port_block
from tests.integration.peers.process import require_binary
from tests.integration.peers.sipp import SippProcess
from tests.integration.peers.vpbx import Setup
from tests.integration.test_calls import Server, bind, callee_run, running
from tests.integration.test_outbound_calls import CARRIER_IP, carrier_trunk
from tests.integration_api.notify_crm import Crm
from tests.integration_api.test_crm_client import CrmClient, envelope, php_json_encode
from vpbx.app import Core
from vpbx.billing import INTEGRATION_API, enable
from vpbx.integration_api.core import sign, verify
from vpbx.integration_api.events import body
from vpbx.integration_api.settings import ensure_settings
from vpbx.store.models import CallRecord

pytestmark = pytest.mark.peers

CLIENT_ID = "000003C405E6525C64C184258C44EC99"
KEY = "00000716ABDA6D4DFF10F82BCBBFC532"
DOMAIN = "peers.vpbx.test"
BODY = b'{"request_number":"+7 916 123-45-67","from_pin":"101"}'
TALK_MS = 3000  # the employee's talk before hanging up: long enough for the carrier to answer on a busy box


def trunk_and_api(port: int, crm_url: str = "") -> Setup:
    """The carrier's trunk and the Integration API on with F's credentials (and, given, the CRM's address)."""
    trunk = carrier_trunk(port)

    async def setup(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
        await trunk(s, core, domain_id)
        await enable(s, domain_id, INTEGRATION_API, core.clock.now())
        row = await ensure_settings(s, domain_id, core.box)
        row.client_id = CLIENT_ID
        row.sign_key_enc = core.box.seal(KEY)
        row.tls_required = False
        row.crm_url = crm_url

    return setup


async def post(server: Server, method: str, body: bytes) -> dict[str, Any]:
    headers = {"X-Client-ID": CLIENT_ID, "X-Client-Sign": sign(CLIENT_ID, body, KEY)}
    async with httpx.AsyncClient(base_url=server.vpbx.http_url, timeout=5) as client:
        resp = await client.post(f"/api/{method}", content=body, headers=headers)
    assert resp.status_code == 200, resp.text
    answer: dict[str, Any] = resp.json()
    return answer


async def call_back(server: Server, body: bytes) -> dict[str, Any]:
    return await post(server, "call_back", body)


async def record(tmp_path: Path, session_id: str) -> CallRecord:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'vpbx' / 'data' / 'vpbx.sqlite3'}")
    try:
        async with AsyncSession(engine) as s:
            row = await s.scalar(select(CallRecord).where(CallRecord.session_id == session_id))
            assert row is not None
            return row
    finally:
        await engine.dispose()


async def test_employee_answers_then_the_carrier_gets_the_customer_with_our_line(tmp_path: Path) -> None:
    port = free_port_block(1)
    # the carrier answers the trunk's OPTIONS and the call; the employee hangs up after a short talk
    carrier_run = callee_run("uas_trunk", calls=100_000, local_ip=CARRIER_IP, local_port=port, trace_msg=True)
    async with (
        running(tmp_path, setup=trunk_and_api(port)) as server,
        SippProcess.running(callee_run("uas_answer_bye", duration_ms=TALK_MS), tmp_path) as employee,
        SippProcess.running(carrier_run, tmp_path) as carrier,
    ):
        await carrier.wait_listening()
        await bind(server, "101", employee)
        answer = await call_back(server, BODY)
        assert answer["result"] == "0" and answer["resultMessage"] == "Операция выполнена успешно"
        sid = answer["session_id"]
        desk = await employee.wait()
        sessions = await server.calls(ended=1)
        info = await post(server, "call_info", f'{{"session_id":"{sid}"}}'.encode())

    assert desk.ok, desk.describe()  # rung, answered, talked, hung up (its BYE answered)
    log = (carrier.workdir / "messages.log").read_text(errors="replace")
    assert f"INVITE sip:89161234567@{CARRIER_IP}" in log  # the carrier's national format
    assert "From: <sip:84951234567@" in log  # the domain's line as caller ID
    assert "BYE sip:" in log  # the customer's leg was released when the employee left
    events = sessions[sid]
    assert [e["state"] for e in events] == ["new", "calling", "connected", "disconnected", "end"]
    assert {e["type"] for e in events} == {"outbound"}
    assert all(e["from_pin"] == "101" and e["from_number"] == f"user101@{DOMAIN}" for e in events)
    assert events[0]["request_number"] == f"sip:79161234567@{DOMAIN}"
    assert events[1]["request_uri"] == f"sip:101@127.0.0.1:{employee.port}"  # the employee's phone rang
    assert events[3]["disconnect_reason"] == "5"
    rec = await record(tmp_path, sid)
    assert (rec.call_kind, rec.call_type) == ("callback", "outbound")
    assert rec.answered_at is not None and rec.ended_at is not None
    assert info["result"] == "0"
    assert (info["info"]["call_type"], info["info"]["direction"]) == (3, 2)  # §4.1 item 6


async def test_a_busy_employee_ends_the_call_without_dialling_the_customer(tmp_path: Path) -> None:
    port = free_port_block(1)
    async with (
        running(tmp_path, setup=trunk_and_api(port)) as server,
        SippProcess.running(callee_run("uas_busy"), tmp_path) as employee,
    ):
        await bind(server, "101", employee)
        answer = await call_back(server, BODY)
        sid = answer["session_id"]
        busy = await employee.wait()
        sessions = await server.calls(ended=1)

    assert busy.ok, busy.describe()
    assert [e["state"] for e in sessions[sid]] == ["new", "calling", "end"]
    rec = await record(tmp_path, sid)
    assert rec.call_kind == "callback" and rec.answered_at is None


async def test_an_unregistered_employee_is_refused_at_once(tmp_path: Path) -> None:
    async with running(tmp_path, setup=trunk_and_api(free_port_block(1))) as server:
        answer = await call_back(server, b'{"request_number":"79161234567","from_pin":"104"}')
    assert answer == {
        "result": "-20",
        "resultMessage": "Пользователь недоступен",
        "error": "user-unavailable",
    }
    assert server.events() == []


async def test_call_back_from_a_public_style_client_reaches_the_customer_as_one_session(
    tmp_path: Path,
) -> None:
    """End to end through /api: a PHP-style client posts call_back over vpbx serve's HTTP port; the employee's
    baresip rings and answers, then the carrier gets the customer; the CRM receives the call's events, all
    signed, all with the reply's session_id, and call_info of that session_id describes the callback."""
    require_binary("baresip")
    port = free_port_block(1)
    async with (
        Crm().running() as crm,
        running(tmp_path, setup=trunk_and_api(port, crm.url)) as server,
        Baresip.start(tmp_path, name="employee") as phone,
        SippProcess.running(
            callee_run("uas_trunk", calls=100_000, local_ip=CARRIER_IP, local_port=port, trace_msg=True),
            tmp_path,
        ) as carrier,
        httpx.AsyncClient(base_url=server.vpbx.http_url, timeout=10) as http,
    ):
        await carrier.wait_listening()
        await phone.register(Account.on(server.service, "101", answermode="auto"))
        client = CrmClient(http, php_json_encode)
        reply = envelope(
            await client.call("call_back", {"request_number": "+7 (916) 123-45-67", "from_pin": "101"})
        )
        sid = reply["session_id"]
        rung = await phone.wait_event("CALL_ESTABLISHED")
        # the customer answered: the conversation's ``connected`` reached the CRM
        await crm.wait_for(3)
        await phone.hangup()
        await phone.wait_event("CALL_CLOSED")
        engine = await server.calls(ended=1)
        await crm.wait_for(len(engine[sid]))
        info = envelope(await client.call("call_info", {"session_id": sid}))

    assert list(engine) == [sid]
    assert rung["direction"] == "incoming"  # the employee's phone was rung first
    log = (carrier.workdir / "messages.log").read_text(errors="replace")
    assert f"INVITE sip:89161234567@{CARRIER_IP}" in log and "BYE sip:" in log
    sent = [r for r in crm.seen if r.path.endswith("/call_events")]
    for r in sent:
        assert verify(CLIENT_ID, r.raw, KEY, r.headers["x-client-sign"]), r.raw
    assert [r.json for r in sent] == [body(e) for e in engine[sid]]
    domain = server.service.domain
    common = {"type": "outbound", "session_id": sid, "from_number": f"user101@{domain}", "from_pin": "101"}
    assert [{k: v for k, v in r.json.items() if k != "timestamp"} for r in sent] == [
        {"state": "new", **common, "request_number": f"sip:79161234567@{domain}", "domain": domain},
        {"state": "calling", **common, "request_number": f"sip:79161234567@{domain}", "domain": domain},
        {"state": "connected", **common, "request_number": f"sip:79161234567@{domain}", "domain": domain},
        {
            "state": "disconnected",
            **common,
            "request_number": f"sip:79161234567@{domain}",
            "disconnect_reason": "5",
            "domain": domain,
        },
        {
            "state": "end",
            **common,
            "request_number": f"sip:79161234567@{domain}",
            "is_record": "false",
            "domain": domain,
        },
    ]
    call = info["info"]
    assert (call["call_type"], call["direction"], call["state"], call["orig_pin"]) == (3, 2, 1, "101")
    assert call["dest_number"] == f"sip:79161234567@{domain}"
