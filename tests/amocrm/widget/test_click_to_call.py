"""Click-to-call with real peers (amocrm.md §3.5, §6 example 9): the widget in the harness (Debian's Chromium)
as amoCRM user 5001 on the card contacts:9001; the phone link posts ``/amo/widget/v1/call`` to ``vpbx serve``
with a disposable token and an Idempotency-Key; baresip 101 rings and answers, then the carrier (SIPp behind
an IP trunk on 127.0.0.2) gets the INVITE to the client, and the call's context holds the card."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from tests.amocrm.emu_kit import DEMO, Emu
from tests.amocrm.widget.conftest import ACCOUNT_A, emu_errors, install, open_harness
from tests.integration.peers.baresip import Account, Baresip
from tests.integration.peers.net import free_port_block, wait_until
from tests.integration.peers.process import require_binary
from tests.integration.peers.sipp import SippProcess
from tests.integration.test_calls import callee_run, running
from tests.integration.test_outbound_calls import CARRIER_IP, carrier_trunk
from vpbx.amocrm.bundle import build
from vpbx.app import Core
from vpbx.store.models import AmoCall, CrmBinding, CrmUserMap

pytestmark = pytest.mark.peers

WAIT_S = 20.0


def amo_setup(carrier_port: int, emu: Emu) -> Any:
    """The carrier's trunk and line; the domain bound to demo.amocrm.ru (with a token pair from the
    emulator); amoCRM user 5001 is extension 101."""
    trunk = carrier_trunk(carrier_port)

    async def setup(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
        await trunk(s, core, domain_id)
        await install(s, core, emu, ACCOUNT_A, DEMO)
        binding = CrmBinding(
            domain_id=domain_id,
            external_account_id=ACCOUNT_A,
            base_domain=DEMO,
            hook_secret=uuid.uuid4().hex,
        )
        s.add(binding)
        await s.flush()
        s.add(CrmUserMap(binding_id=binding.id, crm_user_id=5001, extension="101"))

    return setup


async def amo_calls(tmp_path: Path) -> list[AmoCall]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'vpbx' / 'data' / 'vpbx.sqlite3'}")
    try:
        async with AsyncSession(engine) as s:
            return list(await s.scalars(select(AmoCall)))
    finally:
        await engine.dispose()


async def test_the_phone_link_rings_the_manager_then_the_client(
    tmp_path: Path, browser: Browser, emu: Emu
) -> None:
    require_binary("baresip")
    carrier_port = free_port_block(1)
    env = {
        "VPBX_AMOCRM__CLIENT_ID": emu.client_id,
        "VPBX_AMOCRM__CLIENT_SECRET": emu.client_secret,
        "VPBX_AMOCRM__API_URL_TEMPLATE": emu.api_url_template,
        "VPBX_AMOCRM__WIDGET_ORIGINS": json.dumps([emu.url]),
    }
    carrier_run = callee_run(
        "uas_trunk", calls=100_000, local_ip=CARRIER_IP, local_port=carrier_port, trace_msg=True
    )
    async with (
        running(tmp_path, env=env, setup=amo_setup(carrier_port, emu)) as server,
        Baresip.start(tmp_path, name="manager") as phone,
        SippProcess.running(carrier_run, tmp_path) as carrier,
    ):
        await carrier.wait_listening()
        await phone.register(Account.on(server.service, "101", answermode="auto"))
        bundle = build(server.vpbx.http_url, "Виртуальная АТС", tmp_path / "amocrm-widget.zip")
        page = await open_harness(browser, emu.url, bundle)
        await page.wait_for_function("window.__emu.actions.phone !== undefined")  # init saw «active»
        await page.click("#emu-phone")
        answered = "window.__emu.requests.some(r => r.url.endsWith('/call') && r.status !== null)"
        await page.wait_for_function(answered)
        first = await page.evaluate("window.__emu.requests.filter(r => r.url.endsWith('/call'))[0]")
        assert first["status"] == 200, first
        rung = await phone.wait_event("CALL_ESTABLISHED")

        def connected() -> bool:
            return any(e["state"] == "connected" for e in server.events())

        await wait_until(connected, timeout_s=WAIT_S, what="the client's answer")
        await phone.hangup()
        await phone.wait_event("CALL_CLOSED")
        sessions = await server.calls(ended=1)
        requests = await page.evaluate("window.__emu.requests.filter(r => r.url.endsWith('/call'))")
        notes = await page.evaluate("window.__emu.notifications")
        errors = await emu_errors(page)

    assert errors == []
    assert rung["direction"] == "incoming"  # the manager's phone first
    assert len(requests) == 1
    (call,) = requests
    assert call["method"] == "POST" and call["status"] == 200
    assert uuid.UUID(call["headers"]["Idempotency-Key"]).version == 4
    assert json.loads(call["body"]) == {"phone": "+79161234567", "entity": {"type": "contacts", "id": 9001}}
    sid = call["answer"]["session_id"]
    assert list(sessions) == [sid]
    states = [e["state"] for e in sessions[sid]]
    assert states[0] == "new" and "connected" in states and states[-1] == "end"
    assert {e["type"] for e in sessions[sid]} == {"outbound"}
    log = (carrier.workdir / "messages.log").read_text(errors="replace")
    assert f"INVITE sip:89161234567@{CARRIER_IP}" in log  # the client, in the carrier's national format
    shown = [n["payload"]["text"] for n in notes if n["kind"] == "show_message"]
    assert shown == ["Звоним: сначала на ваш телефон…"]
    rows = await amo_calls(tmp_path)
    assert [(r.session_id, r.card_hint, r.call_kind, r.manager_pin) for r in rows] == [
        (sid, {"type": "contacts", "id": 9001}, "callback", "101")
    ]
