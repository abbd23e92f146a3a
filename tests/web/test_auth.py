"""Login, lockout, sessions, CSRF, roles, language switch, security headers and secret-free logs."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

from tests.helpers import Cabinet, Tenant
from vpbx.app import Core
from vpbx.logs import configure_logging
from vpbx.pbx import users


async def test_unknown_user_and_wrong_password_get_the_same_answer(anon: Cabinet, t1: Tenant) -> None:
    wrong = await anon.login(t1.admin_login, "not-the-password")
    unknown = await anon.login("nobody@acme.vpbx.test", "not-the-password")
    unknown_domain = await anon.login("admin@nowhere.test", "not-the-password")
    assert wrong.status_code == unknown.status_code == unknown_domain.status_code == 401

    def message(text: str) -> str:
        return text.split('id="login-message">', 1)[1].split("<", 1)[0]

    assert message(wrong.text) == message(unknown.text) == message(unknown_domain.text)
    assert "Неверный логин или пароль." in wrong.text


async def test_brute_force_hits_the_lockout_even_with_the_right_password(
    anon: Cabinet, t1: Tenant, core: Core
) -> None:
    limit = core.settings.login.max_failures
    for _ in range(limit):
        assert (await anon.login(t1.admin_login, "guess")).status_code == 401
    locked = await anon.login(t1.admin_login, t1.admin_password)
    assert locked.status_code == 429
    assert "Слишком много неудачных попыток" in locked.text
    # an unknown login is locked out the same way: the lockout tells nothing about existence
    for _ in range(limit):
        await anon.login("ghost@acme.vpbx.test", "guess")
    assert (await anon.login("ghost@acme.vpbx.test", "guess")).status_code == 429


async def test_lockout_expires(anon: Cabinet, t1: Tenant, core: Core) -> None:
    from vpbx.clock import FakeClock

    clock = FakeClock()
    core.clock = clock
    for _ in range(core.settings.login.max_failures):
        await anon.login(t1.admin_login, "guess")
    assert (await anon.login(t1.admin_login, t1.admin_password)).status_code == 429
    clock.advance(core.settings.login.lockout_s + 1)
    assert (await anon.login(t1.admin_login, t1.admin_password)).status_code == 303


async def test_login_without_form_token_is_refused(anon: Cabinet, t1: Tenant) -> None:
    resp = await anon.client.post("/login", data={"login": t1.admin_login, "password": t1.admin_password})
    assert resp.status_code == 403
    assert "vpbx_session" not in resp.cookies


async def test_session_cookie_flags_and_logout(anon: Cabinet, t1: Tenant) -> None:
    resp = await anon.login(t1.admin_login, t1.admin_password)
    cookie = resp.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    assert (await anon.get("/")).status_code == 200
    out = await anon.post("/logout")
    assert out.status_code == 303
    assert (await anon.get("/")).status_code == 303  # the server-side session is gone


async def test_open_redirect_is_refused(anon: Cabinet, t1: Tenant) -> None:
    page = await anon.get("/login")
    token = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    resp = await anon.client.post(
        "/login",
        data={
            "login": t1.admin_login,
            "password": t1.admin_password,
            "csrf_token": token,
            "next": "//evil.example/",
        },
    )
    assert resp.headers["location"] == "/"


async def test_user_role_cannot_open_admin_pages(anon: Cabinet, t1: Tenant, core: Core) -> None:
    async with core.sessions() as s:
        await users.create_user(
            s,
            t1.id,
            users.UserInput(name="clerk", display_name="Clerk", pin="150", web_password="Clerk-Password-1"),
            box=core.box,
        )
        await s.commit()
    resp = await anon.login("clerk@acme.vpbx.test", "Clerk-Password-1")
    assert resp.headers["location"] == "/me"
    me = await anon.get("/me")
    assert me.status_code == 200 and "150" in me.text
    assert (await anon.get("/users")).status_code == 403
    assert (await anon.post("/users", {"name": "x", "display_name": "x", "pin": "77"})).status_code == 403


async def test_language_switch(admin1: Cabinet) -> None:
    assert "Пользователи" in (await admin1.get("/")).text
    resp = await admin1.get("/lang/en?next=/users")
    assert resp.status_code == 303 and resp.headers["location"] == "/users"
    page = await admin1.get("/")
    assert "Users" in page.text and "Пользователи" not in page.text and 'lang="en"' in page.text
    await admin1.get("/lang/ru?next=/")
    assert "Пользователи" in (await admin1.get("/")).text


async def test_security_headers_health_and_metrics(anon: Cabinet) -> None:
    page = await anon.get("/login")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert (await anon.get("/healthz")).text == "ok\n"
    metrics = await anon.get("/metrics")
    assert "vpbx_http_requests_total" in metrics.text


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """The process's real log pipeline (JSON, debug level), written to a buffer instead of stderr."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging(json=True, level="debug")
    buf = io.StringIO()
    root.handlers[0].setStream(buf)  # type: ignore[attr-defined]
    yield buf
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


async def test_secrets_never_reach_the_logs(
    captured_logs: io.StringIO, anon: Cabinet, admin1: Cabinet, t1: Tenant, core: Core
) -> None:
    sip_secret = "Sip-Secret-Value-42"
    web_secret = "Web-Secret-Value-42"
    await anon.login(t1.admin_login, "Wrong-Secret-Value-42")
    resp = await admin1.post(
        "/users",
        {
            "display_name": "Logged",
            "name": "logged",
            "pin": "321",
            "sip_password": sip_secret,
            "web_password": web_secret,
        },
    )
    assert resp.status_code == 303
    await anon.login("logged@acme.vpbx.test", web_secret)
    from vpbx.logs import get_logger

    get_logger("test").info("probe", password=web_secret, sip_password=sip_secret, secret_key="k" * 40)
    text = captured_logs.getvalue()
    assert "login.failed" in text and "http.request" in text  # the logs were captured
    for secret in (
        sip_secret,
        web_secret,
        "Wrong-Secret-Value-42",
        core.settings.secret_key.get_secret_value(),
        admin1.csrf,
    ):
        assert secret not in text, [line for line in text.splitlines() if secret in line][:3]


async def test_user_changes_own_password_and_other_sessions_end(
    app: FastAPI, anon: Cabinet, admin1: Cabinet, t1: Tenant
) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        other = Cabinet(c)
        assert (await other.login(t1.admin_login, t1.admin_password)).status_code == 303
        bad = await admin1.post(
            "/me/password",
            {"current_password": "wrong", "new_password": "New-Pass-123", "repeat_password": "New-Pass-123"},
        )
        assert bad.status_code == 422 and 'id="err-current_password"' in bad.text
        mismatch = await admin1.post(
            "/me/password",
            {"current_password": t1.admin_password, "new_password": "New-Pass-123", "repeat_password": "x"},
        )
        assert mismatch.status_code == 422 and 'id="err-repeat_password"' in mismatch.text
        ok = await admin1.post(
            "/me/password",
            {
                "current_password": t1.admin_password,
                "new_password": "New-Pass-123",
                "repeat_password": "New-Pass-123",
            },
        )
        assert ok.status_code == 200 and 'id="password-saved"' in ok.text
        assert (await admin1.get("/")).status_code == 200  # this session lives on
        assert (await other.get("/")).status_code == 303  # the other one is logged out
    assert (await anon.login(t1.admin_login, t1.admin_password)).status_code == 401
    assert (await anon.login(t1.admin_login, "New-Pass-123")).status_code == 303
