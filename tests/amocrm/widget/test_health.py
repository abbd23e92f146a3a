"""The integration health panel (amocrm.md §5.8) through ``GET /amo/widget/v1/health``: each condition made
for real against the emulator (429s, a 403, an uninstall without the hook, an outage that puts the ИМК on
the cache only, a dead job) and each account seeing only its own binding."""

from __future__ import annotations

import datetime as dt
import uuid

from fastapi import FastAPI

from tests.amocrm.emu_kit import DEMO, Emu
from tests.amocrm.widget.conftest import LINE_A, Widget, World, amo_state
from vpbx.amocrm.client import shared_pool
from vpbx.amocrm.lookup import FAILURES_TO_CACHE_ONLY, PhoneLookup
from vpbx.crm.connector import Binding
from vpbx.store.models import CrmBinding, CrmJob

ANNA = "+79161234567"
CONTACTS = "^/api/v4/contacts$"


async def _health(w: Widget) -> dict[str, object]:
    r = await w.request("GET", "/health")
    assert r.status_code == 200, r.text
    out: dict[str, object] = r.json()
    return out


async def _scenario(admin_a: Widget) -> None:
    r = await admin_a.request("POST", "/scenarios", json={})
    assert r.status_code == 201


async def test_fresh_binding_is_linked_with_unmapped_extensions(admin_a: Widget, admin_b: Widget) -> None:
    h = await _health(admin_a)
    assert h["status"] == "ok"
    assert [u["extension"] for u in h["unmapped"]] == ["101", "102", "103"]  # type: ignore[attr-defined]
    assert h["alerts"] == ["unmapped"]
    assert h["queue"] == {"pending": 0, "running": 0, "held": 0, "dead": 0, "oldest_waiting_at": None}
    r = await admin_a.request(
        "PUT",
        "/mapping",
        json={"items": [{"amo_user_id": 5001, "extension": "101"}], "fallback_user_id": 5001},
    )
    assert r.status_code == 200
    assert [u["extension"] for u in (await _health(admin_a))["unmapped"]] == ["102", "103"]  # type: ignore[attr-defined]
    hb = await _health(admin_b)  # account B sees its own domain's extension only
    assert [u["extension"] for u in hb["unmapped"]] == ["201"]  # type: ignore[attr-defined]


async def test_needs_an_admin(user_a: Widget) -> None:
    r = await user_a.request("GET", "/health")
    assert (r.status_code, r.json()) == (403, {"error": "admin-required"})


async def test_429_pauses_the_account(admin_a: Widget, admin_b: Widget, emu: Emu) -> None:
    await _scenario(admin_a)
    await emu.set_switches(retry_after_s=120)  # the pause outlasts the test
    await emu.fault(method="GET", path_regex=CONTACTS, account=DEMO, status=429, times=5)
    r = await admin_a.request("POST", "/dry-run", json={"phone": ANNA, "line": LINE_A})
    assert r.json()["lookup"]["outcome"] == "unknown"
    h = await _health(admin_a)
    assert h["rate_limit"]["count_429"] >= 1  # type: ignore[index]
    assert h["rate_limit"]["paused_until"]  # type: ignore[index]
    assert "rate_limited" in h["alerts"]  # type: ignore[operator]
    hb = await _health(admin_b)  # the other account's client is untouched
    assert hb["status"] == "ok" and hb["rate_limit"]["count_429"] == 0  # type: ignore[index]


async def test_403_opens_the_circuit(admin_a: Widget, admin_b: Widget, emu: Emu) -> None:
    await _scenario(admin_a)
    await emu.fault(method="GET", path_regex=CONTACTS, account=DEMO, status=403, body="blocked")
    await admin_a.request("POST", "/dry-run", json={"phone": ANNA, "line": LINE_A})
    h = await _health(admin_a)
    assert h["circuit"]["state"] == "open" and h["circuit"]["open_until"]  # type: ignore[index]
    assert "circuit_open" in h["alerts"]  # type: ignore[operator]
    hb = await _health(admin_b)  # the other account's client is untouched
    assert hb["status"] == "ok" and hb["circuit"]["state"] == "closed"  # type: ignore[index]


async def test_uninstall_without_hook_needs_reauth(admin_a: Widget, emu: Emu) -> None:
    await _scenario(admin_a)
    await emu.uninstall(DEMO, call_hook=False)
    await admin_a.request("POST", "/dry-run", json={"phone": ANNA, "line": LINE_A})
    h = await _health(admin_a)
    assert h["status"] == "needs_reauth"
    assert h["tokens"]["state"] == "needs_reauth" and h["tokens"]["error"]  # type: ignore[index]
    assert h["alerts"][0] == "needs_reauth"  # type: ignore[index]


async def test_outage_puts_the_lookup_on_the_cache(
    app: FastAPI, admin_a: Widget, emu: Emu, world: World
) -> None:
    core = world.core
    lookup = PhoneLookup(core.sessions, shared_pool(core), core.clock)
    amo_state(app).amo_lookup = lookup  # as the running ИМК hands it over
    async with core.sessions() as s:
        row = await s.get(CrmBinding, world.binding_a)
        assert row is not None
        b = Binding.of(row)
    await emu.down(60, mode="503")
    for _ in range(FAILURES_TO_CACHE_ONLY):
        result = await lookup.realtime(b, "9161234567", 2.0)
        assert result.outcome == "unknown"
    await emu.down(0)
    h = await _health(admin_a)
    assert h["cache_only"] is True and "cache_only" in h["alerts"]  # type: ignore[operator]
    await lookup.stop()


async def test_dead_job_is_listed(admin_a: Widget, admin_b: Widget, world: World) -> None:
    now = dt.datetime.now(dt.UTC)
    async with world.core.sessions() as s:
        job = CrmJob(
            id=uuid.uuid4(),
            binding_id=world.binding_a,
            kind="amo.finish",
            key="sess-1",
            state="dead",
            run_after=now,
            created_at=now,
            done_at=now,
            attempts=7,
            last_error="AmoServerError",
        )
        s.add(job)
        await s.commit()
    h = await _health(admin_a)
    assert [j["key"] for j in h["dead_jobs"]] == ["sess-1"]  # type: ignore[attr-defined]
    assert h["queue"]["dead"] == 1 and "dead_jobs" in h["alerts"]  # type: ignore[index,operator]
    assert (await _health(admin_b))["dead_jobs"] == []
