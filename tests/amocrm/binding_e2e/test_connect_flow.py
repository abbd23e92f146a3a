"""The connect and disconnect flows in Debian's Chromium against ``vpbx serve`` and the emulator (amocrm.md
§6 examples 10, 11 and 13): the widget's ticket, the login that keeps it, the fee modal with the prorated
sums, the second account's modal («Отмена», then «Отключить интеграцию»), the counter 1 → 0 → 1, the switch
off with its confirmation, and the get_number_info refusal both ways."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import subprocess
import sys
import zoneinfo
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from babel.numbers import format_decimal
from playwright.async_api import Page, expect

from tests.amocrm.emu_kit import DEMO, OTHER, Emu, emulator
from tests.amocrm.kit import emu_fixture
from tests.e2e.conftest import REPO, free_port
from vpbx import billing, store
from vpbx.crypto import SecretBox
from vpbx.pbx import domains, users

pytestmark = pytest.mark.e2e

DOMAIN = "demo.vpbx.test"
ADMIN = f"admin@{DOMAIN}"
PASSWORD = "Admin-Password-1"
START_TIMEOUT_S = 30.0


@dataclass
class Stack:
    url: str
    emu: Emu
    http: httpx.AsyncClient

    async def ticket_url(self, account: str, user_id: int) -> str:
        token = await self.emu.disposable_token(account=account, user_id=user_id, is_admin=True, aud=self.url)
        resp = await self.http.post(
            f"{self.url}/amo/widget/v1/connect-ticket", headers={"X-Auth-Token": token}
        )
        assert resp.status_code == 200, resp.text
        url: str = resp.json()["url"]
        return url

    async def widget_status(self, account: str, user_id: int) -> str:
        token = await self.emu.disposable_token(account=account, user_id=user_id, aud=self.url)
        resp = await self.http.get(f"{self.url}/amo/widget/v1/state", headers={"X-Auth-Token": token})
        status: str = resp.json()["status"]
        return status


async def _prepare_db(url: str, secret: str) -> None:
    await store.upgrade_async(url)
    engine = store.create_engine(url)
    try:
        async with store.session_factory(engine)() as s:
            d = await domains.create_domain(s, domains.DomainInput(name=DOMAIN))
            await users.create_user(
                s,
                d.id,
                users.UserInput(
                    name="admin", display_name="Иван", pin="101", role="admin", web_password=PASSWORD
                ),
                box=SecretBox(secret),
            )
            await s.commit()
    finally:
        await engine.dispose()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    secret = secrets.token_urlsafe(32)
    db = f"sqlite+aiosqlite:///{tmp_path / 'vpbx.sqlite3'}"
    await _prepare_db(db, secret)
    async with emulator(
        fixture=emu_fixture(),
        redirect_uri=f"{url}/amo/oauth/callback",
        disconnect_hook=f"{url}/amo/oauth/disconnect",
    ) as emu:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VPBX_")}
        env |= {
            "VPBX_ENV": "development",
            "VPBX_SECRET_KEY": secret,
            "VPBX_DATABASE_URL": db,
            "VPBX_SIP_HOST": "127.0.0.1",
            "VPBX_PUBLIC_URL": url,
            "VPBX_AMOCRM__CLIENT_ID": emu.client_id,
            "VPBX_AMOCRM__CLIENT_SECRET": emu.client_secret,
            "VPBX_AMOCRM__API_URL_TEMPLATE": emu.api_url_template,
        }
        log = tmp_path / "server.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "vpbx",
                "serve",
                "--data-dir",
                str(tmp_path),
                "--http-port",
                str(port),
                "--sip-port",
                str(free_port()),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as http:
                async with asyncio.timeout(START_TIMEOUT_S):
                    while True:
                        try:
                            if (await http.get(f"{url}/healthz", timeout=1)).status_code == 200:
                                break
                        except httpx.TransportError:
                            pass
                        if proc.returncode is not None:
                            raise RuntimeError(f"vpbx serve exited:\n{log.read_text()}")
                        await asyncio.sleep(0.1)  # polling a starting process, not waiting for behaviour
                yield Stack(url=url, emu=emu, http=http)
        finally:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=10)
            except TimeoutError:
                proc.kill()
                await asyncio.wait_for(proc.wait(), timeout=10)


def rub(amount: Decimal) -> str:
    return f"{format_decimal(amount, format='#,##0.00', locale='ru')}\u00a0₽"


async def _counter(page: Page, stack: Stack) -> str:
    await page.goto(f"{stack.url}/services")
    return (await page.locator("#counter-external_integrations").text_content() or "").strip()


async def test_connect_second_account_switch_off_and_number_info(page: Page, stack: Stack) -> None:
    base = stack.url
    today = dt.datetime.now(zoneinfo.ZoneInfo("Europe/Moscow")).date()
    fee, charge = Decimal("500.00"), billing.prorate(Decimal("500.00"), today)

    # F2: the widget is installed in demo.amocrm.ru, its admin presses «Подключить», logs in, sees the sums
    assert (await stack.emu.install(DEMO))["status"] == 200
    await page.goto(await stack.ticket_url(DEMO, 5001))
    await page.fill("#f-login", ADMIN)
    await page.fill("#f-password", PASSWORD)
    await page.click("button[type=submit]")
    await expect(page.locator("#connect-ready")).to_be_visible()
    await expect(page.locator("#connect-title")).to_contain_text("demo.amocrm.ru")
    await expect(page.locator("#quote-fee")).to_have_text(rub(fee))
    await expect(page.locator("#quote-charge")).to_have_text(rub(charge))
    await page.click("#connect")
    await expect(page.locator("#amocrm-state")).to_have_text("Подключено")
    await expect(page.locator("#amocrm-host")).to_have_text("demo.amocrm.ru")
    await expect(page.locator("#integrations-counter")).to_have_text("1")
    assert await stack.widget_status(DEMO, 5001) == "active"

    # §6 example 10: other.amocrm.ru's admin arrives; the modal names demo.amocrm.ru; «Отмена» changes nothing
    assert (await stack.emu.install(OTHER))["status"] == 200
    other_url = await stack.ticket_url(OTHER, 6001)
    await page.goto(other_url)
    await expect(page.locator("#connect-domain_elsewhere")).to_be_visible()
    await expect(page.locator("#linked-account")).to_contain_text("demo.amocrm.ru")
    await page.click("#cancel")
    await expect(page.locator("#amocrm-host")).to_have_text("demo.amocrm.ru")
    assert await _counter(page, stack) == "1"
    # the ticket still works: «Отключить интеграцию» disables A (counter 0), then B's fee modal
    await page.goto(other_url)
    await page.click("#disable-other")
    await expect(page.locator("#connect-ready")).to_be_visible()
    await expect(page.locator("#connect-title")).to_contain_text("other.amocrm.ru")
    await expect(page.locator("#quote-charge")).to_have_text(rub(charge))
    assert await stack.widget_status(DEMO, 5001) == "disabled"  # A's widget is back to «Подключить»
    await page.click("#connect")
    await expect(page.locator("#amocrm-host")).to_have_text("other.amocrm.ru")
    assert await _counter(page, stack) == "1"
    assert await stack.widget_status(OTHER, 6001) == "active"

    # §6 example 11: the switch, the confirmation, the counter down by one, the widget's state
    await page.goto(f"{base}/integrations")
    await page.click("#amocrm-switch")
    await expect(page.locator("#confirm-disable")).to_be_visible()
    await page.click("#confirm")
    await expect(page.locator("#notice-disabled")).to_be_visible()
    await expect(page.locator("#amocrm-state")).to_have_text("Не подключено")
    assert await _counter(page, stack) == "0"
    assert await stack.widget_status(OTHER, 6001) == "disabled"

    # §6 example 13: get_number_info on → the connect page refuses; amoCRM on → get_number_info is refused
    await page.goto(f"{base}/services/integration_api/enable")
    await page.click("#confirm")
    await page.goto(f"{base}/integration-api")
    await page.check("#f-number_info")
    await page.click("#save-api")
    await expect(page.locator("#f-number_info")).to_be_checked()
    await page.goto(await stack.ticket_url(OTHER, 6001))
    await expect(page.locator("#connect-refused")).to_contain_text(
        "Интеграция с amoCRM не может быть включена одновременно с методом API number_info."
    )
    await expect(page.locator("#connect-refused")).to_contain_text("Отключите get_number_info")
    assert await stack.widget_status(OTHER, 6001) == "disabled"
    await page.goto(f"{base}/integration-api")
    await page.uncheck("#f-number_info")
    await page.click("#save-api")
    await page.goto(await stack.ticket_url(OTHER, 6001))
    await page.click("#connect")
    await expect(page.locator("#amocrm-host")).to_have_text("other.amocrm.ru")
    await page.goto(f"{base}/integration-api")
    await page.check("#f-number_info")
    await page.click("#save-api")
    await expect(page.locator("#err-number_info")).to_contain_text("Отключите интеграцию с amoCRM.")
    await page.goto(f"{base}/integration-api")
    await expect(page.locator("#f-number_info")).not_to_be_checked()
