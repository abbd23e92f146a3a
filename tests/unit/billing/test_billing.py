"""Services management: proration, switching services on and off, the price list and the ledger."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from sqlalchemy import func, select, update

from tests.helpers import Tenant
from vpbx import billing
from vpbx.app import Core
from vpbx.errors import NotFound, ValidationFailed
from vpbx.store.models import Charge, Domain, ServicePrice

D = Decimal
# 09:00 UTC on 21 June 2025 (a 30-day month): 12:00 in Moscow, the default time zone of a domain
JUNE_21 = dt.datetime(2025, 6, 21, 9, 0, tzinfo=dt.UTC)


# --- prorate: pure ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("price", "day", "expected"),
    [
        (D("500.00"), dt.date(2025, 6, 21), D("166.67")),  # the spec's example: 10 of 30 days
        (D("500.00"), dt.date(2025, 6, 1), D("500.00")),  # first day: the whole month
        (D("500.00"), dt.date(2025, 6, 30), D("16.67")),  # last day: one day of 30
        (D("990.00"), dt.date(2025, 1, 1), D("990.00")),  # 31-day month, first day
        (D("990.00"), dt.date(2025, 1, 31), D("31.94")),  # 990 / 31 = 31.935… → 31.94
        (D("310.00"), dt.date(2025, 7, 22), D("100.00")),  # 10 of 31 days
        (D("290.00"), dt.date(2024, 2, 20), D("100.00")),  # leap February: 10 of 29 days
        (D("280.00"), dt.date(2025, 2, 19), D("100.00")),  # plain February: 10 of 28 days
        (D("290.00"), dt.date(2024, 2, 29), D("10.00")),  # leap day is the last day
        (D("280.00"), dt.date(2025, 2, 28), D("10.00")),  # plain February's last day
        (D("0.00"), dt.date(2025, 6, 21), D("0.00")),
        (D("1000000.00"), dt.date(2025, 6, 30), D("33333.33")),
    ],
)
def test_prorate(price: Decimal, day: dt.date, expected: Decimal) -> None:
    assert billing.prorate(price, day) == expected


@pytest.mark.parametrize(
    ("price", "day", "expected"),
    [
        (D("1.01"), dt.date(2025, 2, 15), D("0.51")),  # exactly 0.505: half up, not to even (0.50)
        (D("0.25"), dt.date(2025, 2, 15), D("0.13")),  # exactly 0.125 → 0.13
        (D("0.03"), dt.date(2025, 2, 15), D("0.02")),  # exactly 0.015 → 0.02
        (D("0.01"), dt.date(2025, 2, 28), D("0.00")),  # 0.000357… → 0.00
    ],
)
def test_prorate_rounds_half_up_at_half_a_kopeck(price: Decimal, day: dt.date, expected: Decimal) -> None:
    assert billing.prorate(price, day) == expected


def test_prorate_refuses_a_negative_price() -> None:
    with pytest.raises(ValueError):
        billing.prorate(D("-1.00"), dt.date(2025, 6, 1))


def test_local_date_uses_the_time_zone() -> None:
    late = dt.datetime(2025, 6, 30, 22, 30, tzinfo=dt.UTC)
    assert billing.local_date("Europe/Moscow", late) == dt.date(2025, 7, 1)
    assert billing.local_date("UTC", late) == dt.date(2025, 6, 30)


def test_catalogue_has_stable_codes() -> None:
    assert [s.code for s in billing.CATALOGUE] == [
        "integration_api",
        "external_integrations",
        "autoinformer",
        "call_recording",
    ]
    assert [s.code for s in billing.CATALOGUE if s.counted] == ["external_integrations"]


# --- services against the database --------------------------------------------------------------------


async def _charges(core: Core, t: Tenant) -> list[Charge]:
    async with core.sessions() as s:
        return list(await billing.charges_of(s, t.id))


async def test_default_prices_are_seeded_on_first_use(core: Core, t1: Tenant) -> None:
    async with core.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(ServicePrice)) == 0
        await billing.enable(s, t1.id, "autoinformer", JUNE_21)
        await s.commit()
        stored = dict((await s.execute(select(ServicePrice.code, ServicePrice.monthly_fee))).all())
    assert stored == {
        "integration_api": D("990.00"),
        "external_integrations": D("500.00"),
        "autoinformer": D("1490.00"),
        "call_recording": D("300.00"),
    }


async def test_quote_shows_the_fee_rise_and_the_charge_now(core: Core, t1: Tenant) -> None:
    async with core.sessions() as s:
        q = await billing.quote_enable(s, t1.id, "external_integrations", dt.date(2025, 6, 21))
        assert q == billing.Quote(D("500.00"), D("166.67"))
        q = await billing.quote_enable(s, t1.id, "integration_api", dt.date(2025, 6, 21))
        assert q == billing.Quote(D("990.00"), D("330.00"))


async def test_enable_writes_exactly_one_prorated_charge(core: Core, t1: Tenant) -> None:
    async with core.sessions() as s:
        charge = await billing.enable(s, t1.id, "integration_api", JUNE_21)
        await s.commit()
    assert charge is not None
    rows = await _charges(core, t1)
    assert len(rows) == 1
    row = rows[0]
    assert (row.kind, row.service_code, row.amount) == ("charge", "integration_api", D("330.00"))
    assert row.created_at == JUNE_21
    assert "Интеграционный API" in row.description and "10 из 30" in row.description
    async with core.sessions() as s:
        assert await billing.is_enabled(s, t1.id, "integration_api")
        assert not await billing.is_enabled(s, t1.id, "autoinformer")


async def test_enable_is_idempotent_for_a_plain_service(core: Core, t1: Tenant) -> None:
    async with core.sessions() as s:
        await billing.enable(s, t1.id, "call_recording", JUNE_21)
        await s.commit()
        again = await billing.enable(s, t1.id, "call_recording", JUNE_21 + dt.timedelta(days=1))
        await s.commit()
        assert again is None
        q = await billing.quote_enable(s, t1.id, "call_recording", dt.date(2025, 6, 22))
        assert q == billing.Quote(D("0.00"), D("0.00"))
    assert len(await _charges(core, t1)) == 1


async def test_the_charge_uses_the_domains_calendar(core: Core, t1: Tenant) -> None:
    # 22:30 UTC on 30 June is already 1 July in Moscow: the whole of July is charged
    async with core.sessions() as s:
        await billing.enable(s, t1.id, "call_recording", dt.datetime(2025, 6, 30, 22, 30, tzinfo=dt.UTC))
        await s.commit()
    assert [c.amount for c in await _charges(core, t1)] == [D("300.00")]


async def test_charge_rolls_back_with_the_switch(core: Core, t1: Tenant) -> None:
    async with core.sessions() as s:
        await billing.enable(s, t1.id, "autoinformer", JUNE_21)
        await s.rollback()
    async with core.sessions() as s:
        assert not await billing.is_enabled(s, t1.id, "autoinformer")
    assert await _charges(core, t1) == []


async def test_free_service_writes_no_charge(core: Core, t1: Tenant) -> None:
    async with core.sessions() as s:
        await billing.set_price(s, "autoinformer", "0", now=JUNE_21)
        assert await billing.enable(s, t1.id, "autoinformer", JUNE_21) is None
        await s.commit()
        assert await billing.is_enabled(s, t1.id, "autoinformer")
    assert await _charges(core, t1) == []


async def test_counted_service_increments_and_decrements(core: Core, t1: Tenant) -> None:
    code = "external_integrations"
    async with core.sessions() as s:
        await billing.enable(s, t1.id, code, JUNE_21)
        await billing.enable(s, t1.id, code, JUNE_21)
        await s.commit()
        assert await billing.counter(s, t1.id, code) == 2
        assert await billing.is_enabled(s, t1.id, code)
        assert await billing.monthly_total(s, t1.id) == D("1000.00")
        row = next(r for r in await billing.domain_services(s, t1.id) if r.code == code)
        assert (row.enabled, row.counter, row.unit_price, row.monthly_fee) == (
            True,
            2,
            D("500.00"),
            D("1000.00"),
        )

        assert await billing.disable(s, t1.id, code, JUNE_21)
        await s.commit()
        assert await billing.counter(s, t1.id, code) == 1
        assert await billing.is_enabled(s, t1.id, code)
        assert await billing.disable(s, t1.id, code, JUNE_21)
        assert not await billing.disable(s, t1.id, code, JUNE_21)  # never below zero
        await s.commit()
        assert await billing.counter(s, t1.id, code) == 0
        assert not await billing.is_enabled(s, t1.id, code)
        assert await billing.monthly_total(s, t1.id) == D("0.00")
    amounts = [c.amount for c in await _charges(core, t1)]
    assert amounts == [D("166.67"), D("166.67")]  # one charge per unit, no refunds


async def test_disable_without_refund(core: Core, t1: Tenant) -> None:
    async with core.sessions() as s:
        await billing.enable(s, t1.id, "integration_api", JUNE_21)
        await s.commit()
        assert await billing.disable(s, t1.id, "integration_api", JUNE_21)
        assert not await billing.disable(s, t1.id, "integration_api", JUNE_21)
        await s.commit()
        assert not await billing.is_enabled(s, t1.id, "integration_api")
        assert await billing.monthly_total(s, t1.id) == D("0.00")
    rows = await _charges(core, t1)
    assert [(c.kind, c.amount) for c in rows] == [("charge", D("330.00"))]


async def test_disable_of_a_service_never_enabled_changes_nothing(core: Core, t1: Tenant) -> None:
    async with core.sessions() as s:
        assert not await billing.disable(s, t1.id, "external_integrations", JUNE_21)
        assert not await billing.disable(s, t1.id, "autoinformer", JUNE_21)
        assert await billing.counter(s, t1.id, "external_integrations") == 0


async def test_monthly_total_sums_enabled_services(core: Core, t1: Tenant) -> None:
    async with core.sessions() as s:
        for code in ("integration_api", "call_recording", "external_integrations"):
            await billing.enable(s, t1.id, code, JUNE_21)
        await s.commit()
        assert await billing.monthly_total(s, t1.id) == D("1790.00")
        rows = {r.code: r for r in await billing.domain_services(s, t1.id)}
        assert rows["autoinformer"].monthly_fee == D("0.00") and not rows["autoinformer"].enabled
        assert rows["integration_api"].monthly_fee == D("990.00")


async def test_price_change_applies_to_the_next_enable_and_the_total(core: Core, t1: Tenant) -> None:
    async with core.sessions() as s:
        await billing.set_price(s, "call_recording", "1 200,50", now=JUNE_21)
        await s.commit()
        assert await billing.price(s, "call_recording") == D("1200.50")
        await billing.enable(s, t1.id, "call_recording", JUNE_21)
        await s.commit()
        assert await billing.monthly_total(s, t1.id) == D("1200.50")
    assert [c.amount for c in await _charges(core, t1)] == [D("400.17")]  # 1200.50 × 10 / 30 = 400.1666…


@pytest.mark.parametrize(
    ("fee", "ok"),
    [
        ("0", D("0.00")),
        ("990", D("990.00")),
        ("990.5", D("990.50")),
        ("1 000 000,00", D("1000000.00")),
        (D("12.30"), D("12.30")),
        ("1000000.01", None),
        ("-1", None),
        ("12.345", None),
        ("", None),
        ("abc", None),
        ("1e3", None),
        ("NaN", None),
    ],
)
async def test_price_validation(core: Core, fee: str | Decimal, ok: Decimal | None) -> None:
    async with core.sessions() as s:
        if ok is None:
            with pytest.raises(ValidationFailed) as e:
                await billing.set_price(s, "autoinformer", fee, now=JUNE_21)
            assert [x.field for x in e.value.errors] == ["fee"]
            await s.rollback()
            assert await billing.price(s, "autoinformer") == D("1490.00")
        else:
            assert await billing.set_price(s, "autoinformer", fee, now=JUNE_21) == ok
            await s.commit()
            assert await billing.price(s, "autoinformer") == ok


async def test_set_prices_checks_all_before_saving_any(core: Core) -> None:
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await billing.set_prices(s, {"autoinformer": "100", "call_recording": "x"}, now=JUNE_21)
        assert [x.field for x in e.value.errors] == ["fee_call_recording"]
        await s.rollback()
        assert await billing.price(s, "autoinformer") == D("1490.00")


async def test_unknown_service_is_not_found(core: Core, t1: Tenant) -> None:
    async with core.sessions() as s:
        with pytest.raises(NotFound):
            await billing.enable(s, t1.id, "free_money", JUNE_21)
        with pytest.raises(NotFound):
            await billing.set_price(s, "free_money", "1", now=JUNE_21)
        with pytest.raises(NotFound):
            await billing.quote_enable(s, t1.id, "free_money", JUNE_21.date())


async def test_two_tenants_have_separate_state_and_ledgers(core: Core, t1: Tenant, t2: Tenant) -> None:
    async with core.sessions() as s:
        await billing.enable(s, t1.id, "integration_api", JUNE_21)
        await billing.enable(s, t1.id, "external_integrations", JUNE_21)
        await billing.enable(s, t2.id, "call_recording", JUNE_21)
        await s.commit()
        assert not await billing.is_enabled(s, t2.id, "integration_api")
        assert await billing.counter(s, t2.id, "external_integrations") == 0
        assert not await billing.is_enabled(s, t1.id, "call_recording")
        assert await billing.monthly_total(s, t1.id) == D("1490.00")
        assert await billing.monthly_total(s, t2.id) == D("300.00")
        p1 = await billing.ledger(s, t1.id)
        p2 = await billing.ledger(s, t2.id)
    assert {c.service_code for c in p1.items} == {"integration_api", "external_integrations"}
    assert [c.service_code for c in p2.items] == ["call_recording"]
    assert all(c.domain_id == t1.id for c in p1.items) and all(c.domain_id == t2.id for c in p2.items)


async def test_ledger_is_newest_first_and_paginated(core: Core, t1: Tenant) -> None:
    async with core.sessions() as s:
        for i in range(25):
            await billing.enable(s, t1.id, "external_integrations", JUNE_21 + dt.timedelta(minutes=i))
        await s.commit()
        first = await billing.ledger(s, t1.id, 1)
        second = await billing.ledger(s, t1.id, 2)
    assert first.total == 25 and first.pages == 2
    assert len(first.items) == 20 and len(second.items) == 5
    times = [c.created_at for c in [*first.items, *second.items]]
    assert times == sorted(times, reverse=True)
    assert times[0] == JUNE_21 + dt.timedelta(minutes=24)


async def test_unknown_domain_is_not_found(core: Core) -> None:
    import uuid

    async with core.sessions() as s:
        with pytest.raises(NotFound):
            await billing.enable(s, uuid.uuid4(), "integration_api", JUNE_21)
        with pytest.raises(NotFound):
            await billing.domain_services(s, uuid.uuid4())


async def test_domain_time_zone_drives_today(core: Core, t1: Tenant) -> None:
    async with core.sessions() as s:
        await s.execute(update(Domain).where(Domain.id == t1.id).values(timezone="America/New_York"))
        await s.commit()
        # 02:00 UTC on 1 July is still 30 June in New York: one day left
        assert await billing.domain_today(s, t1.id, dt.datetime(2025, 7, 1, 2, 0, tzinfo=dt.UTC)) == dt.date(
            2025, 6, 30
        )
