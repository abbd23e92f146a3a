"""The scenario's dry run (amocrm.md §3.4 ``POST /dry-run``) over HTTP with the emulator's tokens: the
scenario, the lookup (E4, a read), the ИМК's decision and the planned entities, and nothing written: the
emulator's state and log show no write, the PBX's phone cache and call contexts stay empty."""

from __future__ import annotations

import copy
from typing import Any

from sqlalchemy import func, select

from tests.amocrm.emu_kit import DEMO, Emu
from tests.amocrm.widget.conftest import LINE_A, LINE_A2, LINE_B, Widget, World
from tests.amocrm.widget.test_widget_api import FULL_DOC
from vpbx.pbx.registrar import Binding as SipBinding
from vpbx.pbx.registrar import aor_for
from vpbx.sip.flow import Destination
from vpbx.store.models import AmoCall, AmoPhoneCache, CrmJob, DomainId

ANNA = "+79161234567"  # contact 9001, responsible 5001 (ext 101)


async def _setup_a(admin_a: Widget) -> int:
    r = await admin_a.request(
        "PUT",
        "/mapping",
        json={
            "items": [{"amo_user_id": 5001, "extension": "101"}, {"amo_user_id": 5002, "extension": "102"}],
            "fallback_user_id": 5002,
        },
    )
    assert r.status_code == 200, r.text
    s1 = (await admin_a.request("POST", "/scenarios", json={})).json()
    doc = copy.deepcopy(FULL_DOC)
    r = await admin_a.request("PUT", f"/scenarios/{s1['id']}", json=doc)
    assert r.status_code == 200, r.text
    return int(s1["id"])


async def _writes(emu: Emu, account: str = DEMO) -> list[dict[str, Any]]:
    return [e for e in await emu.log(account) if e["method"] != "GET" and e["path"].startswith("/api/")]


async def test_dry_run_existing_client_writes_nothing(admin_a: Widget, emu: Emu, world: World) -> None:
    scenario_id = await _setup_a(admin_a)
    before = await emu.state(DEMO)
    r = await admin_a.request("POST", "/dry-run", json={"phone": ANNA, "line": LINE_A})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["scenario"] == {"id": scenario_id, "name": "Основной"}
    assert out["lookup"]["outcome"] == "hit" and out["lookup"]["source"] == "api"
    assert out["lookup"]["contact"]["id"] == 9001
    # 101 is not registered: the responsible cannot take the call, the fallback (102) neither → the rules
    assert out["route"]["step"] == "rules"
    assert out["route"]["why"] == "responsible-unregistered; fallback-unregistered"
    plan = out["entities"]
    assert [e["entity"] for e in plan["incoming.new"]] == ["contact", "lead", "task", "call"]
    assert plan["incoming.new"][0]["name"] == f"Новый клиент {ANNA}"
    assert (
        plan["incoming.new"][1]["name"] == f"Звонок {ANNA}" and plan["incoming.new"][1]["pipeline_id"] == 7000
    )
    assert [e["entity"] for e in plan["incoming.existing"]] == ["lead", "call"]
    assert plan["incoming.existing"][0]["unless"] == "active-lead"
    assert [e["entity"] for e in plan["missed.existing"]] == ["task", "call"]
    assert plan["missed.existing"][0]["responsible"] == {"rule": "contact", "user_id": 5001}
    assert plan["missed.new"][0]["text"] == f"Пропущенный звонок {ANNA}"
    assert plan["missed.new"][0]["responsible"] == {"rule": "fallback", "user_id": 5002}
    # nothing written anywhere
    assert await _writes(emu) == []
    assert await emu.state(DEMO) == before
    async with world.core.sessions() as s:
        for model in (AmoPhoneCache, AmoCall, CrmJob):
            assert await s.scalar(select(func.count()).select_from(model)) == 0, model


async def test_dry_run_unknown_caller_and_unbound_line(admin_a: Widget, emu: Emu) -> None:
    await _setup_a(admin_a)
    r = await admin_a.request("POST", "/dry-run", json={"phone": "+79990000000", "line": LINE_A})
    out = r.json()
    assert out["lookup"]["outcome"] == "miss"
    assert out["route"] == {"step": "rules", "why": "no-contact", "pin": None, "fallback_user_id": 5002}
    r = await admin_a.request("POST", "/dry-run", json={"phone": ANNA, "line": LINE_A2})
    assert r.json()["scenario"] is None and r.json()["route"]["why"] == "no-scenario"
    r = await admin_a.request("POST", "/dry-run", json={"phone": "abc", "line": LINE_A})
    assert (r.status_code, r.json()["error"]) == (422, "invalid-phone")
    assert await _writes(emu) == []


async def test_dry_run_needs_an_admin_and_stays_in_its_account(
    admin_a: Widget, user_a: Widget, admin_b: Widget, emu: Emu
) -> None:
    await _setup_a(admin_a)
    r = await user_a.request("POST", "/dry-run", json={"phone": ANNA, "line": LINE_A})
    assert (r.status_code, r.json()) == (403, {"error": "admin-required"})
    # account B asks about A's line: B's binding has no scenario for it
    r = await admin_b.request("POST", "/dry-run", json={"phone": ANNA, "line": LINE_A})
    assert r.status_code == 200 and r.json()["scenario"] is None
    r = await admin_b.request("POST", "/dry-run", json={"phone": ANNA, "line": LINE_B})
    assert r.json()["scenario"] is None


async def test_dry_run_routes_to_a_registered_responsible(admin_a: Widget, emu: Emu, world: World) -> None:
    await _setup_a(admin_a)
    core = world.core
    now = core.clock.monotonic()
    await core.location.save(
        DomainId(world.domain_a),
        aor_for("101", "demo.vpbx.test"),
        SipBinding(
            contact="sip:101@192.0.2.10",
            flow=Destination("udp", "192.0.2.10", 5060),
            call_id="c101",
            cseq=1,
            expires_at=now + 300,
            updated_at=now,
        ),
    )
    out = (await admin_a.request("POST", "/dry-run", json={"phone": ANNA, "line": LINE_A})).json()
    assert out["route"]["step"] == "responsible" and out["route"]["pin"] == "101"
    assert out["route"]["why"] == "contact-responsible"
    incoming_new = out["entities"]["incoming.new"]
    assert incoming_new[0]["responsible"] == {"rule": "answered", "user_id": 5001}  # the routed manager
    assert incoming_new[2]["text"] == f"Перезвонить {ANNA}"
    assert await _writes(emu) == []
