"""«Интеграция с внешними системами» in the cabinet (amocrm.md F2–F4, F15; §6 examples 10, 11, 13) over ASGI:
the connect page from a widget ticket with the fee modal, the F4 modal and the reverse refusal, the F3
refusal and its mirror on the Integration API page, switching off, the login that keeps the ticket, and two
tenants."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from tests.amocrm.kit import DEMO_ACCOUNT, OTHER_ACCOUNT, bind, insert_install
from tests.helpers import Cabinet, Tenant
from vpbx import billing
from vpbx.amocrm import binding as amo
from vpbx.app import Core
from vpbx.clock import FakeClock
from vpbx.integration_api.settings import ensure_settings
from vpbx.pbx import users
from vpbx.store.models import ApiSettings, CrmBinding

JUNE_21 = dt.datetime(2025, 6, 21, 9, 0, tzinfo=dt.UTC)  # 12:00 in Moscow: ten days of thirty left


@pytest.fixture
def clock(core: Core) -> FakeClock:
    """The cabinet's clock, set after login (sessions made with the real time stay valid)."""
    fake = FakeClock(JUNE_21)
    core.clock = fake
    return fake


@pytest.fixture
async def installs(core: Core) -> None:
    await insert_install(core, DEMO_ACCOUNT, "demo.amocrm.ru", now=JUNE_21)
    await insert_install(core, OTHER_ACCOUNT, "other.amocrm.ru", now=JUNE_21)


async def _ticket(core: Core, account_id: int) -> str:
    async with core.sessions() as s:
        raw = await amo.issue_ticket(s, account_id=account_id, user_id=5001, now=core.clock.now())
        await s.commit()
        return raw


def _hidden(html: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert m, name
    return m.group(1)


async def _state(core: Core, t: Tenant) -> tuple[int, list[tuple[int, str]]]:
    async with core.sessions() as s:
        rows = await s.scalars(
            select(CrmBinding).where(CrmBinding.domain_id == t.id).order_by(CrmBinding.connected_at)
        )
        return (
            await billing.counter(s, t.id, billing.EXTERNAL_INTEGRATIONS),
            [(r.external_account_id, r.status) for r in rows],
        )


async def _press_connect(admin: Cabinet, page_html: str) -> int:
    resp = await admin.post(
        "/integrations/amocrm/connect",
        {
            "ticket": _hidden(page_html, "ticket"),
            "quoted_fee": _hidden(page_html, "quoted_fee"),
            "quoted_charge": _hidden(page_html, "quoted_charge"),
        },
    )
    return resp.status_code


async def test_page_says_not_linked_and_sits_among_the_settings_tabs(admin1: Cabinet) -> None:
    page = await admin1.get("/integrations")
    assert page.status_code == 200
    assert "Интеграция с внешними системами" in page.text and "Интеграция с системой amoCRM" in page.text
    assert re.search(r'id="amocrm-state">Не подключено<', page.text)
    assert 'id="settings-tab-integrations"' in page.text
    assert 'id="integrations-counter">0<' in page.text
    assert 'id="tile-link"' in (await admin1.get("/")).text


async def test_connect_shows_both_sums_then_binds_counts_and_charges(
    admin1: Cabinet, core: Core, t1: Tenant, clock: FakeClock, installs: None
) -> None:
    raw = await _ticket(core, DEMO_ACCOUNT)
    page = await admin1.get(f"/integrations/amocrm/connect?ticket={raw}")
    assert page.status_code == 200
    assert 'id="connect-ready"' in page.text and "demo.amocrm.ru" in page.text
    assert re.search(r'id="quote-fee">500,00\xa0₽<', page.text)
    assert re.search(r'id="quote-charge">166,67\xa0₽<', page.text)
    assert await _state(core, t1) == (0, [])  # showing the sums changes nothing

    assert await _press_connect(admin1, page.text) == 303
    assert await _state(core, t1) == (1, [(DEMO_ACCOUNT, "active")])
    async with core.sessions() as s:
        charges = await billing.charges_of(s, t1.id)
    assert [(c.service_code, c.amount) for c in charges] == [("external_integrations", Decimal("166.67"))]
    done = await admin1.get("/integrations?notice=connected")
    assert 'id="notice-connected"' in done.text
    assert re.search(r'id="amocrm-state">Подключено<', done.text) and "demo.amocrm.ru" in done.text
    assert 'id="integrations-counter">1<' in done.text
    services = await admin1.get("/services")
    assert 'id="counter-external_integrations">1<' in services.text
    # the ticket is used up: neither the page nor a second press works with it
    again = await admin1.get(f"/integrations/amocrm/connect?ticket={raw}")
    assert again.status_code == 410 and 'id="connect-ticket_invalid"' in again.text
    assert await _press_connect(admin1, page.text) == 410
    assert (await _state(core, t1))[0] == 1


async def test_changed_sums_are_shown_again_and_the_ticket_stays(
    admin1: Cabinet, core: Core, t1: Tenant, clock: FakeClock, installs: None
) -> None:
    clock.set(dt.datetime(2025, 6, 21, 20, 55, tzinfo=dt.UTC))  # 23:55 in Moscow
    raw = await _ticket(core, DEMO_ACCOUNT)
    page = await admin1.get(f"/integrations/amocrm/connect?ticket={raw}")
    clock.advance(360)  # «Подключить» after midnight: one day less to pay for
    resp = await admin1.post(
        "/integrations/amocrm/connect",
        {
            "ticket": raw,
            "quoted_fee": _hidden(page.text, "quoted_fee"),
            "quoted_charge": _hidden(page.text, "quoted_charge"),
        },
    )
    assert resp.status_code == 409 and 'id="sums-changed"' in resp.text
    assert re.search(r'id="quote-charge">150,00\xa0₽<', resp.text)  # 500 × 9 / 30
    assert await _state(core, t1) == (0, [])
    assert await _press_connect(admin1, resp.text) == 303
    assert await _state(core, t1) == (1, [(DEMO_ACCOUNT, "active")])


async def test_login_keeps_the_ticket(anon: Cabinet, core: Core, t1: Tenant, installs: None) -> None:
    raw = await _ticket(core, DEMO_ACCOUNT)
    resp = await anon.get(f"/integrations/amocrm/connect?ticket={raw}")
    assert resp.status_code == 303
    location = resp.headers["location"]
    assert location.startswith("/login?next=")
    target = parse_qs(urlsplit(location).query)["next"][0]
    assert target == f"/integrations/amocrm/connect?ticket={raw}"
    page = await anon.client.get(location)
    csrf = _hidden(page.text, "csrf_token")
    assert _hidden(page.text, "next") == target
    login = await anon.client.post(
        "/login",
        data={"login": t1.admin_login, "password": t1.admin_password, "csrf_token": csrf, "next": target},
    )
    assert login.status_code == 303 and login.headers["location"] == target
    page = await anon.get(target)
    assert page.status_code == 200 and 'id="connect-ready"' in page.text


async def test_second_account_modal_cancel_then_replace(
    admin1: Cabinet, core: Core, t1: Tenant, clock: FakeClock, installs: None
) -> None:
    """§6 example 10 over ASGI (the browser run is in tests/amocrm/binding_e2e/)."""
    await bind(core, t1.id, DEMO_ACCOUNT)
    raw = await _ticket(core, OTHER_ACCOUNT)
    page = await admin1.get(f"/integrations/amocrm/connect?ticket={raw}")
    assert 'id="connect-domain_elsewhere"' in page.text
    assert re.search(r'id="linked-account">[^<]*demo\.amocrm\.ru', page.text)
    assert 'id="connect-ready"' not in page.text
    # «Отмена» is a link back: nothing changes and the ticket still works
    assert (await admin1.get("/integrations")).status_code == 200
    assert await _state(core, t1) == (1, [(DEMO_ACCOUNT, "active")])
    resp = await admin1.post("/integrations/amocrm/connect/replace", {"ticket": raw})
    assert (
        resp.status_code == 303 and resp.headers["location"] == f"/integrations/amocrm/connect?ticket={raw}"
    )
    assert await _state(core, t1) == (0, [(DEMO_ACCOUNT, "disabled")])
    async with core.sessions() as s:
        assert (await amo.status_for(s, DEMO_ACCOUNT)).status == "disabled"  # A's widget: «Подключить»
    fee = await admin1.get(resp.headers["location"])
    assert 'id="connect-ready"' in fee.text and "other.amocrm.ru" in fee.text
    assert await _press_connect(admin1, fee.text) == 303
    assert await _state(core, t1) == (1, [(DEMO_ACCOUNT, "disabled"), (OTHER_ACCOUNT, "active")])


async def test_an_account_linked_elsewhere_is_refused_naming_the_domain(
    admin1: Cabinet, core: Core, t1: Tenant, t2: Tenant, clock: FakeClock, installs: None
) -> None:
    await bind(core, t2.id, DEMO_ACCOUNT)
    raw = await _ticket(core, DEMO_ACCOUNT)
    page = await admin1.get(f"/integrations/amocrm/connect?ticket={raw}")
    assert 'id="connect-account_elsewhere"' in page.text
    assert re.search(r'id="connect-refused">[^<]*other\.vpbx\.test', page.text)
    resp = await admin1.post(
        "/integrations/amocrm/connect", {"ticket": raw, "quoted_fee": "500.00", "quoted_charge": "166.67"}
    )
    assert resp.status_code == 409
    assert await _state(core, t1) == (0, [])
    assert await _state(core, t2) == (1, [(DEMO_ACCOUNT, "active")])


async def test_number_info_exclusivity_both_ways(
    admin1: Cabinet, core: Core, t1: Tenant, clock: FakeClock, installs: None
) -> None:
    """§6 example 13."""
    async with core.sessions() as s:
        await billing.enable(s, t1.id, billing.INTEGRATION_API, JUNE_21)
        row = await ensure_settings(s, t1.id, core.box)
        row.number_info = True
        await s.commit()
    raw = await _ticket(core, DEMO_ACCOUNT)
    page = await admin1.get(f"/integrations/amocrm/connect?ticket={raw}")
    assert 'id="connect-number_info"' in page.text
    assert (
        "Интеграция с amoCRM не может быть включена одновременно с методом API number_info. "
        "Отключите get_number_info в настройках Интеграционного API." in page.text
    )
    resp = await admin1.post(
        "/integrations/amocrm/connect", {"ticket": raw, "quoted_fee": "500.00", "quoted_charge": "166.67"}
    )
    assert resp.status_code == 409 and await _state(core, t1) == (0, [])

    # get_number_info off → amoCRM connects → switching get_number_info on is refused with the mirror text
    async with core.sessions() as s:
        row2 = await s.get(ApiSettings, t1.id)
        assert row2 is not None
        row2.number_info = False
        await s.commit()
    page = await admin1.get(f"/integrations/amocrm/connect?ticket={raw}")
    assert await _press_connect(admin1, page.text) == 303
    form = {
        "crm_url": "https://crm.example.test/api",
        "timeout_s": "3",
        "tls_required": "on",
        "number_info": "on",
    }
    resp = await admin1.post("/integration-api", form)
    assert resp.status_code == 422
    assert (
        "Интеграция с amoCRM не может быть включена одновременно с методом API number_info. "
        "Отключите интеграцию с amoCRM." in resp.text
    )
    async with core.sessions() as s:
        row3 = await s.get(ApiSettings, t1.id)
        assert row3 is not None and not row3.number_info
    del form["number_info"]
    assert (await admin1.post("/integration-api", form)).status_code == 303  # the rest still saves


async def test_switch_off_asks_then_disables(
    admin1: Cabinet, core: Core, t1: Tenant, clock: FakeClock, installs: None
) -> None:
    """§6 example 11, the cabinet's part."""
    await bind(core, t1.id, DEMO_ACCOUNT)
    page = await admin1.get("/integrations")
    assert 'id="amocrm-switch"' in page.text and 'id="confirm-disable"' not in page.text
    confirm = await admin1.get("/integrations?confirm=disable")
    assert 'id="confirm-disable"' in confirm.text and "Отключить интеграцию с amoCRM?" in confirm.text
    assert await _state(core, t1) == (1, [(DEMO_ACCOUNT, "active")])  # asking changes nothing
    assert (await admin1.post("/integrations/amocrm/disable", {}, csrf=False)).status_code == 403
    resp = await admin1.post("/integrations/amocrm/disable", {})
    assert resp.status_code == 303
    assert await _state(core, t1) == (0, [(DEMO_ACCOUNT, "disabled")])
    async with core.sessions() as s:
        assert (await amo.status_for(s, DEMO_ACCOUNT)).status == "disabled"
        row = await s.scalar(select(CrmBinding).where(CrmBinding.domain_id == t1.id))
        assert row is not None and row.disabled_reason == "cabinet"
    page = await admin1.get("/integrations?notice=disabled")
    assert 'id="notice-disabled"' in page.text and re.search(r'id="amocrm-state">Не подключено<', page.text)
    assert (await admin1.post("/integrations/amocrm/disable", {})).status_code == 303  # again: nothing
    assert (await _state(core, t1))[0] == 0


async def test_tenants_see_and_switch_only_their_own(
    admin1: Cabinet, admin2: Cabinet, core: Core, t1: Tenant, t2: Tenant, clock: FakeClock, installs: None
) -> None:
    await bind(core, t1.id, DEMO_ACCOUNT)
    page = await admin2.get("/integrations?confirm=disable")
    assert "demo.amocrm.ru" not in page.text and 'id="confirm-disable"' not in page.text
    assert (await admin2.post("/integrations/amocrm/disable", {})).status_code == 303
    assert await _state(core, t1) == (1, [(DEMO_ACCOUNT, "active")])
    # a ticket of t1's account opened in t2 is refused naming t1's domain, and binds nothing
    raw = await _ticket(core, DEMO_ACCOUNT)
    page = await admin2.get(f"/integrations/amocrm/connect?ticket={raw}")
    assert 'id="connect-account_elsewhere"' in page.text
    assert (await admin2.post("/integrations/amocrm/connect/replace", {"ticket": raw})).status_code == 303
    assert await _state(core, t1) == (1, [(DEMO_ACCOUNT, "active")])
    assert await _state(core, t2) == (0, [])


async def test_domain_users_are_refused(app: object, anon: Cabinet, core: Core, t1: Tenant) -> None:
    async with core.sessions() as s:
        await users.create_user(
            s,
            t1.id,
            users.UserInput(name="clerk", display_name="Clerk", pin="101", web_password="Clerk-Password-1"),
            box=core.box,
        )
        await s.commit()
    assert (await anon.login(f"clerk@{t1.name}", "Clerk-Password-1")).status_code == 303
    assert (await anon.get("/integrations")).status_code == 403
    assert (await anon.get("/integrations/amocrm/connect?ticket=x")).status_code == 403


async def test_bad_tickets(admin1: Cabinet, core: Core, clock: FakeClock, installs: None) -> None:
    none = await admin1.get("/integrations/amocrm/connect")
    assert none.status_code == 200 and 'id="connect-ticket_missing"' in none.text
    bad = await admin1.get("/integrations/amocrm/connect?ticket=nope")
    assert bad.status_code == 410 and 'id="connect-ticket_invalid"' in bad.text
    raw = await _ticket(core, DEMO_ACCOUNT)
    clock.advance(amo.TICKET_TTL.total_seconds())
    late = await admin1.get(f"/integrations/amocrm/connect?ticket={raw}")
    assert late.status_code == 410
