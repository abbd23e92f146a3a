"""The integration health panel (amocrm.md §5.8) through ``GET /amo/widget/v1/health``: each condition made
for real against the emulator (429s, a 403, an uninstall without the hook, an outage that puts the ИМК on
the cache only, a dead job) and each account seeing only its own binding."""

from __future__ import annotations

import datetime as dt
import uuid

import httpx
from fastapi import FastAPI

from tests.amocrm.emu_kit import DEMO, Emu
from tests.amocrm.widget.conftest import ACCOUNT_A, LINE_A, Widget, World, amo_state, bind
from tests.helpers import Cabinet, Tenant
from vpbx.amocrm.client import RECENT_429, shared_pool
from vpbx.amocrm.health import recent_429
from vpbx.amocrm.lookup import FAILURES_TO_CACHE_ONLY, PhoneLookup
from vpbx.app import Core
from vpbx.crm.connector import Binding
from vpbx.store.models import CrmBinding, CrmJob
from vpbx.web.pages.services import local_time

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


async def test_a_single_429_is_a_warning_with_its_time_and_count(
    core: Core, http: httpx.AsyncClient, emu: Emu, t1: Tenant, admin1: Cabinet, admin2: Cabinet
) -> None:
    """§5.8: one 429 (the emulator's fault, once) pauses the account about a second; long after the pause the
    panel still warns of it for 15 minutes, with its time and count, in ``/health`` and in the cabinet, while
    the widget's ``/state`` health stays one of §3.4's words."""
    await bind(core, emu, t1.id, ACCOUNT_A, DEMO)
    await emu.fault(method="GET", path_regex=CONTACTS, account=DEMO, status=429, times=1)
    found = await shared_pool(core).for_account(ACCOUNT_A).search_contacts("9161234567")  # waits, re-sent
    assert 9001 in [c["id"] for c in found]  # Анна Смирнова of the fixture
    widget = Widget(http, emu, DEMO, 5001)
    h = await _health(widget)
    rl = h["rate_limit"]
    assert isinstance(rl, dict) and rl["paused_until"] is None  # the pause is over …
    assert rl["recent_429"] == 1 and rl["count_429"] == 1 and rl["last_429_at"]
    assert "rate_limited" in h["alerts"] and "rate_limited" in h["warnings"]  # type: ignore[operator]
    assert h["status"] == "ok"  # … and a 429 alone is not an outage
    state = (await widget.request("GET", "/state")).json()
    assert state["status"] == "active" and state["health"] == "ok"

    page = (await admin1.get("/integrations")).text
    when = local_time("ru", "Europe/Moscow")(dt.datetime.fromisoformat(str(rl["last_429_at"])))
    assert 'id="alert-rate_limited" data-level="warning"' in page
    assert f"ответов 429: 1, последний в {when}" in page
    assert "alert-rate_limited" not in (await admin2.get("/integrations")).text  # the other tenant


def test_a_429_warning_lasts_15_minutes() -> None:
    at = dt.datetime(2026, 11, 26, 4, 0, tzinfo=dt.UTC)
    saved = {"last_429_at": at.isoformat(), "recent_429": 2}
    assert recent_429(saved, at + RECENT_429) == {"last_429_at": at.isoformat(), "recent_429": 2}
    later = recent_429(saved, at + RECENT_429 + dt.timedelta(seconds=1))
    assert later == {"last_429_at": at.isoformat(), "recent_429": 0}  # the time stays, the warning goes
    assert recent_429({}, at) == {"last_429_at": None, "recent_429": 0}
