"""A voice menu built in headless Chromium against ``vpbx serve --demo``: the spoken greeting heard before
saving, a key row added and one removed with htmx, a sox-made WAV uploaded and played back by the browser."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from tests.e2e.conftest import Server, shot
from tests.e2e.test_cabinet_tour import login

AUDIO_LOAD_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def tone_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "приветствие.wav"
    subprocess.run(
        ["sox", "-n", "-r", "22050", "-c", "1", "-b", "16", str(path), "synth", "1.5", "sine", "600"],
        check=True,
        timeout=30,
    )
    (path.parent / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVE" + b"junk" * 20)  # no format chunk
    return path


async def _duration(page: Page, selector: str) -> float:
    """Let the browser fetch and decode the <audio>'s WAV; its duration in seconds (-1 when it cannot)."""
    script = """a => new Promise(done => {
        a.addEventListener("loadedmetadata", () => done(a.duration));
        a.addEventListener("error", () => done(-1));
        a.preload = "auto";
        a.load();
    })"""
    async with asyncio.timeout(AUDIO_LOAD_TIMEOUT_S):
        duration: float = await page.eval_on_selector(selector, script)
    return duration


async def test_build_a_menu(page: Page, server: Server, tone_file: Path) -> None:
    await login(page, server)
    await page.goto(f"{server.url}/menus/new")
    await page.fill("#f-name", "Отдел продаж")
    await page.fill("#f-prompt_text", "Здравствуйте! Нажмите один, чтобы поговорить с менеджером.")
    await page.click("#preview-tts")
    await expect(page.locator("#preview-audio")).to_be_attached()
    assert await _duration(page, "#preview-audio") > 1.0

    # the key table: one row to begin with, add two, remove one
    rows = page.locator("#keys tr.key-row")
    await expect(rows).to_have_count(1)
    await page.click("#add-key")
    await page.click("#add-key")
    await expect(rows).to_have_count(3)
    await rows.nth(2).locator(".remove-key").click()
    await expect(rows).to_have_count(2)
    await rows.nth(0).locator("select[name=key]").select_option("1")
    await rows.nth(0).locator("select[name=key_action]").select_option("user")
    await rows.nth(0).locator("select[name=key_user_id]").select_option(index=1)
    await rows.nth(1).locator("select[name=key]").select_option("0")
    await rows.nth(1).locator("select[name=key_action]").select_option("extension")
    await page.select_option("#f-timeout_action", "hangup")
    await shot(page, "08-menu-form")

    # a recording instead of speech
    await page.check("#f-greeting-upload")
    await page.set_input_files("#f-greeting_file", str(tone_file))
    await page.click("#save")
    row = page.locator("#menus-table tbody tr", has_text="Отдел продаж")
    await expect(row).to_contain_text("приветствие.wav")
    await expect(row).to_contain_text("1")
    await row.locator("a").click()
    await expect(page.locator("#keys tr.key-row")).to_have_count(2)
    assert abs(await _duration(page, "#greeting-audio") - 1.5) < 0.05  # 8 kHz now, same length

    # a broken file: a clear error, and the menu keeps its recording
    await page.set_input_files("#f-greeting_file", str(tone_file.with_name("broken.wav")))
    await page.click("#save")
    await expect(page.locator("#err-greeting_file")).to_contain_text("Файл повреждён")
    assert abs(await _duration(page, "#greeting-audio") - 1.5) < 0.05
