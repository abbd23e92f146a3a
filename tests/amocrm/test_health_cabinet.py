"""The integration health block on «Интеграция с внешними системами» (amocrm.md §5.8, ours) over ASGI: an
alert per problem, «Повторить» for a dead job, revoking every recording link, and two tenants (another
domain's job is 404 and its rows never change)."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import select

from tests.amocrm.kit import DEMO_ACCOUNT, OTHER_ACCOUNT, bind, insert_install
from tests.helpers import Cabinet, Tenant
from vpbx.app import Core
from vpbx.pbx import users
from vpbx.store.models import AmoInstall, AmoRecordingLink, CrmJob


async def _world(core: Core, t1: Tenant, t2: Tenant) -> tuple[uuid.UUID, uuid.UUID]:
    await insert_install(core, DEMO_ACCOUNT, "demo.amocrm.ru")
    await insert_install(core, OTHER_ACCOUNT, "other.amocrm.ru")
    b1 = await bind(core, t1.id, DEMO_ACCOUNT)
    b2 = await bind(core, t2.id, OTHER_ACCOUNT)
    async with core.sessions() as s:
        await users.create_user(
            s, t1.id, users.UserInput(name="ivan", display_name="Иван", pin="101"), box=core.box
        )
        await s.commit()
    return b1.id, b2.id


async def _dead_job(core: Core, binding_id: uuid.UUID, key: str) -> uuid.UUID:
    now = dt.datetime.now(dt.UTC)
    async with core.sessions() as s:
        job = CrmJob(
            binding_id=binding_id,
            kind="amo.finish",
            key=key,
            state="dead",
            run_after=now,
            done_at=now,
            attempts=7,
            last_error="AmoServerError 502",
        )
        s.add(job)
        await s.commit()
        return job.id


async def _state(core: Core, job_id: uuid.UUID) -> str:
    async with core.sessions() as s:
        job = await s.get(CrmJob, job_id)
        assert job is not None
        return job.state


async def test_alerts_and_retry(admin1: Cabinet, admin2: Cabinet, core: Core, t1: Tenant, t2: Tenant) -> None:
    b1, b2 = await _world(core, t1, t2)
    page = (await admin1.get("/integrations")).text
    assert 'id="amocrm-health"' in page and 'data-status="ok"' in page
    assert 'id="alert-unmapped"' in page and "Есть внутренние номера, не сопоставленные" in page
    assert 'id="alert-dead_jobs"' not in page
    mine = await _dead_job(core, b1, "sess-a")
    theirs = await _dead_job(core, b2, "sess-b")
    page = (await admin1.get("/integrations")).text
    assert 'id="alert-dead_jobs"' in page and f'id="retry-{mine}"' in page
    assert f"retry-{theirs}" not in page and "sess-b" not in page
    # another domain's job, an unknown one and a malformed id: 404, nothing changes
    assert (await admin1.post(f"/integrations/amocrm/jobs/{theirs}/retry", {})).status_code == 404
    assert (await admin2.post(f"/integrations/amocrm/jobs/{mine}/retry", {})).status_code == 404
    assert (await admin1.post("/integrations/amocrm/jobs/nope/retry", {})).status_code == 404
    assert (await admin1.post(f"/integrations/amocrm/jobs/{mine}/retry", {}, csrf=False)).status_code == 403
    assert (await _state(core, mine), await _state(core, theirs)) == ("dead", "dead")
    resp = await admin1.post(f"/integrations/amocrm/jobs/{mine}/retry", {})
    assert resp.status_code == 303
    assert (await _state(core, mine), await _state(core, theirs)) == ("pending", "dead")
    page = (await admin1.get("/integrations?notice=retried")).text
    assert 'id="notice-retried"' in page and 'id="alert-dead_jobs"' not in page
    assert 'id="health-pending">1<' in page


async def test_needs_reauth_alert(admin1: Cabinet, core: Core, t1: Tenant, t2: Tenant) -> None:
    await _world(core, t1, t2)
    async with core.sessions() as s:
        row = await s.scalar(select(AmoInstall).where(AmoInstall.amo_account_id == DEMO_ACCOUNT))
        assert row is not None
        row.token_state, row.token_error = "needs_reauth", "refresh refused: 401"
        await s.commit()
    page = (await admin1.get("/integrations")).text
    assert 'data-status="needs_reauth"' in page and 'id="alert-needs_reauth"' in page
    assert "Требуется повторная авторизация: откройте виджет" in page


async def test_revoke_all_recording_links(
    admin1: Cabinet, admin2: Cabinet, core: Core, t1: Tenant, t2: Tenant
) -> None:
    b1, b2 = await _world(core, t1, t2)
    async with core.sessions() as s:
        s.add(AmoRecordingLink(token="a" * 32, domain_id=t1.id, binding_id=b1, session_id="s1"))
        s.add(AmoRecordingLink(token="b" * 32, domain_id=t2.id, binding_id=b2, session_id="s2"))
        await s.commit()
    resp = await admin1.post("/integrations/amocrm/recordings/revoke", {})
    assert resp.status_code == 303 and resp.headers["location"] == "/integrations?notice=revoked"
    async with core.sessions() as s:
        links = {r.token[0]: r.revoked_at for r in await s.scalars(select(AmoRecordingLink))}
    assert links["a"] is not None and links["b"] is None  # the other domain's link stays


async def test_revoke_one_and_reissue(
    admin1: Cabinet, admin2: Cabinet, core: Core, t1: Tenant, t2: Tenant
) -> None:
    b1, _b2 = await _world(core, t1, t2)
    async with core.sessions() as s:
        s.add(AmoRecordingLink(token="c" * 32, domain_id=t1.id, binding_id=b1, session_id="s3"))
        s.add(AmoRecordingLink(token="d" * 32, domain_id=t1.id, binding_id=b1, session_id="s4"))
        await s.commit()
    page = (await admin1.get("/integrations")).text
    assert f'id="revoke-{"c" * 32}"' in page
    # t2 can neither revoke nor reissue t1's link
    assert (
        await admin2.post("/integrations/amocrm/recordings/revoke", {"token": "c" * 32})
    ).status_code == 404
    assert (
        await admin1.post(f"/integrations/amocrm/recordings/{'c' * 32}/reissue", {})
    ).status_code == 404  # live
    resp = await admin1.post("/integrations/amocrm/recordings/revoke", {"token": "c" * 32})
    assert resp.status_code == 303
    assert (await admin2.post(f"/integrations/amocrm/recordings/{'c' * 32}/reissue", {})).status_code == 404
    page = (await admin1.get("/integrations")).text
    assert f'id="reissue-{"c" * 32}"' in page and f'id="revoke-{"d" * 32}"' in page  # only c was revoked
    assert (await admin1.post(f"/integrations/amocrm/recordings/{'c' * 32}/reissue", {})).status_code == 303
    async with core.sessions() as s:
        live = [
            r
            for r in await s.scalars(select(AmoRecordingLink))
            if r.session_id == "s3" and r.revoked_at is None
        ]
        assert len(live) == 1 and live[0].token != "c" * 32
        job = await s.scalar(select(CrmJob).where(CrmJob.kind == "amo.relink"))
        assert job is not None and job.key == live[0].token and job.binding_id == b1
        assert job.payload == {"session_id": "s3"} and job.state == "pending"
