"""The gateway's caches and its batched log (issue 7, bench/README.md "Integration API"): what is cached never
outlives a change (§2.1: a regenerated ID or key is refused at once, also by another process on the same
database), and every request still leaves its one log row (§6.4), written off the request path."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from tests.integration_api.fixture_f import CLIENT_ID, FixtureF, api_client, post
from vpbx.app import Core, create_app
from vpbx.billing import INTEGRATION_API, disable
from vpbx.integration_api.logwriter import ApiLogWriter
from vpbx.integration_api.settings import regenerate
from vpbx.settings import Settings
from vpbx.store.models import ApiLog, ApiSettings

BODY = b'{"user_pin": 501}'


def result(resp: httpx.Response) -> str:
    return str(resp.json()["result"])


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The app as uvicorn runs it: its lifespan (which starts the log writer) around the requests."""
    async with app.router.lifespan_context(app):
        yield


async def logged(core: Core) -> list[ApiLog]:
    async with core.sessions() as s:
        return list(await s.scalars(select(ApiLog).order_by(ApiLog.at, ApiLog.id)))


async def test_a_regenerated_key_is_refused_on_the_next_request(
    app: FastAPI, core: Core, f: FixtureF, crm: httpx.AsyncClient
) -> None:
    assert result(await post(crm, "users_info", BODY)) == "0"  # the key is cached now
    async with core.sessions() as s:
        new_key = await regenerate(s, f.domain_id, core.box, "key")
        await s.commit()
    old = await post(crm, "users_info", BODY)
    assert (old.status_code, result(old)) == (401, "-3")
    assert result(await post(crm, "users_info", BODY, key=new_key)) == "0"


async def test_a_regenerated_id_is_refused_on_the_next_request(
    core: Core, f: FixtureF, crm: httpx.AsyncClient
) -> None:
    assert result(await post(crm, "users_info", BODY)) == "0"
    async with core.sessions() as s:
        new_id = await regenerate(s, f.domain_id, core.box, "client_id")
        await s.commit()
    old = await post(crm, "users_info", BODY)
    assert (old.status_code, result(old)) == (401, "-2")
    assert result(await post(crm, "users_info", BODY, client_id=new_id)) == "0"


async def test_another_process_refuses_the_old_key_at_once(
    settings: Settings, core: Core, f: FixtureF, crm: httpx.AsyncClient
) -> None:
    """A second app on the same database (another node or worker) with its caches warm."""
    other = create_app(settings)
    try:
        async with api_client(other) as crm2:
            assert result(await post(crm2, "users_info", BODY)) == "0"
            async with core.sessions() as s:  # the cabinet of the first process regenerates
                new_key = await regenerate(s, f.domain_id, core.box, "key")
                await s.commit()
            assert result(await post(crm2, "users_info", BODY)) == "-3"
            assert result(await post(crm2, "users_info", BODY, key=new_key)) == "0"
    finally:
        await other.state.core.engine.dispose()


async def test_allowlist_and_service_changes_apply_to_the_next_request(
    core: Core, f: FixtureF, crm: httpx.AsyncClient
) -> None:
    assert result(await post(crm, "users_info", BODY)) == "0"
    async with core.sessions() as s:
        row = await s.get(ApiSettings, f.domain_id)
        assert row is not None
        row.allowlist = "198.51.100.0/24"
        await s.commit()
    assert result(await post(crm, "users_info", BODY)) == "-4"
    async with core.sessions() as s:
        row = await s.get(ApiSettings, f.domain_id)
        assert row is not None
        row.allowlist = "203.0.113.10"
        await s.commit()
    assert result(await post(crm, "users_info", BODY)) == "0"
    async with core.sessions() as s:
        await disable(s, f.domain_id, INTEGRATION_API, core.clock.now())
        await s.commit()
    assert result(await post(crm, "users_info", BODY)) == "-6"


async def test_with_the_writer_running_every_request_still_gets_its_row(
    app: FastAPI, core: Core, f: FixtureF, crm: httpx.AsyncClient
) -> None:
    writer = app.state.api_log
    assert isinstance(writer, ApiLogWriter)
    async with lifespan(app):
        assert writer.running
        answers = await asyncio.gather(*(post(crm, "users_info", BODY) for _ in range(30)))
        bad = await post(crm, "users_info", BODY, key="0" * 32)
        await writer.flush()
        rows = await logged(core)
        assert [result(a) for a in answers] == ["0"] * 30 and result(bad) == "-3"
        assert len(rows) == 31
        assert writer.batches < 31  # the rows shared transactions
        ok = [r for r in rows if r.status == 200]
        assert len(ok) == 30 and all(r.verdict == "IP allowed; signature OK" for r in ok)
        assert ok[0].request_body == BODY.decode() and ok[0].request_headers["x-client-id"] == CLIENT_ID
        (refused,) = [r for r in rows if r.status == 401]
        assert refused.result == "-3" and refused.verdict == "IP allowed; signature FAIL"
        # rows still queued when the app stops are written by its shutdown
        await asyncio.gather(*(post(crm, "users_info", BODY) for _ in range(5)))
    assert not writer.running
    assert len(await logged(core)) == 36


async def test_the_writer_inline_when_not_started(core: Core, f: FixtureF) -> None:
    writer = ApiLogWriter(core.sessions)
    await writer.write(domain_id=f.domain_id, direction="in", method="users_info", status=200)
    (row,) = await logged(core)
    assert (row.method, row.status, row.verdict) == ("users_info", 200, "")


async def test_a_refused_batch_is_dropped_and_the_writer_goes_on(core: Core, f: FixtureF) -> None:
    writer = ApiLogWriter(core.sessions, linger_s=0.01)
    await writer.start()
    try:
        await writer.write(domain_id=f.domain_id, direction="in", method="users_info")
        await writer.write(domain_id=f.domain_id, direction="in", method="users_info", id=None)  # NOT NULL
        await writer.flush()  # that batch is refused: dropped with a warning, the writer lives on
        assert writer.running and await logged(core) == []
        await writer.write(domain_id=f.domain_id, direction="in", method="call_info")
        await writer.flush()
    finally:
        await writer.stop()
    assert [r.method for r in await logged(core)] == ["call_info"]


async def test_security_headers_on_the_api_and_the_cabinet(app: FastAPI, f: FixtureF) -> None:
    """The plain ASGI middleware keeps what the cabinet's did: headers, metrics."""
    async with api_client(app) as client:
        for resp in (await post(client, "users_info", BODY), await client.get("/login")):
            assert resp.headers["x-content-type-options"] == "nosniff"
            assert resp.headers["x-frame-options"] == "DENY"
            assert resp.headers["referrer-policy"] == "same-origin"
            assert "default-src 'self'" in resp.headers["content-security-policy"]
        metrics = await client.get("/metrics")
    assert 'vpbx_http_requests_total{code_class="2xx",method="POST"}' in metrics.text
