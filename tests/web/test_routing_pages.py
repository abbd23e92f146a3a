"""Routing pages: numbers with rule counts, adding, editing, ordering and deleting rules, the check tool,
field errors that save nothing, and two-tenant isolation of URLs and of ids put into forms."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from tests.helpers import Cabinet, Tenant
from vpbx.app import Core
from vpbx.store.models import (
    CallGroup,
    IncomingNumber,
    RoutingRule,
    Schedule,
    ScheduleInterval,
    User,
    VoiceMenu,
)

A = "+74951234567"
B = "+74957654321"


@dataclass
class World:
    number: uuid.UUID
    other_number: uuid.UUID
    group: uuid.UUID
    menu: uuid.UUID
    schedule: uuid.UUID
    user: uuid.UUID


async def _world(core: Core, t: Tenant, first: str = A, second: str = B) -> World:
    async with core.sessions() as s:
        admin = await s.scalar(select(User).where(User.domain_id == t.id))
        assert admin is not None
        n, n2 = (
            IncomingNumber(domain_id=t.id, number=first, label="Офис"),
            IncomingNumber(domain_id=t.id, number=second),
        )
        g = CallGroup(domain_id=t.id, name="Продажи", pin="600")
        m = VoiceMenu(domain_id=t.id, name="Главное")
        sch = Schedule(
            domain_id=t.id,
            name="Офис",
            intervals=[ScheduleInterval(weekday=d, start_min=540, end_min=1080) for d in range(5)],
            holidays=[],
        )
        s.add_all([n, n2, g, m, sch])
        await s.commit()
        return World(n.id, n2.id, g.id, m.id, sch.id, admin.id)


async def _rules(core: Core, t: Tenant) -> list[tuple[Any, ...]]:
    async with core.sessions() as s:
        rows = await s.scalars(
            select(RoutingRule)
            .where(RoutingRule.domain_id == t.id)
            .order_by(RoutingRule.number_id, RoutingRule.position)
        )
        return [
            (
                r.id,
                r.number_id,
                r.position,
                r.condition,
                r.schedule_id,
                r.action,
                r.target_user_id,
                r.target_group_id,
                r.target_menu_id,
                r.target_number,
            )
            for r in rows
        ]


def _rule(**kw: Any) -> dict[str, Any]:
    return {"condition": "always", "schedule_id": "", "action": "reject", **kw}


async def test_add_rules_and_read_them_in_order(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    w = await _world(core, t1)
    listing = await admin1.get("/routing")
    assert listing.status_code == 200 and "+7 495 123-45-67" in listing.text
    for data in (
        _rule(condition="work", schedule_id=w.schedule, action="group", group_id=w.group),
        _rule(condition="non_work", schedule_id=w.schedule, action="voicemail", mailbox=f"user:{w.user}"),
        _rule(action="menu", menu_id=w.menu),
        _rule(action="external", number="8 916 123-45-67"),
        _rule(action="user", user_id=w.user),
        _rule(action="voicemail", mailbox=f"group:{w.group}"),
    ):
        resp = await admin1.post(f"/routing/{w.number}/rules", data)
        assert resp.status_code == 303, resp.text
        assert resp.headers["location"] == f"/routing/{w.number}"
    page = await admin1.get(f"/routing/{w.number}")
    texts = [
        "Рабочее время (Офис) → Группа 600 Продажи",
        "Нерабочее время (Офис) → Голосовая почта пользователя 100 Admin",
        "Всегда → Голосовое меню Главное",
        "Всегда → Внешний номер +7 916 123-45-67",
        "Всегда → Пользователь 100 Admin",
        "Всегда → Голосовая почта группы 600 Продажи",
    ]
    positions = [page.text.index(t) for t in texts]
    assert positions == sorted(positions)
    listing = await admin1.get("/routing")
    assert "<td>6</td>" in listing.text and "<td>0</td>" in listing.text
    rules = await _rules(core, t1)
    assert [r[2] for r in rules] == [0, 1, 2, 3, 4, 5]
    assert rules[5][5:8] == ("voicemail", None, w.group)


async def test_move_edit_and_delete(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    w = await _world(core, t1)
    for data in (
        _rule(action="reject"),
        _rule(action="menu", menu_id=w.menu),
        _rule(action="group", group_id=w.group),
    ):
        assert (await admin1.post(f"/routing/{w.number}/rules", data)).status_code == 303
    first, second, third = (r[0] for r in await _rules(core, t1))
    assert (await admin1.post(f"/routing/{w.number}/rules/{third}/up")).status_code == 303
    assert (await admin1.post(f"/routing/{w.number}/rules/{first}/down")).status_code == 303
    assert [r[0] for r in await _rules(core, t1)] == [third, first, second]
    edit = await admin1.get(f"/routing/{w.number}/rules/{second}")
    assert edit.status_code == 200 and "Правило 3 номера +7 495 123-45-67" in edit.text
    resp = await admin1.post(
        f"/routing/{w.number}/rules/{second}",
        _rule(condition="work", schedule_id=w.schedule, action="external", number=B),
    )
    assert resp.status_code == 303
    assert (await admin1.post(f"/routing/{w.number}/rules/{third}/delete")).status_code == 303
    rules = await _rules(core, t1)
    assert [(r[0], r[2]) for r in rules] == [(first, 0), (second, 1)]
    assert rules[1][3:6] == ("work", w.schedule, "external") and rules[1][9] == B


async def test_field_errors_save_nothing(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    w = await _world(core, t1)
    assert (await admin1.post(f"/routing/{w.number}/rules", _rule())).status_code == 303
    before = await _rules(core, t1)
    cases = [
        (_rule(condition="work", schedule_id=""), "schedule_id"),
        (_rule(condition="sometimes"), "condition"),
        (_rule(action="external", number="12ab"), "number"),
        (_rule(action="group", group_id="not-an-id"), "group_id"),
        (_rule(action="user"), "user_id"),
        (_rule(action="menu", menu_id=str(uuid.uuid4())), "menu_id"),
        (_rule(action="voicemail", mailbox=""), "mailbox"),
        (_rule(action="dance"), "action"),
    ]
    for data, field in cases:
        resp = await admin1.post(f"/routing/{w.number}/rules", data)
        assert resp.status_code == 422, field
        assert f'id="err-{field}"' in resp.text, field
        rule_id = before[0][0]
        resp = await admin1.post(f"/routing/{w.number}/rules/{rule_id}", data)
        assert resp.status_code == 422 and f'id="err-{field}"' in resp.text, field
    assert await _rules(core, t1) == before


async def test_a_loop_is_refused_with_its_path(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    w = await _world(core, t1)
    assert (
        await admin1.post(f"/routing/{w.number}/rules", _rule(action="external", number=B))
    ).status_code == 303
    before = await _rules(core, t1)
    resp = await admin1.post(
        f"/routing/{w.other_number}/rules", _rule(action="external", number="8 495 123-45-67")
    )
    assert resp.status_code == 422
    assert 'id="err-action"' in resp.text
    assert f"Правило создаёт петлю маршрутизации: {A} → {B} → {A}" in resp.text
    resp = await admin1.post(f"/routing/{w.number}/rules/{before[0][0]}", _rule(action="external", number=A))
    assert resp.status_code == 422 and f"{A} → {A}" in resp.text
    assert await _rules(core, t1) == before


async def test_check_tool(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    w = await _world(core, t1)
    await admin1.post(
        f"/routing/{w.number}/rules",
        _rule(condition="work", schedule_id=w.schedule, action="group", group_id=w.group),
    )
    await admin1.post(f"/routing/{w.number}/rules", _rule(action="reject"))
    blank = await admin1.get("/routing/check")
    assert blank.status_code == 200 and 'id="check-result"' not in blank.text
    at_work = await admin1.get("/routing/check", params={"number": A, "date": "2026-01-15", "time": "10:00"})
    assert "обработает правило 1" in at_work.text and "Группа 600 Продажи" in at_work.text
    evening = await admin1.get(
        "/routing/check", params={"number": "8 495 123-45-67", "date": "2026-01-15", "time": "18:00"}
    )
    assert "обработает правило 2" in evening.text and "Отклонить вызов" in evening.text
    none = await admin1.get("/routing/check", params={"number": B, "date": "2026-01-15", "time": "18:00"})
    assert "ни одно правило номера не срабатывает" in none.text
    bad = await admin1.get("/routing/check", params={"number": A, "date": "15 января", "time": "25:00"})
    assert bad.status_code == 422 and 'id="err-date"' in bad.text and 'id="err-time"' in bad.text


# --- two tenants ------------------------------------------------------------------------------------------


async def test_other_domain_gets_404_on_every_url(
    admin1: Cabinet, admin2: Cabinet, core: Core, t1: Tenant, t2: Tenant
) -> None:
    w1 = await _world(core, t1)
    w2 = await _world(core, t2, "+74959990011", "+78123334455")
    assert (
        await admin1.post(f"/routing/{w1.number}/rules", _rule(action="group", group_id=w1.group))
    ).status_code == 303
    assert (await admin2.post(f"/routing/{w2.number}/rules", _rule())).status_code == 303
    rule1 = (await _rules(core, t1))[0][0]
    rule2 = (await _rules(core, t2))[0][0]
    before1, before2 = await _rules(core, t1), await _rules(core, t2)
    data = _rule(action="external", number="+79161234567")
    for url in (
        f"/routing/{w1.number}",
        f"/routing/{w1.number}/rules/{rule1}",
        f"/routing/{w2.number}/rules/{rule1}",
    ):
        assert (await admin2.get(url)).status_code == 404, url
    for url in (
        f"/routing/{w1.number}/rules",
        f"/routing/{w1.number}/rules/{rule1}",
        f"/routing/{w1.number}/rules/{rule1}/delete",
        f"/routing/{w1.number}/rules/{rule1}/up",
        f"/routing/{w1.number}/rules/{rule1}/down",
        # own number, foreign rule; foreign number, own rule
        f"/routing/{w2.number}/rules/{rule1}",
        f"/routing/{w2.number}/rules/{rule1}/delete",
        f"/routing/{w1.number}/rules/{rule2}",
        f"/routing/{w1.number}/rules/{rule2}/delete",
    ):
        assert (await admin2.post(url, data)).status_code == 404, url
    listing = await admin2.get("/routing")
    assert "+7 495 123-45-67" not in listing.text and "+7 495 999-00-11" in listing.text
    check = await admin2.get("/routing/check", params={"number": A, "date": "2026-01-15", "time": "10:00"})
    assert check.status_code == 422 and "Выберите номер этого домена" in check.text
    assert await _rules(core, t1) == before1
    assert await _rules(core, t2) == before2


async def test_forged_ids_in_forms_are_rejected(admin2: Cabinet, core: Core, t1: Tenant, t2: Tenant) -> None:
    w1 = await _world(core, t1)
    w2 = await _world(core, t2, "+74959990011", "+78123334455")
    assert (await admin2.post(f"/routing/{w2.number}/rules", _rule())).status_code == 303
    before1, before2 = await _rules(core, t1), await _rules(core, t2)
    rule2 = before2[0][0]
    forged = [
        (_rule(action="user", user_id=w1.user), "user_id"),
        (_rule(action="group", group_id=w1.group), "group_id"),
        (_rule(action="menu", menu_id=w1.menu), "menu_id"),
        (_rule(action="voicemail", mailbox=f"user:{w1.user}"), "mailbox"),
        (_rule(action="voicemail", mailbox=f"group:{w1.group}"), "mailbox"),
        (_rule(condition="work", schedule_id=w1.schedule), "schedule_id"),
        (_rule(condition="non_work", schedule_id=w1.schedule), "schedule_id"),
    ]
    for data, field in forged:
        for url in (f"/routing/{w2.number}/rules", f"/routing/{w2.number}/rules/{rule2}"):
            resp = await admin2.post(url, data)
            assert resp.status_code == 422, (url, field)
            assert f'id="err-{field}"' in resp.text, (url, field)
    # the add form offers only the domain's own targets
    page = await admin2.get(f"/routing/{w2.number}")
    for foreign in (w1.user, w1.group, w1.menu, w1.schedule):
        assert str(foreign) not in page.text
    assert await _rules(core, t1) == before1
    assert await _rules(core, t2) == before2


async def test_numbers_list_searches_any_spelling(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    await _world(core, t1)
    found = await admin1.get("/routing", params={"q": "8 (495) 123"})
    assert "+7 495 123-45-67" in found.text and "+7 495 765-43-21" not in found.text
    by_label = await admin1.get("/routing", params={"q": "Офис"})
    assert "+7 495 123-45-67" in by_label.text and "+7 495 765-43-21" not in by_label.text
