"""The cabinet section «Автоинформатор» (autoinformer.md §1, §8): activation, the campaign list, a campaign's
tabs and actions, contacts, the report with its export, the stop list and the audio library, the line reserve,
with two tenants."""

from __future__ import annotations

import csv
import io
import re
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.helpers import Cabinet, Tenant
from vpbx.app import Core
from vpbx.store.models import AiCampaign, AiContact, AuditEntry, Domain, IncomingNumber

LINE = {"acme.vpbx.test": "+74951112233", "other.vpbx.test": "+74951112244"}


async def enable(cab: Cabinet, code: str = "autoinformer") -> None:
    """Switch a service on the way an admin does: the confirmation, then «Подключить»."""
    page = await cab.get(f"/services/{code}/enable")
    fee = re.search(r'name="quoted_fee" value="([^"]*)"', page.text)
    charge = re.search(r'name="quoted_charge" value="([^"]*)"', page.text)
    assert fee and charge
    resp = await cab.post(f"/services/{code}/enable", {"quoted_fee": fee[1], "quoted_charge": charge[1]})
    assert resp.status_code == 303


async def add_line(core: Core, t: Tenant) -> str:
    async with core.sessions() as s:
        s.add(IncomingNumber(domain_id=t.id, number=LINE[t.name]))
        await s.commit()
    return LINE[t.name].lstrip("+")


def new_form(caller: str, **over: str) -> dict[str, str]:
    base = {
        "name": "Напоминание о задолженности",
        "caller_id": caller,
        "start_at": "2030-06-16T09:00",
        "seg0_type": "tts",
        "seg0_text": "{name}, ваша задолженность {sum:money}.",
        "seg0_voice": "female_1",
        "seg0_rate": "1.0",
    }
    base.update(over)
    return base


async def create(cab: Cabinet, caller: str, **over: str) -> str:
    resp = await cab.post("/autoinformer/new", new_form(caller, **over))
    assert resp.status_code == 303, resp.text[-2000:]
    m = re.match(r"/autoinformer/campaigns/([0-9a-f]{32})\?notice=created", resp.headers["location"])
    assert m, resp.headers["location"]
    return m[1]


@pytest.fixture
async def ready(core: Core, t1: Tenant, admin1: Cabinet) -> str:
    """Tenant 1 with the service on and a line; returns the line's digits."""
    await enable(admin1)
    return await add_line(core, t1)


async def test_section_is_off_until_the_service_is_on(admin1: Cabinet) -> None:
    desk = await admin1.get("/")
    assert 'href="/autoinformer"' in desk.text  # the desktop icon is always there
    page = await admin1.get("/autoinformer")
    assert page.status_code == 200 and 'id="ai-off"' in page.text
    assert 'href="/services"' in page.text and "Управление услугами" in page.text
    assert (await admin1.get("/autoinformer/new")).status_code == 200
    assert 'id="ai-off"' in (await admin1.get("/autoinformer/new")).text
    assert 'id="ai-off"' in (await admin1.post("/autoinformer/new", new_form("74951112233"))).text
    await enable(admin1)
    page = await admin1.get("/autoinformer")
    assert 'id="ai-off"' not in page.text and 'id="create-campaign"' in page.text
    assert "Создать рассылку" in page.text and "Стоп-лист" in page.text and "Аудиофайлы" in page.text


async def test_settings_menu_has_the_autoinformer_tab(admin1: Cabinet) -> None:
    desk = await admin1.get("/")
    assert '<a href="/services" id="nav-settings">Настройки</a>' in desk.text
    page = await admin1.get("/services")
    assert 'id="settings-tab-autoinformer"' in page.text and 'href="/autoinformer"' in page.text
    assert "Автоинформатор" in page.text


async def test_users_without_admin_rights_are_refused(core: Core, t1: Tenant, anon: Cabinet) -> None:
    from vpbx.pbx import users

    async with core.sessions() as s:
        await users.create_user(
            s,
            t1.id,
            users.UserInput(
                name="ivan", display_name="Ivan", pin="101", role="user", web_password="User-Pass-1"
            ),
            box=core.box,
        )
        await s.commit()
    assert (await anon.get("/autoinformer")).status_code == 303  # to the login page
    await anon.login(f"ivan@{t1.name}", "User-Pass-1")
    assert (await anon.get("/autoinformer")).status_code == 403
    assert (await anon.get("/autoinformer/stop-list")).status_code == 403


async def test_create_shows_errors_in_russian_and_creates_nothing(
    core: Core, t1: Tenant, ready: str, admin1: Cabinet
) -> None:
    resp = await admin1.post("/autoinformer/new", new_form("74990000000", name=""))
    assert resp.status_code == 422
    assert "В форме есть ошибки" in resp.text
    resp = await admin1.post("/autoinformer/new", new_form("74990000000"))
    assert resp.status_code == 422 and 'id="err-caller_id"' in resp.text
    resp = await admin1.post("/autoinformer/new", new_form(ready, seg0_text=""))
    assert resp.status_code == 422 and 'id="err-segments"' in resp.text
    async with core.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(AiCampaign)) == 0


async def test_campaign_tabs_save_and_show_the_settings(
    core: Core, t1: Tenant, ready: str, admin1: Cabinet
) -> None:
    cid = await create(admin1, ready)
    page = await admin1.get(f"/autoinformer/campaigns/{cid}")
    assert page.status_code == 200 and "черновик" in page.text
    for tab in ("Сообщение", "Контакты", "Расписание", "Попытки и линии", "Реакции на нажатия", "Отчёт"):
        assert tab in page.text
    assert 'id="action-start"' in page.text and 'id="action-delete"' in page.text
    assert 'id="action-pause"' not in page.text

    resp = await admin1.post(
        f"/autoinformer/campaigns/{cid}/schedule",
        {
            "start_at": "2030-06-16T09:00",
            "end_at": "2030-06-20T21:00",
            "day1": "on",
            "day2": "on",
            "day3": "on",
            "win0_from": "10:00",
            "win0_to": "13:00",
            "win1_from": "14:00",
            "win1_to": "19:00",
            "time_basis": "domain",
            "compliance_profile": "collections",
        },
    )
    assert resp.status_code == 303, resp.text[-1500:]
    resp = await admin1.post(
        f"/autoinformer/campaigns/{cid}/lines",
        {
            "attempts_max": "4",
            "interval_min": "60",
            "retry_busy": "on",
            "retry_machine": "on",
            "ring_timeout_s": "25",
            "concurrency": "7",
            "caller_id": ready,
            "record": "on",
            "criterion": "confirmed",
            "confirm_digit": "1",
            "amd_enabled": "on",
            "amd_analysis_s": "4",
            "amd_on_machine": "leave_message",
        },
    )
    assert resp.status_code == 303, resp.text[-1500:]
    resp = await admin1.post(
        f"/autoinformer/campaigns/{cid}/keys",
        {
            "wait_s": "7",
            "key0_action": "connect",  # key "1"
            "key0_target_type": "user",
            "key0_target": "100",
            "key1_action": "repeat",  # key "2"
            "key8_action": "opt_out",  # key "9"
            "key8_seg_type": "tts",
            "key8_seg_text": "Ваш номер исключён из рассылки.",
        },
    )
    assert resp.status_code == 303, resp.text[-1500:]
    async with core.sessions() as s:
        row = await s.get(AiCampaign, uuid.UUID(cid))
        assert row is not None
        st = row.settings
    assert st["schedule"]["start_at"] == "2030-06-16 09:00:00"  # the domain is in Moscow: the same clock
    assert st["schedule"]["end_at"] == "2030-06-20 21:00:00"
    assert st["schedule"]["days"] == [1, 2, 3]
    assert st["schedule"]["windows"] == [{"from": "10:00", "to": "13:00"}, {"from": "14:00", "to": "19:00"}]
    assert st["schedule"]["time_basis"] == "domain" and st["compliance_profile"] == "collections"
    assert st["attempts"] == {"max": 4, "interval_min": 60, "retry_on": ["busy", "machine"]}
    assert st["ring_timeout_s"] == 25 and st["concurrency"] == 7 and st["record"] is True
    assert st["success"] == {"criterion": "confirmed", "min_listen_s": None, "confirm_digit": "1"}
    assert st["amd"]["enabled"] is True and st["amd"]["on_machine"] == "leave_message"
    assert st["amd"]["initial_silence_s"] == 2.5  # not on the form: kept
    assert st["dtmf"]["wait_s"] == 7
    assert st["dtmf"]["actions"]["1"]["target"] == {"type": "user", "pin": "100", "number": None}
    assert st["dtmf"]["actions"]["2"]["action"] == "repeat"
    assert st["dtmf"]["actions"]["9"]["segment"]["text"] == "Ваш номер исключён из рассылки."
    # the pages show what was saved
    sched = await admin1.get(f"/autoinformer/campaigns/{cid}/schedule")
    assert 'value="2030-06-20T21:00"' in sched.text and 'value="14:00"' in sched.text
    keys = await admin1.get(f"/autoinformer/campaigns/{cid}/keys")
    assert "Ваш номер исключён из рассылки." in keys.text

    # a bad value is refused in Russian, nothing saved
    resp = await admin1.post(
        f"/autoinformer/campaigns/{cid}/lines", {"attempts_max": "11", "caller_id": ready}
    )
    assert resp.status_code == 422 and 'id="err-attempts_max"' in resp.text
    resp = await admin1.post(
        f"/autoinformer/campaigns/{cid}/keys",
        {"key0_action": "connect", "key0_target_type": "group", "key0_target": "999"},
    )
    assert resp.status_code == 422 and 'id="err-keys"' in resp.text
    resp = await admin1.post(
        f"/autoinformer/campaigns/{cid}/schedule",
        {"start_at": "2030-06-16T09:00", "day1": "on", "win0_from": "13:00", "win0_to": "10:00"},
    )
    assert resp.status_code == 422 and 'id="err-windows"' in resp.text
    async with core.sessions() as s:
        row = await s.get(AiCampaign, uuid.UUID(cid))
        assert row is not None and row.settings["attempts"]["max"] == 4


CSV_LIST = (
    "phone;name;sum\r\n"
    "8 (916) 123-45-67;Иван;1500.50\r\n"
    "+7 916 123-45-67;Пётр;10\r\n"
    "12345;Анна;20\r\n"
    "79161112233;;30\r\n"
    "79162223344;Мария;40\r\n"
)


async def upload(cab: Cabinet, cid: str, body: bytes, name: str = "list.csv") -> Any:
    return await cab.client.post(
        f"/autoinformer/campaigns/{cid}/contacts/upload",
        data={"csrf_token": cab.csrf},
        files={"list": (name, body, "text/csv")},
    )


async def test_contacts_import_reports_rejected_rows_and_removes_pending(
    core: Core, t1: Tenant, ready: str, admin1: Cabinet
) -> None:
    cid = await create(admin1, ready)
    resp = await upload(admin1, cid, CSV_LIST.encode("cp1251"))
    assert resp.status_code == 200, resp.text[-1500:]
    assert "Принято: 2" in resp.text and "Отклонено: 3" in resp.text
    assert (
        "дубликат" in resp.text
        and "некорректный номер" in resp.text
        and "не заполнена переменная" in resp.text
    )
    rejected = await admin1.get(f"/autoinformer/campaigns/{cid}/rejected.csv")
    assert rejected.status_code == 200 and rejected.content.startswith("\ufeff".encode())
    rows = list(csv.reader(io.StringIO(rejected.content.decode("utf-8-sig")), delimiter=";"))
    assert rows[0] == ["phone", "name", "sum", "reason"]
    assert sorted(r[-1] for r in rows[1:]) == ["duplicate", "invalid_format", "missing_variable"]

    resp = await admin1.post(
        f"/autoinformer/campaigns/{cid}/contacts/manual", {"manual": "phone;name;sum\n79163334455;Олег;5"}
    )
    assert resp.status_code == 200 and "Принято: 1" in resp.text
    bad = await upload(admin1, cid, b"PK\x03\x04 not a workbook", "list.xlsx")
    assert bad.status_code == 200 and 'id="import-error"' in bad.text

    async with core.sessions() as s:
        ids = list(await s.scalars(select(AiContact.id).where(AiContact.campaign_id == uuid.UUID(cid))))
        assert len(ids) == 3
    resp = await admin1.post(f"/autoinformer/campaigns/{cid}/contacts/remove", {"contact": ids[0].hex})
    assert resp.status_code == 303
    page = await admin1.get(f"/autoinformer/campaigns/{cid}/contacts")
    assert page.text.count('class="contact-row"') == 2
    async with core.sessions() as s:
        audit = list(await s.scalars(select(AuditEntry.action).where(AuditEntry.domain_id == t1.id)))
    assert "autoinformer.contacts.import" in audit and "autoinformer.contacts.remove" in audit


async def test_actions_follow_the_status_and_refusals_show_in_russian(
    core: Core, t1: Tenant, ready: str, admin1: Cabinet
) -> None:
    cid = await create(admin1, ready)
    # no contacts yet: the start is refused with the reason on the page
    resp = await admin1.post(f"/autoinformer/campaigns/{cid}/start")
    assert resp.status_code == 409 and 'id="action-error"' in resp.text
    await upload(admin1, cid, CSV_LIST.encode())
    resp = await admin1.post(f"/autoinformer/campaigns/{cid}/start")
    assert resp.status_code == 303 and resp.headers["location"].endswith("/report?notice=start")
    page = await admin1.get(f"/autoinformer/campaigns/{cid}/report")
    assert 'data-status="scheduled"' in page.text and 'id="action-stop"' in page.text
    resp = await admin1.post(f"/autoinformer/campaigns/{cid}/pause")
    assert resp.status_code == 409 and "не допускается" in resp.text
    resp = await admin1.post(f"/autoinformer/campaigns/{cid}/delete")
    assert resp.status_code == 409
    # running: pause and resume
    async with core.sessions() as s:
        row = await s.get(AiCampaign, uuid.UUID(cid))
        assert row is not None
        row.status = "running"
        await s.commit()
    assert (await admin1.post(f"/autoinformer/campaigns/{cid}/pause")).status_code == 303
    page = await admin1.get(f"/autoinformer/campaigns/{cid}")
    assert 'data-status="paused"' in page.text and 'id="action-resume"' in page.text
    assert (await admin1.post(f"/autoinformer/campaigns/{cid}/resume")).status_code == 303
    # a copy is a new draft without contacts
    resp = await admin1.post(f"/autoinformer/campaigns/{cid}/copy")
    assert resp.status_code == 303 and "notice=copied" in resp.headers["location"]
    copy_id = resp.headers["location"].split("/")[3].split("?")[0]
    assert (await admin1.get(f"/autoinformer/campaigns/{copy_id}")).status_code == 200
    assert (await admin1.post(f"/autoinformer/campaigns/{cid}/stop")).status_code == 303
    async with core.sessions() as s:
        statuses = set(
            await s.scalars(select(AiContact.status).where(AiContact.campaign_id == uuid.UUID(cid)))
        )
    assert statuses == {"cancelled"}
    assert (await admin1.post(f"/autoinformer/campaigns/{cid}/delete")).status_code == 303
    assert (await admin1.get(f"/autoinformer/campaigns/{cid}")).status_code == 404
    listing = await admin1.get("/autoinformer")
    assert listing.text.count('class="campaign-row"') == 1


async def test_line_reserve_setting(core: Core, t1: Tenant, ready: str, admin1: Cabinet) -> None:
    page = await admin1.get("/autoinformer")
    assert "Резерв линий для обычных вызовов" in page.text
    resp = await admin1.post("/autoinformer/settings", {"ai_line_reserve": "3"})
    assert resp.status_code == 303
    resp = await admin1.post("/autoinformer/settings", {"ai_line_reserve": "500"})
    assert resp.status_code == 422 and 'id="err-ai_line_reserve"' in resp.text
    async with core.sessions() as s:
        domain = await s.get(Domain, t1.id)
        assert domain is not None and domain.ai_line_reserve == 3
