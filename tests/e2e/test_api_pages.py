"""The Integration API section in headless Chromium against ``vpbx serve --demo``: the service switched on in
«Управление услугами», settings saved, the X-Client-ID regenerated, a test send to a real HTTP server the test
runs on loopback (the result panel shows its status and signature), and the log with its filter."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from playwright.async_api import Dialog, Page, expect

from tests.e2e.conftest import Server, shot
from tests.e2e.test_cabinet_tour import login
from vpbx.integration_api.core import sign

WAIT_S = 10.0


@dataclass
class Crm:
    """A CRM on loopback: records each request and answers 200 with the usual envelope."""

    port: int = 0
    got: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), WAIT_S)
        self.got.append((lines[0].split()[1], headers, body))
        answer = b'{"result":"0","resultMessage":"OK"}'
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(answer)}\r\n\r\n".encode()
            + answer
        )
        await writer.drain()
        writer.close()


@pytest.fixture
async def crm() -> AsyncIterator[Crm]:
    c = Crm()
    server = await asyncio.start_server(c.handle, "127.0.0.1", 0)
    c.port = server.sockets[0].getsockname()[1]
    async with server:
        yield c


async def accept(dialog: Dialog) -> None:
    await dialog.accept()


async def switch(page: Page, server: Server, action: str) -> None:
    await page.goto(f"{server.url}/services")
    await page.click(f"#{action}-integration_api")
    await page.click("#confirm")
    await expect(
        page.locator(f"#{'disable' if action == 'enable' else 'enable'}-integration_api")
    ).to_be_visible()


async def test_integration_api_section(page: Page, server: Server, crm: Crm) -> None:
    await login(page, server)
    # the demo has the service on; off and on again through «Управление услугами» keeps the credentials
    await switch(page, server, "disable")
    await page.goto(f"{server.url}/integration-api")
    await expect(page.locator("#api-off")).to_be_visible()
    await switch(page, server, "enable")
    await page.click("#settings-integration_api")
    await expect(page.locator("h1")).to_have_text("Интеграционный API")
    await expect(page.locator("#client-id")).to_have_text(server.demo["api_client_id"])
    key = server.demo["api_sign_key"]
    await expect(page.locator("#sign-key")).not_to_have_text(key)
    assert key not in await page.content()
    await page.click("#reveal-key")
    await expect(page.locator("#sign-key")).to_have_text(key)

    # settings: a bad timeout is refused, then the CRM address and the timeout are saved
    await expect(page.locator("#allowlist-empty")).to_be_visible()
    await page.fill("#f-crm_url", f"http://127.0.0.1:{crm.port}/crm/")
    await page.fill("#f-timeout_s", "11")
    await page.click("#save-api")
    await expect(page.locator("#err-timeout_s")).to_be_visible()
    await page.fill("#f-timeout_s", "2")
    await page.click("#save-api")
    await expect(page.locator("#api-saved")).to_be_visible()
    await expect(page.locator("#f-crm_url")).to_have_value(f"http://127.0.0.1:{crm.port}/crm/")
    await shot(page, "api-settings")

    # a new X-Client-ID, after the confirmation, shown at once with the warning
    page.once("dialog", accept)
    await page.click("#regenerate-client-id")
    await expect(page.locator("#api-regenerated")).to_be_visible()
    client_id = (await page.locator("#client-id").text_content() or "").strip()
    assert len(client_id) == 32 and client_id != server.demo["api_client_id"]

    # a test send reaches the CRM signed with the new ID; the panel shows the status and the signature
    await page.click("#tab-debug")
    await expect(page.locator("#tab-debug")).to_have_attribute("aria-current", "page")
    await page.select_option("#f-choice", "call_events:connected")
    await page.fill("#f-send-timeout", "2")
    await page.click("#send-request")
    await expect(page.locator("#result-status")).to_have_text("200")
    assert len(crm.got) == 1
    path, headers, body = crm.got[0]
    assert path == "/crm/call_events"
    expected = sign(client_id, body, key)
    assert headers["x-client-id"] == client_id and headers["x-client-sign"] == expected
    await expect(page.locator("#result-sign")).to_have_text(expected)
    assert json.loads(body)["state"] == "connected"
    await expect(page.locator("#example-call_back")).to_contain_text("--data-binary")
    await shot(page, "api-debug")

    # the log shows it; a filter on another method hides it; «Очистить фильтр» shows it again
    rows = page.locator("tr.log-row[data-method=call_events]")
    await expect(rows).to_have_count(1)
    await page.select_option("#f-method", "call_back")
    await page.click("#refresh-log")
    await expect(page.locator("#log-empty")).to_be_visible()
    await expect(page.locator("#f-method")).to_have_value("call_back")
    await page.click("#reset-filter")
    await expect(page.locator("tr.log-row[data-method=call_events]")).to_have_count(1)
    await expect(page.locator("#f-method")).to_have_value("")
