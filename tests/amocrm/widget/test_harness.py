"""The widget in the harness (amocrm.md §4.7) in Debian's Chromium, against our backend over real HTTP: the
settings render, a mapping is saved (and a repeated extension is stopped in the page), a scenario is added
and saved; a non-admin sees everything read-only."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi import FastAPI
from playwright.async_api import Browser
from sqlalchemy import delete, select

from tests.amocrm.emu_kit import DEMO, Emu
from tests.amocrm.unit.fake_amo import FakeAmo
from tests.amocrm.unit.jobs_kit import World as JobsWorld
from tests.amocrm.widget.conftest import (
    LINE_A,
    LINE_A2,
    World,
    emu_errors,
    free_port,
    open_harness,
    serving,
)
from vpbx.amocrm.bundle import build
from vpbx.amocrm.calls import FINISH, CallConsumer
from vpbx.amocrm.client import AmoClientPool, close_shared_pool
from vpbx.amocrm.finish import FinishHandler, FinishSettings
from vpbx.amocrm.jobs import JobRunner
from vpbx.clock import FakeClock
from vpbx.settings import Settings
from vpbx.store.models import AmoInstall, AmoScenario, CrmBinding, CrmUserMap

pytestmark = pytest.mark.e2e


@pytest.fixture
def pbx_port() -> int:
    return free_port()


@pytest.fixture
def settings(settings: Settings, emu: Emu, pbx_port: int) -> Settings:
    """Our origin is where the test serves the app; the emulator's page may call us (CORS)."""
    amo = settings.amocrm.model_copy(update={"widget_origins": [emu.url]})
    return settings.model_copy(update={"public_url": f"http://127.0.0.1:{pbx_port}", "amocrm": amo})


@pytest.fixture
async def sites(
    app: FastAPI, world: World, emu: Emu, pbx_port: int, tmp_path: Path
) -> AsyncIterator[tuple[str, str, Path]]:
    async with serving(app, pbx_port) as pbx:
        bundle = build(pbx, "Виртуальная АТС", tmp_path / "amocrm-widget.zip")
        yield pbx, emu.url, bundle
    await close_shared_pool(app.state.core)


async def test_settings_render_and_save_a_mapping(
    browser: Browser, sites: tuple[str, str, Path], world: World
) -> None:
    _, emu, bundle = sites
    page = await open_harness(browser, emu, bundle)
    assert await page.locator("#emu-card-name").inner_text() == "Анна Смирнова"  # the world's card
    assert await page.locator("#emu-phone").inner_text() == "+79161234567"
    settings = page.locator("#vpbx-widget-settings")
    await settings.get_by_text("Настройка соответствия пользователей").wait_for()
    assert await settings.locator("[data-role=domain]").inner_text() == "demo.vpbx.test"
    assert await settings.locator("[data-role=status]").inner_text() == "Подключено"
    assert await settings.get_by_role("button", name="Отключить интеграцию").count() == 1
    rows = settings.locator("table.vpbx-mapping tr[data-user]")
    assert await rows.count() == 4
    assert await rows.nth(3).get_attribute("class") == "vpbx-inactive"  # greyed out (F7)
    options = await rows.nth(0).locator("select option").all_inner_texts()
    assert options == ["Не выбран", "101 — Иван", "102 — Мария", "103 — Пётр"]
    # a repeated extension is stopped in the page; nothing reaches the backend
    await rows.nth(0).locator("select").select_option("101")
    await rows.nth(1).locator("select").select_option("101")
    await settings.locator("select[data-field=fallback]").select_option("5002")
    await settings.get_by_role("button", name="Сохранить соответствия").click()
    await settings.get_by_text("Внутренний номер 101 выбран несколько раз").wait_for()
    # fixed: saved
    await rows.nth(1).locator("select").select_option("102")
    await settings.get_by_role("button", name="Сохранить соответствия").click()
    await settings.get_by_text("Сохранено").wait_for()
    async with world.core.sessions() as s:
        mapped = {(r.crm_user_id, r.extension) for r in await s.scalars(select(CrmUserMap))}
        binding = await s.get(CrmBinding, world.binding_a)
    assert mapped == {(5001, "101"), (5002, "102")}
    assert binding is not None and binding.fallback_user_id == 5002
    saves = [r for r in await page.evaluate("window.__emu.requests") if r["method"] == "PUT"]
    assert [(r["status"], json.loads(r["body"])["fallback_user_id"]) for r in saves] == [(200, 5002)]
    assert await emu_errors(page) == []


async def test_a_scenario_is_added_and_saved(
    browser: Browser, sites: tuple[str, str, Path], world: World
) -> None:
    _, emu, bundle = sites
    page = await open_harness(browser, emu, bundle)
    settings = page.locator("#vpbx-widget-settings")
    await settings.get_by_text("Управление сценариями обработки вызовов").wait_for()
    await settings.get_by_role("button", name="+", exact=True).click()
    tab = settings.locator("nav.vpbx-tabs").get_by_role("button", name="Новый сценарий")
    await tab.click()
    await settings.get_by_text("Список входящих номеров").wait_for()
    lines = settings.locator("ul.vpbx-lines li")
    assert await lines.all_inner_texts() == ["+7 495 123-45-67 ×", "+7 495 123-45-68 ×"]
    await lines.nth(1).get_by_role("button", name="×").click()  # «×» removes a line
    assert await settings.locator("ul.vpbx-lines li").count() == 1
    await settings.locator("input[data-path='smart_routing.enabled']").check()
    await settings.locator("input[data-path='events.incoming.new.enabled']").check()
    await settings.locator("input[data-path='events.incoming.new.contact.enabled']").check()
    await settings.locator("input[data-path='events.incoming.new.contact.tags']").fill("Входящий звонок, amo")
    await settings.locator("select[data-path='events.incoming.new.lead']").select_option("7000:7002")
    await settings.locator("nav.vpbx-event-tabs").get_by_role("button", name="Пропущенные").click()
    await settings.locator("input[data-path='events.missed.new.task.enabled']").check()
    await settings.get_by_role("button", name="Сохранить настройки").click()
    await settings.get_by_text("Сохранено").wait_for()
    async with world.core.sessions() as s:
        row = (await s.scalars(select(AmoScenario))).one()
    assert row.name == "Новый сценарий" and row.is_active
    doc = row.document
    assert doc["smart_routing"]["enabled"] is True
    new = doc["events"]["incoming"]["new"]
    assert new["enabled"] and new["contact"]["enabled"]
    assert new["contact"]["tags"] == ["Входящий звонок", "amo"]
    assert (new["lead"]["pipeline_id"], new["lead"]["status_id"]) == (7000, 7002)
    assert doc["events"]["missed"]["new"]["task"]["enabled"] is True
    listed = json.loads(await page.evaluate("JSON.stringify(window.__emu.requests.slice(-1)[0])"))
    assert listed["status"] == 200 and listed["answer"]["lines"] == [LINE_A]
    assert LINE_A2 not in listed["answer"]["lines"]
    assert await emu_errors(page) == []


async def test_extra_fields_are_edited_saved_shown_again_and_reach_the_new_clients_cards(
    browser: Browser, sites: tuple[str, str, Path], world: World, emu: Emu
) -> None:
    _, emu_url, bundle = sites
    page = await open_harness(browser, emu_url, bundle)
    settings = page.locator("#vpbx-widget-settings")
    await settings.get_by_text("Управление сценариями обработки вызовов").wait_for()
    await settings.get_by_role("button", name="+", exact=True).click()
    await settings.locator("nav.vpbx-tabs").get_by_role("button", name="Новый сценарий").click()
    base = "events.incoming.new"
    for path in ("enabled", "contact.enabled", "lead.enabled"):
        await settings.locator(f"input[data-path='{base}.{path}']").check()
    contact = settings.locator(f"[data-fields='{base}.contact.fields']")
    assert await contact.locator("legend").inner_text() == "Дополнительные поля"
    await contact.get_by_role("button", name="Добавить поле").click()
    row = contact.locator("[data-role=field-row]")
    assert await row.count() == 1
    picker = row.locator("select[data-role=field-id]")
    # no PHONE or EMAIL (multitext); the first free field is picked
    assert await picker.locator("option").all_inner_texts() == ["Должность", "Комментарий"]
    await picker.select_option(label="Комментарий")
    await row.locator("input[data-role=field-value]").fill("x")
    await picker.select_option(label="Должность")  # another field: the row follows it
    await row.locator("input[data-role=field-value]").fill("Звонок на $(line)")
    await contact.get_by_role("button", name="Добавить поле").click()  # a second row, then removed
    assert await row.count() == 2
    await row.nth(1).get_by_role("button", name="×").click()
    assert await row.count() == 1
    lead = settings.locator(f"[data-fields='{base}.lead.fields']")
    await lead.get_by_role("button", name="Добавить поле").click()
    enum = lead.locator("select[data-role=field-enum]")  # «Источник» is a select: its enums
    assert await enum.locator("option").all_inner_texts() == ["Звонок"]
    # an empty value is stopped in the page
    await contact.get_by_role("button", name="Добавить поле").click()
    await settings.get_by_role("button", name="Сохранить настройки").click()
    await settings.get_by_text("Укажите значение поля «Комментарий»").wait_for()
    await row.nth(1).get_by_role("button", name="×").click()
    await settings.get_by_role("button", name="Сохранить настройки").click()
    await settings.get_by_text("Сохранено").wait_for()
    async with world.core.sessions() as s:
        saved = (await s.scalars(select(AmoScenario))).one()
    new = saved.document["events"]["incoming"]["new"]
    assert new["contact"]["fields"] == [{"field_id": 103, "value": "Звонок на $(line)", "enum_id": None}]
    assert new["lead"]["fields"] == [{"field_id": 201, "value": None, "enum_id": 2011}]
    assert await emu_errors(page) == []
    await page.close()

    again = await open_harness(browser, emu_url, bundle)  # a fresh page: what was saved is shown
    settings = again.locator("#vpbx-widget-settings")
    await settings.locator("nav.vpbx-tabs").get_by_role("button", name="Новый сценарий").click()
    row = settings.locator(f"[data-fields='{base}.contact.fields'] [data-role=field-row]")
    assert await row.count() == 1
    assert await row.locator("select[data-role=field-id] option:checked").inner_text() == "Должность"
    assert await row.locator("input[data-role=field-value]").input_value() == "Звонок на $(line)"
    lead_enum = settings.locator(f"[data-fields='{base}.lead.fields'] select[data-role=field-enum]")
    assert await lead_enum.locator("option:checked").inner_text() == "Звонок"
    assert await emu_errors(again) == []

    # a call from a new number on the line: the contact and the deal carry the fields
    core = world.core
    async with core.sessions() as s:
        binding = await s.get(CrmBinding, world.binding_a)
        assert binding is not None
        binding.connected_at = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        binding.fallback_user_id = 5001
        s.add(CrmUserMap(binding_id=binding.id, crm_user_id=5001, extension="101"))
        await s.commit()
    pool = AmoClientPool(core)
    clock = FakeClock(dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=30))
    handler = FinishHandler(FinishSettings(source_name="Виртуальная АТС", origin="https://pbx.example"))
    runner = JobRunner(core, pool, {FINISH: handler})
    calls = JobsWorld(
        core, clock, FakeAmo(), world.domain_a, world.binding_a, saved.id, runner, CallConsumer(core)
    )
    try:
        await calls.incoming("79035550011", answered=["101"], talk_s=30)
        await calls.settle()
    finally:
        await pool.aclose()
    state = await emu.state(DEMO)
    [card] = [c for c in state["contacts"] if int(c["id"]) >= 10_000_000]
    values = {f["field_id"]: f["values"] for f in card["custom_fields_values"]}
    assert values[103] == [{"value": "Звонок на +74951234567"}]
    [deal] = [d for d in state["leads"] if int(d["id"]) >= 10_000_000]
    assert [(f["field_id"], f["values"][0]["enum_id"]) for f in deal["custom_fields_values"]] == [(201, 2011)]


async def test_a_non_admin_sees_the_settings_read_only(
    browser: Browser, sites: tuple[str, str, Path], world: World
) -> None:
    _, emu, bundle = sites
    page = await open_harness(browser, emu, bundle, user_id=5002)
    settings = page.locator("#vpbx-widget-settings")
    await settings.get_by_text("Настройка соответствия пользователей").wait_for()
    assert await settings.get_by_role("button", name="Сохранить соответствия").count() == 0
    assert await settings.get_by_role("button", name="Отключить интеграцию").count() == 0
    assert await settings.locator("table.vpbx-mapping select").first.is_disabled()
    assert await emu_errors(page) == []


async def test_before_enabling_connect_opens_the_cabinet_with_a_ticket(
    browser: Browser, sites: tuple[str, str, Path], world: World
) -> None:
    pbx, emu, bundle = sites
    async with world.core.sessions() as s:
        b = await s.get(CrmBinding, world.binding_a)
        assert b is not None
        b.status = "disabled"
        await s.commit()
    page = await open_harness(browser, emu, bundle)
    settings = page.locator("#vpbx-widget-settings")
    await settings.get_by_role("button", name="Подключить").wait_for()
    assert await settings.locator("[data-role=status]").inner_text() == "Не подключено"
    assert await settings.get_by_role("button", name="Создать").count() == 1
    assert await settings.get_by_text("Настройка соответствия пользователей").count() == 0
    async with page.expect_popup() as opened:
        await settings.get_by_role("button", name="Подключить").click()
    popup = await opened.value
    await popup.wait_for_load_state()
    landed = urlsplit(popup.url)  # the cabinet's login first, then the connect page with the ticket
    assert (f"{landed.scheme}://{landed.netloc}", landed.path) == (pbx, "/login")
    after = parse_qs(landed.query)["next"][0]
    assert after.startswith("/integrations/amocrm/connect?ticket=") and len(after) > 40
    assert await page.evaluate("window.__emu.actions.phone") is None  # no click-to-call while off
    assert await emu_errors(page) == []


async def test_without_the_oauth_install_the_widget_asks_to_install_again(
    browser: Browser, sites: tuple[str, str, Path], world: World
) -> None:
    """/state is "disabled" (one of §3.2's four) with ``oauth_missing``: our install row is gone (amoCRM's
    OAuth callback never came, or the widget was uninstalled), so «Подключить» could not link; the page says
    what to do instead."""
    _, emu, bundle = sites
    async with world.core.sessions() as s:
        b = await s.get(CrmBinding, world.binding_a)
        assert b is not None
        b.status = "disabled"
        await s.execute(delete(AmoInstall).where(AmoInstall.amo_account_id == b.external_account_id))
        await s.commit()
    page = await open_harness(browser, emu, bundle)
    settings = page.locator("#vpbx-widget-settings")
    status = settings.locator("[data-role=status]")
    await status.wait_for()
    assert await status.inner_text() == (
        "Виджет установлен, но доступ к amoCRM не предоставлен: установите виджет заново и разрешите доступ"
    )
    assert await settings.get_by_role("button", name="Подключить").count() == 0
    assert await page.evaluate("window.__emu.actions.phone") is None
    assert await emu_errors(page) == []
