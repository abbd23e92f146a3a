"""The demo admin's first visit, in real headless Chromium against ``vpbx serve --demo``."""

from __future__ import annotations

from playwright.async_api import Page, expect

from tests.e2e.conftest import Server, shot


async def login(page: Page, server: Server) -> None:
    await page.goto(f"{server.url}/login")
    await page.fill("#f-login", server.demo["admin_login"])
    await page.fill("#f-password", server.demo["admin_password"])
    await page.click("button[type=submit]")
    await expect(page.locator("h1")).to_have_text("Рабочий стол администратора")


async def test_admin_tour(page: Page, server: Server) -> None:
    await page.goto(f"{server.url}/login")
    await expect(page.locator("h1")).to_have_text("Виртуальная АТС")
    await shot(page, "01-login")
    await login(page, server)
    await shot(page, "02-desktop")

    # users: create one, with a field error first
    await page.click("#tile-users")
    await page.click("#add-user")
    await page.fill("#f-display_name", "Смирнова Ольга")
    await page.fill("#f-name", "smirnova")
    await page.fill("#f-pin", "101")  # taken by the demo admin
    await page.click("#save")
    await expect(page.locator("#err-pin")).to_be_visible()
    await page.fill("#f-pin", "104")
    await page.fill("#f-email", "smirnova@example.com")
    await page.click("#save")
    await expect(page.locator("#users-table")).to_contain_text("Смирнова Ольга")
    await shot(page, "03-users")

    # language switch
    await page.click("#lang-en")
    await expect(page.locator("h1")).to_have_text("Users")
    await page.goto(f"{server.url}/")
    await expect(page.locator("h1")).to_have_text("Admin desktop")
    await shot(page, "04-desktop-en")
    await page.click("#lang-ru")
    await expect(page.locator("h1")).to_have_text("Рабочий стол администратора")
