"""The call journal, a call card, the CSV export and the statistics charts in headless Chromium, against
``vpbx serve --demo``. The calls are rows written into the server's database, as its history writer leaves
them.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Page, expect
from sqlalchemy import select

from tests.e2e.conftest import Server, shot
from tests.e2e.test_cabinet_tour import login
from tests.web.history_kit import add_calls, call_record
from vpbx import store
from vpbx.store.models import CallRecord, Domain

pytestmark = pytest.mark.e2e


@pytest.fixture
async def calls(server: Server) -> AsyncIterator[list[CallRecord]]:
    engine = store.create_engine(f"sqlite+aiosqlite:///{server.data_dir / 'vpbx.sqlite3'}")
    sessions = store.session_factory(engine)
    async with sessions() as s:
        domain = await s.scalar(select(Domain).where(Domain.name == server.demo["domain"]))
        assert domain is not None
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    records = await add_calls(
        sessions,
        call_record(
            domain.id,
            started_at=now - dt.timedelta(minutes=10),
            call_type="incoming",
            caller_number="+79161234567",
            callee_number="+74951112233",
            line="+74951112233",
            answering_pin="101",
            talk_s=95,
            is_record=True,
            session_log=[[0, "ct", "101"], [5, "cc", "101"], [40, "tr", "102"], [100, "cd", "102"]],
        ),
        call_record(
            domain.id,
            started_at=now - dt.timedelta(minutes=20),
            call_type="outbound",
            caller_pin="102",
            callee_number="+78125550102",
        ),
        call_record(
            domain.id,
            started_at=now - dt.timedelta(minutes=30),
            caller_pin="101",
            callee_pin="102",
            callee_number="102",
            answering_pin="102",
            talk_s=20,
        ),
    )
    yield records
    async with sessions() as s:
        for r in records:
            await s.delete(await s.get(CallRecord, r.id))
        await s.commit()
    await engine.dispose()


async def test_journal_card_export_and_statistics(
    page: Page, server: Server, calls: list[CallRecord]
) -> None:
    incoming, outbound, internal = calls
    await login(page, server)
    await page.click("#tile-journal")
    await expect(page.locator("h1")).to_have_text("Журнал звонков")
    table_rows = page.locator("#journal-table tbody tr[id^=call-]")
    await expect(table_rows).to_have_count(3)
    await shot(page, "20-journal")

    # filters swap the table in place and put themselves into the address bar
    await page.select_option("#f-direction", "incoming")
    await expect(table_rows).to_have_count(1)
    await expect(page.locator(f"#call-{incoming.session_id}")).to_be_visible()
    await expect(page).to_have_url(re.compile(r"/history\?.*direction=incoming"))
    await page.select_option("#f-direction", "")
    await page.select_option("#f-state", "missed")
    await expect(table_rows).to_have_count(1)
    await expect(page.locator(f"#call-{outbound.session_id}")).to_be_visible()
    await page.select_option("#f-state", "")
    await page.fill("#f-number", "555")
    await page.press("#f-number", "Enter")
    await expect(table_rows).to_have_count(1)
    await page.fill("#f-number", "")
    await page.select_option("#f-user", "102")
    await expect(table_rows).to_have_count(2)  # 102 made the outbound call and was called internally
    await page.select_option("#f-direction", "internal")
    await expect(table_rows).to_have_count(1)
    await expect(page.locator(f"#call-{internal.session_id}")).to_be_visible()

    # a shared URL opens the same view
    shared = page.url
    await page.goto(shared)
    await expect(table_rows).to_have_count(1)

    # the CSV of the filtered view, downloaded and read back
    await page.goto(f"{server.url}/history?direction=incoming")
    async with page.expect_download() as info:
        await page.click("#export-csv")
    download = await info.value
    path = await download.path()
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    parsed = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline=""), delimiter=";"))
    assert parsed[0][0] == "Сессия" and [r[0] for r in parsed[1:]] == [incoming.session_id]
    assert parsed[1][-1] == "0:ct:101;5:cc:101;40:tr:102;100:cd:102;"

    # the call card: the protocol in words and the recording player
    await page.click(f"#call-{incoming.session_id} a")
    await expect(page.locator("#session-id")).to_have_text(incoming.session_id)
    protocol = page.locator("#protocol tbody tr")
    await expect(protocol).to_have_count(4)
    await expect(protocol.nth(2)).to_contain_text("Перевод")
    await expect(protocol.nth(3)).to_contain_text("Отбой")
    await expect(page.locator("#wire-log")).to_have_text("0:ct:101;5:cc:101;40:tr:102;100:cd:102;")
    player = page.locator("audio#recording-player")
    await expect(player).to_have_attribute("src", f"/recordings/{incoming.session_id}.mp3")
    await shot(page, "21-call-card")

    # statistics: chart.js draws every chart from the page's numbers (at once, when motion is reduced)
    await page.emulate_media(reduced_motion="reduce")
    await page.click("#nav-stats")
    await expect(page.locator("h1")).to_have_text("Статистика звонков")
    await page.wait_for_function("() => window.Chart && Chart.getChart('chart-users') !== undefined")
    drawn = await page.evaluate(
        """() => ["chart-hours", "chart-days", "chart-state", "chart-users"].map(id => {
            const c = Chart.getChart(id);
            return {type: c.config.type, sums: c.data.datasets.map(d => d.data.reduce((a, b) => a + b, 0)),
                    width: c.canvas.width};
        })"""
    )
    assert [d["type"] for d in drawn] == ["bar", "bar", "doughnut", "bar"]
    assert drawn[0]["sums"] == [2, 1] and drawn[1]["sums"] == [2, 1] and drawn[2]["sums"] == [3]
    assert all(d["width"] > 0 for d in drawn)
    await expect(page.locator("#stats-total")).to_contain_text("Звонков: 3")
    await shot(page, "22-statistics")
