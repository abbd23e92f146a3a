"""get_record (integration-api.md §4.2): the acceptance table, two tenants, and the one-time link fetched with
a real HTTP GET through the app (IP binding, single use, Range, expiry, the sandbox sample).

Handlers are called with an ``ApiContext`` as the gateway builds it, and their ``ApiError`` rendered as the
gateway renders it (``status``, ``body()``)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from tests.conftest import make_tenant
from tests.helpers import Tenant
from vpbx.app import Core, create_app
from vpbx.clock import FakeClock
from vpbx.integration_api import records
from vpbx.integration_api.core import ApiContext, ApiError, ApiReply
from vpbx.integration_api.registry import all_methods
from vpbx.media.recorder import mp3_duration
from vpbx.settings import Settings
from vpbx.store.models import ApiRecordLink, CallRecord, Recording

F_DOMAIN = "demo.vpbx.example"
F_SESSION = "534dbe28-7e58-4705-89a4-26a308405464"
F_START = dt.datetime.fromtimestamp(1749715200, dt.UTC)  # 2025-06-12 11:00:00 MSK
CRM_IP = "195.49.187.78"
SOURCE_IP = "203.0.113.10"
BASE = "https://api.example"
TEST_BASE = "https://api-test.example"
LINK_RE = re.compile(r"https://api\.example/records_new_scheme/record/download/([0-9a-f]{32})/(\w+)")
MP3 = bytes(range(256)) * 40  # the bytes of a stored "recording": the route serves the file as it is


# --- the kit (test_exports imports it) ---------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(dt.datetime.now(dt.UTC).replace(microsecond=0))


@pytest.fixture
async def app(settings: Settings, clock: FakeClock) -> AsyncIterator[FastAPI]:
    application = create_app(settings, clock=clock)
    yield application
    await application.state.core.engine.dispose()


@pytest.fixture
async def demo(core: Core) -> Tenant:
    return await make_tenant(core, F_DOMAIN)


def context(
    app: FastAPI, tenant: Tenant, *, ip: str = SOURCE_IP, sandbox: bool = False, **headers: str
) -> ApiContext:
    core: Core = app.state.core
    return ApiContext(
        domain_id=tenant.id,
        domain=tenant.name,
        client_id="000003C405E6525C64C184258C44EC99",
        source_ip=ip,
        sandbox=sandbox,
        base_url=TEST_BASE if sandbox else BASE,
        headers={k.replace("_", "-").lower(): v for k, v in headers.items()},
        sessions=core.sessions,
        services=app.state,
    )


async def call(name: str, ctx: ApiContext, body: dict[str, Any]) -> tuple[int, Any, ApiReply | None]:
    """Run a method as the gateway does: (status, JSON body or bytes, the reply)."""
    method = all_methods()[name]
    try:
        reply = await method.handler(ctx, body)
    except ApiError as e:
        return e.status, e.body(), None
    return reply.status, reply.body, reply


def f_record(
    domain_id: uuid.UUID, session_id: str = F_SESSION, start: dt.datetime = F_START, **kw: Any
) -> CallRecord:
    """Fixture F's finished incoming call (integration-api.md §4), or one like it."""
    values: dict[str, Any] = {
        "session_id": session_id,
        "domain_id": domain_id,
        "call_type": "incoming",
        "started_at": start,
        "answered_at": start + dt.timedelta(seconds=6),
        "ended_at": start + dt.timedelta(seconds=101),
        "end_reason": "normal",
        "duration_s": 95,
        "caller_number": f"sip:79161234567@{F_DOMAIN}",
        "caller_uri": f"sip:79161234567@{F_DOMAIN}",
        "callee_number": f"sip:74951234567@{F_DOMAIN}",
        "callee_uri": f"sip:74951234567@{F_DOMAIN}",
        "line": "74951234567",
        "answering_uri": f"ivanov@{F_DOMAIN}",
        "answering_pin": "501",
        "is_record": True,
        "session_log": [[0, "ct", "501"], [6, "cc", "501"], [101, "cd", "501"]],
    }
    values.update(kw)
    return CallRecord(**values)


async def add_call(core: Core, tenant: Tenant, *, recording: str | None = "ready", **kw: Any) -> str:
    """A finished call, with a recording in ``recording`` state (its MP3 on disk when ready)."""
    rec = f_record(tenant.id, **kw)
    async with core.sessions() as s, s.begin():
        s.add(rec)
        if recording is not None:
            name = core.recordings.new_name(tenant.id, rec.session_id, rec.started_at)
            if recording == "ready":
                path = core.recordings.path(name)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(MP3)
            s.add(Recording(domain_id=tenant.id, session_id=rec.session_id, status=recording, path=name))
    return rec.session_id


def client(app: FastAPI, ip: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(ip, 40000)), base_url=BASE)


async def link(app: FastAPI, tenant: Tenant, session_id: str = F_SESSION, **body: Any) -> str:
    status, reply, _ = await call("get_record", context(app, tenant), {"session_id": session_id, **body})
    assert status == 200 and reply["result"] == "0", reply
    url: str = reply["url"]
    return url


def served(url: str, prefix: str = "/api") -> str:
    """A link's path as ``vpbx serve`` serves it when {API} is its own /api (or /api-test)."""
    return prefix + "/records_new_scheme" + url.split("/records_new_scheme", 1)[1]


def not_found(**payload: object) -> dict[str, object]:
    return {"result": "-11", "resultMessage": "Сессия не найдена", "error": "session-not-found", **payload}


# --- §4.2 acceptance ---------------------------------------------------------------------------------------


async def test_the_guide_request_gets_a_link_bound_to_ip_adress(
    app: FastAPI, core: Core, demo: Tenant
) -> None:
    await add_call(core, demo)
    status, body, reply = await call(
        "get_record", context(app, demo), {"session_id": F_SESSION, "ip_adress": CRM_IP}
    )
    assert status == 200 and reply is not None
    assert list(body) == ["result", "resultMessage", "url"]
    assert (body["result"], body["resultMessage"]) == ("0", "Операция выполнена успешно")
    m = LINK_RE.fullmatch(body["url"])
    assert m and m.group(2) == "195049187078"
    async with core.sessions() as s:
        row = await s.get(ApiRecordLink, m.group(1))
    assert row is not None and row.domain_id == demo.id and row.session_id == F_SESSION
    assert row.expires_at == core.clock.now() + dt.timedelta(minutes=30)
    assert m.group(1) not in F_SESSION.replace("-", "")  # random, not derived from the session


async def test_each_request_issues_a_new_link_and_ip_address_is_accepted(
    app: FastAPI, core: Core, demo: Tenant
) -> None:
    await add_call(core, demo)
    a = await link(app, demo, ip_adress=CRM_IP)
    b = await link(app, demo, ip_address=CRM_IP)
    assert a != b and a.endswith("/195049187078") and b.endswith("/195049187078")


async def test_without_ip_adress_the_link_is_bound_to_the_source_ip(
    app: FastAPI, core: Core, demo: Tenant
) -> None:
    await add_call(core, demo)
    assert (await link(app, demo)).endswith("/203000113010")
    _, body, _ = await call(
        "get_record", context(app, demo), {"session_id": F_SESSION, "ip_adress": "2001:db8::7"}
    )
    assert body["url"].endswith("/20010db8000000000000000000000007")
    assert records.ip_code(ipaddress.ip_address("188.254.33.84")) == "188254033084"


@pytest.mark.parametrize("session_id", ["00000000-0000-0000-0000-000000000000", "other-domain"])
async def test_unknown_or_foreign_session_is_minus_11(
    app: FastAPI, core: Core, demo: Tenant, t2: Tenant, session_id: str
) -> None:
    foreign = await add_call(core, t2, session_id=str(uuid.uuid4()))
    sid = foreign if session_id == "other-domain" else session_id
    status, body, _ = await call("get_record", context(app, demo), {"session_id": sid, "ip_adress": CRM_IP})
    assert (status, body) == (200, not_found(url=None))
    async with core.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(ApiRecordLink)) == 0


async def test_a_call_without_recording_is_minus_13(app: FastAPI, core: Core, demo: Tenant) -> None:
    sid = await add_call(core, demo, recording=None, is_record=False)
    failed = await add_call(core, demo, recording="failed", session_id=str(uuid.uuid4()))
    for s_id in (sid, failed):
        status, body, _ = await call("get_record", context(app, demo), {"session_id": s_id})
        assert (status, body) == (
            200,
            {
                "result": "-13",
                "resultMessage": "Запись разговора отсутствует",
                "error": "record-not-found",
                "url": None,
            },
        )


@pytest.mark.parametrize("state", ["recording", "encoding"])
async def test_a_recording_still_encoding_is_minus_14(
    app: FastAPI, core: Core, demo: Tenant, state: str
) -> None:
    sid = await add_call(core, demo, recording=state)
    status, body, _ = await call("get_record", context(app, demo), {"session_id": sid})
    assert status == 200
    assert body == {
        "result": "-14",
        "resultMessage": "Запись разговора ещё обрабатывается",
        "error": "record-not-ready",
        "url": None,
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"session_id": F_SESSION, "ip_adress": "999.1.1.1"}, "ip_adress"),
        ({"session_id": F_SESSION, "ip_address": "nope"}, "ip_address"),
        ({"s_id": F_SESSION}, "session_id"),
        ({}, "session_id"),
        ({"session_id": 5}, "session_id"),
        ({"session_id": "x" * 65}, "session_id"),
    ],
)
async def test_bad_fields_are_r11(
    app: FastAPI, core: Core, demo: Tenant, body: dict[str, Any], field: str
) -> None:
    await add_call(core, demo)
    status, reply, _ = await call("get_record", context(app, demo), body)
    assert status == 400
    assert reply == {
        "result": "-1",
        "resultMessage": f"Некорректное значение поля {field}",
        "error": "bad-request",
        "field": field,
    }


async def test_another_domain_name_is_minus_12(app: FastAPI, core: Core, demo: Tenant) -> None:
    await add_call(core, demo)
    status, body, _ = await call(
        "get_record", context(app, demo), {"session_id": F_SESSION, "domain": "other.vpbx.test"}
    )
    assert (status, body["result"], body["url"]) == (200, "-12", None)
    assert (await link(app, demo, domain="DEMO.vpbx.example")).startswith(BASE)


# --- the download, over HTTP -------------------------------------------------------------------------------


async def test_the_link_downloads_once_from_its_ip_only(app: FastAPI, core: Core, demo: Tenant) -> None:
    await add_call(core, demo)
    url = await link(app, demo, ip_adress=CRM_IP)
    path = served(url)
    async with client(app, SOURCE_IP) as other, client(app, CRM_IP) as crm:
        refused = await other.get(path)
        assert (refused.status_code, refused.content) == (403, b"")
        got = await crm.get(path)
        assert got.status_code == 200
        assert got.headers["content-type"] == "audio/mpeg"
        assert got.headers["content-disposition"] == f'attachment; filename="{F_SESSION}.mp3"'
        assert got.content == MP3
        again = await crm.get(path)
        assert (again.status_code, again.content) == (404, b"")
        assert (await other.get(path)).status_code == 404  # used: 404 for everyone


async def test_partial_downloads_do_not_use_the_link(app: FastAPI, core: Core, demo: Tenant) -> None:
    await add_call(core, demo)
    path = served(await link(app, demo, ip_adress=CRM_IP))
    async with client(app, CRM_IP) as crm:
        part = await crm.get(path, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206
        assert part.headers["content-range"] == f"bytes 100-199/{len(MP3)}"
        assert part.content == MP3[100:200]
        tail = await crm.get(path, headers={"Range": "bytes=-10"})
        assert (tail.status_code, tail.content) == (206, MP3[-10:])
        rest = await crm.get(path, headers={"Range": f"bytes={len(MP3) - 5}-"})
        assert (rest.status_code, rest.content) == (206, MP3[-5:])
        bad = await crm.get(path, headers={"Range": f"bytes={len(MP3)}-"})
        assert (bad.status_code, bad.headers["content-range"]) == (416, f"bytes */{len(MP3)}")
        whole = await crm.get(path)
        assert (whole.status_code, whole.content) == (200, MP3)
        assert (await crm.get(path, headers={"Range": "bytes=0-9"})).status_code == 404


async def test_unknown_expired_and_mangled_links_are_404(
    app: FastAPI, core: Core, demo: Tenant, clock: FakeClock
) -> None:
    await add_call(core, demo)
    path = served(await link(app, demo, ip_adress=CRM_IP))
    token = path.split("/")[-2]
    async with client(app, CRM_IP) as crm:
        for wrong in (
            path.replace(token, "0" * 32),
            path.replace(token, "not-a-token"),
            path.removesuffix("195049187078") + "203000113010",
        ):
            r = await crm.get(wrong)
            assert (r.status_code, r.content) == (404, b""), wrong
        assert (await crm.post(path)).status_code == 405
        clock.advance(30 * 60)
        assert (await crm.get(path)).status_code == 404
        assert (await crm.get("/api-test" + path.removeprefix("/api"))).status_code == 404


async def test_the_route_is_mounted_under_api_and_api_test(app: FastAPI, core: Core, demo: Tenant) -> None:
    await add_call(core, demo)
    async with client(app, CRM_IP) as crm:
        for prefix in ("/api", "/api-test"):
            url = await link(app, demo, ip_adress=CRM_IP)
            assert (await crm.get(served(url, prefix))).status_code == 200


async def test_sandbox_calls_get_the_sample_mp3(app: FastAPI, core: Core, demo: Tenant) -> None:
    sid = f"test-{uuid.uuid4()}"
    status, body, _ = await call(
        "get_record", context(app, demo, sandbox=True), {"session_id": sid, "ip_adress": CRM_IP}
    )
    assert status == 200 and body["url"].startswith(TEST_BASE + "/records_new_scheme/record/download/")
    path = served(body["url"], "/api-test")
    async with client(app, CRM_IP) as crm:
        got = await crm.get(path)
    assert (
        got.status_code == 200 and got.headers["content-disposition"] == f'attachment; filename="{sid}.mp3"'
    )
    assert 2.5 < mp3_duration(got.content) < 3.5
    assert records.sample_mp3() is records.sample_mp3()  # made once


async def test_a_recording_file_gone_from_disk_is_404(app: FastAPI, core: Core, demo: Tenant) -> None:
    await add_call(core, demo)
    path = served(await link(app, demo, ip_adress=CRM_IP))
    async with core.sessions() as s:
        name = await s.scalar(select(Recording.path))
    assert name
    core.recordings.delete(name)
    async with client(app, CRM_IP) as crm:
        assert (await crm.get(path)).status_code == 404
