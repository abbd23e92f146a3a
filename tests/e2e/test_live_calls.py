"""Devices and live calls in headless Chromium, with real SIP peers against ``vpbx serve --demo``.

sipsak registers the demo user 102 with a contact pointing at a SIPp callee; the devices page lists that
registration. The admin then opens «Звонки сейчас» (empty), a SIPp caller (the demo admin, 101) calls 102,
and the open page shows the call and later its end by itself, through its htmx polling, without a reload.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import Page, expect

from tests.e2e.conftest import Server, shot
from tests.e2e.test_cabinet_tour import login
from tests.integration.peers import sipsak
from tests.integration.peers.process import require_binary
from tests.integration.peers.sipp import SippProcess, SippRun

pytestmark = [pytest.mark.e2e, pytest.mark.peers]

CALL_MS = 8000  # the caller's talk time: long enough to see the call, short enough to see it end
SIPP_TIMEOUT_S = 30.0
SEEN_TIMEOUT_MS = 15_000  # a poll every 2 s, on a busy machine


def demo_user(server: Server, pin: str) -> dict[str, Any]:
    user: dict[str, Any] = next(u for u in server.demo["users"] if u["pin"] == pin)
    return user


async def test_devices_and_a_live_call(
    page: Page, server: Server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    for program in ("sipsak", "sipp"):
        require_binary(program)
    work = tmp_path_factory.mktemp("live-calls")
    caller, callee = demo_user(server, "101"), demo_user(server, "102")
    domain = server.demo["domain"]

    async with SippProcess.running(
        SippRun(scenario="uas_answer", calls=1, timeout_s=SIPP_TIMEOUT_S), work
    ) as uas:
        await uas.wait_listening()
        reg = await sipsak.register(
            "127.0.0.1",
            server.sip_port,
            callee["sip_login"],
            callee["sip_password"],
            contact=f"sip:{callee['pin']}@127.0.0.1:{uas.port}",
            expires_s=300,
        )
        assert reg.ok, reg.output

        await login(page, server)
        await page.click("#tile-devices")
        await expect(page.locator("h1")).to_have_text("Устройства")
        table = page.locator("#devices-table")
        await expect(table).to_contain_text("Иванов Сергей")
        await expect(table).to_contain_text(f"sip:{callee['pin']}@127.0.0.1:{uas.port}")
        await expect(table).to_contain_text("UDP 127.0.0.1:")
        await expect(table).not_to_contain_text("Петрова Анна")  # never registered
        await shot(page, "09-devices")
        await page.fill("input[name=q]", "петрова")
        await page.press("input[name=q]", "Enter")
        await expect(page.locator("#no-devices")).to_be_visible()

        await page.goto(f"{server.url}/")
        await page.click("#tile-calls")
        await expect(page.locator("h1")).to_have_text("Звонки сейчас")
        await expect(page.locator("#no-calls")).to_be_visible()
        await expect(page.locator("#channels")).to_contain_text("0 из 10")

        call = SippRun(
            scenario="uac_call",
            calls=1,
            timeout_s=SIPP_TIMEOUT_S,
            remote=("127.0.0.1", server.sip_port),
            service=callee["pin"],
            keys={"domain": domain, "caller": caller["sip_login"]},
            auth_user=caller["sip_login"],
            auth_password=caller["sip_password"],
            auth_uri=f"{callee['pin']}@{domain}",
            duration_ms=CALL_MS,
        )
        async with SippProcess.running(call, work) as uac:
            row = page.locator("#calls-table tbody tr")
            await expect(row).to_have_count(1, timeout=SEEN_TIMEOUT_MS)  # no reload: the poll brought it
            await expect(row).to_contain_text("Разговор", timeout=SEEN_TIMEOUT_MS)
            await expect(row).to_contain_text("Администратор Демо")
            await expect(row).to_contain_text("Иванов Сергей")
            await expect(row).to_contain_text("Внутренний")
            await expect(page.locator("#channels")).to_contain_text("1 из 10")
            await shot(page, "10-live-calls")
            await expect(page.locator("#no-calls")).to_be_visible(timeout=CALL_MS + SEEN_TIMEOUT_MS)
            called = await uac.wait()
        answered = await uas.wait()

    assert called.ok, called.describe()
    assert answered.ok, answered.describe()
