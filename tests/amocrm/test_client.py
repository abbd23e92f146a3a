"""The amoCRM client (amocrm.md §2.3, §2.5) and its tokens (§2.2) against the emulator over real HTTP: every
``AmoApi`` method, 204s, paging, 401 → refresh → retry, rotation, needs_reauth, proactive refresh, the 429
storm, error shapes, unknown outcomes, the moved account, two accounts apart."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.amocrm.client_kit import ShiftedClock, amo_settings, install_tokens
from tests.amocrm.emu_kit import DEMO, DEMO_FIXTURE, OTHER, Emu, emulator
from tests.conftest import make_tenant
from vpbx.amocrm import oauth
from vpbx.amocrm.client import AmoClient, AmoClientPool, close_shared_pool, shared_pool
from vpbx.amocrm.errors import (
    AmoEntityNotFound,
    AmoForbidden,
    AmoReauthRequired,
    AmoServerError,
    AmoSkipped,
    AmoUnknownOutcome,
    AmoUnreachable,
    AmoValidationError,
    Violation,
)
from vpbx.app import Core, build_core
from vpbx.store.models import AmoInstall, CrmBinding

DEMO_ID = 30000001
OTHER_ID = 30000002
ANNA = 9001


@dataclass
class Rig:
    emu: Emu
    core: Core
    pool: AmoClientPool
    clock: ShiftedClock

    def client(self, account_id: int = DEMO_ID) -> AmoClient:
        return self.pool.for_account(account_id)

    async def install(self, account: str = DEMO) -> AmoInstall:
        return await install_tokens(self.core, self.emu, account)

    async def row(self, account_id: int = DEMO_ID) -> AmoInstall:
        async with self.core.sessions() as s:
            row = await s.scalar(select(AmoInstall).where(AmoInstall.amo_account_id == account_id))
            assert row is not None
            return row

    async def requests(self, account: str = DEMO) -> list[tuple[str, str, int]]:
        return [(e["method"], e["path"], e["status"]) for e in await self.emu.log(account)]


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path, template: Path, fixture: dict[str, Any] | None = None, **switches: Any
) -> AsyncIterator[Rig]:
    async with emulator(fixture, **switches) as emu:
        db = tmp_path / "amo.sqlite3"
        shutil.copy(template, db)
        clock = ShiftedClock()
        core = build_core(amo_settings(emu, f"sqlite+aiosqlite:///{db}", tmp_path), clock=clock)
        pool = AmoClientPool(core)
        try:
            yield Rig(emu, core, pool, clock)
        finally:
            await pool.aclose()
            await core.engine.dispose()


@pytest.fixture
async def r(tmp_path: Path, migrated_template: Path) -> AsyncIterator[Rig]:
    async with rig(tmp_path, migrated_template) as got:
        await got.install()
        yield got


async def test_metadata_reads(r: Rig) -> None:
    c = r.client()
    account = await c.account()
    assert account["id"] == DEMO_ID and account["subdomain"] == "demo"
    assert {t["id"] for t in account["_embedded"]["task_types"]} >= {1, 2}
    users = await c.users()
    assert [u["id"] for u in users] == [5001, 5002, 5003]
    assert users[0]["rights"]["is_admin"] is True
    pipelines = await c.pipelines()
    statuses = {s["id"] for s in pipelines[0]["_embedded"]["statuses"]}
    assert pipelines[0]["id"] == 7000 and {7001, 7002, 142, 143} <= statuses
    contact_fields = await c.custom_fields("contacts")
    assert {f["id"] for f in contact_fields} == {101, 102, 103, 104}
    lead_fields = await c.custom_fields("leads")
    assert lead_fields[0]["enums"][0]["id"] == 2011


async def test_reads_and_204s(r: Rig) -> None:
    c = r.client()
    found = await c.search_contacts("9161234567", lane="realtime", deadline=loop_time() + 5)
    assert {x["id"] for x in found} == {9001, 9003}  # strict matcher: the «Склад» comment too
    assert found[0]["_embedded"]["leads"][0]["id"] == 8001
    assert await c.search_contacts("0000000000") == []  # 204
    anna = await c.get_contact(ANNA)
    assert anna is not None and anna["responsible_user_id"] == 5001
    assert await c.get_contact(123456) is None  # 204
    leads = await c.get_leads([8001, 8001, 99999])
    assert [ld["id"] for ld in leads] == [8001]
    assert await c.get_leads([]) == []
    assert await c.list_tasks(entity_type="contacts", entity_ids=[ANNA]) == []  # 204
    assert await c.list_notes("contacts", ANNA) == []
    log = await r.requests()
    assert ("GET", "/api/v4/contacts/123456", 204) in log


async def test_writes(r: Rig) -> None:
    c = r.client()
    phone = {"field_code": "PHONE", "values": [{"value": "+79990001122", "enum_code": "WORK"}]}
    created = await c.create_contacts(
        [{"name": "Новый", "responsible_user_id": 5002, "custom_fields_values": [phone], "request_id": "a"}]
    )
    contact_id = created[0]["id"]
    assert created[0]["request_id"] == "a"
    patched = await c.update_contact(contact_id, {"responsible_user_id": 5003})
    assert patched["id"] == contact_id
    leads = await c.create_leads(
        [
            {
                "name": "Сделка",
                "pipeline_id": 7000,
                "status_id": 7001,
                "responsible_user_id": 5003,
                "_embedded": {"contacts": [{"id": contact_id, "is_main": True}]},
            }
        ]
    )
    lead_id = leads[0]["id"]
    assert (await c.update_lead(lead_id, {"responsible_user_id": 5002}))["id"] == lead_id
    complex_ = await c.create_complex(
        [{"name": "К", "pipeline_id": 7000, "_embedded": {"contacts": [{"name": "Комплекс"}]}}]
    )
    assert complex_[0]["id"] and complex_[0]["contact_id"]
    unsorted = await c.add_unsorted_sip(
        [
            {
                "source_name": "Виртуальная АТС",
                "source_uid": "vpbx",
                "pipeline_id": 7000,
                "metadata": {
                    "from": "+79990003344",
                    "phone": "101",
                    "called_at": 1760000000,
                    "duration": 0,
                    "link": "",
                    "service_code": "vpbx",
                    "uniq": "s-1",
                    "is_call_event_needed": True,
                },
                "_embedded": {"contacts": [{"name": "+79990003344"}]},
            }
        ]
    )
    assert unsorted[0]["_embedded"]["leads"][0]["id"]
    tasks = await c.create_tasks(
        [{"text": "Перезвонить", "complete_till": 1900000000, "entity_id": lead_id, "entity_type": "leads"}]
    )
    listed = await c.list_tasks(entity_type="leads", entity_ids=[lead_id])
    assert [t["id"] for t in listed] == [tasks[0]["id"]]
    note = {
        "entity_id": contact_id,
        "note_type": "call_in",
        "params": {"uniq": "s-2", "duration": 12, "source": "Виртуальная АТС", "phone": "+79990001122"},
    }
    notes = await c.add_notes("contacts", [note])
    assert notes[0]["id"]
    assert [n["params"]["uniq"] for n in await c.list_notes("contacts", contact_id)] == ["s-2"]
    call = {
        "direction": "inbound",
        "uniq": "s-3",
        "duration": 5,
        "source": "Виртуальная АТС",
        "phone": "+79161234567",
        "call_status": 4,
        "call_result": "Разговор состоялся",
        "responsible_user_id": 5001,
        "created_at": 1760000000,
    }
    calls = await c.add_calls([call])
    assert calls[0]["entity_type"] in ("lead", "leads", "contact", "contacts")
    with pytest.raises(AmoEntityNotFound):
        await c.add_calls([{**call, "uniq": "s-4", "phone": "+79000000000"}])
    await c.add_events_v2([{"type": "phone_call", "phone_number": "+79161234567", "users": [5001]}])
    hook = await c.subscribe_webhook("http://127.0.0.1:9/amo/hooks/x", ["add_contact", "update_contact"])
    assert hook["destination"] == "http://127.0.0.1:9/amo/hooks/x"
    await c.unsubscribe_webhook("http://127.0.0.1:9/amo/hooks/x")
    state = await r.emu.state()
    assert state["webhooks"] == []
    assert [e["phone_number"] for e in state["events_v2"]] == ["+79161234567"]
    with pytest.raises(ValueError, match="at most 50"):
        await c.create_tasks([{"text": "x", "complete_till": 1}] * 51)


async def test_validation_error_shape(r: Rig) -> None:
    c = r.client()
    with pytest.raises(AmoValidationError) as e:
        await c.create_contacts(
            [{"name": "X", "custom_fields_values": [{"field_id": 999, "values": [{"value": "1"}]}]}]
        )
    assert e.value.status == 400
    assert e.value.request_id  # the X-Request-Id of the answer
    assert e.value.violations == [
        Violation("0", "NotSupportedChoice", "custom_fields_values.0.field_id", e.value.violations[0].detail)
    ]
    with pytest.raises(AmoValidationError) as e:
        await c.add_notes(
            "contacts",
            [{"entity_id": ANNA, "note_type": "call_in", "params": {"duration": 1, "phone": "+79161234567"}}],
        )
    assert [(v.code, v.path) for v in e.value.violations] == [("NotBlank", "params.source")]


async def test_paging_asks_page_numbers_until_204(tmp_path: Path, migrated_template: Path) -> None:
    fixture = copy.deepcopy(DEMO_FIXTURE)
    users = fixture["accounts"][0]["users"]
    users += [{"id": 7000 + n, "name": f"U{n}"} for n in range(500 - len(users))]
    async with rig(tmp_path, migrated_template, fixture, next_on_full_page=True) as rr:
        await rr.install()
        got = await rr.client().users()
        assert len(got) == 500 and len({u["id"] for u in got}) == 500
        log = await rr.emu.log()
        pages = [(e["query"], e["status"]) for e in log if e["path"] == "/api/v4/users"]
        assert [st for _, st in pages] == [200, 200, 204]  # ``next`` on the full last page led to a 204
        assert all(f"page={n}" in q for n, (q, _) in enumerate(pages, 1))


async def test_401_refreshes_once_and_retries(r: Rig) -> None:
    before = await r.row()
    await r.emu.advance(86401)  # the emulator's access token expired; our clock does not know it
    account = await r.client().account()
    assert account["id"] == DEMO_ID
    assert r.pool.tokens.refreshes == 1
    log = await r.requests()
    assert [x for x in log if x[1] != "/oauth2/access_token"][-2:] == [
        ("GET", "/api/v4/account", 401),
        ("GET", "/api/v4/account", 200),
    ]
    after = await r.row()
    assert after.token_version == before.token_version + 1
    assert after.refresh_token_enc != before.refresh_token_enc  # rotated
    old_refresh = r.core.box.open(before.refresh_token_enc)
    assert old_refresh not in after.refresh_token_enc and old_refresh not in after.access_token_enc
    async with httpx.AsyncClient() as http:  # the old refresh token is dead now
        with pytest.raises(AmoReauthRequired):
            await oauth.refresh(http, r.core.settings, DEMO, old_refresh)


async def test_concurrent_401s_make_one_refresh(r: Rig) -> None:
    await r.emu.advance(86401)
    c = r.client()
    got = await asyncio.gather(*(c.get_contact(ANNA) for _ in range(4)))
    assert all(x is not None and x["id"] == ANNA for x in got)
    assert r.pool.tokens.refreshes == 1


async def test_proactive_refresh_before_expiry(r: Rig) -> None:
    await r.emu.advance(86200)
    r.clock.shift += 86200  # 200 s left: inside the 5-minute margin
    assert (await r.client().account())["id"] == DEMO_ID
    assert r.pool.tokens.refreshes == 1
    log = await r.requests()
    assert log[-2:] == [("POST", "/oauth2/access_token", 200), ("GET", "/api/v4/account", 200)]
    assert all(status != 401 for _, _, status in log)


async def test_uninstall_without_hook_ends_in_needs_reauth(r: Rig) -> None:
    c = r.client()
    await c.account()
    await r.emu.uninstall(call_hook=False)
    with pytest.raises(AmoReauthRequired):
        await c.account()
    row = await r.row()
    assert row.token_state == "needs_reauth" and row.token_error
    sent = len(await r.emu.log())
    with pytest.raises(AmoReauthRequired):
        await c.users()
    assert len(await r.emu.log()) == sent  # nothing sent while authorisation is needed
    assert r.pool.health(DEMO_ID)["last_error"] == "AmoReauthRequired"
    await r.install()  # the admin authorises again
    r.pool.tokens.forget(DEMO_ID)
    assert (await c.account())["id"] == DEMO_ID


async def test_moved_account(r: Rig) -> None:
    await r.emu.control("POST", "/__emu__/move", json={"account": DEMO, "new_base_domain": "moved.amocrm.ru"})
    await r.emu.advance(86200)
    r.clock.shift += 86200  # the refresh at the old host is refused: ask api_domain, refresh at the new one
    assert (await r.client().account())["id"] == DEMO_ID
    row = await r.row()
    assert row.base_domain == "moved.amocrm.ru" and row.token_state == "ok"
    log = await r.requests("moved.amocrm.ru")
    assert log[-3:] == [  # refused at the old host, asked api_domain, refreshed at the new one
        ("POST", "/oauth2/access_token", 401),
        ("POST", "/oauth2/access_token", 200),
        ("GET", "/api/v4/account", 200),
    ]


async def test_429_storm_all_succeed_without_403(tmp_path: Path, migrated_template: Path) -> None:
    async with rig(tmp_path, migrated_template, rate_limit_rps=2) as rr:
        await rr.install()
        c = rr.client()
        got = await asyncio.gather(*(c.get_contact(ANNA) for _ in range(8)))  # 5 rps against amoCRM's 2
        assert len(got) == 8 and all(x is not None and x["id"] == ANNA for x in got)
        statuses = [st for _, path, st in await rr.requests() if path.startswith("/api/")]
        assert statuses.count(200) == 8 and 429 in statuses
        assert 403 not in statuses
        health = rr.pool.health(DEMO_ID)
        assert health["count_429"] == statuses.count(429)
        assert health["rate"] <= 5.0 and health["circuit"] == "closed"
        assert health["circuit_open_until"] is None
        assert health["last_success_at"]


async def test_server_errors_unknown_outcomes_and_read_retry(r: Rig) -> None:
    c = r.client()
    await r.emu.fault(method="GET", path_regex="^/api/v4/account$", status=503)
    with pytest.raises(AmoServerError) as e:
        await c.account()
    assert e.value.status == 503
    await r.emu.fault(method="POST", path_regex="^/api/v4/tasks$", apply_then_drop=True)
    with pytest.raises(AmoUnknownOutcome):
        await c.create_tasks([{"text": "Дважды?", "complete_till": 1900000000}])
    assert [t["text"] for t in (await r.emu.state())["tasks"]] == ["Дважды?"]  # applied; not re-sent
    await r.emu.fault(method="GET", path_regex="^/api/v4/users$", reset_connection=True)
    assert len(await c.users()) == 3  # a read is tried once more after a dropped connection


async def test_403_opens_the_circuit(r: Rig) -> None:
    c = r.client()
    await r.emu.fault(method="GET", path_regex="^/api/v4/account$", status=403, body="blocked")
    with pytest.raises(AmoForbidden):
        await c.account()
    sent = len(await r.emu.log())
    with pytest.raises(AmoForbidden):  # held: nothing is sent while the circuit is open
        await c.users()
    with pytest.raises(AmoSkipped):
        await c.search_contacts("9161234567", lane="realtime", deadline=loop_time() + 1)
    assert len(await r.emu.log()) == sent
    health = r.pool.health(DEMO_ID)
    assert health["circuit"] == "open" and health["circuit_open_until"] and health["last_status"] == 403


async def test_realtime_deadline(r: Rig) -> None:
    c = r.client()
    await r.emu.fault(method="GET", path_regex="^/api/v4/contacts$", delay_ms=1500)  # 5 × the deadline
    with pytest.raises((AmoUnreachable, AmoSkipped)):
        await c.search_contacts("9161234567", lane="realtime", deadline=loop_time() + 0.3)
    with pytest.raises(AmoSkipped):
        await c.get_contact(ANNA, lane="realtime", deadline=loop_time() - 1)


async def test_two_accounts_stay_apart(r: Rig) -> None:
    await r.install(OTHER)
    demo, other = r.client(DEMO_ID), r.client(OTHER_ID)
    assert [u["id"] for u in await other.users()] == [6001]
    assert await other.get_contact(ANNA) is None  # another account's contact does not exist there
    assert (await demo.get_contact(ANNA) or {}).get("id") == ANNA
    other_row, demo_row = await r.row(OTHER_ID), await r.row(DEMO_ID)
    assert other_row.access_token_enc != demo_row.access_token_enc
    assert r.pool.for_account(DEMO_ID) is demo


async def test_health_reaches_the_binding(r: Rig) -> None:
    tenant = await make_tenant(r.core, "acme.vpbx.test")
    async with r.core.sessions() as s:
        s.add(
            CrmBinding(
                domain_id=tenant.id, external_account_id=DEMO_ID, base_domain=DEMO, hook_secret="h" * 32
            )
        )
        await s.commit()
    await r.client().account()
    await r.pool.aclose()  # waits for the health copy
    async with r.core.sessions() as s:
        binding = await s.scalar(select(CrmBinding).where(CrmBinding.external_account_id == DEMO_ID))
        assert binding is not None
        assert binding.health["client"]["last_success_at"]
        assert binding.health["client"]["circuit"] == "closed"


async def test_shared_pool_is_one_per_core(r: Rig) -> None:
    pool = shared_pool(r.core)
    assert shared_pool(r.core) is pool
    assert (await pool.for_account(DEMO_ID).account())["id"] == DEMO_ID
    await close_shared_pool(r.core)
    again = shared_pool(r.core)
    assert again is not pool
    await close_shared_pool(r.core)


def test_reprs_hide_tokens() -> None:
    import datetime as dt

    from vpbx.amocrm.tokens import Credentials

    pair = oauth.TokenPair("access-secret", "refresh-secret", dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    creds = Credentials(account_id=1, base_domain=DEMO, access_token="access-secret", version=1)
    assert "secret" not in repr(pair) and "secret" not in repr(creds)


def loop_time() -> float:
    return asyncio.get_running_loop().time()
