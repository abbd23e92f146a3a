"""A voicemail box set up in headless Chromium against ``vpbx serve --demo``: the spoken greeting heard before
saving, a broken upload refused with a clear error, a sox-made WAV uploaded and played back, the e-mail and
the unanswered/busy options kept."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from tests.e2e.conftest import Server, shot
from tests.e2e.test_cabinet_tour import login
from tests.e2e.test_menus_page import _duration


@pytest.fixture(scope="module")
def greeting_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "автоответчик.wav"
    subprocess.run(
        ["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(path), "synth", "2", "sine", "500"],
        check=True,
        timeout=30,
    )
    (path.parent / "broken.mp3").write_bytes(b"\xff\xfb\x90\x00" + bytes(400))  # a frame header, no audio
    return path


async def test_set_up_a_voicemail_box(page: Page, server: Server, greeting_file: Path) -> None:
    await login(page, server)
    await page.click("#tile-voicemail")
    await expect(page.locator("h1")).to_have_text("Голосовая почта")
    await page.locator("a[id^=settings-]").first.click()
    await expect(page.locator("h1")).to_have_text("Голосовой ящик")

    await page.fill("#f-greeting_text", "Здравствуйте, оставьте сообщение после сигнала.")
    await page.click("#preview-tts")
    await expect(page.locator("#preview-audio")).to_be_attached()
    assert await _duration(page, "#preview-audio") > 1.0

    # a broken recording: a clear error, nothing saved
    await page.check("#f-greeting-upload")
    await page.set_input_files("#f-greeting_file", str(greeting_file.with_name("broken.mp3")))
    await page.click("#save")
    await expect(page.locator("#err-greeting_file")).to_be_visible()
    await expect(page.locator("#box-saved")).to_have_count(0)

    # a real one, with the e-mail and the options
    await page.check("#f-greeting-upload")
    await page.set_input_files("#f-greeting_file", str(greeting_file))
    await page.fill("#f-max_message_s", "90")
    await page.fill("#f-notify_email", "office@example.test")
    await page.check("#f-on_no_answer")
    await page.check("#f-on_busy")
    await page.click("#save")
    await expect(page.locator("#box-saved")).to_be_visible()
    assert abs(await _duration(page, "#greeting-audio") - 2.0) < 0.05
    await expect(page.locator("#f-notify_email")).to_have_value("office@example.test")
    await expect(page.locator("#f-max_message_s")).to_have_value("90")
    await expect(page.locator("#f-on_no_answer")).to_be_checked()
    await shot(page, "20-voicemail-box")

    # the mailbox is there, empty
    await page.click("#open-mailbox")
    await expect(page.locator("#messages-table")).to_contain_text("Сообщений нет.")
