"""The ``/amo`` routes of connecting and disconnecting against the emulator over real HTTP (amocrm.md §2.2,
§3.2–3.4, §6 examples 11–12): the install through the OAuth callback, the widget's ``/state``,
``/connect-ticket`` and ``/disconnect`` with emulator-minted tokens (admin, non-admin, bad audience, expired,
replayed), the disconnect hook with a good and a bad signature, and two accounts on two domains."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from tests.amocrm.emu_kit import Emu, emulator
from tests.amocrm.kit import (
    DEMO_ACCOUNT,
    DEMO_HOST,
    OTHER_ACCOUNT,
    OTHER_HOST,
    Pbx,
    bind,
    emu_fixture,
    install,
    install_and_bind,
    pbx_for,
)
from tests.conftest import make_tenant
from vpbx import billing
from vpbx.amocrm import binding as amo
from vpbx.store.models import AmoConnectTicket, AmoInstall, CrmBinding


@pytest.fixture
async def emu() -> AsyncIterator[Emu]:
    async with emulator(fixture=emu_fixture()) as e:
        yield e


@pytest.fixture
async def pbx(emu: Emu, tmp_path: Path, migrated_template: Path) -> AsyncIterator[Pbx]:
    async with pbx_for(emu, tmp_path, migrated_template) as p:
        yield p


async def _binding_rows(pbx: Pbx, account_id: int) -> list[tuple[str, str]]:
    async with pbx.core.sessions() as s:
        rows = await s.scalars(select(CrmBinding).where(CrmBinding.external_account_id == account_id))
        return [(r.status, r.disabled_reason) for r in rows]


async def test_install_exchanges_the_code_and_stores_sealed_tokens(pbx: Pbx, emu: Emu) -> None:
    row = await install(pbx.core, emu, DEMO_HOST)
    assert (row.base_domain, row.account_name, row.token_version, row.token_state) == (
        DEMO_HOST,
        "Demo",
        1,
        "ok",
    )
    assert row.client_id == emu.client_id and row.expires_at is not None
    access = pbx.core.box.open(row.access_token_enc)
    assert access.count(".") == 2 and access not in row.access_token_enc  # a JWT, kept sealed
    calls = [(e["method"], e["path"], e["status"]) for e in await emu.log(DEMO_HOST)]
    assert ("POST", "/oauth2/access_token", 200) in calls
    assert ("GET", "/api/v4/account", 200) in calls
    # installing again replaces the pair
    again = await install(pbx.core, emu, DEMO_HOST)
    assert again.token_version == 2 and pbx.core.box.open(again.access_token_enc) != access
    async with pbx.core.sessions() as s:
        assert len(list(await s.scalars(select(AmoInstall)))) == 1


async def test_callback_refusals_store_nothing(pbx: Pbx, emu: Emu) -> None:
    issued = await emu.install(DEMO_HOST, call=False)
    params = dict(issued["params"])
    cases = [
        ({**params, "client_id": "00000000-0000-4000-8000-000000000000"}, 400, "client-id-mismatch"),
        ({**params, "referer": "evil.example.test"}, 400, "host-not-allowed"),
        ({**params, "referer": "www.amocrm.ru"}, 400, "host-not-allowed"),
        ({**params, "code": "not-a-code"}, 502, "install-failed"),
        ({k: v for k, v in params.items() if k != "code"}, 400, "code-required"),
    ]
    for query, status, code in cases:
        resp = await pbx.http.get(f"{pbx.url}/amo/oauth/callback", params=query)
        assert (resp.status_code, resp.json()["error"]) == (status, code), query
    async with pbx.core.sessions() as s:
        assert list(await s.scalars(select(AmoInstall))) == []
    # the untouched code still works once, and a replay of it is refused (single use)
    ok = await pbx.http.get(f"{pbx.url}/amo/oauth/callback", params=params)
    assert ok.status_code == 200 and ok.json() == {"status": "installed", "account_id": DEMO_ACCOUNT}
    replay = await pbx.http.get(f"{pbx.url}/amo/oauth/callback", params=params)
    assert replay.status_code == 502


BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


async def test_a_browser_gets_a_page_in_words_with_the_same_status(pbx: Pbx, emu: Emu) -> None:
    url = f"{pbx.url}/amo/oauth/callback"
    issued = await emu.install(DEMO_HOST, call=False)
    params = dict(issued["params"])
    ok = await pbx.http.get(url, params=params, headers={"Accept": BROWSER})
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/html")
    assert '<html lang="ru">' in ok.text and "Виджет amoCRM установлен" in ok.text
    assert f"установлен в аккаунте amoCRM {DEMO_HOST}" in ok.text
    assert "«Интеграция с внешними системами»" in ok.text and 'href="/integrations"' in ok.text
    async with pbx.core.sessions() as s:  # the page is the same install as the JSON answer
        assert [i.amo_account_id for i in await s.scalars(select(AmoInstall))] == [DEMO_ACCOUNT]
    # the same code again (used: amoCRM refuses it), in English by the browser's language
    replay = await pbx.http.get(
        url, params=params, headers={"Accept": BROWSER, "Accept-Language": "en-US,en"}
    )
    assert replay.status_code == 502 and '<html lang="en">' in replay.text
    assert "The amoCRM widget is not installed" in replay.text
    assert "it is used already or expired" in replay.text and 'data-error="install-failed"' in replay.text
    # the cabinet's language cookie wins over the browser's
    cookie = {"Accept": BROWSER, "Accept-Language": "en", "Cookie": "vpbx_lang=ru"}
    refused = await pbx.http.get(url, params={**params, "referer": "evil.example.test"}, headers=cookie)
    assert refused.status_code == 400 and "Этот адрес amoCRM не разрешён" in refused.text
    denied = await pbx.http.get(url, params={"error": "access_denied"}, headers={"Accept": BROWSER})
    assert denied.status_code == 400 and "Доступ к аккаунту amoCRM не предоставлен" in denied.text
    # programs keep the JSON: no Accept, */*, or JSON first
    for accept in ("*/*", "application/json", "application/json, text/html;q=0.5"):
        resp = await pbx.http.get(url, params={"error": "access_denied"}, headers={"Accept": accept})
        assert (resp.status_code, resp.json()) == (400, {"error": "access-denied"}), accept


async def test_state_follows_install_bind_and_disconnect(pbx: Pbx, emu: Emu) -> None:
    state = await pbx.widget("GET", "/state")
    assert state.status_code == 200  # the widget runs, but amoCRM's OAuth callback has not reached us
    assert (state.json()["status"], state.json()["oauth_missing"]) == ("installed", True)
    await install(pbx.core, emu, DEMO_HOST)
    body = (await pbx.widget("GET", "/state")).json()
    assert body == {
        "status": "installed",
        "pbx_domain": None,
        "connected_at": None,
        "is_admin": True,
        "health": "ok",
        "oauth_missing": False,
        "order_url": None,
    }
    t = await make_tenant(pbx.core, "demo.vpbx.test")
    await bind(pbx.core, t.id, DEMO_ACCOUNT)
    body = (await pbx.widget("GET", "/state", user_id=5002, is_admin=False)).json()
    assert (body["status"], body["pbx_domain"], body["is_admin"]) == ("active", "demo.vpbx.test", False)
    assert isinstance(body["connected_at"], int)

    # §6 example 12: a non-admin cannot disconnect, an admin can; the result is example 11's
    denied = await pbx.widget("POST", "/disconnect", user_id=5002, is_admin=False)
    assert denied.status_code == 403 and denied.json() == {"error": "admin-required"}
    assert await _binding_rows(pbx, DEMO_ACCOUNT) == [("active", "")]
    done = await pbx.widget("POST", "/disconnect")
    assert done.status_code == 204 and done.content == b""
    assert await _binding_rows(pbx, DEMO_ACCOUNT) == [("disabled", "widget")]
    async with pbx.core.sessions() as s:
        assert await billing.counter(s, t.id, billing.EXTERNAL_INTEGRATIONS) == 0
        assert await amo.install_of(s, DEMO_ACCOUNT) is not None  # «Подключить» can link again
    assert (await pbx.widget("GET", "/state")).json()["status"] == "disabled"
    assert (await pbx.widget("POST", "/disconnect")).status_code == 204  # idempotent
    async with pbx.core.sessions() as s:
        assert await billing.counter(s, t.id, billing.EXTERNAL_INTEGRATIONS) == 0


async def test_bad_widget_tokens_are_401(pbx: Pbx, emu: Emu) -> None:
    await install(pbx.core, emu, DEMO_HOST)
    wrong_aud = await emu.disposable_token(
        account=DEMO_HOST, user_id=5001, is_admin=True, aud="https://x.test"
    )
    expired = await emu.disposable_token(
        account=DEMO_HOST, user_id=5001, is_admin=True, aud=pbx.url, ttl=-120
    )
    good = await emu.disposable_token(account=DEMO_HOST, user_id=5001, is_admin=True, aud=pbx.url)
    for path, method in (("/state", "GET"), ("/connect-ticket", "POST"), ("/disconnect", "POST")):
        for token in (wrong_aud, expired, "garbage", ""):
            resp = await pbx.widget(method, path, token=token)
            assert (resp.status_code, resp.json()) == (401, {"error": "widget-token-invalid"}), (path, token)
    assert (await pbx.widget("GET", "/state", token=good)).status_code == 200
    replayed = await pbx.widget("POST", "/connect-ticket", token=good)
    assert replayed.status_code == 401  # the same jti again
    async with pbx.core.sessions() as s:
        assert list(await s.scalars(select(AmoConnectTicket))) == []


async def test_connect_ticket_links_to_the_cabinet(pbx: Pbx, emu: Emu) -> None:
    assert (await pbx.widget("POST", "/connect-ticket")).json() == {"error": "not-installed"}
    await install(pbx.core, emu, DEMO_HOST)
    denied = await pbx.widget("POST", "/connect-ticket", user_id=5002, is_admin=False)
    assert denied.status_code == 403
    resp = await pbx.widget("POST", "/connect-ticket")
    assert resp.status_code == 200
    url = urlsplit(resp.json()["url"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{pbx.url}/integrations/amocrm/connect"
    raw = parse_qs(url.query)["ticket"][0]
    async with pbx.core.sessions() as s:
        ticket = await amo.peek_ticket(s, raw, pbx.core.clock.now())
        assert (ticket.amo_account_id, ticket.amo_user_id) == (DEMO_ACCOUNT, 5001)
    page = await pbx.http.get(resp.json()["url"])  # not logged in: the login keeps the ticket
    assert page.status_code == 303 and "ticket%3D" in page.headers["location"]
    # the CORS preflight from an amoCRM page (§3.3)
    pre = await pbx.http.options(
        f"{pbx.url}/amo/widget/v1/connect-ticket",
        headers={
            "Origin": "https://demo.amocrm.ru",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "X-Auth-Token",
        },
    )
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "https://demo.amocrm.ru"


async def test_uninstall_hook_disables_and_deletes(pbx: Pbx, emu: Emu) -> None:
    """§6 example 12: ``/__emu__/uninstall`` calls our disconnect hook with a valid signature."""
    t = await make_tenant(pbx.core, "demo.vpbx.test")
    await install_and_bind(pbx.core, emu, t.id, DEMO_HOST)
    out = await emu.uninstall(DEMO_HOST)
    assert out["status"] == 204, out
    assert await _binding_rows(pbx, DEMO_ACCOUNT) == [("disabled", "uninstall")]
    async with pbx.core.sessions() as s:
        assert await amo.install_of(s, DEMO_ACCOUNT) is None
        assert await billing.counter(s, t.id, billing.EXTERNAL_INTEGRATIONS) == 0
    body = (await pbx.widget("GET", "/state")).json()
    assert (body["status"], body["oauth_missing"]) == ("disabled", True)


async def test_bad_signature_is_believed_only_after_a_refused_refresh(pbx: Pbx, emu: Emu) -> None:
    t = await make_tenant(pbx.core, "demo.vpbx.test")
    await install_and_bind(pbx.core, emu, t.id, DEMO_HOST)
    async with pbx.core.sessions() as s:
        before = await amo.install_of(s, DEMO_ACCOUNT)
    assert before is not None
    # a forged hook while the grant is alive: the probe's refresh succeeds, so nothing is disconnected
    forged = await pbx.http.get(
        f"{pbx.url}/amo/oauth/disconnect",
        params={"account_id": str(DEMO_ACCOUNT), "client_uuid": emu.client_id, "signature": "0" * 64},
    )
    assert forged.status_code == 403 and forged.json() == {"error": "signature-invalid"}
    assert await _binding_rows(pbx, DEMO_ACCOUNT) == [("active", "")]
    async with pbx.core.sessions() as s:
        after = await amo.install_of(s, DEMO_ACCOUNT)
    assert after is not None and after.token_version == before.token_version + 1  # the rotated pair is kept
    # the stored pair is the live one: amoCRM accepts its refresh token
    refreshed = await pbx.http.post(
        f"{emu.account_url(DEMO_HOST)}/oauth2/access_token",
        json={
            "client_id": emu.client_id,
            "client_secret": emu.client_secret,
            "grant_type": "refresh_token",
            "refresh_token": pbx.core.box.open(after.refresh_token_enc),
            "redirect_uri": f"{pbx.url}/amo/oauth/callback",
        },
    )
    assert refreshed.status_code == 200
    # another client's hook and garbage are refused outright
    other = await pbx.http.get(
        f"{pbx.url}/amo/oauth/disconnect",
        params={"account_id": str(DEMO_ACCOUNT), "client_uuid": "x", "signature": "0" * 64},
    )
    assert other.status_code == 400
    # uninstalled for real, but the hook's signature is bad: the refused refresh confirms it
    out = await emu.uninstall(DEMO_HOST, bad_signature=True)
    assert out["status"] == 204, out
    assert await _binding_rows(pbx, DEMO_ACCOUNT) == [("disabled", "uninstall")]
    async with pbx.core.sessions() as s:
        assert await amo.install_of(s, DEMO_ACCOUNT) is None


async def test_two_accounts_on_two_domains_stay_apart(pbx: Pbx, emu: Emu) -> None:
    """§6 example 19's part here: each widget sees and disconnects only its own account's binding."""
    a = await make_tenant(pbx.core, "demo.vpbx.test")
    b = await make_tenant(pbx.core, "b.vpbx.test")
    await install_and_bind(pbx.core, emu, a.id, DEMO_HOST)
    await install_and_bind(pbx.core, emu, b.id, OTHER_HOST)
    mine = (await pbx.widget("GET", "/state", account=OTHER_HOST, user_id=6001)).json()
    assert (mine["status"], mine["pbx_domain"]) == ("active", "b.vpbx.test")
    assert (await pbx.widget("POST", "/disconnect", account=OTHER_HOST, user_id=6001)).status_code == 204
    assert await _binding_rows(pbx, OTHER_ACCOUNT) == [("disabled", "widget")]
    assert await _binding_rows(pbx, DEMO_ACCOUNT) == [("active", "")]
    out = await emu.uninstall(OTHER_HOST)
    assert out["status"] == 204
    async with pbx.core.sessions() as s:
        assert await amo.install_of(s, OTHER_ACCOUNT) is None
        assert await amo.install_of(s, DEMO_ACCOUNT) is not None
        assert await billing.counter(s, a.id, billing.EXTERNAL_INTEGRATIONS) == 1
        assert await billing.counter(s, b.id, billing.EXTERNAL_INTEGRATIONS) == 0
