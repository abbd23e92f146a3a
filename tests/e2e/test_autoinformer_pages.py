"""The «Автоинформатор» section in headless Chromium against ``vpbx serve --demo``: the service switched on,
a WAV (made by sox) uploaded to the library, a campaign created from it with a second, spoken part checked by
«Прослушать», a contact list uploaded, the campaign started, its report refreshing itself, and both exports
downloaded and parsed."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import subprocess
import zoneinfo
from pathlib import Path

from openpyxl import load_workbook
from playwright.async_api import Page, expect

from tests.e2e.conftest import Server, shot
from tests.e2e.test_cabinet_tour import login

SOX_TIMEOUT_S = 30
CONTACTS = "phone;name;sum\n+7 916 123-45-67;Иван;1500.50\n8 (916) 765-43-21;Мария;99\n12345;Анна;10\n"


async def download(page: Page, button: str, folder: Path) -> tuple[str, bytes]:
    """Click an export link; the file as the browser saved it (its suggested name and bytes)."""
    async with page.expect_download() as info:
        await page.click(button)
    d = await info.value
    target = folder / d.suggested_filename
    await d.save_as(target)
    return d.suggested_filename, await asyncio.to_thread(target.read_bytes)


def make_wav(path: Path) -> Path:
    """A 1.5 s 440 Hz tone, 16 kHz 16-bit stereo: the library converts it to 8 kHz mono."""
    subprocess.run(
        ["sox", "-n", "-r", "16000", "-b", "16", "-c", "2", str(path), "synth", "1.5", "sine", "440"],
        check=True,
        timeout=SOX_TIMEOUT_S,
    )
    return path


async def test_campaign_from_upload_and_tts_to_report_and_export(
    page: Page, server: Server, tmp_path: Path
) -> None:
    await login(page, server)
    # the demo domain has the autoinformer on: switch it off in «Управление услугами» first
    await page.goto(server.url.rstrip("/") + "/services")
    await page.click("#disable-autoinformer")
    await page.click("#confirm")
    await expect(page.locator("#enable-autoinformer")).to_be_visible()
    await page.goto(server.url.rstrip("/") + "/")
    # «Управление услугами» → «Автоинформатор» on; until then the section asks for it
    await page.click("#tile-autoinformer")
    await expect(page.locator("#ai-off")).to_be_visible()
    await page.click("#to-services")
    await page.click("#enable-autoinformer")
    await page.click("#confirm")
    await expect(page.locator("#disable-autoinformer")).to_be_visible()
    await page.click("#settings-tab-autoinformer")
    await expect(page.locator("#create-campaign")).to_be_visible()

    # the audio library: a WAV made by sox
    await page.click("#to-audio")
    await page.set_input_files("#f-file", str(make_wav(tmp_path / "greeting.wav")))
    await page.fill("#f-name", "Приветствие")
    await page.click("#audio-upload-button")
    await expect(page.locator("#audio-uploaded")).to_be_visible()
    await expect(page.locator(".audio-row")).to_have_count(1)
    await expect(page.locator(".audio-row td").first).to_have_text("Приветствие")

    # «Создать рассылку»: the file as the first part, starting a minute ago (domain time, Moscow)
    await page.click("#link-campaigns")
    await page.click("#create-campaign")
    await page.fill("#f-name", "Напоминание о задолженности")
    await page.select_option("#f-caller_id", server.demo.get("line", "74951234567").lstrip("+"))
    start = dt.datetime.now(zoneinfo.ZoneInfo("Europe/Moscow")) - dt.timedelta(minutes=1)
    await page.fill("#f-start_at", start.strftime("%Y-%m-%dT%H:%M"))
    await page.select_option("#f-seg0_type", "file")
    await page.select_option("#f-seg0_file_id", index=1)
    await page.click("#create")
    await expect(page.locator("#created")).to_be_visible()
    await expect(page.locator("#campaign-status")).to_have_attribute("data-status", "draft")

    # «Сообщение»: a spoken second part, heard with sample values before saving
    await page.select_option("#f-seg1_type", "tts")
    await page.fill("#f-seg1_text", "{name}, ваша задолженность составляет {sum:money}.")
    await page.select_option("#f-seg1_voice", "female_1")
    await page.fill("#f-sample", "name=Иван\nsum=1500.50")
    await page.click("#preview-seg1")
    player = page.locator("#seg1-preview audio")
    await expect(player).to_be_visible()
    src = await player.get_attribute("src")
    assert src and src.startswith("/autoinformer/prompts/")
    wav = await page.request.get(f"{server.url}{src}")
    assert wav.status == 200 and (await wav.body())[:4] == b"RIFF" and len(await wav.body()) > 8000
    await page.click("#save-message")
    await expect(page.locator("#saved")).to_be_visible()
    await expect(page.locator("#f-seg1_text")).to_have_value(
        "{name}, ваша задолженность составляет {sum:money}."
    )
    await shot(page, "ai-message")

    # «Расписание»: today is left out (the domain's clock), so the campaign runs but waits for a window
    await page.click("#tab-schedule")
    today = dt.datetime.now(zoneinfo.ZoneInfo("Europe/Moscow")).isoweekday()
    await page.uncheck(f"#f-day{today}")
    await page.select_option("#f-time_basis", "domain")
    await page.select_option("#f-compliance_profile", "collections")
    await page.click("#save-schedule")
    await expect(page.locator("#saved")).to_be_visible()
    await expect(page.locator(f"#f-day{today}")).not_to_be_checked()

    # «Контакты»: a CSV with a bad row
    await page.click("#tab-contacts")
    csv_path = tmp_path / "contacts.csv"
    csv_path.write_bytes(CONTACTS.encode("cp1251"))
    await page.set_input_files("#f-list", str(csv_path))
    await page.click("#upload-list")
    await expect(page.locator("#import-result")).to_contain_text("Принято: 2")
    await expect(page.locator("#rejected-count")).to_have_text("Отклонено: 1")
    await expect(page.locator(".contact-row")).to_have_count(2)

    # «Запустить»: the report page, live
    await page.click("#action-start")
    await expect(page.locator("#campaign-status")).to_have_attribute("data-status", "running")
    await expect(page.locator("#tab-report")).to_have_attribute("aria-current", "page")
    await expect(page.locator("#sum-total")).to_have_text("2")
    await expect(page.locator("#summary-status")).to_have_text("идёт")
    await expect(page.locator("#summary-window")).to_have_attribute("data-in-window", "no")
    await expect(page.locator("#ai-chart")).to_be_attached()
    async with page.expect_response(lambda r: r.url.endswith("/summary") and r.status == 200, timeout=12_000):
        pass  # htmx asks for the summary again by itself (every 5 s)
    await expect(page.locator("#sum-total")).to_have_text("2")
    # chart.js drew the (still empty) chart again into the refreshed summary
    await page.wait_for_function(
        "() => window.Chart && Chart.getChart(document.getElementById('ai-chart')) !== undefined",
        timeout=10_000,
    )
    await expect(page.locator("#ai-chart")).to_have_attribute("data-buckets", "0")
    await expect(page.locator(".number-row")).to_have_count(2)
    await shot(page, "ai-report")

    # export both tables as CSV and XLSX and read them back
    name, data = await download(page, "#export-numbers-csv", tmp_path)
    assert name.endswith("-numbers.csv") and data.startswith("\ufeff".encode())
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig")), delimiter=";"))
    assert rows[0][0] == "phone" and sorted(r[0] for r in rows[1:]) == ["79161234567", "79167654321"]
    assert {r[rows[0].index("status")] for r in rows[1:]} <= {"pending", "in_progress", "waiting_retry"}
    name, data = await download(page, "#export-numbers-xlsx", tmp_path)
    assert name.endswith("-numbers.xlsx")
    sheet = load_workbook(io.BytesIO(data)).active
    assert sheet is not None
    table = [[c.value for c in row] for row in sheet.iter_rows()]
    assert table[0][0] == "phone" and sorted(str(r[0]) for r in table[1:]) == ["79161234567", "79167654321"]
    _name, data = await download(page, "#export-attempts-csv", tmp_path)
    attempts = data.decode("utf-8-sig")
    assert attempts.splitlines()[0].startswith("attempt_id;contact_id;external_id;attempt_no")

    # «Приостановить» / «Продолжить» are offered as the status allows
    await page.click("#action-pause")
    await expect(page.locator("#campaign-status")).to_have_attribute("data-status", "paused")
    await expect(page.locator("#action-resume")).to_be_visible()
    await expect(page.locator("#action-pause")).to_have_count(0)
