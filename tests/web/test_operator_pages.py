"""The operator's pages: domains with their first admin, blocking, the price list, and who may open what."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from tests.helpers import Cabinet, Tenant
from vpbx import billing
from vpbx.app import Core
from vpbx.crypto import hash_password
from vpbx.pbx import users as users_svc
from vpbx.sip.digest import ha1
from vpbx.store.models import Domain, Operator, ServicePrice, User

OPERATOR_LOGIN = "root"
OPERATOR_PASSWORD = "Operator-Password-1"

NEW_DOMAIN = {
    "name": "newco.vpbx.test",
    "timezone": "Asia/Yekaterinburg",
    "channel_limit": "25",
    "admin_name": "boss",
    "admin_pin": "101",
    "admin_password": "Boss-Password-1",
}


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver", follow_redirects=False
    )


@pytest.fixture
async def operator(app: FastAPI, core: Core) -> AsyncIterator[Cabinet]:
    async with core.sessions() as s:
        s.add(Operator(login=OPERATOR_LOGIN, password_hash=hash_password(OPERATOR_PASSWORD)))
        await s.commit()
    async with _client(app) as c:
        cab = Cabinet(c)
        resp = await cab.login(OPERATOR_LOGIN, OPERATOR_PASSWORD)
        assert resp.status_code == 303
        assert resp.headers["location"] == "/operator/domains"
        yield cab


@pytest.fixture
async def fresh(app: FastAPI) -> AsyncIterator[Cabinet]:
    """A second browser, for logging in as someone else."""
    async with _client(app) as c:
        yield Cabinet(c)


async def _domain(core: Core, name: str) -> Domain | None:
    async with core.sessions() as s:
        d: Domain | None = await s.scalar(select(Domain).where(Domain.name == name))
        return d


async def _domain_count(core: Core) -> int:
    async with core.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(Domain)) or 0)


# --- domains ---------------------------------------------------------------------------------------------


async def test_create_domain_with_its_admin_then_log_in_as_that_admin(
    operator: Cabinet, fresh: Cabinet, core: Core
) -> None:
    form = await operator.get("/operator/domains/new")
    assert form.status_code == 200 and 'id="f-admin_pin"' in form.text
    resp = await operator.post("/operator/domains", NEW_DOMAIN)
    assert resp.status_code == 303, resp.text
    d = await _domain(core, "newco.vpbx.test")
    assert d is not None
    assert (d.timezone, d.channel_limit, d.status) == ("Asia/Yekaterinburg", 25, "active")
    async with core.sessions() as s:
        admin = await s.scalar(select(User).where(User.domain_id == d.id))
        assert admin is not None and (admin.name, admin.pin, admin.role) == ("boss", "101", "admin")

    listing = await operator.get("/operator/domains?q=newco")
    assert "newco.vpbx.test" in listing.text
    login = await fresh.login("boss@newco.vpbx.test", "Boss-Password-1")
    assert login.status_code == 303 and login.headers["location"] == "/"
    desk = await fresh.get("/")
    assert desk.status_code == 200 and "newco.vpbx.test" in desk.text


async def test_bad_admin_pin_means_no_domain_either(operator: Cabinet, core: Core) -> None:
    before = await _domain_count(core)
    resp = await operator.post("/operator/domains", {**NEW_DOMAIN, "admin_pin": "1x"})
    assert resp.status_code == 422
    assert 'id="err-admin_pin"' in resp.text
    assert 'value="newco.vpbx.test"' in resp.text  # the form keeps what was typed
    assert await _domain_count(core) == before
    assert await _domain(core, "newco.vpbx.test") is None


async def test_errors_of_domain_and_admin_show_together(operator: Cabinet, core: Core, t1: Tenant) -> None:
    before = await _domain_count(core)
    resp = await operator.post(
        "/operator/domains",
        {
            **NEW_DOMAIN,
            "name": t1.name,  # taken
            "timezone": "Mars/Olympus",
            "channel_limit": "0",
            "admin_name": "Bad Name",
            "admin_pin": "",
            "admin_password": "short",
        },
    )
    assert resp.status_code == 422
    for fld in ("name", "timezone", "channel_limit", "admin_name", "admin_pin", "admin_password"):
        assert f'id="err-{fld}"' in resp.text, fld
    assert await _domain_count(core) == before


async def test_admin_password_is_required(operator: Cabinet, core: Core) -> None:
    resp = await operator.post("/operator/domains", {**NEW_DOMAIN, "admin_password": ""})
    assert resp.status_code == 422 and 'id="err-admin_password"' in resp.text
    assert await _domain(core, "newco.vpbx.test") is None


async def test_edit_domain(operator: Cabinet, core: Core, t1: Tenant) -> None:
    page = await operator.get(f"/operator/domains/{t1.id}")
    assert page.status_code == 200 and f"admin@{t1.name}" in page.text
    resp = await operator.post(
        f"/operator/domains/{t1.id}", {"name": t1.name, "timezone": "Europe/Samara", "channel_limit": "40"}
    )
    assert resp.status_code == 303
    d = await _domain(core, t1.name)
    assert d is not None and (d.timezone, d.channel_limit) == ("Europe/Samara", 40)

    bad = await operator.post(
        f"/operator/domains/{t1.id}",
        {"name": "not a domain", "timezone": "Europe/Moscow", "channel_limit": "5"},
    )
    assert bad.status_code == 422 and 'id="err-name"' in bad.text
    d = await _domain(core, t1.name)
    assert d is not None and d.channel_limit == 40


async def test_renaming_a_domain_keeps_sip_digests_valid(operator: Cabinet, core: Core, t1: Tenant) -> None:
    resp = await operator.post(
        f"/operator/domains/{t1.id}",
        {"name": "renamed.vpbx.test", "timezone": "Europe/Moscow", "channel_limit": "10"},
    )
    assert resp.status_code == 303
    async with core.sessions() as s:
        u = await s.scalar(select(User).where(User.domain_id == t1.id))
        assert u is not None
        assert u.ha1_md5 == ha1(u.sip_login, "renamed.vpbx.test", users_svc.sip_password(u, core.box), "MD5")


async def test_block_needs_a_reason_and_locks_the_admin_out(
    operator: Cabinet, admin1: Cabinet, fresh: Cabinet, core: Core, t1: Tenant
) -> None:
    resp = await operator.post(f"/operator/domains/{t1.id}/block", {"reason": "  "})
    assert resp.status_code == 422 and 'id="err-reason"' in resp.text
    d = await _domain(core, t1.name)
    assert d is not None and d.status == "active"

    resp = await operator.post(f"/operator/domains/{t1.id}/block", {"reason": "Неоплаченный счёт"})
    assert resp.status_code == 303
    d = await _domain(core, t1.name)
    assert d is not None and (d.status, d.blocked_reason) == ("blocked", "Неоплаченный счёт")
    page = await operator.get(f"/operator/domains/{t1.id}")
    assert 'id="unblock"' in page.text and "Неоплаченный счёт" in page.text

    # a new login is refused with the reason, and the open session stops working
    login = await fresh.login(t1.admin_login, t1.admin_password)
    assert login.status_code == 403
    assert "Неоплаченный счёт" in login.text
    assert (await admin1.get("/users")).status_code == 303

    assert (await operator.post(f"/operator/domains/{t1.id}/unblock", {})).status_code == 303
    d = await _domain(core, t1.name)
    assert d is not None and (d.status, d.blocked_reason) == ("active", None)
    assert (await fresh.login(t1.admin_login, t1.admin_password)).status_code == 303


async def test_unknown_domain_is_not_found(operator: Cabinet) -> None:
    for path in ("/operator/domains/7b0c1d0e-0000-4000-8000-000000000000", "/operator/domains/not-a-uuid"):
        assert (await operator.get(path)).status_code == 404
        assert (
            await operator.post(path, {"name": "x.vpbx.test", "timezone": "UTC", "channel_limit": "1"})
        ).status_code == 404
        assert (await operator.post(path + "/block", {"reason": "x"})).status_code == 404
        assert (await operator.post(path + "/unblock", {})).status_code == 404


async def test_domains_list_searches_and_paginates(operator: Cabinet, core: Core) -> None:
    from vpbx.pbx import domains

    async with core.sessions() as s:
        for i in range(23):
            await domains.create_domain(s, domains.DomainInput(name=f"d{i:02d}.vpbx.test"))
        await domains.create_domain(s, domains.DomainInput(name="zeta.example.org"))
        await s.commit()
    first = await operator.get("/operator/domains")
    assert first.text.count('id="domain-') == 20 and "Страница 1 из 2" in first.text
    found = await operator.get("/operator/domains?q=zeta")
    assert found.text.count('id="domain-') == 1 and "zeta.example.org" in found.text


# --- price list ------------------------------------------------------------------------------------------


async def test_prices_page_shows_defaults_and_saves(operator: Cabinet, core: Core) -> None:
    page = await operator.get("/operator/prices")
    assert page.status_code == 200
    assert 'value="990.00"' in page.text and 'value="1490.00"' in page.text
    resp = await operator.post(
        "/operator/prices",
        {
            "fee_integration_api": "1 000,50",
            "fee_external_integrations": "600",
            "fee_autoinformer": "1490.00",
            "fee_call_recording": "0",
        },
    )
    assert resp.status_code == 303
    async with core.sessions() as s:
        assert await billing.prices(s) == {
            "integration_api": Decimal("1000.50"),
            "external_integrations": Decimal("600.00"),
            "autoinformer": Decimal("1490.00"),
            "call_recording": Decimal("0.00"),
        }
    saved = await operator.get(resp.headers["location"])
    assert 'id="saved"' in saved.text and 'value="1000.50"' in saved.text


async def test_bad_price_saves_nothing(operator: Cabinet, core: Core) -> None:
    resp = await operator.post(
        "/operator/prices",
        {
            "fee_integration_api": "500",
            "fee_external_integrations": "1000000.01",
            "fee_autoinformer": "12.345",
            "fee_call_recording": "",
        },
    )
    assert resp.status_code == 422
    for code in ("external_integrations", "autoinformer", "call_recording"):
        assert f'id="err-fee_{code}"' in resp.text
    assert 'id="err-fee_integration_api"' not in resp.text
    async with core.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(ServicePrice)) == 0
        assert await billing.price(s, "integration_api") == Decimal("990.00")


# --- roles -----------------------------------------------------------------------------------------------


OPERATOR_GETS = ("/operator/domains", "/operator/domains/new", "/operator/prices")
DOMAIN_GETS = ("/", "/users", "/services", "/services/integration_api/enable", "/me")


async def test_domain_admin_gets_403_on_operator_pages(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    for path in (*OPERATOR_GETS, f"/operator/domains/{t1.id}"):
        assert (await admin1.get(path)).status_code == 403, path
    before = await _domain_count(core)
    assert (await admin1.post("/operator/domains", NEW_DOMAIN)).status_code == 403
    assert (await admin1.post(f"/operator/domains/{t1.id}/block", {"reason": "x"})).status_code == 403
    assert (await admin1.post("/operator/prices", {"fee_integration_api": "1"})).status_code == 403
    assert await _domain_count(core) == before
    d = await _domain(core, t1.name)
    assert d is not None and d.status == "active"
    async with core.sessions() as s:
        assert await billing.price(s, "integration_api") == Decimal("990.00")


async def test_domain_user_gets_403_on_operator_pages(fresh: Cabinet, core: Core, t1: Tenant) -> None:
    async with core.sessions() as s:
        await users_svc.create_user(
            s,
            t1.id,
            users_svc.UserInput(
                name="clerk", display_name="Clerk", pin="205", web_password="Clerk-Password-1"
            ),
            box=core.box,
        )
        await s.commit()
    assert (await fresh.login(f"clerk@{t1.name}", "Clerk-Password-1")).status_code == 303
    for path in OPERATOR_GETS:
        assert (await fresh.get(path)).status_code == 403, path
    assert (await fresh.get("/services")).status_code == 403  # services are for the domain admin


async def test_operator_gets_403_on_domain_pages(operator: Cabinet, core: Core, t1: Tenant) -> None:
    for path in DOMAIN_GETS:
        assert (await operator.get(path)).status_code == 403, path
    resp = await operator.post(
        "/services/integration_api/enable", {"quoted_fee": "990.00", "quoted_charge": "330.00"}
    )
    assert resp.status_code == 403


async def test_anonymous_is_sent_to_login(anon: Cabinet) -> None:
    for path in OPERATOR_GETS:
        resp = await anon.get(path)
        assert resp.status_code == 303 and resp.headers["location"].startswith("/login"), path


async def test_csrf_is_required(operator: Cabinet, core: Core, t1: Tenant) -> None:
    resp = await operator.post(f"/operator/domains/{t1.id}/block", {"reason": "x"}, csrf=False)
    assert resp.status_code == 403
    d = await _domain(core, t1.name)
    assert d is not None and d.status == "active"
