"""Incoming numbers («Номера»): E.164 lines, each owned by exactly one domain, with their routing rules."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.errors import NotFound
from vpbx.pbx.numbering import to_e164
from vpbx.pbx.validation import N_, Check
from vpbx.store.models import IncomingNumber, RoutingRule
from vpbx.store.paging import Page, like_pattern, paginate

MAX_LABEL = 128
NUMBERISH_RE = re.compile(r"[0-9\s()+\-.]+")


@dataclass(kw_only=True)
class NumberInput:
    number: str
    label: str = ""


async def _validate(
    s: AsyncSession, domain_id: uuid.UUID, d: NumberInput, current: IncomingNumber | None
) -> Check:
    c = Check()
    e164 = c.number("number", d.number)
    d.label = c.text("label", d.label, max_len=MAX_LABEL, required=False)
    if e164 is not None:
        d.number = e164
        row = (
            await s.execute(
                select(IncomingNumber.id, IncomingNumber.domain_id).where(IncomingNumber.number == e164)
            )
        ).first()
        if row is not None and (current is None or row.id != current.id):
            if row.domain_id == domain_id:
                c.add("number", N_("This number is already added"))
            else:
                c.add("number", N_("This number belongs to another domain"))
    return c


async def create_number(s: AsyncSession, domain_id: uuid.UUID, data: NumberInput) -> IncomingNumber:
    c = await _validate(s, domain_id, data, None)
    c.done()
    n = IncomingNumber(domain_id=domain_id, number=data.number, label=data.label)
    s.add(n)
    await s.flush()
    return n


async def update_number(
    s: AsyncSession, domain_id: uuid.UUID, number_id: uuid.UUID, data: NumberInput
) -> IncomingNumber:
    n = await get_number(s, domain_id, number_id)
    c = await _validate(s, domain_id, data, n)
    c.done()
    n.number, n.label = data.number, data.label
    await s.flush()
    return n


async def delete_number(s: AsyncSession, domain_id: uuid.UUID, number_id: uuid.UUID) -> None:
    """Delete a line with its routing rules; ``external`` actions keep their numbers (they are just text)."""
    n = await get_number(s, domain_id, number_id)
    # The foreign key cascades too; deleting here keeps the session's view consistent on every database.
    await s.execute(
        delete(RoutingRule).where(RoutingRule.domain_id == domain_id, RoutingRule.number_id == n.id)
    )
    await s.delete(n)
    await s.flush()


async def get_number(s: AsyncSession, domain_id: uuid.UUID, number_id: uuid.UUID) -> IncomingNumber:
    n: IncomingNumber | None = await s.scalar(
        select(IncomingNumber).where(IncomingNumber.domain_id == domain_id, IncomingNumber.id == number_id)
    )
    if n is None:
        raise NotFound("number", number_id)
    return n


def _search(q: str) -> ColumnElement[bool]:
    """Label text anywhere; digits typed in any spelling (``8 495 123``, ``+7 (495)``) match the number."""
    conds: list[ColumnElement[bool]] = [IncomingNumber.label.ilike(like_pattern(q), escape="\\")]
    if NUMBERISH_RE.fullmatch(q):
        e164 = to_e164(q)
        if e164 is not None:
            conds.append(IncomingNumber.number == e164)
        digits = "".join(ch for ch in q if ch.isdigit())
        if digits:
            conds.append(IncomingNumber.number.like(like_pattern(digits), escape="\\"))
            if len(digits) > 1 and digits[0] == "8" and not q.lstrip().startswith("+"):
                # the Russian trunk prefix: "8 495" is "+7 495"
                conds.append(IncomingNumber.number.like(like_pattern("7" + digits[1:]), escape="\\"))
    return or_(*conds)


async def list_numbers(
    s: AsyncSession, domain_id: uuid.UUID, q: str = "", page: int = 1
) -> Page[IncomingNumber]:
    stmt = select(IncomingNumber).where(IncomingNumber.domain_id == domain_id).order_by(IncomingNumber.number)
    if q.strip():
        stmt = stmt.where(_search(q.strip()))
    return await paginate(s, stmt, page)


async def all_numbers(s: AsyncSession, domain_id: uuid.UUID) -> list[IncomingNumber]:
    stmt = select(IncomingNumber).where(IncomingNumber.domain_id == domain_id).order_by(IncomingNumber.number)
    return list((await s.scalars(stmt)).all())


async def rule_counts(
    s: AsyncSession, domain_id: uuid.UUID, number_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, int]:
    """How many routing rules each of these numbers has (numbers without rules are left out)."""
    if not number_ids:
        return {}
    rows = await s.execute(
        select(RoutingRule.number_id, func.count())
        .where(RoutingRule.domain_id == domain_id, RoutingRule.number_id.in_(list(number_ids)))
        .group_by(RoutingRule.number_id)
    )
    return {nid: int(count) for nid, count in rows.all()}
