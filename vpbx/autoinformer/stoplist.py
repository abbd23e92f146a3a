"""The domain's stop list («Стоп-лист», autoinformer.md §3.2): numbers none of its campaigns calls.

Kept per domain and applied to all its campaigns (never to regular calls); checked at import (``stop_list``)
and right before every attempt (``excluded``). Entries come from the cabinet or a CSV import (``manual``,
``import``) and from a recipient's opt-out key (``opt_out`` with the campaign). Removing an ``opt_out`` entry
needs an explicit confirmation and is written to the domain's audit log: the person asked not to be called.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.autoinformer.tables import N_, read_table, safe_cell
from vpbx.crm.phone import normalise
from vpbx.errors import Conflict, NotFound, ValidationFailed
from vpbx.store.models import AiCampaign, AiStopEntry, AuditEntry

Source = Literal["opt_out", "manual", "import"]
SOURCES: tuple[Source, ...] = ("opt_out", "manual", "import")
CHUNK = 500  # numbers per IN (…) query
MAX_PAGE = 500
PHONE_HEADERS = frozenset({"phone", "телефон", "номер"})
AUDIT_REMOVE_OPT_OUT = "autoinformer.stop_list.remove_opt_out"


class OptOutConfirmationRequired(Conflict):
    """Removing an ``opt_out`` entry was asked without the confirmation flag."""

    code = "opt-out-confirmation-required"

    def __init__(self, phone: str) -> None:
        super().__init__("Removing an opt-out needs confirmation", details={"phone": phone})


@dataclass(frozen=True, slots=True)
class StopPage:
    total: int
    entries: list[AiStopEntry]


@dataclass(frozen=True, slots=True)
class StopRejection:
    row: int  # 1 = the first data row
    phone: str
    reason: str  # empty_phone, invalid_format, duplicate (already on the list or earlier in the file)


@dataclass(slots=True)
class StopImportResult:
    added: int = 0
    rejected: list[StopRejection] = field(default_factory=list)


def _digits(raw: str) -> str:
    n = normalise(raw)
    if not n.ok:
        raise ValidationFailed.one("phone", N_("Enter a phone number such as +7 916 123-45-67"))
    return n.digits


async def is_stopped(s: AsyncSession, domain_id: uuid.UUID, phones: Iterable[str]) -> set[str]:
    """Which of the (normalised) ``phones`` are on the domain's stop list."""
    wanted = sorted(set(phones))
    found: set[str] = set()
    for i in range(0, len(wanted), CHUNK):
        chunk = wanted[i : i + CHUNK]
        found.update(
            await s.scalars(
                select(AiStopEntry.phone).where(
                    AiStopEntry.domain_id == domain_id, AiStopEntry.phone.in_(chunk)
                )
            )
        )
    return found


async def add(
    s: AsyncSession,
    domain_id: uuid.UUID,
    phone: str,
    *,
    source: Source = "manual",
    campaign_id: uuid.UUID | None = None,
    author: str = "",
) -> tuple[AiStopEntry, bool]:
    """Put one number (any spelling) on the list; ``(entry, created)``. An existing entry is kept as it is."""
    digits = _digits(phone)
    added = await add_many(s, domain_id, [digits], source=source, campaign_id=campaign_id, author=author)
    entry = await s.get(AiStopEntry, (domain_id, digits))
    assert entry is not None
    return entry, bool(added)


async def add_many(
    s: AsyncSession,
    domain_id: uuid.UUID,
    phones: Sequence[str],
    *,
    source: Source,
    campaign_id: uuid.UUID | None = None,
    author: str = "",
) -> list[str]:
    """Put normalised numbers on the list (an opt-out puts every number of the contact); returns the ones
    that were not there yet. ``campaign_id`` is kept for ``opt_out`` only."""
    if source not in SOURCES:
        raise ValueError(f"unknown stop list source {source!r}")
    if campaign_id is not None:
        owner = await s.scalar(select(AiCampaign.domain_id).where(AiCampaign.id == campaign_id))
        if owner != domain_id:
            raise NotFound("campaign", campaign_id)
    fresh = sorted(set(phones) - await is_stopped(s, domain_id, phones))
    now = dt.datetime.now(dt.UTC)
    s.add_all(
        AiStopEntry(
            domain_id=domain_id,
            phone=p,
            source=source,
            campaign_id=campaign_id if source == "opt_out" else None,
            author=author[:128],
            created_at=now,
        )
        for p in fresh
    )
    await s.flush()
    return fresh


async def remove(
    s: AsyncSession, domain_id: uuid.UUID, phone: str, *, confirm: bool = False, actor: str = ""
) -> None:
    """Take a number off the list. An ``opt_out`` entry needs ``confirm=True`` and is audited."""
    digits = _digits(phone)
    entry = await s.get(AiStopEntry, (domain_id, digits))
    if entry is None:
        raise NotFound("stop-list entry", digits)
    if entry.source == "opt_out":
        if not confirm:
            raise OptOutConfirmationRequired(digits)
        s.add(
            AuditEntry(
                domain_id=domain_id,
                actor=actor[:128] or "system",
                action=AUDIT_REMOVE_OPT_OUT,
                object_id=digits,
                details={
                    "phone": digits,
                    "campaign_id": entry.campaign_id.hex if entry.campaign_id else None,
                    "opted_out_at": entry.created_at.isoformat(),
                },
            )
        )
    await s.delete(entry)
    await s.flush()


async def list_entries(
    s: AsyncSession,
    domain_id: uuid.UUID,
    *,
    query: str = "",
    source: Source | None = None,
    offset: int = 0,
    limit: int = 50,
) -> StopPage:
    """A page of the list, newest first; ``query`` matches any part of the digits (``+7 916…`` works)."""
    cond = [AiStopEntry.domain_id == domain_id]
    needle = "".join(ch for ch in query if ch.isascii() and ch.isdigit())
    if needle:
        alt = "7" + needle[1:] if len(needle) == 11 and needle.startswith("8") else needle
        cond.append(or_(AiStopEntry.phone.contains(needle), AiStopEntry.phone.contains(alt)))
    if source is not None:
        cond.append(AiStopEntry.source == source)
    total = await s.scalar(select(func.count()).select_from(AiStopEntry).where(*cond)) or 0
    rows = await s.scalars(
        select(AiStopEntry)
        .where(*cond)
        .order_by(AiStopEntry.created_at.desc(), AiStopEntry.phone)
        .offset(max(offset, 0))
        .limit(min(max(limit, 1), MAX_PAGE))
    )
    return StopPage(total=total, entries=list(rows))


async def import_csv(
    s: AsyncSession, domain_id: uuid.UUID, data: bytes, *, author: str = ""
) -> StopImportResult:
    """Add the numbers of an uploaded CSV or XLSX (the ``phone``/``телефон``/``номер`` column, else the
    first; a header row is optional) as ``import`` entries. ``TableError`` when the file cannot be read."""
    grid = read_table(data)
    rows = grid.rows
    column, start = 0, 0
    if rows:
        header = [c.strip().lower() for c in rows[0]]
        named = [i for i, h in enumerate(header) if h in PHONE_HEADERS]
        if named or not normalise(rows[0][0] if rows[0] else "").ok:
            column, start = (named[0] if named else 0), 1
    result = StopImportResult()
    parsed: list[tuple[int, str, str]] = []  # (row, raw, digits)
    for i, row in enumerate(rows[start:], start=1):
        raw = row[column] if column < len(row) else ""
        n = normalise(raw)
        if n.ok:
            parsed.append((i, raw, n.digits))
        else:
            result.rejected.append(StopRejection(i, raw, n.reason or "invalid_format"))
    listed = await is_stopped(s, domain_id, [d for _, _, d in parsed])
    wanted: list[str] = []
    for i, raw, digits in parsed:
        if digits in listed:
            result.rejected.append(StopRejection(i, raw, "duplicate"))
        else:
            listed.add(digits)
            wanted.append(digits)
    result.added = len(await add_many(s, domain_id, wanted, source="import", author=author))
    result.rejected.sort(key=lambda r: r.row)
    return result


async def export_csv(s: AsyncSession, domain_id: uuid.UUID) -> bytes:
    """The whole list as CSV (UTF-8 with BOM, ``;``), so spreadsheet programs open it directly (§6)."""
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=";", lineterminator="\r\n")
    w.writerow(["phone", "source", "campaign_id", "author", "created_at"])
    rows = await s.scalars(
        select(AiStopEntry).where(AiStopEntry.domain_id == domain_id).order_by(AiStopEntry.phone)
    )
    for e in rows:
        w.writerow(
            [
                e.phone,
                e.source,
                e.campaign_id.hex if e.campaign_id else "",
                safe_cell(e.author),
                e.created_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            ]
        )
    return "\ufeff".encode() + buf.getvalue().encode()
