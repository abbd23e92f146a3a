"""Pop-ups with real peers (amocrm.md F13, §3.6, §6 examples 1, 3): SIPp as the carrier calls the line, the
ИМК sends Анна Смирнова's call to 101 (baresip, auto-answer); the widget in the harness (Debian's Chromium),
open as amoCRM user 5001, holds the SSE stream to ``vpbx serve`` and draws the card with links to contact 9001
and deal 8001 and calls ``APP.notifications.add_call``. With the tab closed, an unknown caller's answer goes
to amoCRM as E16 ``phone_call`` for 5001 (the emulator's v2 events)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser
from sqlalchemy.ext.asyncio import AsyncSession

from tests.amocrm.emu_kit import DEMO, Emu
from tests.amocrm.route_kit import LINE, bind_rows
from tests.amocrm.widget.conftest import emu_errors, open_harness
from tests.integration.peers.baresip import Account, Baresip
from tests.integration.peers.net import wait_until
from tests.integration.peers.process import require_binary
from tests.integration.peers.sipp import run_sipp
from tests.integration.test_calls import Server, running
from tests.integration.test_incoming_calls import carrier_run, line_to
from vpbx.amocrm.bundle import build
from vpbx.amocrm.oauth import TokenPair
from vpbx.amocrm.tokens import store_tokens
from vpbx.app import Core

pytestmark = pytest.mark.peers

ANNA = "79161234567"  # contact 9001, deal 8001, responsible 5001 ↔ 101
STRANGER = "79990001122"  # nobody in the fixture
WAIT_S = 20.0


def setup_for(emu: Emu) -> Any:
    rule = line_to("group", members=("101",))

    async def setup(s: AsyncSession, core: Core, domain_id: Any) -> None:
        await rule(s, core, domain_id)
        row, _, _ = await bind_rows(s, domain_id, line=LINE, client_id=emu.client_id)
        answer = await emu.token_pair(DEMO)
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=int(answer["expires_in"]))
        await store_tokens(
            s, core.box, row, TokenPair(answer["access_token"], answer["refresh_token"], expires)
        )

    return setup


async def call(server: Server, workdir: Path, caller: str) -> None:
    run = carrier_run(
        server, calls=1, duration_ms=1500, keys={"domain": server.service.host, "caller": caller}
    )
    result = await run_sipp(run, workdir)
    assert result.ok, result.describe()


async def test_the_answering_manager_sees_the_card_else_amocrm_gets_e16(
    tmp_path: Path, browser: Browser, emu: Emu
) -> None:
    require_binary("baresip")
    env = {
        "VPBX_AMOCRM__CLIENT_ID": emu.client_id,
        "VPBX_AMOCRM__CLIENT_SECRET": emu.client_secret,
        "VPBX_AMOCRM__API_URL_TEMPLATE": emu.api_url_template,
        "VPBX_AMOCRM__WIDGET_ORIGINS": json.dumps([emu.url]),
    }
    async with (
        running(tmp_path, env=env, setup=setup_for(emu)) as server,
        Baresip.start(tmp_path, name="manager") as phone,
    ):
        await phone.register(Account.on(server.service, "101", answermode="auto"))
        bundle = build(server.vpbx.http_url, "Виртуальная АТС", tmp_path / "amocrm-widget.zip")
        page = await open_harness(browser, emu.url, bundle, user_id=5001)
        await page.wait_for_selector("body[data-vpbx-stream='open']", state="attached")

        await call(server, tmp_path, ANNA)
        await page.wait_for_selector(".vpbx-popup", state="attached")
        card = {
            "title": await page.inner_text("[data-role='popup-title']"),
            "direction": await page.inner_text("[data-role='popup-direction']"),
            "line": await page.inner_text("[data-role='popup-line']"),
            "contact": await page.get_attribute("[data-role='popup-contact']", "href"),
            "lead": await page.get_attribute("[data-role='popup-lead']", "href"),
        }
        await page.wait_for_function("window.__emu.notifications.some(n => n.kind === 'add_call')")
        notes = await page.evaluate("window.__emu.notifications.filter(n => n.kind === 'add_call')")
        errors = await emu_errors(page)
        streamed_e16 = (await emu.state(DEMO))["events_v2"]
        await page.close()  # no tab open any more: the next pop-up is amoCRM's own (E16)

        await call(server, tmp_path, STRANGER)

        async def e16() -> bool:
            return bool((await emu.state(DEMO))["events_v2"])

        await wait_until(e16, timeout_s=WAIT_S, what="the E16 pop-up")
        events = (await emu.state(DEMO))["events_v2"]

    assert errors == []
    assert card == {
        "title": "Анна Смирнова +79161234567",
        "direction": "Входящий звонок",
        "line": "Линия: +7 495 123-45-67, Внутренний номер: 101",
        "contact": "https://demo.amocrm.ru/contacts/detail/9001",
        "lead": "https://demo.amocrm.ru/leads/detail/8001",
    }
    assert len(notes) == 1
    note = notes[0]["payload"]
    assert note["element"] == {"id": 9001, "type": "contact"}
    assert (
        note["from"] == "+79161234567" and "Анна Смирнова" in note["text"] and isinstance(note["date"], int)
    )
    assert streamed_e16 == []  # the stream took the first pop-up
    assert [(e["type"], e["phone_number"], e["users"]) for e in events] == [
        ("phone_call", f"+{STRANGER}", [5001])
    ]
