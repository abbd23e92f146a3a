"""Numbers, call groups and voice menus pages: forms, field errors, nothing saved on error, two tenants."""

from __future__ import annotations

import re
import uuid

import pytest
from sqlalchemy import func, select

from tests.helpers import Cabinet, Tenant
from vpbx.app import Core
from vpbx.pbx import groups, lines, menus, users
from vpbx.store.models import CallGroup, IncomingNumber, RoutingRule, User, VoiceMenu

ROW_ID_RE = re.compile(r'id="(?:number|group|menu)-([0-9a-f-]{36})"')


async def _user(core: Core, t: Tenant, pin: str, name: str = "") -> User:
    async with core.sessions() as s:
        u = await users.create_user(
            s,
            t.id,
            users.UserInput(name=f"u{pin}", display_name=name or f"User {pin}", pin=pin),
            box=core.box,
        )
        await s.commit()
        return u


async def _number(core: Core, t: Tenant, number: str, label: str = "") -> IncomingNumber:
    async with core.sessions() as s:
        n = await lines.create_number(s, t.id, lines.NumberInput(number=number, label=label))
        await s.commit()
        return n


async def _group(
    core: Core, t: Tenant, name: str = "Sales", pin: str = "500", members: list[str] | None = None
) -> CallGroup:
    async with core.sessions() as s:
        g = await groups.create_group(s, t.id, groups.GroupInput(name=name, pin=pin, members=members or []))
        await s.commit()
        return g


async def _menu(core: Core, t: Tenant, name: str = "Main") -> VoiceMenu:
    async with core.sessions() as s:
        m = await menus.create_menu(s, t.id, menus.MenuInput(name=name, prompt_text="Press 1"))
        await s.commit()
        return m


async def _count(core: Core, model: type[IncomingNumber | CallGroup | VoiceMenu]) -> int:
    async with core.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


# --- numbers ----------------------------------------------------------------------------------------------


async def test_add_number_shows_it_formatted_with_its_rules(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    resp = await admin1.post("/numbers", {"number": "8 495 123-45-67", "label": "Главный офис"})
    assert resp.status_code == 303, resp.text
    async with core.sessions() as s:
        n = await s.scalar(select(IncomingNumber).where(IncomingNumber.domain_id == t1.id))
        assert n is not None and n.number == "+74951234567"
        s.add(RoutingRule(domain_id=t1.id, number_id=n.id, position=0, action="reject"))
        s.add(RoutingRule(domain_id=t1.id, number_id=n.id, position=1, action="reject"))
        await s.commit()
    page = await admin1.get("/numbers")
    assert page.status_code == 200
    assert "+7 495 123-45-67" in page.text and "Главный офис" in page.text
    assert f'href="/routing/{n.id}"' in page.text
    row = page.text[page.text.index(f'id="number-{n.id}"') :]
    assert re.search(r'<span class="badge"[^>]*>2</span>', row[: row.index("</tr>")])


async def test_number_search_and_pages(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    for i in range(25):
        await _number(core, t1, f"+7495123{i:04d}", f"Line {i}")
    await _number(core, t1, "+78122223344", "Support")
    first = await admin1.get("/numbers")
    second = await admin1.get("/numbers?page=2")
    ids = ROW_ID_RE.findall(first.text) + ROW_ID_RE.findall(second.text)
    assert len(ROW_ID_RE.findall(first.text)) == 20 and len(set(ids)) == 26
    found = await admin1.get("/numbers?q=8 812 222")
    assert "+7 812 222-33-44" in found.text and len(ROW_ID_RE.findall(found.text)) == 1
    found = await admin1.get("/numbers?q=support")
    assert len(ROW_ID_RE.findall(found.text)) == 1


@pytest.mark.parametrize(
    ("number", "message"),
    [
        ("12ab", "Неверный номер телефона"),
        ("+7 (495) 1234567", "Этот номер уже добавлен"),
        ("+7 (812) 222-33-44", "Этот номер принадлежит другому домену"),
    ],
)
async def test_number_field_errors_save_nothing(
    admin1: Cabinet, core: Core, t1: Tenant, t2: Tenant, number: str, message: str
) -> None:
    await _number(core, t1, "+74951234567")
    await _number(core, t2, "+78122223344")
    before = await _count(core, IncomingNumber)
    resp = await admin1.post("/numbers", {"number": number, "label": "x"})
    assert resp.status_code == 422
    assert 'id="err-number"' in resp.text and message in resp.text
    assert await _count(core, IncomingNumber) == before


async def test_edit_and_delete_number(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    n = await _number(core, t1, "+74951234567", "Old")
    page = await admin1.get(f"/numbers/{n.id}")
    assert page.status_code == 200 and 'value="Old"' in page.text
    bad = await admin1.post(f"/numbers/{n.id}", {"number": "+74951234567", "label": "x" * 129})
    assert bad.status_code == 422 and 'id="err-label"' in bad.text
    resp = await admin1.post(f"/numbers/{n.id}", {"number": "8 495 765 43 21", "label": "New"})
    assert resp.status_code == 303
    async with core.sessions() as s:
        got = await s.get(IncomingNumber, n.id)
        assert got is not None and (got.number, got.label) == ("+74957654321", "New")
    resp = await admin1.post(f"/numbers/{n.id}/delete")
    assert resp.status_code == 303
    assert await _count(core, IncomingNumber) == 0


# --- voice menus ------------------------------------------------------------------------------------------


async def test_menu_create_edit_and_errors(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    resp = await admin1.post("/menus", {"name": "Главное меню", "prompt_text": "Нажмите 1"})
    assert resp.status_code == 303
    listing = await admin1.get("/menus")
    assert "Главное меню" in listing.text
    (mid,) = ROW_ID_RE.findall(listing.text)
    dup = await admin1.post("/menus", {"name": "Главное меню", "prompt_text": "x" * 1001})
    assert dup.status_code == 422
    assert 'id="err-name"' in dup.text and 'id="err-prompt_text"' in dup.text
    assert await _count(core, VoiceMenu) == 1
    resp = await admin1.post(f"/menus/{mid}", {"name": "Ночное меню", "prompt_text": "Нажмите 2"})
    assert resp.status_code == 303
    assert "Ночное меню" in (await admin1.get(f"/menus/{mid}")).text


async def test_menu_in_use_cannot_be_deleted(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    m = await _menu(core, t1)
    g = await _group(core, t1)
    resp = await admin1.post(
        f"/groups/{g.id}",
        {"name": "Sales", "pin": "500", "fallthrough_action": "menu", "fallthrough_menu_id": str(m.id)},
    )
    assert resp.status_code == 303, resp.text
    resp = await admin1.post(f"/menus/{m.id}/delete")
    assert resp.status_code == 422 and 'class="form-error"' in resp.text
    assert await _count(core, VoiceMenu) == 1


# --- call groups ------------------------------------------------------------------------------------------


async def test_group_form_lists_users_and_targets(
    admin1: Cabinet, core: Core, t1: Tenant, t2: Tenant
) -> None:
    await _user(core, t1, "101", "Иванов Иван")
    await _menu(core, t1, "Главное меню")
    await _user(core, t2, "777", "Чужой Пользователь")
    await _menu(core, t2, "Чужое меню")
    page = await admin1.get("/groups/new")
    assert page.status_code == 200
    hint = page.text[page.text.index('id="member-hint"') :]
    assert "<code>101</code> — Иванов Иван" in hint
    assert "Главное меню" in page.text
    assert "Чужой" not in page.text and "Чужое" not in page.text


async def test_group_create_with_ordered_members(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    for pin in ("101", "102", "103"):
        await _user(core, t1, pin)
    resp = await admin1.post(
        "/groups",
        {
            "name": "Продажи",
            "pin": "500",
            "strategy": "sequential",
            "member_timeout_s": "15",
            "overall_timeout_s": "90",
            "members": "103, 101\n102, 101",
            "fallthrough_action": "external",
            "fallthrough_number": "8 916 123-45-67",
        },
    )
    assert resp.status_code == 303, resp.text
    async with core.sessions() as s:
        g = await s.scalar(select(CallGroup).where(CallGroup.domain_id == t1.id))
        assert g is not None
        assert await groups.member_pins(s, t1.id, g) == ["103", "101", "102"]
        assert (g.strategy, g.member_timeout_s, g.overall_timeout_s) == ("sequential", 15, 90)
        assert (g.fallthrough_action, g.fallthrough_number) == ("external", "+79161234567")
    listing = await admin1.get("/groups")
    assert "Продажи" in listing.text
    edit = await admin1.get(f"/groups/{g.id}")
    assert "103\n101\n102</textarea>" in edit.text


async def test_group_errors_save_nothing(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    await _user(core, t1, "101")
    resp = await admin1.post(
        "/groups",
        {
            "name": "Sales",
            "pin": "100",
            "strategy": "simultaneous",
            "member_timeout_s": "60",
            "overall_timeout_s": "30",
            "members": "101, 999",
        },
    )
    assert resp.status_code == 422
    for fld in ("pin", "overall_timeout_s", "members"):
        assert f'id="err-{fld}"' in resp.text
    assert "Неизвестный участник: 999" in resp.text
    assert "101, 999" not in resp.text and "101\n999</textarea>" in resp.text  # the input is kept
    assert await _count(core, CallGroup) == 0


@pytest.mark.parametrize("kind", ["user", "group", "menu"])
async def test_group_form_rejects_forged_ids_of_another_domain(
    admin1: Cabinet, core: Core, t1: Tenant, t2: Tenant, kind: str
) -> None:
    g = await _group(core, t1)
    foreign = {
        "user": (await _user(core, t2, "101")).id,
        "group": (await _group(core, t2, "Theirs", "600")).id,
        "menu": (await _menu(core, t2)).id,
    }[kind]
    form = {"name": "Sales", "pin": "500", "fallthrough_action": kind, f"fallthrough_{kind}_id": str(foreign)}
    created = await admin1.post("/groups", {**form, "name": "New", "pin": "501"})
    assert created.status_code == 422 and f'id="err-fallthrough_{kind}_id"' in created.text
    updated = await admin1.post(f"/groups/{g.id}", form)
    assert updated.status_code == 422 and f'id="err-fallthrough_{kind}_id"' in updated.text
    async with core.sessions() as s:
        assert (
            await s.scalar(select(func.count()).select_from(CallGroup).where(CallGroup.domain_id == t1.id))
        ) == 1
        got = await s.get(CallGroup, g.id)
        assert got is not None and got.fallthrough_action is None


async def test_group_self_fallthrough_and_delete_in_use(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    a = await _group(core, t1)
    b = await _group(core, t1, "Support", "501")
    resp = await admin1.post(
        f"/groups/{a.id}",
        {"name": "Sales", "pin": "500", "fallthrough_action": "group", "fallthrough_group_id": str(a.id)},
    )
    assert resp.status_code == 422 and 'id="err-fallthrough_group_id"' in resp.text
    resp = await admin1.post(
        f"/groups/{b.id}",
        {"name": "Support", "pin": "501", "fallthrough_action": "group", "fallthrough_group_id": str(a.id)},
    )
    assert resp.status_code == 303
    resp = await admin1.post(f"/groups/{a.id}/delete")
    assert resp.status_code == 422 and 'class="form-error"' in resp.text
    assert await _count(core, CallGroup) == 2
    resp = await admin1.post(f"/groups/{b.id}/delete")
    assert resp.status_code == 303
    resp = await admin1.post(f"/groups/{a.id}/delete")
    assert resp.status_code == 303
    assert await _count(core, CallGroup) == 0


async def test_group_fallthrough_loop_is_a_field_error(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    a = await _group(core, t1)
    b = await _group(core, t1, "Support", "501")
    resp = await admin1.post(
        f"/groups/{a.id}",
        {"name": "Sales", "pin": "500", "fallthrough_action": "group", "fallthrough_group_id": str(b.id)},
    )
    assert resp.status_code == 303
    resp = await admin1.post(
        f"/groups/{b.id}",
        {"name": "Support 2", "pin": "501", "fallthrough_action": "group", "fallthrough_group_id": str(a.id)},
    )
    assert resp.status_code == 422
    assert 'id="err-fallthrough_action"' in resp.text and "петлю маршрутизации" in resp.text
    async with core.sessions() as s:
        got = await s.get(CallGroup, b.id)
        assert got is not None and (got.name, got.fallthrough_action) == ("Support", None)


# --- two tenants ------------------------------------------------------------------------------------------


async def test_other_tenant_gets_404_everywhere(
    admin1: Cabinet, admin2: Cabinet, core: Core, t1: Tenant, t2: Tenant
) -> None:
    n = await _number(core, t1, "+74951234567", "Mine")
    g = await _group(core, t1)
    m = await _menu(core, t1)
    forms = {
        f"/numbers/{n.id}": {"number": "+74951234568", "label": "Stolen"},
        f"/groups/{g.id}": {"name": "Stolen", "pin": "509"},
        f"/menus/{m.id}": {"name": "Stolen", "prompt_text": ""},
    }
    for path, data in forms.items():
        assert (await admin2.get(path)).status_code == 404, path
        assert (await admin2.post(path, data)).status_code == 404, path
        assert (await admin2.post(f"{path}/delete")).status_code == 404, path
    for section in ("numbers", "groups", "menus"):
        listing = await admin2.get(f"/{section}")
        assert listing.status_code == 200 and not ROW_ID_RE.findall(listing.text), section
    for path in (f"/numbers/{uuid.uuid4()}", "/groups/not-an-id", f"/menus/{uuid.uuid4()}/delete"):
        resp = await (admin1.post(path) if path.endswith("delete") else admin1.get(path))
        assert resp.status_code == 404, path
    async with core.sessions() as s:
        got_n = await s.get(IncomingNumber, n.id)
        got_g = await s.get(CallGroup, g.id)
        got_m = await s.get(VoiceMenu, m.id)
        assert got_n is not None and (got_n.number, got_n.label) == ("+74951234567", "Mine")
        assert got_g is not None and got_g.name == "Sales"
        assert got_m is not None and got_m.name == "Main"


async def test_anonymous_is_sent_to_login(anon: Cabinet) -> None:
    for section in ("numbers", "groups", "menus"):
        resp = await anon.get(f"/{section}")
        assert resp.status_code == 303 and resp.headers["location"].startswith("/login")
