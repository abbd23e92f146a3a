"""UtcDateTime and Money round-trip exactly on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, insert, select
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncEngine

from vpbx import store
from vpbx.store.types import Money, UtcDateTime

MSK = dt.timezone(dt.timedelta(hours=3))
probe_meta = MetaData()
probe = Table(
    "type_probe",
    probe_meta,
    Column("id", Integer, primary_key=True),
    Column("at", UtcDateTime()),
    Column("amount", Money()),
)

MOMENTS = [
    dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=MSK),  # another zone, microseconds, leap day
    dt.datetime(2024, 3, 31, 1, 30, tzinfo=dt.UTC),
    dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
    dt.datetime(2099, 12, 31, 21, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5, minutes=-30))),
]
AMOUNTS = [Decimal("0.01"), Decimal("1990.00"), Decimal("-250.50"), Decimal("92233720368547758.07")]


@pytest.fixture
async def probe_engine(empty_url: str) -> AsyncEngine:
    engine = store.create_engine(empty_url)
    async with engine.begin() as conn:
        await conn.run_sync(probe_meta.create_all)
    return engine


async def _round_trip(engine: AsyncEngine, rows: list[dict[str, object]]) -> list[tuple[object, object]]:
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(probe), [{"id": i, **r} for i, r in enumerate(rows)])
        async with engine.connect() as conn:
            return [
                tuple(r) for r in await conn.execute(select(probe.c.at, probe.c.amount).order_by(probe.c.id))
            ]
    finally:
        await engine.dispose()


async def test_datetimes_come_back_aware_utc_and_equal(probe_engine: AsyncEngine) -> None:
    got = await _round_trip(probe_engine, [{"at": m} for m in MOMENTS])
    for (at, _), sent in zip(got, MOMENTS, strict=True):
        assert isinstance(at, dt.datetime)
        assert at.tzinfo is dt.UTC
        assert at == sent
        assert at.replace(tzinfo=None) == sent.astimezone(dt.UTC).replace(tzinfo=None)


async def test_money_comes_back_as_exact_kopecks(probe_engine: AsyncEngine) -> None:
    sent = [*AMOUNTS, Decimal("10"), Decimal("0.1") + Decimal("0.2")]
    got = await _round_trip(probe_engine, [{"amount": a} for a in sent])
    amounts = [amount for _, amount in got]
    assert amounts == [*AMOUNTS, Decimal("10.00"), Decimal("0.30")]
    for a in amounts:
        assert isinstance(a, Decimal)
        assert a.as_tuple().exponent == -2


async def test_nulls_round_trip(probe_engine: AsyncEngine) -> None:
    assert await _round_trip(probe_engine, [{"at": None, "amount": None}]) == [(None, None)]


async def test_naive_datetime_is_refused(probe_engine: AsyncEngine) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        await _round_trip(probe_engine, [{"at": dt.datetime(2024, 1, 1, 12, 0)}])  # noqa: DTZ001
