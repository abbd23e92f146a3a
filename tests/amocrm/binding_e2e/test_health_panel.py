"""The cabinet's integration health block in Debian's Chromium against ``vpbx serve`` and the emulator
(amocrm.md §5.8): after connecting, the unmapped extension's alert; mapping it through the widget API clears
it; a 429 from amoCRM (the widget's metadata read) raises the rate-limit alert."""

from __future__ import annotations

import contextlib

import httpx
import pytest
from playwright.async_api import Page, expect

from tests.amocrm.binding_e2e.test_connect_flow import ADMIN, PASSWORD, Stack, stack  # noqa: F401 - fixture
from tests.amocrm.emu_kit import DEMO

pytestmark = pytest.mark.e2e


async def _widget(st: Stack, method: str, path: str, body: object = None) -> int:
    token = await st.emu.disposable_token(account=DEMO, user_id=5001, is_admin=True, aud=st.url)
    resp = await st.http.request(
        method, f"{st.url}/amo/widget/v1{path}", headers={"X-Auth-Token": token}, json=body
    )
    return resp.status_code


async def test_health_block_alerts(page: Page, stack: Stack) -> None:  # noqa: F811 - the fixture
    assert (await stack.emu.install(DEMO))["status"] == 200
    await page.goto(await stack.ticket_url(DEMO, 5001))
    await page.fill("#f-login", ADMIN)
    await page.fill("#f-password", PASSWORD)
    await page.click("button[type=submit]")
    await page.click("#connect")
    health = page.locator("#amocrm-health")
    await expect(health).to_be_visible()
    await expect(page.locator("#health-status")).to_contain_text("Подключено")
    await expect(page.locator("#alert-unmapped")).to_be_visible()
    await expect(page.locator("#health-unmapped")).to_contain_text("101")

    body = {"items": [{"amo_user_id": 5001, "extension": "101"}], "fallback_user_id": 5001}
    assert await _widget(stack, "PUT", "/mapping", body) == 200
    await stack.emu.set_switches(retry_after_s=300)
    await stack.emu.fault(
        method="GET", path_regex="^/api/v4/leads/pipelines$", account=DEMO, status=429, times=5
    )
    token = await stack.emu.disposable_token(account=DEMO, user_id=5001, is_admin=True, aud=stack.url)
    with contextlib.suppress(httpx.ReadTimeout):  # the read waits out amoCRM's Retry-After (300 s)
        await stack.http.get(
            f"{stack.url}/amo/widget/v1/amo-meta", headers={"X-Auth-Token": token}, timeout=3
        )
    await page.goto(f"{stack.url}/integrations")
    await expect(page.locator("#alert-unmapped")).to_have_count(0)
    await expect(page.locator("#alert-rate_limited")).to_be_visible()
    await expect(page.locator("#health-429")).not_to_have_text("0")
