"""Recordings in the cabinet: the MP3 route (admin, a party of the call, nobody else; Range for the player;
not ready → 404 with a message) and the domain's recording settings, each checked across two tenants."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI
from sqlalchemy import select

from tests.conftest import _client
from tests.helpers import Cabinet, Tenant
from vpbx.app import Core
from vpbx.pbx import users
from vpbx.store.models import CallRecord, Domain, Recording

MP3 = bytes(range(256)) * 40  # the route serves bytes; their content is not decoded here
USER_PASSWORD = "User-Password-1"
WHEN = dt.datetime(2026, 2, 3, 10, 0, tzinfo=dt.UTC)


async def add_user(core: Core, t: Tenant, name: str, pin: str) -> str:
    async with core.sessions() as s:
        await users.create_user(
            s,
            t.id,
            users.UserInput(name=name, display_name=name, pin=pin, web_password=USER_PASSWORD),
            box=core.box,
        )
        await s.commit()
    return f"{name}@{t.name}"


async def add_call(
    core: Core, t: Tenant, *, status: str = "ready", caller: str = "201", callee: str = "202"
) -> str:
    session = str(uuid.uuid4())
    name = core.recordings.new_name(t.id, session, WHEN)
    path = core.recordings.path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(MP3)
    async with core.sessions() as s, s.begin():
        s.add(
            CallRecord(
                session_id=session,
                domain_id=t.id,
                call_type="internal",
                started_at=WHEN,
                caller_pin=caller,
                callee_pin=callee,
                answering_pin=callee,
                is_record=True,
            )
        )
        s.add(Recording(domain_id=t.id, session_id=session, status=status, path=name, duration_s=2.0))
    return session


@pytest.fixture
async def user201(app: FastAPI, core: Core, t1: Tenant) -> AsyncIterator[Cabinet]:
    login = await add_user(core, t1, "ivan", "201")
    async with _client(app) as c:
        cab = Cabinet(c)
        assert (await cab.login(login, USER_PASSWORD)).status_code == 303
        yield cab


@pytest.fixture
async def user203(app: FastAPI, core: Core, t1: Tenant) -> AsyncIterator[Cabinet]:
    login = await add_user(core, t1, "petr", "203")
    async with _client(app) as c:
        cab = Cabinet(c)
        assert (await cab.login(login, USER_PASSWORD)).status_code == 303
        yield cab


async def test_the_admin_gets_the_mp3_with_ranges_for_the_player(
    admin1: Cabinet, core: Core, t1: Tenant
) -> None:
    session = await add_call(core, t1)
    resp = await admin1.get(f"/recordings/{session}.mp3")
    assert resp.status_code == 200 and resp.content == MP3
    assert resp.headers["content-type"] == "audio/mpeg"
    assert resp.headers["accept-ranges"] == "bytes"
    assert resp.headers["content-disposition"].startswith("inline")
    part = await admin1.client.get(f"/recordings/{session}.mp3", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == MP3[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(MP3)}"


async def test_another_domains_admin_gets_404(
    admin1: Cabinet, admin2: Cabinet, core: Core, t1: Tenant
) -> None:
    session = await add_call(core, t1)
    resp = await admin2.get(f"/recordings/{session}.mp3")
    assert resp.status_code == 404 and MP3[:64] not in resp.content
    assert (await admin1.get(f"/recordings/{session}.mp3")).status_code == 200


async def test_a_party_of_the_call_may_listen_and_another_user_may_not(
    user201: Cabinet, user203: Cabinet, core: Core, t1: Tenant
) -> None:
    session = await add_call(core, t1, caller="201", callee="202")
    assert (await user201.get(f"/recordings/{session}.mp3")).status_code == 200
    assert (await user203.get(f"/recordings/{session}.mp3")).status_code == 404


async def test_a_recording_not_ready_yet_is_404_with_a_message(
    admin1: Cabinet, core: Core, t1: Tenant
) -> None:
    session = await add_call(core, t1, status="encoding")
    resp = await admin1.get(f"/recordings/{session}.mp3")
    assert resp.status_code == 404
    assert "Запись ещё не готова" in resp.text


async def test_unknown_or_odd_names_are_404(admin1: Cabinet, anon: Cabinet) -> None:
    assert (await admin1.get(f"/recordings/{uuid.uuid4()}.mp3")).status_code == 404
    assert (await admin1.get("/recordings/" + "x" * 100 + ".mp3")).status_code == 404
    resp = await anon.get(f"/recordings/{uuid.uuid4()}.mp3")
    assert resp.status_code == 303 and resp.headers["location"].startswith("/login")


async def domain(core: Core, t: Tenant) -> Domain:
    async with core.sessions() as s:
        d = await s.scalar(select(Domain).where(Domain.id == t.id))
        assert d is not None
        return d


async def test_the_settings_form_saves_for_the_admins_domain_only(
    admin1: Cabinet, admin2: Cabinet, core: Core, t1: Tenant, t2: Tenant
) -> None:
    page = await admin1.get("/recordings/settings")
    assert page.status_code == 200 and "Записывать все разговоры домена" in page.text
    resp = await admin1.post("/recordings/settings", {"record_calls": "on", "retention_days": "30"})
    assert resp.status_code == 303
    d1, d2 = await domain(core, t1), await domain(core, t2)
    assert (d1.record_calls, d1.recording_retention_days) == (True, 30)
    assert (d2.record_calls, d2.recording_retention_days) == (False, 90)
    services = await admin1.get("/services")
    assert "Записываются все разговоры; записи хранятся 30 дн." in services.text
    other = await admin2.get("/recordings/settings")
    assert 'value="90"' in other.text


@pytest.mark.parametrize("days", ["0", "3651", "abc", "", "-5"])
async def test_a_bad_retention_is_refused(admin1: Cabinet, core: Core, t1: Tenant, days: str) -> None:
    await admin1.get("/recordings/settings")
    resp = await admin1.post("/recordings/settings", {"record_calls": "on", "retention_days": days})
    assert resp.status_code == 422 and "От 1 до 3650 дней" in resp.text
    d = await domain(core, t1)
    assert (d.record_calls, d.recording_retention_days) == (False, 90)


async def test_users_and_strangers_cannot_change_the_settings(user201: Cabinet, anon: Cabinet) -> None:
    assert (await user201.get("/recordings/settings")).status_code == 403
    resp = await user201.post("/recordings/settings", {"retention_days": "5"})
    assert resp.status_code == 403
    assert (await anon.post("/recordings/settings", {"retention_days": "5"}, csrf=False)).status_code == 303
