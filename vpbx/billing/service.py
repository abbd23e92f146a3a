"""Services management: the catalogue, the operator's price list, per-domain state, proration, the ledger.

Money is ``Decimal`` roubles with two places. Every function that depends on the date takes it as an argument
(``now`` as aware UTC, ``today`` as the domain's local date), so the same call gives the same answer in tests.

Design decisions (ours):

* Switching a service on mid-month charges the rest of the current month at once: ``prorate``. From the next
  month the monthly fee is billed in full (by the billing run of a later issue).
* Switching a service off refunds nothing: the month already charged stays charged. This keeps the ledger
  append-only and stops "switch on, switch off" loops from moving money back and forth; a refund, when an
  operator decides on one, is a ``credit`` row of its own.
* Ledger descriptions are records, written once in Russian (the platform's billing language), as the
  Integration API returns them (integration-api.md §4.7); the cabinet translates the service name beside them.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
import uuid
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext

from sqlalchemy import ColumnElement, Select, case, exists, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import QueryableAttribute

from vpbx.errors import NotFound
from vpbx.pbx.validation import N_, Check
from vpbx.store.models import Charge, Domain, DomainService, ServicePrice
from vpbx.store.paging import Page, paginate

KOPECK = Decimal("0.01")
ZERO = Decimal("0.00")
MAX_FEE = Decimal("1000000.00")
FEE_RE = re.compile(r"[0-9]{1,7}(\.[0-9]{1,2})?")

CHARGE = "charge"
CREDIT = "credit"


@dataclass(frozen=True, slots=True)
class Service:
    """One entry of the catalogue. ``code`` is stable (stored, used by the API); ``name`` is a msgid."""

    code: str
    name: str
    name_ru: str  # for ledger descriptions, which are records and are not translated later
    default_fee: Decimal
    counted: bool = False  # the monthly fee is unit price × counter (one unit per active integration)


INTEGRATION_API = "integration_api"
EXTERNAL_INTEGRATIONS = "external_integrations"
AUTOINFORMER = "autoinformer"
CALL_RECORDING = "call_recording"

CATALOGUE: tuple[Service, ...] = (
    Service(INTEGRATION_API, N_("Integration API"), "Интеграционный API", Decimal("990.00")),
    Service(
        EXTERNAL_INTEGRATIONS,
        N_("Integration with external systems"),
        "Интеграция с внешними системами",
        Decimal("500.00"),
        counted=True,
    ),
    Service(AUTOINFORMER, N_("Autoinformer"), "Автоинформатор", Decimal("1490.00")),
    Service(CALL_RECORDING, N_("Call recording"), "Запись разговоров", Decimal("300.00")),
)
BY_CODE: Mapping[str, Service] = {svc.code: svc for svc in CATALOGUE}


@dataclass(frozen=True, slots=True)
class Quote:
    """What switching a service on costs: the rise of the monthly fee, and the charge made now."""

    monthly_increase: Decimal
    charge_now: Decimal


@dataclass(frozen=True, slots=True)
class ServiceRow:
    """One line of the services page."""

    service: Service
    enabled: bool
    counter: int
    unit_price: Decimal
    monthly_fee: Decimal

    @property
    def code(self) -> str:
        return self.service.code

    @property
    def counted(self) -> bool:
        return self.service.counted


def service(code: str) -> Service:
    """The catalogue entry; an unknown code is simply not found."""
    found = BY_CODE.get(code)
    if found is None:
        raise NotFound("service", code[:64])
    return found


# --- pure money arithmetic -----------------------------------------------------------------------------


def prorate(unit_price: Decimal, today: dt.date) -> Decimal:
    """The charge for the rest of ``today``'s month, today included, rounded half up to kopecks.

    ``round_half_up(unit_price × days_left_incl_today / days_in_month, 0.01)`` (amocrm.md F2).
    """
    if unit_price < 0:
        raise ValueError("a price is never negative")
    days_in_month = calendar.monthrange(today.year, today.month)[1]
    days_left = days_in_month - today.day + 1
    with localcontext() as ctx:
        ctx.prec = 50  # exact enough that a true .005 stays .005 before rounding
        share = Decimal(unit_price) * days_left / days_in_month
        return share.quantize(KOPECK, rounding=ROUND_HALF_UP)


def parse_fee(c: Check, field_name: str, value: str | Decimal) -> Decimal | None:
    """A fee as a person types it (``1490``, ``1 490,00``, ``1490.5``): 0 to 1 000 000.00, two decimals."""
    text = value if isinstance(value, str) else format(value, "f")
    text = re.sub(r"[\s\u00a0\u202f]", "", text).replace(",", ".")
    if not text:
        c.add(field_name, N_("Required field"))
        return None
    if not FEE_RE.fullmatch(text):
        c.add(field_name, N_("An amount in roubles with at most two decimals, e.g. 990.00"))
        return None
    try:
        fee = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern already admits only digits and one dot
        c.add(field_name, N_("An amount in roubles with at most two decimals, e.g. 990.00"))
        return None
    if not ZERO <= fee <= MAX_FEE:
        c.add(field_name, N_("From 0 to 1 000 000.00"))
        return None
    return fee.quantize(KOPECK)


def local_date(timezone: str, now: dt.datetime) -> dt.date:
    """``now`` (aware) as a calendar date in the given time zone."""
    if now.tzinfo is None:
        raise ValueError("naive datetime")
    return now.astimezone(zoneinfo.ZoneInfo(timezone)).date()


# --- price list ----------------------------------------------------------------------------------------


async def _insert_ignore(
    s: AsyncSession, model: type[ServicePrice] | type[DomainService], rows: list[dict[str, object]]
) -> None:
    """INSERT … ON CONFLICT DO NOTHING: safe when two requests create the same row at once."""
    if not rows:
        return
    dialect = s.get_bind().dialect.name
    if dialect == "postgresql":
        await s.execute(pg_insert(model).values(rows).on_conflict_do_nothing())
    else:
        await s.execute(sqlite_insert(model).values(rows).on_conflict_do_nothing())


async def ensure_prices(s: AsyncSession, now: dt.datetime) -> None:
    """Seed the default fee of every catalogue service that has no price yet (all of them on first use)."""
    have = set(await s.scalars(select(ServicePrice.code)))
    missing = [
        {"code": svc.code, "monthly_fee": svc.default_fee, "updated_at": now}
        for svc in CATALOGUE
        if svc.code not in have
    ]
    await _insert_ignore(s, ServicePrice, missing)


async def prices(s: AsyncSession) -> dict[str, Decimal]:
    """The price list, code → monthly fee; catalogue defaults stand in for prices not stored yet."""
    stored = dict((await s.execute(select(ServicePrice.code, ServicePrice.monthly_fee))).all())
    return {svc.code: stored.get(svc.code, svc.default_fee) for svc in CATALOGUE}


async def price(s: AsyncSession, code: str) -> Decimal:
    svc = service(code)
    stored: Decimal | None = await s.scalar(select(ServicePrice.monthly_fee).where(ServicePrice.code == code))
    return svc.default_fee if stored is None else stored


async def set_price(s: AsyncSession, code: str, fee: str | Decimal, *, now: dt.datetime) -> Decimal:
    """The operator sets one monthly fee. Field errors name ``fee``."""
    return (await set_prices(s, {code: fee}, now=now, field_prefix=""))[code]


async def set_prices(
    s: AsyncSession, fees: Mapping[str, str | Decimal], *, now: dt.datetime, field_prefix: str = "fee_"
) -> dict[str, Decimal]:
    """Several fees at once: all are checked first, then all are saved (field ``fee_<code>`` per error)."""
    for code in fees:
        service(code)
    c = Check()
    parsed: dict[str, Decimal] = {}
    for code, raw in fees.items():
        value = parse_fee(c, f"{field_prefix}{code}" if field_prefix else "fee", raw)
        if value is not None:
            parsed[code] = value
    c.done()
    await ensure_prices(s, now)
    for code, value in parsed.items():
        await s.execute(
            update(ServicePrice).where(ServicePrice.code == code).values(monthly_fee=value, updated_at=now)
        )
    await s.flush()
    return parsed


# --- per-domain state ----------------------------------------------------------------------------------


async def _domain(s: AsyncSession, domain_id: uuid.UUID) -> Domain:
    d = await s.get(Domain, domain_id)
    if d is None:
        raise NotFound("domain", domain_id)
    return d


async def domain_today(s: AsyncSession, domain_id: uuid.UUID, now: dt.datetime) -> dt.date:
    """Today's date in the domain's time zone: proration counts the domain's calendar days."""
    return local_date((await _domain(s, domain_id)).timezone, now)


async def _state(s: AsyncSession, domain_id: uuid.UUID, code: str) -> DomainService | None:
    row: DomainService | None = await s.scalar(
        select(DomainService).where(DomainService.domain_id == domain_id, DomainService.code == code)
    )
    return row


async def is_enabled(s: AsyncSession, domain_id: uuid.UUID, code: str) -> bool:
    """On for a plain service; for the counted one, on while at least one integration counts."""
    svc = service(code)
    row = await _state(s, domain_id, code)
    if row is None:
        return False
    return row.counter > 0 if svc.counted else row.enabled


def enabled_clause(
    domain_id: ColumnElement[uuid.UUID] | QueryableAttribute[uuid.UUID], code: str
) -> ColumnElement[bool]:
    """``is_enabled`` as a SQL condition on a domain id column, for one query over many domains."""
    on = DomainService.counter > 0 if service(code).counted else DomainService.enabled.is_(True)
    return exists().where(DomainService.domain_id == domain_id, DomainService.code == code, on)


async def counter(s: AsyncSession, domain_id: uuid.UUID, code: str) -> int:
    service(code)
    row = await _state(s, domain_id, code)
    return 0 if row is None else row.counter


async def quote_enable(s: AsyncSession, domain_id: uuid.UUID, code: str, today: dt.date) -> Quote:
    """The two sums the confirmation shows; an already enabled plain service costs nothing more."""
    svc = service(code)
    await _domain(s, domain_id)
    if not svc.counted and await is_enabled(s, domain_id, code):
        return Quote(ZERO, ZERO)
    unit = await price(s, code)
    return Quote(unit, prorate(unit, today))


async def enable(s: AsyncSession, domain_id: uuid.UUID, code: str, now: dt.datetime) -> Charge | None:
    """Switch a service on (plain: idempotent; counted: one more unit) and charge the rest of the month.

    The prorated ``charge`` row is written in the caller's transaction, so the switch and its charge are saved
    together or not at all; a zero amount (a free service, or nothing changed) writes no row.
    """
    svc = service(code)
    domain = await _domain(s, domain_id)
    await ensure_prices(s, now)
    await _insert_ignore(
        s,
        DomainService,
        [{"domain_id": domain_id, "code": code, "enabled": False, "counter": 0, "changed_at": now}],
    )
    where = (DomainService.domain_id == domain_id, DomainService.code == code)
    if svc.counted:
        # one UPDATE, so two integrations connecting at once both count
        stmt = (
            update(DomainService)
            .where(*where)
            .values(counter=DomainService.counter + 1, enabled=True, changed_at=now)
        )
    else:
        # only the request that flips it off → on gets a row back, and only that one charges
        stmt = (
            update(DomainService)
            .where(*where, DomainService.enabled.is_(False))
            .values(enabled=True, changed_at=now)
        )
    if (await s.execute(stmt.returning(DomainService.code))).first() is None:
        return None
    today = local_date(domain.timezone, now)
    amount = prorate(await price(s, code), today)
    if amount <= 0:
        return None
    days_in_month = calendar.monthrange(today.year, today.month)[1]
    charge = Charge(
        domain_id=domain_id,
        kind=CHARGE,
        service_code=code,
        amount=amount,
        description=(
            f"Подключение услуги «{svc.name_ru}» с {today:%d.%m.%Y}: "
            f"{days_in_month - today.day + 1} из {days_in_month} дн."
        ),
        created_at=now,
    )
    s.add(charge)
    await s.flush()
    return charge


async def disable(s: AsyncSession, domain_id: uuid.UUID, code: str, now: dt.datetime) -> bool:
    """Switch a service off (counted: one unit less, never below 0). Returns whether anything changed.

    No refund is made for the rest of the month (design decision, see the module docstring): the ledger only
    grows, and the fee already charged for this month stays.
    """
    svc = service(code)
    await _domain(s, domain_id)
    where = (DomainService.domain_id == domain_id, DomainService.code == code)
    if svc.counted:
        stmt = (
            update(DomainService)
            .where(*where, DomainService.counter > 0)
            .values(
                counter=DomainService.counter - 1,
                enabled=case((DomainService.counter > 1, True), else_=False),
                changed_at=now,
            )
        )
    else:
        stmt = (
            update(DomainService)
            .where(*where, DomainService.enabled.is_(True))
            .values(enabled=False, changed_at=now)
        )
    return (await s.execute(stmt.returning(DomainService.code))).first() is not None


async def domain_services(s: AsyncSession, domain_id: uuid.UUID) -> list[ServiceRow]:
    """Every catalogue service for the page: state, counter, unit price and this domain's monthly fee."""
    await _domain(s, domain_id)
    states = {
        r.code: r for r in await s.scalars(select(DomainService).where(DomainService.domain_id == domain_id))
    }
    price_list = await prices(s)
    out: list[ServiceRow] = []
    for svc in CATALOGUE:
        st = states.get(svc.code)
        count = st.counter if st else 0
        enabled = count > 0 if svc.counted else bool(st and st.enabled)
        unit = price_list[svc.code]
        fee = unit * count if svc.counted else (unit if enabled else ZERO)
        out.append(ServiceRow(svc, enabled, count, unit, fee.quantize(KOPECK)))
    return out


async def monthly_total(s: AsyncSession, domain_id: uuid.UUID) -> Decimal:
    """The domain's monthly fee for everything it has on now."""
    rows = await domain_services(s, domain_id)
    return sum((r.monthly_fee for r in rows), ZERO).quantize(KOPECK)


def _ledger_query(domain_id: uuid.UUID) -> Select[Charge]:
    return (
        select(Charge)
        .where(Charge.domain_id == domain_id)
        .order_by(Charge.created_at.desc(), Charge.id.desc())
    )


async def ledger(s: AsyncSession, domain_id: uuid.UUID, page: int = 1) -> Page[Charge]:
    """The domain's charges and credits, newest first, one page."""
    return await paginate(s, _ledger_query(domain_id), page)


async def charges_of(s: AsyncSession, domain_id: uuid.UUID) -> Sequence[Charge]:
    """All rows of the domain's ledger, newest first (for exports and tests)."""
    return (await s.scalars(_ledger_query(domain_id))).all()
