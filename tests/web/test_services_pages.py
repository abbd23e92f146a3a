"""The services page: states, fees, the confirmation with two sums, switching, the ledger, two tenants."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest

from tests.helpers import Cabinet, Tenant
from vpbx import billing
from vpbx.app import Core
from vpbx.clock import FakeClock
from vpbx.store.models import Charge

# 12:00 in Moscow on 21 June 2025: ten days of thirty are left, today included
JUNE_21 = dt.datetime(2025, 6, 21, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def clock(core: Core) -> FakeClock:
    """The cabinet's clock, set after login (sessions made with the real time stay valid)."""
    fake = FakeClock(JUNE_21)
    core.clock = fake
    return fake


async def _charges(core: Core, t: Tenant) -> list[Charge]:
    async with core.sessions() as s:
        return list(await billing.charges_of(s, t.id))


def _hidden(html: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert m, name
    return m.group(1)


async def test_page_lists_every_service_with_state_and_fee(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    async with core.sessions() as s:
        await billing.enable(s, t1.id, "external_integrations", JUNE_21)
        await billing.enable(s, t1.id, "external_integrations", JUNE_21)
        await billing.enable(s, t1.id, "call_recording", JUNE_21)
        await s.commit()
    page = await admin1.get("/services")
    assert page.status_code == 200
    html = page.text
    for name in (
        "Интеграционный API",
        "Интеграция с внешними системами",
        "Автоинформатор",
        "Запись разговоров",
    ):
        assert name in html
    assert 'id="counter-external_integrations">2<' in html
    assert re.search(r'id="fee-external_integrations">1\xa0000,00\xa0₽<', html)
    assert re.search(r'id="state-call_recording">[^<]*Подключена', html)
    assert re.search(r'id="state-autoinformer">[^<]*Не подключена', html)
    assert re.search(r'id="monthly-total">1\xa0300,00\xa0₽<', html)
    # the counted one has no switch here; plain ones do
    assert (
        'id="enable-external_integrations"' not in html and 'id="disable-external_integrations"' not in html
    )
    assert 'id="enable-autoinformer"' in html and 'id="disable-call_recording"' in html


async def test_enable_shows_both_sums_then_charges_them(
    admin1: Cabinet, core: Core, t1: Tenant, clock: FakeClock
) -> None:
    confirm = await admin1.get("/services/integration_api/enable")
    assert confirm.status_code == 200
    assert 'id="confirm-enable"' in confirm.text
    assert re.search(r'id="quote-fee">990,00\xa0₽<', confirm.text)
    assert re.search(r'id="quote-charge">330,00\xa0₽<', confirm.text)
    assert "Подключить" in confirm.text
    assert await _charges(core, t1) == []  # showing the sums charges nothing

    resp = await admin1.post(
        "/services/integration_api/enable",
        {
            "quoted_fee": _hidden(confirm.text, "quoted_fee"),
            "quoted_charge": _hidden(confirm.text, "quoted_charge"),
        },
    )
    assert resp.status_code == 303
    rows = await _charges(core, t1)
    assert [(c.kind, c.service_code, c.amount) for c in rows] == [
        ("charge", "integration_api", Decimal("330.00"))
    ]
    page = await admin1.get("/services")
    assert re.search(r'id="state-integration_api">[^<]*Подключена', page.text)
    assert re.search(r'id="monthly-total">990,00\xa0₽<', page.text)
    assert "21.06.2025 12:00" in page.text  # the ledger shows the domain's wall-clock time
    assert "−330,00" in page.text


async def test_enable_twice_charges_once(admin1: Cabinet, core: Core, t1: Tenant, clock: FakeClock) -> None:
    body = {"quoted_fee": "300.00", "quoted_charge": "100.00"}
    assert (await admin1.post("/services/call_recording/enable", body)).status_code == 303
    assert (await admin1.post("/services/call_recording/enable", body)).status_code == 303
    assert (await admin1.get("/services/call_recording/enable")).status_code == 303  # nothing to confirm
    assert [c.amount for c in await _charges(core, t1)] == [Decimal("100.00")]


async def test_changed_sums_are_confirmed_again(
    admin1: Cabinet, core: Core, t1: Tenant, clock: FakeClock
) -> None:
    confirm = await admin1.get("/services/autoinformer/enable")
    shown = {
        "quoted_fee": _hidden(confirm.text, "quoted_fee"),
        "quoted_charge": _hidden(confirm.text, "quoted_charge"),
    }
    clock.set(dt.datetime(2025, 6, 25, 9, 0, tzinfo=dt.UTC))  # a few days pass before «Подключить»
    resp = await admin1.post("/services/autoinformer/enable", shown)
    assert resp.status_code == 409
    assert 'id="sums-changed"' in resp.text
    assert re.search(r'id="quote-charge">298,00\xa0₽<', resp.text)  # 1490 × 6 / 30
    assert await _charges(core, t1) == []
    resp = await admin1.post(
        "/services/autoinformer/enable",
        {
            "quoted_fee": _hidden(resp.text, "quoted_fee"),
            "quoted_charge": _hidden(resp.text, "quoted_charge"),
        },
    )
    assert resp.status_code == 303
    assert [c.amount for c in await _charges(core, t1)] == [Decimal("298.00")]


async def test_enable_without_the_confirmation_charges_nothing(
    admin1: Cabinet, core: Core, t1: Tenant, clock: FakeClock
) -> None:
    resp = await admin1.post("/services/autoinformer/enable", {})
    assert resp.status_code == 409
    assert 'id="confirm-enable"' in resp.text
    assert await _charges(core, t1) == []


async def test_disable_asks_then_switches_off_without_refund(
    admin1: Cabinet, core: Core, t1: Tenant, clock: FakeClock
) -> None:
    async with core.sessions() as s:
        await billing.enable(s, t1.id, "call_recording", JUNE_21)
        await s.commit()
    confirm = await admin1.get("/services/call_recording/disable")
    assert confirm.status_code == 200
    assert 'id="confirm-disable"' in confirm.text and "Отключить" in confirm.text
    async with core.sessions() as s:
        assert await billing.is_enabled(s, t1.id, "call_recording")  # asking changes nothing
    assert (await admin1.post("/services/call_recording/disable", {})).status_code == 303
    async with core.sessions() as s:
        assert not await billing.is_enabled(s, t1.id, "call_recording")
    assert [c.kind for c in await _charges(core, t1)] == ["charge"]
    assert (await admin1.get("/services/call_recording/disable")).status_code == 303


async def test_counted_service_is_not_switched_by_hand(
    admin1: Cabinet, core: Core, t1: Tenant, clock: FakeClock
) -> None:
    for path in ("/services/external_integrations/enable", "/services/external_integrations/disable"):
        assert (await admin1.get(path)).status_code == 404
        assert (
            await admin1.post(path, {"quoted_fee": "500.00", "quoted_charge": "166.67"})
        ).status_code == 404
    async with core.sessions() as s:
        assert await billing.counter(s, t1.id, "external_integrations") == 0
    assert await _charges(core, t1) == []


async def test_unknown_service_is_not_found(admin1: Cabinet) -> None:
    assert (await admin1.get("/services/nope/enable")).status_code == 404
    assert (await admin1.post("/services/nope/enable", {})).status_code == 404


async def test_ledger_paginates(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    async with core.sessions() as s:
        for i in range(23):
            await billing.enable(s, t1.id, "external_integrations", JUNE_21 + dt.timedelta(hours=i))
        await s.commit()
    first = await admin1.get("/services")
    second = await admin1.get("/services?page=2")
    assert first.text.count('class="ledger-row"') == 20
    assert second.text.count('class="ledger-row"') == 3
    assert "Страница 1 из 2" in first.text


async def test_csrf_is_required(admin1: Cabinet, core: Core, t1: Tenant, clock: FakeClock) -> None:
    resp = await admin1.post("/services/call_recording/disable", {}, csrf=False)
    assert resp.status_code == 403
    async with core.sessions() as s:
        await billing.enable(s, t1.id, "call_recording", JUNE_21)
        await s.commit()
    assert (await admin1.post("/services/call_recording/disable", {}, csrf=False)).status_code == 403
    async with core.sessions() as s:
        assert await billing.is_enabled(s, t1.id, "call_recording")


async def test_tenants_see_and_switch_only_their_own(
    admin1: Cabinet, admin2: Cabinet, core: Core, t1: Tenant, t2: Tenant, clock: FakeClock
) -> None:
    async with core.sessions() as s:
        await billing.enable(s, t1.id, "integration_api", JUNE_21)
        await s.commit()
    page2 = await admin2.get("/services")
    assert 'id="enable-integration_api"' in page2.text  # off for the second domain
    assert "330,00" not in page2.text  # and the first domain's charge is not in its ledger
    # the second admin switching a service off touches only the second domain
    assert (await admin2.post("/services/integration_api/disable", {})).status_code == 303
    assert (
        await admin2.post(
            "/services/call_recording/enable", {"quoted_fee": "300.00", "quoted_charge": "100.00"}
        )
    ).status_code == 303
    async with core.sessions() as s:
        assert await billing.is_enabled(s, t1.id, "integration_api")
        assert not await billing.is_enabled(s, t1.id, "call_recording")
        assert await billing.is_enabled(s, t2.id, "call_recording")
    assert [c.service_code for c in await _charges(core, t1)] == ["integration_api"]
    assert [c.service_code for c in await _charges(core, t2)] == ["call_recording"]


async def test_english_switch(admin1: Cabinet) -> None:
    admin1.client.cookies.set("vpbx_lang", "en")
    page = await admin1.get("/services")
    assert "Services management" in page.text and "Integration API" in page.text


async def test_anonymous_is_sent_to_login(anon: Cabinet) -> None:
    resp = await anon.get("/services")
    assert resp.status_code == 303
    assert resp.headers["location"].startswith("/login")
