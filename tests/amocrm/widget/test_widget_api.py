"""The widget API (amocrm.md §3.4, F6–F8, §3.5) over HTTP with amoCRM's disposable tokens: the mapping's
uniqueness and fallback rules, scenario operations and line conflicts, metadata validation, click-to-call's
refusals, and two tenants that never see each other's rows."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from sqlalchemy import select

from tests.amocrm.emu_kit import DEMO, OTHER, Emu
from tests.amocrm.kit import scenario_doc
from tests.amocrm.widget.conftest import (
    ACCOUNT_A,
    LINE_A,
    LINE_A2,
    LINE_B,
    Widget,
    World,
    mint,
)
from vpbx.store.models import AmoCall, AmoScenario, CrmBinding, CrmUserMap

FULL_DOC = scenario_doc()  # §3.4's example, on the fixture's ids


# --- tokens ---------------------------------------------------------------------------------------------


async def test_tokens_are_checked(admin_a: Widget) -> None:
    assert (await admin_a.request("GET", "/mapping", headers={"X-Auth-Token": "x"})).status_code == 401
    wrong_aud = await admin_a.token(aud="https://evil.example")
    r = await admin_a.request("GET", "/mapping", headers={"X-Auth-Token": wrong_aud})
    assert (r.status_code, r.json()) == (401, {"error": "widget-token-invalid"})
    expired = await admin_a.token(ttl=-120)
    assert (await admin_a.request("GET", "/mapping", headers={"X-Auth-Token": expired})).status_code == 401
    forged = mint(ACCOUNT_A, 5001, secret="not-the-secret")
    assert (await admin_a.request("GET", "/mapping", headers={"X-Auth-Token": forged})).status_code == 401
    once = await admin_a.token()
    assert (await admin_a.request("GET", "/mapping", headers={"X-Auth-Token": once})).status_code == 200
    assert (await admin_a.request("GET", "/mapping", headers={"X-Auth-Token": once})).status_code == 401


async def test_writes_need_an_admin(user_a: Widget) -> None:
    assert (await user_a.request("GET", "/mapping")).status_code == 200  # reading is fine
    for method, path, body in (
        ("PUT", "/mapping", {"items": []}),
        ("POST", "/scenarios", {}),
        ("PUT", "/scenarios/1", FULL_DOC),
        ("PATCH", "/scenarios/1", {"is_active": False}),
        ("DELETE", "/scenarios/1", None),
    ):
        r = await user_a.request(method, path, json=body)
        assert (r.status_code, r.json()) == (403, {"error": "admin-required"}), (method, path)


async def test_no_active_binding_is_409(admin_a: Widget, world: World) -> None:
    async with world.core.sessions() as s:
        b = await s.get(CrmBinding, world.binding_a)
        assert b is not None
        b.status = "disabled"
        await s.commit()
    for path in ("/directory", "/mapping", "/scenarios", "/amo-meta"):
        r = await admin_a.request("GET", path)
        assert (r.status_code, r.json()["error"]) == (409, "binding-inactive"), path
    r = await admin_a.request("POST", "/call", json={"phone": "+79161234567"})
    assert (r.status_code, r.json()["error"]) == (409, "binding-inactive")


# --- directory and metadata -------------------------------------------------------------------------------


async def test_directory_lists_both_sides(admin_a: Widget, emu: Emu) -> None:
    r = await admin_a.request("GET", "/directory")
    assert r.status_code == 200
    body = r.json()
    assert [u["id"] for u in body["amo_users"]] == [5001, 5002, 5003, 5004]
    assert body["amo_users"][0] == {"id": 5001, "name": "Иван Петров", "is_active": True}
    assert body["amo_users"][3] == {"id": 5004, "name": "Уволенный", "is_active": False}
    assert body["extensions"] == [
        {"pin": "101", "name": "Иван"},
        {"pin": "102", "name": "Мария"},
        {"pin": "103", "name": "Пётр"},
    ]
    assert body["lines"] == [LINE_A, LINE_A2]
    assert body["groups"] == [{"id": 0, "name": "Отдел продаж"}]
    assert [e for e in await emu.log(OTHER) if e["path"].endswith("/users")] == []  # only A's amoCRM


def pipeline_reads(log: list[dict[str, Any]]) -> int:
    return sum(1 for e in log if e["path"].endswith("/leads/pipelines"))


async def test_amo_meta_is_cached_per_account(admin_a: Widget, admin_b: Widget, emu: Emu) -> None:
    first = (await admin_a.request("GET", "/amo-meta")).json()
    assert [p["id"] for p in first["pipelines"]] == [7000, 7100]
    statuses = first["pipelines"][0]["statuses"]
    assert [st["id"] for st in statuses if st["type"] != 1] == [7001, 7002, 142, 143]
    assert [st["type"] for st in statuses].count(1) == 1  # «Неразобранное»
    assert [f["id"] for f in first["lead_fields"]] == [201]
    assert first["task_types"] == [{"id": 1, "name": "Связаться"}, {"id": 2, "name": "Встреча"}]
    assert first["pipelines"][1]["is_archive"] is True
    assert pipeline_reads(await emu.log(DEMO)) == 1
    assert (await admin_a.request("GET", "/amo-meta")).json() == first
    assert pipeline_reads(await emu.log(DEMO)) == 1  # the second answer came from the cache
    other = (await admin_b.request("GET", "/amo-meta")).json()
    assert 7000 not in [p["id"] for p in other["pipelines"]]  # B's own, not A's cached answer
    assert pipeline_reads(await emu.log(OTHER)) == 1


async def test_amo_down_is_502(admin_a: Widget, emu: Emu) -> None:
    await emu.down(60)
    r = await admin_a.request("GET", "/amo-meta")
    assert (r.status_code, r.json()["error"]) == (502, "amo-unavailable")


# --- F7 mapping ---------------------------------------------------------------------------------------------


async def test_mapping_round_trip(admin_a: Widget) -> None:
    body = {
        "items": [
            {"amo_user_id": 5001, "extension": "101"},
            {"amo_user_id": 5002, "extension": "102"},
            {"amo_user_id": 5003, "extension": None},
        ],
        "fallback_user_id": 5002,
    }
    r = await admin_a.request("PUT", "/mapping", json=body)
    assert r.status_code == 200, r.text
    expected = {
        "items": [{"amo_user_id": 5001, "extension": "101"}, {"amo_user_id": 5002, "extension": "102"}],
        "fallback_user_id": 5002,
    }
    assert r.json() == expected
    assert (await admin_a.request("GET", "/mapping")).json() == expected
    # saving again replaces the whole mapping
    body = {"items": [{"amo_user_id": 5003, "extension": "101"}], "fallback_user_id": 5003}
    assert (await admin_a.request("PUT", "/mapping", json=body)).json() == body


async def test_mapping_extension_not_unique(admin_a: Widget) -> None:
    body = {
        "items": [{"amo_user_id": 5001, "extension": "101"}, {"amo_user_id": 5002, "extension": "101"}],
        "fallback_user_id": 5001,
    }
    r = await admin_a.request("PUT", "/mapping", json=body)
    assert r.status_code == 422
    assert {k: r.json()[k] for k in ("error", "extension", "user_ids")} == {
        "error": "extension-not-unique",
        "extension": "101",
        "user_ids": [5001, 5002],
    }
    assert (await admin_a.request("GET", "/mapping")).json()["items"] == []  # nothing stored


async def test_mapping_fallback_rules(admin_a: Widget) -> None:
    one = [{"amo_user_id": 5001, "extension": "101"}]
    r = await admin_a.request("PUT", "/mapping", json={"items": one})
    assert (r.status_code, r.json()["error"]) == (422, "fallback-required")
    r = await admin_a.request("PUT", "/mapping", json={"items": one, "fallback_user_id": 5003})
    assert (r.status_code, r.json()["error"]) == (422, "fallback-not-mapped")
    r = await admin_a.request("PUT", "/mapping", json={"items": [], "fallback_user_id": None})
    assert r.status_code == 200  # an empty mapping needs no fallback


async def test_mapping_only_the_bindings_domain_extensions(admin_a: Widget) -> None:
    body = {"items": [{"amo_user_id": 5001, "extension": "201"}], "fallback_user_id": 5001}  # B's PIN
    r = await admin_a.request("PUT", "/mapping", json=body)
    assert (r.status_code, r.json()["error"], r.json()["extension"]) == (422, "unknown-extension", "201")
    body = {"items": [{"amo_user_id": 6001, "extension": "101"}], "fallback_user_id": 6001}  # B's user
    r = await admin_a.request("PUT", "/mapping", json=body)
    assert (r.status_code, r.json()["error"]) == (422, "unknown-user")


# --- F6/F8 scenarios --------------------------------------------------------------------------------


async def test_scenario_lifecycle(admin_a: Widget) -> None:
    first = await admin_a.request("POST", "/scenarios", json={})
    assert first.status_code == 201
    s1 = first.json()
    assert (s1["name"], s1["is_active"], s1["lines"]) == ("Новый сценарий", True, [LINE_A, LINE_A2])
    assert s1["smart_routing"] == {"enabled": False, "excluded_user_ids": []}
    s2 = (await admin_a.request("POST", "/scenarios", json={})).json()
    assert (s2["name"], s2["lines"], s2["position"]) == ("Новый сценарий 2", [], 1)  # no free lines left
    copy_ = (await admin_a.request("POST", "/scenarios", json={"copy_from": s1["id"]})).json()
    assert (copy_["name"], copy_["is_active"], copy_["lines"]) == (
        "Новый сценарий (копия)",
        False,
        [LINE_A, LINE_A2],
    )
    renamed = await admin_a.request("PATCH", f"/scenarios/{s1['id']}", json={"name": "Основной"})
    assert renamed.json()["name"] == "Основной"
    clash = await admin_a.request("PATCH", f"/scenarios/{s2['id']}", json={"name": "Основной"})
    assert (clash.status_code, clash.json()["error"]) == (422, "name-taken")
    # activating the copy: its lines are the first one's
    r = await admin_a.request("PATCH", f"/scenarios/{copy_['id']}", json={"is_active": True})
    assert r.status_code == 422
    assert r.json()["error"] == "line-in-use"
    assert r.json()["message"] == "Номер +7 495 123-45-67 уже используется в сценарии «Основной»"
    # deactivating the first frees them
    assert (
        await admin_a.request("PATCH", f"/scenarios/{s1['id']}", json={"is_active": False})
    ).status_code == 200
    assert (
        await admin_a.request("PATCH", f"/scenarios/{copy_['id']}", json={"is_active": True})
    ).status_code == 200
    assert (await admin_a.request("DELETE", f"/scenarios/{s2['id']}")).status_code == 204
    items = (await admin_a.request("GET", "/scenarios")).json()["items"]
    assert [(i["name"], i["is_active"]) for i in items] == [
        ("Основной", False),
        ("Новый сценарий (копия)", True),
    ]


async def test_put_full_document(admin_a: Widget) -> None:
    s1 = (await admin_a.request("POST", "/scenarios", json={})).json()
    r = await admin_a.request("PUT", f"/scenarios/{s1['id']}", json=FULL_DOC)
    assert r.status_code == 200, r.text
    saved = r.json()
    assert saved["name"] == "Основной" and saved["lines"] == [LINE_A]
    assert saved["events"]["incoming"]["new"]["lead"]["fields"] == [
        {"field_id": 201, "value": None, "enum_id": 2011}
    ]
    assert saved["events"]["missed"]["existing"]["task"]["deadline"]["kind"] == "end_of_day"
    listed = (await admin_a.request("GET", "/scenarios")).json()["items"]
    assert listed == [saved]
    async with admin_a_world(admin_a) as _:
        pass


class admin_a_world:
    def __init__(self, _w: Widget) -> None: ...

    async def __aenter__(self) -> None: ...

    async def __aexit__(self, *_: object) -> None: ...


@pytest.mark.parametrize(
    ("patch", "path"),
    [
        (("incoming", "new", "lead", "pipeline_id", 9999), "events.incoming.new.lead.pipeline_id"),
        (("incoming", "new", "lead", "pipeline_id", 7100), "events.incoming.new.lead.pipeline_id"),
        (("incoming", "new", "lead", "status_id", 7101), "events.incoming.new.lead.status_id"),
        (
            ("incoming", "new", "contact", "fields", [{"field_id": 999, "value": "x"}]),
            "events.incoming.new.contact.fields.0.field_id",
        ),
        (
            ("incoming", "new", "lead", "fields", [{"field_id": 201, "enum_id": 1}]),
            "events.incoming.new.lead.fields.0.enum_id",
        ),
        (
            ("incoming", "new", "lead", "fields", [{"field_id": 201, "value": "Звонок"}]),
            "events.incoming.new.lead.fields.0.value",
        ),
        (
            ("incoming", "new", "contact", "fields", [{"field_id": 103, "enum_id": 2011}]),
            "events.incoming.new.contact.fields.0.enum_id",
        ),
        (
            ("incoming", "new", "task", "responsible", {"rule": "user", "user_id": 6001}),
            "events.incoming.new.task.responsible.user_id",
        ),
        (("incoming", "new", "task", "task_type_id", 77), "events.incoming.new.task.task_type_id"),
    ],
)
async def test_put_checks_amocrm_metadata(admin_a: Widget, patch: tuple[Any, ...], path: str) -> None:
    s1 = (await admin_a.request("POST", "/scenarios", json={})).json()
    doc = copy.deepcopy(FULL_DOC)
    *keys, last, value = patch
    node = doc["events"]
    for k in keys:
        node = node[k]
    node[last] = value
    r = await admin_a.request("PUT", f"/scenarios/{s1['id']}", json=doc)
    assert r.status_code == 422
    assert r.json()["error"] == "invalid-scenario"
    assert [e["path"] for e in r.json()["errors"]] == [path]


async def test_put_checks_shape_and_lines(admin_a: Widget) -> None:
    s1 = (await admin_a.request("POST", "/scenarios", json={})).json()
    doc = copy.deepcopy(FULL_DOC)
    doc["events"]["incoming"]["new"]["contact"]["colour"] = "red"  # unknown keys are refused
    r = await admin_a.request("PUT", f"/scenarios/{s1['id']}", json=doc)
    assert r.status_code == 422
    assert [e["path"] for e in r.json()["errors"]] == ["events.incoming.new.contact.colour"]
    doc = copy.deepcopy(FULL_DOC)
    doc["lines"] = [LINE_B]  # another domain's line
    r = await admin_a.request("PUT", f"/scenarios/{s1['id']}", json=doc)
    assert (r.status_code, r.json()["errors"]) == (
        422,
        [{"path": "lines.0", "msg": "not a line of the domain"}],
    )


async def test_put_refuses_a_line_of_another_active_scenario(admin_a: Widget) -> None:
    s1 = (await admin_a.request("POST", "/scenarios", json={})).json()
    assert (await admin_a.request("PUT", f"/scenarios/{s1['id']}", json=FULL_DOC)).status_code == 200
    s2 = (await admin_a.request("POST", "/scenarios", json={})).json()
    assert s2["lines"] == [LINE_A2]  # the line the first gave up
    doc = {**copy.deepcopy(FULL_DOC), "name": "Второй", "lines": [LINE_A2, LINE_A]}
    r = await admin_a.request("PUT", f"/scenarios/{s2['id']}", json=doc)
    assert (r.status_code, r.json()["error"], r.json()["scenario"]) == (422, "line-in-use", "Основной")
    doc["is_active"] = False  # an inactive scenario may hold it
    assert (await admin_a.request("PUT", f"/scenarios/{s2['id']}", json=doc)).status_code == 200


# --- two tenants --------------------------------------------------------------------------------


async def test_account_b_never_sees_a(admin_a: Widget, admin_b: Widget, world: World) -> None:
    s1 = (await admin_a.request("POST", "/scenarios", json={})).json()
    mapping = {"items": [{"amo_user_id": 5001, "extension": "101"}], "fallback_user_id": 5001}
    assert (await admin_a.request("PUT", "/mapping", json=mapping)).status_code == 200
    assert (await admin_b.request("GET", "/scenarios")).json() == {"items": []}
    assert (await admin_b.request("GET", "/mapping")).json() == {"items": [], "fallback_user_id": None}
    directory = (await admin_b.request("GET", "/directory")).json()
    assert directory["extensions"] == [{"pin": "201", "name": "Борис"}]
    assert directory["lines"] == [LINE_B]
    assert [u["id"] for u in directory["amo_users"]] == [6001]
    sid = s1["id"]
    for method, body in (("PATCH", {"name": "x"}), ("PUT", FULL_DOC), ("DELETE", None)):
        r = await admin_b.request(method, f"/scenarios/{sid}", json=body)
        assert (r.status_code, r.json()["error"]) == (404, "scenario-not-found"), method
    r = await admin_b.request("POST", "/scenarios", json={"copy_from": sid})
    assert r.status_code == 404
    async with world.core.sessions() as s:
        assert (await s.get(AmoScenario, sid)) is not None
        rows = list(await s.scalars(select(CrmUserMap)))
        assert [(r.binding_id, r.crm_user_id) for r in rows] == [(world.binding_a, 5001)]


# --- §3.5 click-to-call refusals (the real call: test_click_to_call.py) --------------------


async def test_call_refusals(admin_a: Widget, user_a: Widget, world: World) -> None:
    r = await user_a.request("POST", "/call", json={"phone": "+79161234567"})
    assert r.json() == {
        "error": "user-not-mapped",
        "message": "Ваш пользователь amoCRM не сопоставлен с внутренним номером",
    }
    assert r.status_code == 409
    mapping = {
        "items": [{"amo_user_id": 5001, "extension": "101"}, {"amo_user_id": 5002, "extension": "102"}],
        "fallback_user_id": 5001,
    }
    assert (await admin_a.request("PUT", "/mapping", json=mapping)).status_code == 200
    r = await user_a.request("POST", "/call", json={"phone": "12"})
    assert (r.status_code, r.json()["error"]) == (422, "invalid-phone")
    # no engine here and no contact number: the PBX's own refusal code
    r = await user_a.request(
        "POST", "/call", json={"phone": "+79161234567"}, headers={"Idempotency-Key": "k1"}
    )
    assert (r.status_code, r.json()["error"]) == (409, "user-unavailable")
    async with world.core.sessions() as s:
        assert list(await s.scalars(select(AmoCall))) == []


async def test_call_is_scoped_by_the_tokens_account(admin_a: Widget, admin_b: Widget, world: World) -> None:
    mapping = {"items": [{"amo_user_id": 5001, "extension": "101"}], "fallback_user_id": 5001}
    assert (await admin_a.request("PUT", "/mapping", json=mapping)).status_code == 200
    # account B's user 6001 is mapped nowhere in B's binding; A's mapping is not B's
    r = await admin_b.request("POST", "/call", json={"phone": "+79161234567"})
    assert (r.status_code, r.json()["error"]) == (409, "user-not-mapped")
    stranger = Widget(admin_b.client, admin_b.emu, OTHER, 5001)  # A's user id, in a token of account B
    r = await stranger.request("POST", "/call", json={"phone": "+79161234567"})
    assert (r.status_code, r.json()["error"]) == (409, "user-not-mapped")
    async with world.core.sessions() as s:
        b = await s.get(CrmBinding, world.binding_b)
        assert b is not None
        b.status = "disabled"
        await s.commit()
    r = await admin_b.request("POST", "/call", json={"phone": "+79161234567"})
    assert (r.status_code, r.json()["error"]) == (409, "binding-inactive")


async def test_call_tokens_expired_replayed_or_for_another_origin_are_401(admin_a: Widget) -> None:
    body = {"phone": "+79161234567"}
    for token in (
        await admin_a.token(ttl=-120),
        await admin_a.token(aud="https://other-pbx.example"),
        mint(ACCOUNT_A, 5001, secret="not-the-secret"),
    ):
        r = await admin_a.request("POST", "/call", json=body, headers={"X-Auth-Token": token})
        assert (r.status_code, r.json()) == (401, {"error": "widget-token-invalid"})
    once = await admin_a.token()
    first = await admin_a.request("POST", "/call", json=body, headers={"X-Auth-Token": once})
    assert first.status_code == 409  # user-not-mapped: the token itself was good
    replay = await admin_a.request("POST", "/call", json=body, headers={"X-Auth-Token": once})
    assert replay.status_code == 401
