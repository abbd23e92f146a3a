"""The cabinet section «Автоинформатор» (autoinformer.md §1, §8): activation, the campaign list, a campaign's
tabs and actions, contacts, the report with its export, the stop list and the audio library, the line reserve,
with two tenants."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import uuid
from typing import Any

import pytest
from openpyxl import load_workbook
from sqlalchemy import func, select

from tests.autoinformer.campaign_kit import tone_wav
from tests.helpers import Cabinet, Tenant
from tests.integration.peers.net import wait_until
from vpbx.app import Core
from vpbx.store.models import AiAttempt, AiCampaign, AiContact, AuditEntry, Domain, IncomingNumber

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
            "days_shown": "1",
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
            "options_shown": "1",
            "auto_complete_shown": "1",
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
        {"wait_s": "5", "key0_action": "connect", "key0_target_type": "group", "key0_target": "999"},
    )
    assert resp.status_code == 422 and 'id="err-keys"' in resp.text
    resp = await admin1.post(
        f"/autoinformer/campaigns/{cid}/schedule",
        {
            "start_at": "2030-06-16T09:00",
            "days_shown": "1",
            "day1": "on",
            "win0_from": "13:00",
            "win0_to": "10:00",
        },
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


async def test_audio_library_upload_reasons_play_and_delete(
    core: Core, t1: Tenant, ready: str, admin1: Cabinet
) -> None:
    async def send(body: bytes, name: str) -> Any:
        return await admin1.client.post(
            "/autoinformer/audio", data={"csrf_token": admin1.csrf}, files={"file": (name, body, "audio/wav")}
        )

    resp = await send(b"this is not audio at all", "notes.wav")
    assert resp.status_code == 422 and "Неподдерживаемый формат" in resp.text
    resp = await send(b"RIFF\x00\x00\x00\x00WAVE", "broken.wav")
    assert resp.status_code == 422 and "повреждён" in resp.text
    resp = await send(tone_wav(0.5), "Приветствие.wav")
    assert resp.status_code == 303
    page = await admin1.get("/autoinformer/audio")
    m = re.search(r'id="audio-([0-9a-f]{32})"', page.text)
    assert m and "Приветствие" in page.text
    file_id = m[1]
    played = await admin1.get(f"/autoinformer/audio/{file_id}/play")
    assert played.status_code == 200 and played.content[:4] == b"RIFF"
    # a campaign using the file keeps it
    cid = await create(admin1, ready, seg0_type="file", seg0_file_id=file_id, seg0_text="")
    resp = await admin1.post(f"/autoinformer/audio/{file_id}/delete")
    assert resp.status_code == 409 and 'id="audio-in-use"' in resp.text
    assert (await admin1.post(f"/autoinformer/campaigns/{cid}/delete")).status_code == 303
    assert (await admin1.post(f"/autoinformer/audio/{file_id}/delete")).status_code == 303
    assert (await admin1.get(f"/autoinformer/audio/{file_id}/play")).status_code == 404


async def test_tts_preview_speaks_sample_values_and_contact_player(
    core: Core, t1: Tenant, ready: str, admin1: Cabinet
) -> None:
    cid = await create(admin1, ready)
    await admin1.get(f"/autoinformer/campaigns/{cid}")
    resp = await admin1.post(
        f"/autoinformer/campaigns/{cid}/preview",
        {
            "prefix": "seg0_",
            "seg0_type": "tts",
            "seg0_text": "{name}, ваша задолженность {sum:money}.",
            "seg0_voice": "female_1",
            "seg0_rate": "1.2",
            "sample": "name=Иван\nsum=1500.50",
        },
    )
    assert resp.status_code == 200, resp.text
    m = re.search(r'src="(/autoinformer/prompts/[0-9a-f]{64})"', resp.text)
    assert m
    wav = await admin1.get(m[1])
    assert wav.status_code == 200 and wav.content[:4] == b"RIFF" and len(wav.content) > 8000
    empty = await admin1.post(
        f"/autoinformer/campaigns/{cid}/preview", {"prefix": "seg1_", "seg1_type": "tts"}
    )
    assert empty.status_code == 422 and "ai-player-error" in empty.text
    # a contact's own message
    await upload(admin1, cid, CSV_LIST.encode())
    report = await admin1.get(f"/autoinformer/campaigns/{cid}/report")
    m = re.search(
        r'hx-get="(/autoinformer/campaigns/[0-9a-f]{32}/contacts/[0-9a-f]{32}/player)"', report.text
    )
    assert m
    player = await admin1.get(m[1])
    assert player.status_code == 200 and "/autoinformer/prompts/" in player.text


async def test_stop_list_add_search_remove_with_confirmation_import_export(
    core: Core, t1: Tenant, t2: Tenant, ready: str, admin1: Cabinet, admin2: Cabinet
) -> None:
    from vpbx.autoinformer import stoplist

    assert (
        await admin1.post("/autoinformer/stop-list/add", {"phone": "8 (916) 123-45-67"})
    ).status_code == 303
    resp = await admin1.post("/autoinformer/stop-list/add", {"phone": "12"})
    assert resp.status_code == 422 and 'id="err-phone"' in resp.text
    async with core.sessions() as s:
        await stoplist.add_many(s, t1.id, ["79990001122"], source="opt_out")
        await s.commit()
    page = await admin1.get("/autoinformer/stop-list?q=916")
    assert 'id="stop-79161234567"' in page.text and 'id="stop-79990001122"' not in page.text
    # an opt-out needs a confirmation, then it goes and is audited
    resp = await admin1.post("/autoinformer/stop-list/remove", {"phone": "79990001122"})
    assert resp.status_code == 409 and 'id="confirm-remove"' in resp.text
    assert 'id="stop-79990001122"' in (await admin1.get("/autoinformer/stop-list")).text
    resp = await admin1.post("/autoinformer/stop-list/remove", {"phone": "79990001122", "confirm": "1"})
    assert resp.status_code == 303
    assert (await admin1.post("/autoinformer/stop-list/remove", {"phone": "79161234567"})).status_code == 303
    async with core.sessions() as s:
        actions = set(await s.scalars(select(AuditEntry.action).where(AuditEntry.domain_id == t1.id)))
    assert {"autoinformer.stop_list.remove_opt_out", "autoinformer.stop_list.remove"} <= actions
    # import and export
    resp = await admin1.client.post(
        "/autoinformer/stop-list/import",
        data={"csrf_token": admin1.csrf},
        files={"file": ("stop.csv", "телефон\n+7 916 000-11-22\nabc\n79160001122\n".encode(), "text/csv")},
    )
    assert resp.status_code == 200 and "Добавлено: 1" in resp.text and "Отклонено: 2" in resp.text
    export = await admin1.get("/autoinformer/stop-list/export.csv")
    rows = list(csv.reader(io.StringIO(export.content.decode("utf-8-sig")), delimiter=";"))
    assert rows[0][0] == "phone" and [r[0] for r in rows[1:]] == ["79160001122"]
    # the other domain's list is its own
    await enable(admin2)
    assert 'id="stop-empty"' in (await admin2.get("/autoinformer/stop-list")).text
    assert (await admin2.post("/autoinformer/stop-list/remove", {"phone": "79160001122"})).status_code == 404


async def seed_results(core: Core, campaign_id: str) -> None:
    """Attempts as the dispatcher would have recorded them: an answered success, a busy one, a no-answer."""
    async with core.sessions() as s:
        contacts = list(
            await s.scalars(
                select(AiContact)
                .where(AiContact.campaign_id == uuid.UUID(campaign_id))
                .order_by(AiContact.row_no)
            )
        )
        at = dt.datetime(2030, 6, 16, 7, 5, tzinfo=dt.UTC)
        plan = [("success", 200, "succeeded", "1"), ("busy", 486, "waiting_retry", "")]
        for i, (contact, (outcome, code, status, digits)) in enumerate(zip(contacts, plan, strict=False)):
            answered = at + dt.timedelta(seconds=5) if code == 200 else None
            s.add(
                AiAttempt(
                    domain_id=contact.domain_id,
                    campaign_id=contact.campaign_id,
                    contact_id=contact.id,
                    attempt_no=1,
                    number_index=0,
                    dispatch_key=f"{campaign_id}:{contact.id.hex}:1:0",
                    phone=contact.phones[0],
                    state="done",
                    started_at=at + dt.timedelta(minutes=20 * i),
                    answered_at=answered,
                    ended_at=at + dt.timedelta(minutes=20 * i, seconds=30),
                    sip_code=code,
                    outcome=outcome,
                    criterion_met=code == 200,
                    listen_s=22.0 if code == 200 else 0.0,
                    digits=digits,
                    action="confirm" if digits else None,
                    session_id=str(uuid.uuid4()),
                    call_id=f"ai-{i}@test",
                )
            )
            contact.status = status
            contact.attempts_made = 1
            contact.last_outcome = outcome
            contact.last_attempt_at = at + dt.timedelta(minutes=20 * i)
            contact.digits = digits
        await s.commit()


async def test_report_summary_tables_filters_and_exports(
    core: Core, t1: Tenant, ready: str, admin1: Cabinet
) -> None:
    cid = await create(admin1, ready)
    await upload(admin1, cid, CSV_LIST.encode())
    assert (await admin1.post(f"/autoinformer/campaigns/{cid}/start")).status_code == 303
    await seed_results(core, cid)
    page = await admin1.get(f"/autoinformer/campaigns/{cid}/report")
    assert page.status_code == 200
    assert 'hx-trigger="every 5s"' in page.text  # live: refreshed by htmx
    assert re.search(r'id="sum-success-rate">50\.0%<', page.text)
    assert re.search(r'id="sum-reach-rate">50\.0%<', page.text)
    assert re.search(r'id="sum-avg-listen">22\.0 с<', page.text)
    assert re.search(r'id="state-succeeded"><td>[^<]+</td><td class="count">1<', page.text)
    data = re.search(r'<script type="application/json" id="ai-chart-data">(.*?)</script>', page.text, re.S)
    assert data
    import json

    chart = json.loads(data[1])
    assert chart["labels"] == ["10:00", "10:15"]  # Moscow time, 15-minute buckets
    assert chart["series"] == {"success": [1, 0], "busy": [0, 1]}
    part = await admin1.get(f"/autoinformer/campaigns/{cid}/summary")
    assert part.status_code == 200 and part.text.lstrip().startswith('<section id="ai-summary"')
    # filters
    filtered = await admin1.get(f"/autoinformer/campaigns/{cid}/report?status=succeeded")
    assert filtered.text.count('class="number-row"') == 1
    filtered = await admin1.get(f"/autoinformer/campaigns/{cid}/report?digit=1&phone=9161234")
    assert filtered.text.count('class="number-row"') == 1
    filtered = await admin1.get(f"/autoinformer/campaigns/{cid}/report?table=attempts&outcome=busy")
    assert filtered.text.count('class="attempt-row"') == 1
    filtered = await admin1.get(f"/autoinformer/campaigns/{cid}/report?from=2030-06-17")
    assert 'id="no-numbers"' in filtered.text
    # exports: CSV with BOM and ';', XLSX with phones as text
    csv_resp = await admin1.get(f"/autoinformer/campaigns/{cid}/export?table=numbers&fmt=csv")
    assert csv_resp.content.startswith("\ufeff".encode())
    rows = list(csv.reader(io.StringIO(csv_resp.content.decode("utf-8-sig")), delimiter=";"))
    assert rows[0][:5] == ["phone", "phones", "external_id", "variables", "status"]
    assert {r[0] for r in rows[1:]} == {"79161234567", "79162223344"}
    xlsx = await admin1.get(f"/autoinformer/campaigns/{cid}/export?table=attempts&fmt=xlsx&outcome=success")
    ws = load_workbook(io.BytesIO(xlsx.content)).active
    assert ws is not None
    table = [[c.value for c in row] for row in ws.iter_rows()]
    assert table[0][0] == "attempt_id" and len(table) == 2
    assert table[1][table[0].index("phone")] == "79161234567"
    assert table[1][table[0].index("outcome")] == "success"


async def test_big_exports_are_built_in_the_background_and_offered_for_7_days(
    core: Core,
    t1: Tenant,
    t2: Tenant,
    ready: str,
    admin1: Cabinet,
    admin2: Cabinet,
    app: Any,
    monkeypatch: Any,
) -> None:
    """§6: over ``BACKGROUND_ROWS`` rows (lowered to 1 here) the export is built in the background into the
    data directory; the report lists it with its time and size and a download link that only the campaign's
    domain reaches; after 7 days it is neither listed nor served, and the sweep deletes it."""
    from vpbx.autoinformer import exports as ai_exports
    from vpbx.clock import FakeClock

    cid = await create(admin1, ready)
    await upload(admin1, cid, CSV_LIST.encode())
    assert (await admin1.post(f"/autoinformer/campaigns/{cid}/start")).status_code == 303
    await seed_results(core, cid)
    small = await admin1.get(f"/autoinformer/campaigns/{cid}/export?table=numbers&fmt=csv")
    assert (
        small.status_code == 200 and "attachment" in small.headers["content-disposition"]
    )  # 2 rows: at once
    monkeypatch.setattr(ai_exports, "BACKGROUND_ROWS", 1)
    names = []
    for table, fmt in (("numbers", "csv"), ("attempts", "xlsx")):
        resp = await admin1.get(f"/autoinformer/campaigns/{cid}/export?table={table}&fmt={fmt}")
        assert resp.status_code == 303
        m = re.fullmatch(
            rf"/autoinformer/campaigns/{cid}/report\?notice=export_ordered#export-(\d{{8}}T\d{{6}}-{table}-[0-9a-f]{{8}})",
            resp.headers["location"],
        )
        assert m, resp.headers["location"]
        names.append(f"{m[1]}.{fmt}")
    page = await admin1.get(f"/autoinformer/campaigns/{cid}/report?notice=export_ordered")
    assert 'id="export-ordered"' in page.text and "готовится в фоне" in page.text

    async def both_ready() -> bool:
        page = await admin1.get(f"/autoinformer/campaigns/{cid}/report")
        return page.text.count('class="export-download"') == 2

    await wait_until(both_ready, timeout_s=20, what="both background exports")
    text = (await admin1.get(f"/autoinformer/campaigns/{cid}/report")).text
    for name in names:
        row = text.split(f'id="export-{name.split(".")[0]}"')[1].split("</tr>")[0]
        assert re.search(r'class="size">\d+,?\d* КБ<', row.replace(".", ",")), row
        assert f'href="/autoinformer/campaigns/{cid}/exports/{name}"' in row
    built = await admin1.get(f"/autoinformer/campaigns/{cid}/exports/{names[0]}")
    assert built.status_code == 200 and built.headers["content-type"].startswith("text/csv")
    assert built.content == small.content  # the same file as the one sent at once
    sheet = await admin1.get(f"/autoinformer/campaigns/{cid}/exports/{names[1]}")
    ws = load_workbook(io.BytesIO(sheet.content)).active
    assert ws is not None
    table = [[c.value for c in row] for row in ws.iter_rows()]
    assert table[0][0] == "attempt_id" and len(table) == 3
    # another domain: neither its campaign's files nor a name under its own campaign
    await enable(admin2)
    own = await create(admin2, await add_line(core, t2))
    for url in (
        f"/autoinformer/campaigns/{cid}/exports/{names[0]}",
        f"/autoinformer/campaigns/{own}/exports/{names[0]}",
        f"/autoinformer/campaigns/{cid}/exports/..%2F..%2Fvpbx.sqlite3",
    ):
        assert (await admin2.get(url)).status_code == 404, url
    assert (await admin1.get(f"/autoinformer/campaigns/{cid}/exports/{names[0]}.part")).status_code == 404
    assert names[0] not in (await admin2.get(f"/autoinformer/campaigns/{own}/report")).text
    # 7 days later: gone from the list and the link, then from the disk
    exports = app.state.ai_exports
    exports.clock = FakeClock(dt.datetime.now(dt.UTC) + dt.timedelta(days=7, minutes=1))
    assert 'class="export-file"' not in (await admin1.get(f"/autoinformer/campaigns/{cid}/report")).text
    assert (await admin1.get(f"/autoinformer/campaigns/{cid}/exports/{names[0]}")).status_code == 404
    assert await exports.sweep() == 2
    assert not list((core.settings.data_dir / ai_exports.EXPORT_DIR).rglob("*.*"))


async def test_another_domains_campaign_is_not_found(
    core: Core, t1: Tenant, t2: Tenant, ready: str, admin1: Cabinet, admin2: Cabinet
) -> None:
    cid = await create(admin1, ready)
    await enable(admin2)
    await add_line(core, t2)
    for url in (
        f"/autoinformer/campaigns/{cid}",
        f"/autoinformer/campaigns/{cid}/report",
        f"/autoinformer/campaigns/{cid}/summary",
        f"/autoinformer/campaigns/{cid}/export?table=numbers&fmt=csv",
        f"/autoinformer/campaigns/{cid}/rejected.csv",
    ):
        assert (await admin2.get(url)).status_code == 404, url
    for action in ("start", "pause", "stop", "copy", "delete", "message", "contacts/manual"):
        resp = await admin2.post(
            f"/autoinformer/campaigns/{cid}/{action}", {"name": "x", "manual": "79160000000"}
        )
        assert resp.status_code == 404, action
    assert 'class="campaign-row"' not in (await admin2.get("/autoinformer")).text
    async with core.sessions() as s:
        row = await s.get(AiCampaign, uuid.UUID(cid))
        assert row is not None and row.status == "draft" and row.name == "Напоминание о задолженности"


CAMPAIGN_GETS = ("", "/schedule", "/lines", "/keys", "/contacts", "/report", "/summary", "/rejected.csv")
CAMPAIGN_POSTS = (
    "/message",
    "/schedule",
    "/lines",
    "/keys",
    "/start",
    "/copy",
    "/contacts/manual",
    "/preview",
)


async def test_campaign_pages_say_404_for_another_domain_before_the_off_page(
    core: Core, t1: Tenant, t2: Tenant, ready: str, admin1: Cabinet, admin2: Cabinet
) -> None:
    """Every campaign route: another domain's id is 404 while the service is off; the domain's own campaign
    shows the activation prompt once the service is switched off, and nothing changes."""
    from vpbx import billing

    cid = await create(admin1, ready)
    base = f"/autoinformer/campaigns/{cid}"
    for suffix in CAMPAIGN_GETS:
        assert (await admin2.get(base + suffix)).status_code == 404, suffix
    for suffix in CAMPAIGN_POSTS:
        assert (await admin2.post(base + suffix, {"manual": "79160000000"})).status_code == 404, suffix
    async with core.sessions() as s:
        assert await billing.disable(s, t1.id, "autoinformer", dt.datetime.now(dt.UTC))
        await s.commit()
    for suffix in CAMPAIGN_GETS:
        page = await admin1.get(base + suffix)
        assert page.status_code == 200 and 'id="ai-off"' in page.text, suffix
    for suffix in CAMPAIGN_POSTS:
        page = await admin1.post(base + suffix, {"manual": "79160000000", "name": "x"})
        assert page.status_code == 200 and 'id="ai-off"' in page.text, suffix
    for url in ("/autoinformer/stop-list", "/autoinformer/audio", "/autoinformer/stop-list/export.csv"):
        assert 'id="ai-off"' in (await admin1.get(url)).text, url
    assert 'id="ai-off"' in (await admin1.post("/autoinformer/settings", {"ai_line_reserve": "2"})).text
    assert (await admin1.get(f"/autoinformer/audio/{uuid.uuid4().hex}/play")).status_code == 404
    async with core.sessions() as s:
        row = await s.get(AiCampaign, uuid.UUID(cid))
        domain = await s.get(Domain, t1.id)
        assert row is not None and domain is not None
        assert row.status == "draft" and domain.ai_line_reserve != 2
        assert await s.scalar(select(func.count()).select_from(AiContact)) == 0
        assert await s.scalar(select(func.count()).select_from(AiCampaign)) == 1


async def test_a_running_campaign_changes_only_concurrency_and_end(
    core: Core, t1: Tenant, ready: str, admin1: Cabinet
) -> None:
    cid = await create(admin1, ready)
    async with core.sessions() as s:
        row = await s.get(AiCampaign, uuid.UUID(cid))
        assert row is not None
        row.status = "running"
        row.first_attempt_at = dt.datetime.now(dt.UTC)
        await s.commit()
    lines = await admin1.get(f"/autoinformer/campaigns/{cid}/lines")
    # only the concurrency's fieldset is open
    assert lines.text.count("<fieldset disabled>") == 8
    assert (
        await admin1.post(f"/autoinformer/campaigns/{cid}/lines", {"concurrency": "9"})
    ).status_code == 303  # what a browser sends: the disabled fieldsets stay out
    resp = await admin1.post(f"/autoinformer/campaigns/{cid}/schedule", {"end_at": "2030-07-01T18:00"})
    assert resp.status_code == 303, resp.text[-1500:]
    # the message is frozen after the first attempt: the service refuses even a hand-made post
    resp = await admin1.post(
        f"/autoinformer/campaigns/{cid}/message", {"repeat": "2", "seg0_type": "tts", "seg0_text": "Другое"}
    )
    assert resp.status_code == 422 and "нельзя менять после первой попытки" in resp.text
    page = await admin1.get(f"/autoinformer/campaigns/{cid}")
    assert 'id="message-frozen"' in page.text
    async with core.sessions() as s:
        row = await s.get(AiCampaign, uuid.UUID(cid))
        assert row is not None
    assert row.settings["concurrency"] == 9 and row.settings["schedule"]["end_at"] == "2030-07-01 18:00:00"
    assert row.settings["schedule"]["start_at"] == "2030-06-16 09:00:00"
    assert row.settings["message"]["repeat"] == 1


async def test_the_amocrm_task_option_saves_shows_and_turns_off(
    core: Core, t1: Tenant, ready: str, admin1: Cabinet
) -> None:
    cid = await create(admin1, ready)
    form = {
        "amocrm_task_shown": "1",
        "amocrm_task": "on",
        "amocrm_task_text": "Перезвонить клиенту",
        "amocrm_task_responsible": "5003",
        "amocrm_task_due_days": "2",
    }
    resp = await admin1.post(f"/autoinformer/campaigns/{cid}/lines", form)
    assert resp.status_code == 303, resp.text[-1500:]
    async with core.sessions() as s:
        row = await s.get(AiCampaign, uuid.UUID(cid))
        assert row is not None
    assert row.settings["amocrm_task"] == {
        "text": "Перезвонить клиенту",
        "responsible": "5003",
        "due_days": 2,
    }
    page = await admin1.get(f"/autoinformer/campaigns/{cid}/lines")
    assert "Создавать задачу в amoCRM" in page.text and 'value="Перезвонить клиенту"' in page.text
    # an empty text is refused in Russian, nothing saved
    resp = await admin1.post(f"/autoinformer/campaigns/{cid}/lines", {**form, "amocrm_task_text": " "})
    assert resp.status_code == 422
    resp = await admin1.post(f"/autoinformer/campaigns/{cid}/lines", {"amocrm_task_shown": "1"})
    assert resp.status_code == 303, resp.text[-1500:]
    async with core.sessions() as s:
        row = await s.get(AiCampaign, uuid.UUID(cid))
        assert row is not None
    assert row.settings["amocrm_task"] is None


async def test_integration_api_toggle_for_autoinformer_events(
    core: Core, t1: Tenant, admin1: Cabinet
) -> None:
    """«Отправлять autoinformer_events» sits next to «call_events для вызовов автоинформатора» and is saved
    on its own."""
    from vpbx.store.models import ApiSettings

    await enable(admin1, "integration_api")
    page = await admin1.get("/integration-api")
    assert 'name="send_ai_notifications"' in page.text and "Отправлять autoinformer_events" in page.text
    assert re.search(
        r'id="f-send_ai_notifications" name="send_ai_notifications" type="checkbox" checked', page.text
    )
    base = {
        "crm_url": "https://crm.example/rt",
        "timeout_s": "3",
        "tls_required": "on",
        "send_events": "on",
        "type_outbound": "on",
        "state_end": "on",
        "send_autoinformer_events": "on",
    }
    assert (await admin1.post("/integration-api", base)).status_code == 303
    async with core.sessions() as s:
        row = await s.get(ApiSettings, t1.id)
        assert row is not None and row.send_ai_notifications is False and row.send_autoinformer_events is True
    assert (await admin1.post("/integration-api", {**base, "send_ai_notifications": "on"})).status_code == 303
    async with core.sessions() as s:
        row = await s.get(ApiSettings, t1.id)
        assert row is not None and row.send_ai_notifications is True
