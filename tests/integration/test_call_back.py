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

from tests.integration.peers.net import free_port_block
from tests.integration.peers.sipp import SippProcess
from tests.integration.peers.vpbx import Setup
from tests.integration.test_calls import Server, bind, callee_run, running
from tests.integration.test_outbound_calls import CARRIER_IP, carrier_trunk
from vpbx.app import Core
from vpbx.billing import INTEGRATION_API, enable
from vpbx.integration_api.core import sign
from vpbx.integration_api.settings import ensure_settings
from vpbx.store.models import CallRecord

pytestmark = pytest.mark.peers

CLIENT_ID = "000003C405E6525C64C184258C44EC99"
KEY = "00000716ABDA6D4DFF10F82BCBBFC532"
DOMAIN = "peers.vpbx.test"
BODY = b'{"request_number":"+7 916 123-45-67","from_pin":"101"}'
TALK_MS = 3000  # the employee's talk before hanging up: long enough for the carrier to answer on a busy box


def trunk_and_api(port: int) -> Setup:
    trunk = carrier_trunk(port)

    async def setup(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
        await trunk(s, core, domain_id)
        await enable(s, domain_id, INTEGRATION_API, core.clock.now())
        row = await ensure_settings(s, domain_id, core.box)
        row.client_id = CLIENT_ID
        row.sign_key_enc = core.box.seal(KEY)
        row.tls_required = False

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
