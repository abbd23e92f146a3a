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

    # a number, with a malformed one first
    await page.goto(f"{server.url}/")
    await page.click("#tile-phone")
    await page.click("#add-number")
    await page.fill("#f-number", "12-34")
    await page.click("#save")
    await expect(page.locator("#err-number")).to_be_visible()
    await page.fill("#f-number", "8 (812) 555-01-02")
    await page.fill("#f-label", "Петербург")
    await page.click("#save")
    await expect(page.locator("#numbers-table")).to_contain_text("+7 812 555-01-02")
    await shot(page, "05-numbers")

    # a group with the new user, with an unknown member first
    await page.goto(f"{server.url}/groups")
    await page.click("#add-group")
    await page.fill("#f-name", "Поддержка")
    await page.fill("#f-pin", "700")
    await page.select_option("#f-strategy", "cyclic")
    await page.fill("#f-members", "104\n999")
    await page.click("#save")
    await expect(page.locator("#err-members")).to_contain_text("999")
    await page.fill("#f-members", "104\n103")
    await page.click("#save")
    await expect(page.locator("#groups-table")).to_contain_text("Поддержка")
    await shot(page, "06-groups")

    # a routing rule for the new number: always → the new group
    await page.goto(f"{server.url}/routing")
    await page.locator("#routing-table a", has_text="+7 812 555-01-02").first.click()
    await expect(page.locator("#no-rules")).to_be_visible()
    await page.select_option("#f-condition", "always")
    await page.select_option("#f-action", "group")
    await page.select_option("#f-group_id", label="700 Поддержка")
    await page.click("#add-rule #save")
    await expect(page.locator("#rules-table")).to_contain_text("Поддержка")
    await shot(page, "07-routing")

    # services management: the demo domain has call recording on, with its prorated charge in the ledger
    await page.goto(f"{server.url}/")
    await page.click("#tile-services")
    await expect(page.locator("main")).to_contain_text("Запись разговоров")
    await shot(page, "08-services")

    # language switch
    await page.goto(f"{server.url}/users")
    await page.click("#lang-en")
    await expect(page.locator("h1")).to_have_text("Users")
    await page.goto(f"{server.url}/")
    await expect(page.locator("h1")).to_have_text("Admin desktop")
    await shot(page, "04-desktop-en")
    await page.click("#lang-ru")
    await expect(page.locator("h1")).to_have_text("Рабочий стол администратора")
