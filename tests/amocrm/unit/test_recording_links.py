"""``GET /rec/amo/{token}.mp3`` (amocrm.md §5.5): the link exists before the file (404), serves the MP3 once
the recording is ready, 404 once revoked or for an unknown token; a link never reaches another domain's
recording (two tenants)."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid

import httpx
from fastapi import FastAPI
from sqlalchemy import update

from tests.helpers import Tenant
from vpbx.amocrm.finish import recording_link
from vpbx.amocrm.recordings import revoke_links
from vpbx.app import Core
from vpbx.store.models import AmoRecordingLink, CrmBinding, Recording

MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb" * 64


async def bind(core: Core, tenant: Tenant, account: int) -> uuid.UUID:
    async with core.sessions() as s:
        b = CrmBinding(domain_id=tenant.id, external_account_id=account, hook_secret=secrets.token_hex(8))
        s.add(b)
        await s.commit()
        return b.id


async def record(core: Core, domain_id: uuid.UUID, session_id: str, *, ready: bool) -> None:
    now = dt.datetime.now(dt.UTC)
    name = core.recordings.new_name(domain_id, session_id, now)
    path = core.recordings.path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(MP3)
    async with core.sessions() as s:
        status = "ready" if ready else "encoding"
        s.add(Recording(domain_id=domain_id, session_id=session_id, status=status, path=name, ready_at=now))
        await s.commit()


async def link_for(core: Core, domain_id: uuid.UUID, binding_id: uuid.UUID, session_id: str) -> str:
    async with core.sessions() as s, s.begin():
        url = await recording_link(
            s,
            domain_id=domain_id,
            binding_id=binding_id,
            session_id=session_id,
            origin="https://pbx.example/",
        )
    assert url.startswith("https://pbx.example/rec/amo/") and url.endswith(".mp3")
    return url.removeprefix("https://pbx.example")


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def test_link_is_404_until_ready_then_mp3_then_404_when_revoked(
    app: FastAPI, core: Core, t1: Tenant
) -> None:
    b = await bind(core, t1, 30000001)
    path = await link_for(core, t1.id, b, "s-1")
    assert await link_for(core, t1.id, b, "s-1") == path  # one stable link per call
    async with client(app) as c:
        assert (await c.get(path)).status_code == 404  # no recording yet
        await record(core, t1.id, "s-1", ready=False)
        assert (await c.get(path)).status_code == 404  # still encoding
        async with core.sessions() as s, s.begin():
            await s.execute(update(Recording).where(Recording.session_id == "s-1").values(status="ready"))
        got = await c.get(path)
        assert got.status_code == 200 and got.content == MP3
        assert got.headers["content-type"] == "audio/mpeg"
        token = path.rsplit("/", 1)[1].removesuffix(".mp3")
        async with core.sessions() as s, s.begin():
            link = await s.get(AmoRecordingLink, token)
            assert link is not None
            link.revoked_at = dt.datetime.now(dt.UTC)
        assert (await c.get(path)).status_code == 404
        reissued = await link_for(core, t1.id, b, "s-1")  # a revoked link can be reissued
        assert reissued != path and (await c.get(reissued)).status_code == 200
        assert (await c.get("/rec/amo/" + "A" * 32 + ".mp3")).status_code == 404
        assert (await c.get("/rec/amo/short.mp3")).status_code == 404


async def test_a_link_never_serves_another_domains_recording(
    app: FastAPI, core: Core, t1: Tenant, t2: Tenant
) -> None:
    b1 = await bind(core, t1, 30000001)
    await bind(core, t2, 30000002)
    await record(core, t2.id, "s-shared", ready=True)  # the same session id in domain 2
    path = await link_for(core, t1.id, b1, "s-shared")
    async with client(app) as c:
        assert (await c.get(path)).status_code == 404
        await record(core, t1.id, "s-shared", ready=True)
        assert (await c.get(path)).status_code == 200


async def test_revoking_one_or_all_links_of_a_binding(
    app: FastAPI, core: Core, t1: Tenant, t2: Tenant
) -> None:
    b1 = await bind(core, t1, 30000001)
    b2 = await bind(core, t2, 30000002)
    for sid in ("a", "b"):
        await record(core, t1.id, sid, ready=True)
    await record(core, t2.id, "c", ready=True)
    a, b = [await link_for(core, t1.id, b1, sid) for sid in ("a", "b")]
    c = await link_for(core, t2.id, b2, "c")
    token_a = a.rsplit("/", 1)[1].removesuffix(".mp3")
    now = dt.datetime.now(dt.UTC)
    async with core.sessions() as s, s.begin():
        assert await revoke_links(s, b2, now, token=token_a) == 0  # another binding's token: untouched
        assert await revoke_links(s, b1, now, token=token_a) == 1
    async with client(app) as http:
        assert [(await http.get(p)).status_code for p in (a, b, c)] == [404, 200, 200]
        async with core.sessions() as s, s.begin():
            assert await revoke_links(s, b1, now) == 1
        assert [(await http.get(p)).status_code for p in (a, b, c)] == [404, 404, 200]
