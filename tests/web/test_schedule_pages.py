"""Schedules pages: create, edit, search, delete; field errors save nothing; another domain sees 404."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select

from tests.helpers import Cabinet, Tenant
from vpbx.app import Core
from vpbx.store.models import IncomingNumber, RoutingRule, Schedule, ScheduleHoliday, ScheduleInterval

OFFICE: dict[str, Any] = {
    "name": "Офис",
    "day_0": "09:00-13:00, 14:00-18:00",
    "day_1": "09:00-13:00, 14:00-18:00",
    "day_2": "09:00-13:00, 14:00-18:00",
    "day_3": "09:00-13:00, 14:00-18:00",
    "day_4": "09:00-13:00, 14:00-17:00",
    "day_5": "",
    "day_6": "",
    "holidays": "2026-01-01 Новый год\n07.01.2026 Рождество",
}


async def _snapshot(core: Core) -> list[tuple[Any, ...]]:
    async with core.sessions() as s:
        rows: list[tuple[Any, ...]] = []
        for model in (Schedule, ScheduleInterval, ScheduleHoliday):
            rows += [tuple(r) for r in (await s.execute(select(model.__table__))).all()]
        return sorted(rows, key=repr)


async def _schedule_id(core: Core, t: Tenant, name: str = "Офис") -> uuid.UUID:
    async with core.sessions() as s:
        sid = await s.scalar(select(Schedule.id).where(Schedule.domain_id == t.id, Schedule.name == name))
        assert sid is not None
        return sid


async def test_create_list_and_edit(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    form = await admin1.get("/schedules/new")
    assert form.status_code == 200 and 'id="f-day_6"' in form.text and "Europe/Moscow" in form.text
    resp = await admin1.post("/schedules", OFFICE)
    assert resp.status_code == 303, resp.text
    page = await admin1.get("/schedules")
    assert "Офис" in page.text
    assert "Пн–Чт 09:00-13:00, 14:00-18:00" in page.text and "Пт 09:00-13:00, 14:00-17:00" in page.text
    sid = await _schedule_id(core, t1)
    edit = await admin1.get(f"/schedules/{sid}")
    assert "07.01.2026" not in edit.text and "2026-01-07 Рождество" in edit.text
    resp = await admin1.post(f"/schedules/{sid}", {**OFFICE, "name": "Офис Москва", "day_5": "10:00-14:00"})
    assert resp.status_code == 303
    async with core.sessions() as s:
        sch = await s.get(Schedule, sid)
        assert sch is not None and sch.name == "Офис Москва"
        assert [(i.start_min, i.end_min) for i in sch.intervals if i.weekday == 5] == [(600, 840)]
    assert "Офис Москва" in (await admin1.get("/schedules?q=Москва")).text
    assert "Офис Москва" not in (await admin1.get("/schedules?q=Склад")).text


async def test_field_errors_save_nothing(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    before = await _snapshot(core)
    bad = {
        **OFFICE,
        "day_0": "09:00-13:00, 12:00-18:00",
        "day_1": "9-18",
        "day_2": "18:00-09:00",
        "holidays": "2026-01-01\n01.01.2026 Снова\n2026-02-30",
    }
    resp = await admin1.post("/schedules", bad)
    assert resp.status_code == 422
    for f in ("day_0", "day_1", "day_2", "holidays"):
        assert f'id="err-{f}"' in resp.text
    assert "Понедельник: интервалы 09:00-13:00 и 12:00-18:00 пересекаются" in resp.text
    assert "Строка 2: дата 2026-01-01 указана дважды" in resp.text
    assert "Строка 3: 2026-02-30 — не дата" in resp.text
    assert "9-18" in resp.text  # what was typed comes back
    assert await _snapshot(core) == before


async def test_duplicate_name_on_update_changes_nothing(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    await admin1.post("/schedules", OFFICE)
    await admin1.post("/schedules", {**OFFICE, "name": "Склад"})
    before = await _snapshot(core)
    sid = await _schedule_id(core, t1, "Склад")
    resp = await admin1.post(f"/schedules/{sid}", {**OFFICE, "day_6": "10:00-11:00"})
    assert resp.status_code == 422 and 'id="err-name"' in resp.text
    assert "Расписание с таким названием уже есть" in resp.text
    assert await _snapshot(core) == before


async def test_delete_unused_and_refuse_used(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    await admin1.post("/schedules", OFFICE)
    await admin1.post("/schedules", {**OFFICE, "name": "Склад"})
    used, unused = await _schedule_id(core, t1), await _schedule_id(core, t1, "Склад")
    async with core.sessions() as s:
        n = IncomingNumber(domain_id=t1.id, number="+74951234567")
        s.add(n)
        await s.flush()
        s.add(
            RoutingRule(
                domain_id=t1.id,
                number_id=n.id,
                position=0,
                condition="work",
                schedule_id=used,
                action="reject",
            )
        )
        await s.commit()
    resp = await admin1.post(f"/schedules/{used}/delete")
    assert resp.status_code == 422
    assert "Расписание используется в правилах маршрутизации" in resp.text
    resp = await admin1.post(f"/schedules/{unused}/delete")
    assert resp.status_code == 303
    async with core.sessions() as s:
        names = list(await s.scalars(select(Schedule.name)))
        assert names == ["Офис"]
        assert await s.scalar(select(func.count()).select_from(ScheduleHoliday)) == 2


async def test_other_domain_gets_404_and_changes_nothing(
    admin1: Cabinet, admin2: Cabinet, core: Core, t1: Tenant
) -> None:
    await admin1.post("/schedules", OFFICE)
    sid = await _schedule_id(core, t1)
    before = await _snapshot(core)
    assert (await admin2.get(f"/schedules/{sid}")).status_code == 404
    assert (await admin2.post(f"/schedules/{sid}", {**OFFICE, "name": "hijack"})).status_code == 404
    assert (await admin2.post(f"/schedules/{sid}/delete")).status_code == 404
    assert (await admin2.get(f"/schedules/{uuid.uuid4()}")).status_code == 404
    assert (await admin2.get("/schedules/not-an-id")).status_code == 404
    assert "Офис" not in (await admin2.get("/schedules")).text
    # the name is free in the other domain
    assert (await admin2.post("/schedules", OFFICE)).status_code == 303
    after = await _snapshot(core)
    assert [r for r in after if r not in before] and all(r in after for r in before)
    async with core.sessions() as s:
        sch = await s.get(Schedule, sid)
        assert sch is not None and sch.name == "Офис" and len(sch.intervals) == 10


async def test_english_switch(admin1: Cabinet) -> None:
    await admin1.get("/lang/en?next=/schedules")
    resp = await admin1.post("/schedules", {**OFFICE, "day_3": "10:00-12:00, 11:00-13:00"})
    assert "Thursday: intervals 10:00-12:00 and 11:00-13:00 overlap" in resp.text
