"""The gateway's pipeline R1–R11 (integration-api.md §2.3) on bytes, through the real app over ASGI."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from starlette.applications import Starlette

from tests.integration_api.fixture_f import (
    CLIENT_ID,
    COMPACT_SIGN,
    CRM_IP,
    DOMAIN,
    EMPTY_SIGN,
    GUIDE_BODY,
    GUIDE_SIGN,
    KEY,
    OTHER_IP,
    FixtureF,
    api_client,
    enable_api,
    post,
)
from vpbx.app import Core, create_app
from vpbx.billing import INTEGRATION_API, disable, enable
from vpbx.integration_api.core import ApiContext, ApiMethod, ApiReply, envelope, sign
from vpbx.integration_api.gateway import ApiGateway
from vpbx.pbx import domains, users
from vpbx.settings import Settings
from vpbx.store.models import ApiLog, Domain, User

OK = "Операция выполнена успешно"
F_USERS = [
    {
        "display_name": "Иванов Сергей",
        "name": "ivanov",
        "pin": "501",
        "sipuri": "ivanov@demo.vpbx.example",
        "email": "ivanov@example.com",
    },
    {
        "display_name": "Петрова Анна",
        "name": "petrova",
        "pin": "502",
        "sipuri": "petrova@demo.vpbx.example",
        "email": None,
    },
]


def body_of(resp: httpx.Response) -> object:
    return json.loads(resp.content)


def test_signature_vectors() -> None:
    """§2.2: the guide's vector, its compact negative and the empty body, on the exact bytes."""
    assert sign(CLIENT_ID, GUIDE_BODY, KEY) == GUIDE_SIGN
    compact = b'{"request_number":"+74951234567","from_sipuri":"test_user@cloudpbx.rt.ru"}'
    assert sign(CLIENT_ID, compact, KEY) == COMPACT_SIGN
    assert sign(CLIENT_ID, b"", KEY) == EMPTY_SIGN
    assert sign(CLIENT_ID, b"{}", KEY) == "71ad47150f98eac67606b1487f7fa27f0b2029d7c2c268fc4aa7b5ca95257fda"


async def test_users_info_ok_with_its_published_sign(crm: httpx.AsyncClient) -> None:
    resp = await crm.post(
        "/api/users_info",
        content=b"{}",
        headers={
            "X-Client-ID": CLIENT_ID,
            "X-Client-Sign": "71ad47150f98eac67606b1487f7fa27f0b2029d7c2c268fc4aa7b5ca95257fda",
        },
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json; charset=utf-8"
    assert body_of(resp) == {"result": "0", "resultMessage": OK, "users": F_USERS}
    assert list(body_of(resp)) == ["result", "resultMessage", "users"]  # type: ignore[arg-type]


async def test_raw_bytes_are_hashed_not_a_reserialised_copy(crm: httpx.AsyncClient) -> None:
    """The guide body (spaces after the colons) verifies with fc95…; its compact form with the same sign is
    refused: the gateway hashes what travelled."""
    headers = {"X-Client-ID": CLIENT_ID, "X-Client-Sign": GUIDE_SIGN, "Content-Type": "application/json"}
    ok = await crm.post("/api/users_info", content=GUIDE_BODY, headers=headers)
    assert ok.status_code == 200 and body_of(ok)["result"] == "0"  # type: ignore[index]
    compact = b'{"request_number":"+74951234567","from_sipuri":"test_user@cloudpbx.rt.ru"}'
    bad = await crm.post("/api/users_info", content=compact, headers=headers)
    assert bad.status_code == 401
    assert bad.content == (
        '{"result":"-3","resultMessage":"Неверная подпись запроса","error":"bad-signature"}'.encode()
    )
    # PHP-style escapes and spacing are valid as sent
    php = b'{ "user_pin" : "501", "x": "\\/\\u0418" }'
    resp = await post(crm, "users_info", php)
    assert resp.status_code == 200 and body_of(resp)["users"] == F_USERS[:1]  # type: ignore[index]


async def test_empty_body_counts_as_empty_object(crm: httpx.AsyncClient) -> None:
    resp = await crm.post("/api/users_info", headers={"X-Client-ID": CLIENT_ID, "X-Client-Sign": EMPTY_SIGN})
    assert resp.status_code == 200 and body_of(resp)["users"] == F_USERS  # type: ignore[index]


async def test_any_content_type_is_accepted(crm: httpx.AsyncClient) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        extra = {"Content-Type": content_type} if content_type else {}
        body = b'{"user_pin":"502"}'
        headers = {"X-Client-ID": CLIENT_ID, "X-Client-Sign": sign(CLIENT_ID, body, KEY), **extra}
        resp = await crm.post("/api/users_info", content=body, headers=headers)
        assert body_of(resp)["users"] == F_USERS[1:]  # type: ignore[index]


async def test_r1_unknown_method_whatever_the_verb(crm: httpx.AsyncClient) -> None:
    expected = '{"result":"-7","resultMessage":"Неизвестный метод","error":"unknown-method"}'.encode()
    for resp in (await post(crm, "no_such_method", b"{}"), await crm.get("/api/no_such_method")):
        assert resp.status_code == 404
        assert resp.content == expected


async def test_r2_verb_other_than_post(crm: httpx.AsyncClient) -> None:
    for verb in ("GET", "PUT", "DELETE"):
        resp = await crm.request(verb, "/api/users_info")
        assert resp.status_code == 405
        assert resp.headers["allow"] == "POST"
        assert (
            resp.content
            == (
                '{"result":"-8","resultMessage":"Метод HTTP не поддерживается","error":"method-not-allowed"}'
            ).encode()
        )


async def test_r3_body_too_large_declared_or_streamed(crm: httpx.AsyncClient) -> None:
    expected = '{"result":"-9","resultMessage":"Превышен размер запроса","error":"body-too-large"}'.encode()
    big = b'{"x":"' + b"a" * 70_000 + b'"}'
    resp = await post(crm, "users_info", big)
    assert (resp.status_code, resp.content) == (413, expected)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for _ in range(20):
            yield b"a" * 4096

    streamed = await crm.post(
        "/api/users_info", content=chunks(), headers={"X-Client-ID": CLIENT_ID, "X-Client-Sign": "x"}
    )
    assert (streamed.status_code, streamed.content) == (413, expected)


async def test_r4_unknown_or_missing_client_id(crm: httpx.AsyncClient, core: Core) -> None:
    expected = '{"result":"-2","resultMessage":"Неизвестный X-Client-ID","error":"unknown-client"}'.encode()
    resp = await post(crm, "users_info", b"{}", client_id="00000000000000000000000000000000")
    assert (resp.status_code, resp.content) == (401, expected)
    missing = await crm.post("/api/users_info", content=b"{}")
    assert (missing.status_code, missing.content) == (401, expected)
    async with core.sessions() as s:  # unresolved: the platform log, not a domain's
        assert await s.scalar(select(func.count()).select_from(ApiLog)) == 0


async def test_client_id_header_is_case_insensitive_and_trimmed(crm: httpx.AsyncClient) -> None:
    body = b"{}"
    resp = await crm.post(
        "/api/users_info",
        content=body,
        headers={
            "x-client-id": f"  {CLIENT_ID.lower()} ",
            "X-CLIENT-SIGN": sign(CLIENT_ID, body, KEY).upper(),
        },
    )
    assert resp.status_code == 200


async def test_r5_service_disabled_or_domain_blocked(crm: httpx.AsyncClient, core: Core, f: FixtureF) -> None:
    expected = (
        '{"result":"-6","resultMessage":"Услуга «Интеграционный API» не подключена",'
        '"error":"service-disabled"}'
    ).encode()
    async with core.sessions() as s:
        await disable(s, f.domain_id, INTEGRATION_API, core.clock.now())
        await s.commit()
    resp = await post(crm, "users_info", b"{}")
    assert (resp.status_code, resp.content) == (403, expected)
    async with core.sessions() as s:
        await enable(s, f.domain_id, INTEGRATION_API, core.clock.now())
        domain = await s.get(Domain, f.domain_id)
        assert domain is not None
        domain.status = "blocked"
        await s.commit()
    resp = await post(crm, "users_info", b"{}")
    assert (resp.status_code, resp.content) == (403, expected)


async def test_r6_plain_http_while_encryption_is_on(app: FastAPI, f: FixtureF) -> None:
    async with api_client(app, https=False) as plain:
        resp = await post(plain, "users_info", b"{}")
    assert resp.status_code == 403
    assert resp.content == '{"result":"-5","resultMessage":"Требуется HTTPS","error":"tls-required"}'.encode()


async def test_r7_source_ip_not_allowlisted(app: FastAPI, f: FixtureF) -> None:
    async with api_client(app, ip=OTHER_IP) as other:
        # a forged X-Forwarded-For does not count: the peer is no trusted proxy
        resp = await post(other, "users_info", b"{}", headers={"X-Forwarded-For": CRM_IP})
    assert resp.status_code == 403
    assert (
        resp.content
        == (
            '{"result":"-4","resultMessage":"IP-адрес 198.51.100.7 не входит в белый список",'
            '"error":"ip-not-allowed"}'
        ).encode()
    )


async def test_trusted_proxy_forwards_source_ip_and_https(settings: Settings, f: FixtureF) -> None:
    """Behind a configured proxy, X-Forwarded-For and X-Forwarded-Proto count (§2.4, §2.5)."""
    proxied = create_app(settings.model_copy(update={"trusted_proxies": ["10.0.0.0/8"]}))
    try:
        async with api_client(proxied, ip="10.1.2.3", https=False) as proxy:
            ok = await post(
                proxy,
                "users_info",
                b"{}",
                headers={"X-Forwarded-For": f"{OTHER_IP}, {CRM_IP}", "X-Forwarded-Proto": "https"},
            )
            assert ok.status_code == 200
            denied = await post(
                proxy,
                "users_info",
                b"{}",
                headers={"X-Forwarded-For": CRM_IP + ", " + OTHER_IP, "X-Forwarded-Proto": "https"},
            )
            assert denied.status_code == 403 and body_of(denied)["result"] == "-4"  # type: ignore[index]
            plain = await post(proxy, "users_info", b"{}", headers={"X-Forwarded-For": CRM_IP})
            assert body_of(plain)["result"] == "-5"  # type: ignore[index]
    finally:
        await proxied.state.core.engine.dispose()


async def test_r8_missing_or_wrong_signature(crm: httpx.AsyncClient) -> None:
    expected = '{"result":"-3","resultMessage":"Неверная подпись запроса","error":"bad-signature"}'.encode()
    missing = await crm.post("/api/users_info", content=b"{}", headers={"X-Client-ID": CLIENT_ID})
    assert (missing.status_code, missing.content) == (401, expected)
    wrong = await post(crm, "users_info", b"{}", key="00000716ABDA6D4DFF10F82BCBBFC533")
    assert (wrong.status_code, wrong.content) == (401, expected)


async def test_r9_rate_limit_per_domain_and_method(crm: httpx.AsyncClient) -> None:
    for _ in range(30):  # users_info: 30 per minute
        assert (await post(crm, "users_info", b"{}")).status_code == 200
    resp = await post(crm, "users_info", b"{}")
    assert resp.status_code == 429
    assert resp.content == (
        '{"result":"-429","resultMessage":"Превышен лимит запросов","error":"rate-limited"}'.encode()
    )
    assert 1 <= int(resp.headers["retry-after"]) <= 60
    other_method = await post(crm, "get_user_restrictions", b"{}")  # another method's window
    assert other_method.status_code == 200


async def test_abuse_guard_bans_an_address_after_21_failures(app: FastAPI, f: FixtureF) -> None:
    async with api_client(app) as bad, api_client(app, ip="203.0.113.11") as good:
        for _ in range(11):
            assert (await post(bad, "users_info", b"{}", client_id="F" * 32)).status_code == 401
        for _ in range(10):
            assert (await post(bad, "users_info", b"{}", key="0" * 32)).status_code == 401
        banned = await post(bad, "call_info", b'{"session_id":"x"}')  # correct credentials, another method
        assert banned.status_code == 429 and body_of(banned)["result"] == "-429"  # type: ignore[index]
        assert 290 <= int(banned.headers["retry-after"]) <= 300
        assert (await post(good, "users_info", b"{}")).status_code == 200


async def test_r10_bad_json(crm: httpx.AsyncClient) -> None:
    expected = '{"result":"-1","resultMessage":"Некорректный JSON","error":"bad-request"}'.encode()
    for raw in (
        b'{"request_number":"+79161234567","from_pin":"501"',  # truncated, correctly signed
        b"[]",
        b'"x"',
        b"\xff\xfe{}",
        b"{'a': 1}",
    ):
        resp = await post(crm, "users_info", raw)
        assert (resp.status_code, resp.content) == (400, expected), raw


async def test_r11_bad_field(crm: httpx.AsyncClient) -> None:
    resp = await post(crm, "users_info", b'{"user_pin":["501"]}')
    assert resp.status_code == 400
    assert (
        resp.content
        == (
            '{"result":"-1","resultMessage":"Некорректное значение поля user_pin","error":"bad-request",'
            '"field":"user_pin"}'
        ).encode()
    )


async def test_domain_must_be_the_callers(crm: httpx.AsyncClient) -> None:
    resp = await post(crm, "users_info", b'{"domain":"other.example"}')
    assert resp.status_code == 200
    assert (
        resp.content
        == (
            '{"result":"-12","resultMessage":"Домен не соответствует X-Client-ID","error":"domain-mismatch"}'
        ).encode()
    )
    info = await post(crm, "call_info", b'{"domain":"other.example","session_id":"x"}')
    assert body_of(info) == {
        "result": "-12",
        "resultMessage": "Домен не соответствует X-Client-ID",
        "error": "domain-mismatch",
        "info": None,
    }
    same = await post(crm, "users_info", f'{{"domain":"{DOMAIN.upper()}"}}'.encode())
    assert body_of(same)["result"] == "0"  # type: ignore[index]


async def test_query_string_is_ignored(crm: httpx.AsyncClient) -> None:
    body = b'{"user_pin":"501"}'
    resp = await crm.post(
        "/api/users_info?user_pin=502",
        content=body,
        headers={"X-Client-ID": CLIENT_ID, "X-Client-Sign": sign(CLIENT_ID, body, KEY)},
    )
    assert body_of(resp)["users"] == F_USERS[:1]  # type: ignore[index]


async def test_one_log_row_per_request_never_the_key(crm: httpx.AsyncClient, core: Core, f: FixtureF) -> None:
    await post(crm, "users_info", b'{"user_pin":"501"}')
    await post(crm, "users_info", b"{}", key="0" * 32)
    await post(crm, "users_info", b"{}", base="/api-test")
    async with core.sessions() as s:
        rows = (await s.scalars(select(ApiLog).order_by(ApiLog.at))).all()
    assert [(r.domain_id, r.direction, r.method, r.status, r.result, r.test) for r in rows] == [
        (f.domain_id, "in", "users_info", 200, "0", False),
        (f.domain_id, "in", "users_info", 401, "-3", False),
        (f.domain_id, "in", "users_info", 200, "0", True),
    ]
    first = rows[0]
    assert first.source_ip == CRM_IP
    assert first.url == "https://api.example/api/users_info"
    assert first.request_body == '{"user_pin":"501"}'
    assert first.request_headers["x-client-sign"] == sign(CLIENT_ID, b'{"user_pin":"501"}', KEY)
    assert "Иванов Сергей" in first.response_body
    assert "signature OK" in first.verdict and "signature FAIL" in rows[1].verdict
    for row in rows:
        assert KEY not in json.dumps(
            [row.request_headers, row.request_body, row.response_body, row.verdict, row.url]
        )


async def test_unexpected_failure_is_500_and_leaves_nothing(core: Core, f: FixtureF) -> None:
    """Each method's work is one transaction: a handler that fails half-way has no effect."""

    async def half_then_fail(ctx: ApiContext, data: dict[str, object]) -> ApiReply:
        async with ctx.sessions.begin() as s:
            user = await s.scalar(select(User).where(User.domain_id == ctx.domain_id, User.pin == "501"))
            assert user is not None
            user.allow_international = True
            await s.flush()
            raise RuntimeError("half-way")
        return ApiReply(envelope())

    gateway = ApiGateway(
        settings=core.settings,
        sessions=core.sessions,
        box=core.box,
        clock=core.clock,
        services=None,
        methods={"boom": ApiMethod(name="boom", handler=half_then_fail)},
        sandbox=False,
    )
    outer = Starlette()
    outer.mount("/api", gateway)
    async with api_client(outer) as client:  # type: ignore[arg-type]
        resp = await post(client, "boom", b"{}")
    assert resp.status_code == 500
    assert resp.content == (
        '{"result":"-500","resultMessage":"Внутренняя ошибка","error":"internal-error"}'.encode()
    )
    async with core.sessions() as s:
        user = await s.scalar(select(User).where(User.domain_id == f.domain_id, User.pin == "501"))
        assert user is not None and user.allow_international is False
        assert await s.scalar(select(ApiLog.status).where(ApiLog.method == "boom")) == 500


async def test_openapi_document(crm: httpx.AsyncClient) -> None:
    resp = await crm.get("/api/openapi.json")
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["openapi"] == "3.1.0"
    assert {"/users_info", "/call_info", "/set_user_restrictions"} <= set(doc["paths"])
    assert doc["servers"] == [{"url": "https://api.example/api"}]
    assert doc["paths"]["/call_info"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "required"
    ] == ["session_id"]


async def test_two_tenants_see_only_their_own(app: FastAPI, core: Core, f: FixtureF) -> None:
    async with core.sessions() as s:
        d = await domains.create_domain(s, domains.DomainInput(name="b.vpbx.example"))
        await users.create_user(
            s, d.id, users.UserInput(name="sidorov", display_name="Б", pin="701"), box=core.box
        )
        await s.commit()
    client_b, key_b = await enable_api(core, d.id)
    async with api_client(app, ip="192.0.2.1", https=False) as b:
        mine = await post(b, "users_info", b"{}", client_id=client_b, key=key_b)
        assert [u["pin"] for u in body_of(mine)["users"]] == ["701"]  # type: ignore[index]
        foreign = await post(b, "users_info", b'{"user_pin":"501"}', client_id=client_b, key=key_b)
        assert body_of(foreign)["users"] == []  # type: ignore[index]
        call = await post(
            b,
            "call_info",
            b'{"session_id":"534dbe28-7e58-4705-89a4-26a308405464"}',
            client_id=client_b,
            key=key_b,
        )
        assert body_of(call)["result"] == "-11"  # type: ignore[index]
        # A's key with B's ID (and the reverse) is a bad signature
        assert (await post(b, "users_info", b"{}", client_id=client_b, key=KEY)).status_code == 401
    async with core.sessions() as s:
        logged = (await s.execute(select(ApiLog.domain_id, ApiLog.status))).all()
    assert {(row.domain_id, row.status) for row in logged} == {(d.id, 200), (d.id, 401)}
    assert all(row.domain_id != f.domain_id for row in logged)


async def test_raw_routes_bypass_the_method_table(settings: Settings) -> None:
    """``mount_api(..., raw_routes=...)`` (the recording download, §4.2) serves them under /api and /api-test
    with their own rules; they find the Core on the app and the source IP through the gateway's rule."""
    from starlette.types import Receive, Scope, Send

    from vpbx.app import build_core
    from vpbx.integration_api.gateway import client_ip, mount_api

    async def download(scope: Scope, receive: Receive, send: Send) -> None:
        core = scope["app"].state.core
        text = f"{scope['method']} {client_ip(scope, [])} {type(core).__name__}".encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": text})

    application = FastAPI()
    application.state.core = core = build_core(settings, None)
    mount_api(application, core, raw_routes=[("records_new_scheme/", download)])
    try:
        async with api_client(application, ip="195.49.187.78") as client:
            link = "records_new_scheme/record/download/" + "a" * 32 + "/195049187078"
            resp = await client.get(f"/api/{link}")
            sandbox = await client.get(f"/api-test/{link}")
            method = await client.get("/api/users_info")  # the method table is still the gateway's
    finally:
        await core.engine.dispose()
    assert (resp.status_code, resp.text) == (200, "GET 195.49.187.78 Core")
    assert (sandbox.status_code, sandbox.text) == (200, "GET 195.49.187.78 Core")
    assert method.status_code == 405 and body_of(method)["error"] == "method-not-allowed"  # type: ignore[index]


def test_trusted_proxies_must_be_addresses(settings: Settings) -> None:
    from pydantic import ValidationError

    assert Settings(**{**settings.model_dump(), "trusted_proxies": ["10.0.0.0/8", "::1"]}).trusted_proxies
    with pytest.raises(ValidationError, match="not an IP address or CIDR"):
        Settings(**{**settings.model_dump(), "trusted_proxies": ["proxy.example"]})
