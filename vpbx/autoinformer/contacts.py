"""A campaign's contacts (autoinformer.md §3.2): lists from a CSV/XLSX upload, manual lines or the API's
``autoinformer_add_numbers``, each number checked on its own, the accepted ones stored as ``AiContact`` rows
with their ``AiContactPhone`` rows (the ``duplicate`` rule) and the recipient's time zone.

Columns: the first row is the header. The phone column is ``phone``/``телефон``/``номер`` (any case), else the
first column; ``phone2``…``phone5`` (``телефон2``…, ``номер2``…) hold more numbers of the same person;
``external_id`` the CRM's id; every other column is a variable, its name lower-cased, spaces turned into
``_`` and kept to ``[a-z0-9_]``, at most 32 characters (a header with nothing left is ignored). Manual lines
(``phone;var1;…``) may start with such a header; without one the columns are ``phone``, ``var1``, ``var2``…

Each number gets the first reason that applies: ``empty_phone`` (the main phone cell is empty),
``invalid_format``, ``duplicate`` (earlier in this list or already in the campaign), ``stop_list``,
``destination_restricted`` (international while the campaign does not allow it, including Kazakhstan's
``76``/``77``; the premium-rate ranges ``7803…``/``7809…`` always). A row with at least one good number is
rejected as a whole for ``missing_variable`` (a variable the message uses is empty or over 200 characters)
or ``row_limit`` (the campaign would exceed 100 000 contacts); otherwise it is imported with its good
numbers, its bad ones reported. Domains have no domain-wide outbound restrictions to apply
(vpbx.pbx.outbound restricts per user), so only those rules make ``destination_restricted``.

Row numbers are 1-based data rows (the header is not counted); in the API they are the 1-based position in
``contacts``. The caller commits; nothing is written when the file cannot be read (``TableError``).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.autoinformer.schemas import MAX_CONTACTS, MAX_VALUE_CHARS, spec_of
from vpbx.autoinformer.stoplist import is_stopped
from vpbx.autoinformer.tables import MAX_COLUMNS, N_, Grid, TableError, read_csv, read_table, safe_cell
from vpbx.autoinformer.tz import ZoneLookup
from vpbx.crm.phone import normalise
from vpbx.errors import NotFound
from vpbx.store.models import AiCampaign, AiContact, AiContactPhone

MAX_PHONES = 5
MAX_API_CONTACTS = 1000  # per autoinformer_add_numbers call (§9)
MAX_MANUAL_CHARS = 1024 * 1024
INSERT_BATCH = 1000
DELETE_BATCH = 500
MAX_NAME = 32
PREMIUM_PREFIXES = ("7803", "7809")  # Russian premium-rate (paid information) services: never dialled
FOREIGN_IN_ZONE_7 = ("76", "77")  # Kazakhstan shares country code 7

REASONS = (
    "empty_phone",
    "invalid_format",
    "duplicate",
    "stop_list",
    "destination_restricted",
    "missing_variable",
    "row_limit",
)

_PHONE_HEADER = re.compile(r"(phone|телефон|номер)_?([1-5])?")
_NOT_NAME = re.compile(r"[^a-z0-9_]")


@dataclass(frozen=True, slots=True)
class InputRow:
    """One person as read: ``phones`` are ``(column, raw value)`` in column order, the main column first."""

    row: int
    phones: list[tuple[str, str]]
    external_id: str | None = None
    variables: dict[str, str] = field(default_factory=dict)
    cells: list[str] = field(default_factory=list)  # as in the file, for the rejected rows' CSV


@dataclass(frozen=True, slots=True)
class ContactTable:
    header: list[str]  # for the rejected rows' CSV
    rows: list[InputRow]
    ignored_columns: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Rejection:
    row: int
    column: str
    phone: str
    reason: str


@dataclass(slots=True)
class ImportResult:
    accepted: int = 0
    rejected: list[Rejection] = field(default_factory=list)  # one per rejected number (or row-level reason)
    rejected_rows: int = 0  # rows not imported at all
    contact_ids: list[uuid.UUID] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    _rejected_cells: list[tuple[list[str], list[str]]] = field(default_factory=list)  # (cells, reasons)

    @property
    def counts(self) -> dict[str, int]:
        """Rejected numbers per reason, every reason present (0 when none)."""
        c = Counter(r.reason for r in self.rejected)
        return {reason: c.get(reason, 0) for reason in REASONS}

    def rejected_csv(self) -> bytes:
        """The rows not imported, as read, with a ``reason`` column (UTF-8 with BOM, ``;``)."""
        buf = io.StringIO()
        w = csv.writer(buf, delimiter=";", lineterminator="\r\n")
        w.writerow([*(safe_cell(c) for c in self.header), "reason"])
        width = len(self.header)
        for cells, reasons in self._rejected_cells:
            padded = [*cells, *[""] * (width - len(cells))] if len(cells) < width else cells
            w.writerow([*(safe_cell(c) for c in padded), ",".join(dict.fromkeys(reasons))])
        return "\ufeff".encode() + buf.getvalue().encode()

    def api_rejected(self) -> list[dict[str, Any]]:
        """``rejected`` as autoinformer_add_numbers answers it (§9)."""
        return [{"row": r.row, "phone": r.phone, "reason": r.reason} for r in self.rejected]


# --- reading -------------------------------------------------------------------------------------------


def variable_name(header: str) -> str:
    """A column header as a variable name: ``Сумма долга`` → ``""``, ``Due Date`` → ``due_date``."""
    name = "_".join(header.strip().lower().split())
    return _NOT_NAME.sub("", name).strip("_")[:MAX_NAME]


def table_of(rows: list[list[str]], *, header_optional: bool = False) -> ContactTable:
    """Rows of text cells (the first is the header) as contact rows."""
    if not rows:
        return ContactTable([], [])
    first = rows[0]
    has_header = True
    if header_optional:
        names = [_header_key(c) for c in first]
        has_header = any(_PHONE_HEADER.fullmatch(n) or n == "external_id" for n in names) or (
            bool(first)
            and bool(first[0].strip())
            and not normalise(first[0]).ok
            and not _looks_numeric(first[0])
        )
    if has_header:
        header, data = list(first), rows[1:]
    else:
        width = max(len(r) for r in rows)
        header, data = ["phone", *(f"var{i}" for i in range(1, width))], rows
    keys = [_header_key(t) for t in header]
    phone_cols: dict[int, int] = {}  # phone number (1–5) → column
    external_col: int | None = None
    for col, key in enumerate(keys):
        m = _PHONE_HEADER.fullmatch(key)
        if m and int(m[2] or 1) not in phone_cols:
            phone_cols[int(m[2] or 1)] = col
        elif key == "external_id" and external_col is None:
            external_col = col
    if 1 not in phone_cols:  # no phone header: the first free column
        taken = {*phone_cols.values(), external_col}
        phone_cols[1] = next(c for c in range(len(header) + 1) if c not in taken)
    taken = {*phone_cols.values(), external_col}
    var_cols: list[tuple[int, str]] = []
    ignored: list[str] = []
    for col, title in enumerate(header):
        if col in taken:
            continue
        name = variable_name(title)
        if not name or name == "phone" or name in {n for _, n in var_cols}:
            ignored.append(title)
        else:
            var_cols.append((col, name))
    ordered = sorted(phone_cols.items())
    out: list[InputRow] = []
    for i, cells in enumerate(data, start=1):

        def cell(col: int, cells: list[str] = cells) -> str:
            return cells[col].strip() if col < len(cells) else ""

        out.append(
            InputRow(
                row=i,
                phones=[(_title(header, c, n), cell(c)) for n, c in ordered],
                external_id=(cell(external_col) or None) if external_col is not None else None,
                variables={name: cell(c) for c, name in var_cols},
                cells=list(cells),
            )
        )
    return ContactTable(header, out, ignored)


def _title(header: list[str], col: int, n: int) -> str:
    return header[col] if col < len(header) and header[col].strip() else ("phone" if n == 1 else f"phone{n}")


def _header_key(title: str) -> str:
    return "_".join(title.strip().lower().replace("ё", "е").split())


def _looks_numeric(text: str) -> bool:
    return any(ch.isdigit() for ch in text) and not any(ch.isalpha() for ch in text)


def parse_file(data: bytes) -> ContactTable:
    """A CSV or XLSX upload; ``TableError`` (naming the row and column) when it cannot be read."""
    return table_of(read_table(data).rows)


def parse_manual(text: str) -> ContactTable:
    """Manual entry: one ``phone;var1;var2…`` line each (``,`` or tab work too), an optional header."""
    if len(text) > MAX_MANUAL_CHARS:
        raise TableError("too-large", N_("The list is too long (at most {n} characters)"), n=MAX_MANUAL_CHARS)
    grid: Grid = read_csv(text.encode())
    return table_of(grid.rows, header_optional=True)


def parse_api(contacts: Sequence[Mapping[str, Any]]) -> ContactTable:
    """``autoinformer_add_numbers``' ``contacts``: ``{"phone" or "phones", "external_id"?, "vars"?}``.
    Shapes are the API's to validate; here a wrong type is an empty or invalid value."""
    rows: list[InputRow] = []
    for i, item in enumerate(contacts, start=1):
        phones: list[tuple[str, str]] = []
        raw_phones = item.get("phones")
        if isinstance(raw_phones, list) and raw_phones:
            phones = [(f"phones[{j}]", _text(v)) for j, v in enumerate(raw_phones[:MAX_PHONES])]
        else:
            phones = [("phone", _text(item.get("phone")))]
        raw_vars = item.get("vars")
        variables: dict[str, str] = {}
        if isinstance(raw_vars, Mapping):
            for k, v in raw_vars.items():
                name = variable_name(str(k))
                if name and name != "phone" and name not in variables:
                    variables[name] = _text(v)
        ext = item.get("external_id")
        rows.append(
            InputRow(
                row=i,
                phones=phones,
                external_id=_text(ext)[:128] or None if ext is not None else None,
                variables=variables,
                cells=[p for _, p in phones],
            )
        )
    return ContactTable(["phone"], rows)


def _text(v: object) -> str:
    if v is None or isinstance(v, (dict, list)):
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


# --- checking and storing -------------------------------------------------------------------------------


async def get_campaign(s: AsyncSession, domain_id: uuid.UUID, campaign_id: uuid.UUID) -> AiCampaign:
    campaign = await s.scalar(
        select(AiCampaign).where(AiCampaign.id == campaign_id, AiCampaign.domain_id == domain_id)
    )
    if campaign is None:
        raise NotFound("campaign", campaign_id.hex)
    return campaign


def destination_allowed(digits: str, *, allow_international: bool) -> bool:
    if digits.startswith(PREMIUM_PREFIXES):
        return False
    domestic = digits.startswith("7") and not digits.startswith(FOREIGN_IN_ZONE_7)
    return domestic or allow_international


async def import_rows(
    s: AsyncSession, domain_id: uuid.UUID, campaign_id: uuid.UUID, table: ContactTable
) -> ImportResult:
    """Check every row of ``table`` and store the accepted ones in the campaign (the caller commits)."""
    campaign = await get_campaign(s, domain_id, campaign_id)
    spec = spec_of(campaign)
    used = sorted(spec.variables())
    result = ImportResult(header=list(table.header), ignored_columns=list(table.ignored_columns))
    existing = set(
        await s.scalars(select(AiContactPhone.phone).where(AiContactPhone.campaign_id == campaign.id))
    )
    count = (
        await s.scalar(
            select(func.count()).select_from(AiContact).where(AiContact.campaign_id == campaign.id)
        )
        or 0
    )
    # pass 1: normalise, so the stop list is asked once per chunk of numbers
    normalised = [[(col, raw, normalise(raw)) for col, raw in r.phones] for r in table.rows]
    stopped = await is_stopped(s, domain_id, {n.digits for row in normalised for _, _, n in row if n.ok})
    zones = ZoneLookup(s)
    seen = set(existing)
    now = dt.datetime.now(dt.UTC)
    contacts: list[dict[str, Any]] = []
    phones: list[dict[str, Any]] = []
    for row, numbers in zip(table.rows, normalised, strict=True):
        good: list[str] = []
        bad: list[Rejection] = []
        batch_seen: set[str] = set()
        for index, (col, raw, n) in enumerate(numbers):
            if not raw and index > 0:
                continue  # an empty extra phone column is no number
            reason: str | None = n.reason
            if reason is None:
                if n.digits in seen or n.digits in batch_seen:
                    reason = "duplicate"
                elif n.digits in stopped:
                    reason = "stop_list"
                elif not destination_allowed(n.digits, allow_international=spec.allow_international):
                    reason = "destination_restricted"
            if reason is None:
                good.append(n.digits)
                batch_seen.add(n.digits)
            else:
                bad.append(Rejection(row.row, col, raw, reason))
        row_reject: Rejection | None = None
        if good:
            missing = [v for v in used if not row.variables.get(v) or len(row.variables[v]) > MAX_VALUE_CHARS]
            if missing:
                row_reject = Rejection(row.row, missing[0], good[0], "missing_variable")
            elif count + len(contacts) >= MAX_CONTACTS:
                row_reject = Rejection(row.row, "", good[0], "row_limit")
        if not good or row_reject is not None:
            rejections = bad if row_reject is None else [row_reject]
            result.rejected.extend(rejections)
            result.rejected_rows += 1
            result._rejected_cells.append((row.cells, [r.reason for r in rejections]))
            continue
        result.rejected.extend(bad)
        seen.update(good)
        contact_id = uuid.uuid4()
        result.contact_ids.append(contact_id)
        contacts.append(
            {
                "id": contact_id,
                "campaign_id": campaign.id,
                "domain_id": domain_id,
                "row_no": row.row,
                "phones": good,
                "dropped": [],
                "external_id": row.external_id,
                "variables": {k: v[:MAX_VALUE_CHARS] for k, v in row.variables.items()},
                "timezone": await zones.zone(good[0]),
                "status": "pending",
                "created_at": now,
                "updated_at": now,
            }
        )
        phones.extend({"campaign_id": campaign.id, "phone": p, "contact_id": contact_id} for p in good)
    for i in range(0, len(contacts), INSERT_BATCH):
        await s.execute(insert(AiContact), contacts[i : i + INSERT_BATCH])
    for i in range(0, len(phones), INSERT_BATCH * MAX_PHONES):
        await s.execute(insert(AiContactPhone), phones[i : i + INSERT_BATCH * MAX_PHONES])
    result.accepted = len(contacts)
    return result


async def import_file(
    s: AsyncSession, domain_id: uuid.UUID, campaign_id: uuid.UUID, data: bytes
) -> ImportResult:
    """A CSV or XLSX upload into the campaign. ``TableError`` when unreadable (nothing is added)."""
    await get_campaign(s, domain_id, campaign_id)  # another domain's campaign: NotFound before parsing
    return await import_rows(s, domain_id, campaign_id, parse_file(data))


async def import_manual(
    s: AsyncSession, domain_id: uuid.UUID, campaign_id: uuid.UUID, text: str
) -> ImportResult:
    await get_campaign(s, domain_id, campaign_id)
    return await import_rows(s, domain_id, campaign_id, parse_manual(text))


async def add_numbers(
    s: AsyncSession, domain_id: uuid.UUID, campaign_id: uuid.UUID, contacts: Sequence[Mapping[str, Any]]
) -> ImportResult:
    """``autoinformer_add_numbers`` (§9): a repeated phone is ``duplicate``, so a retry adds nothing."""
    if len(contacts) > MAX_API_CONTACTS:
        raise TableError("too-many-rows", N_("The file has over {n} rows"), n=MAX_API_CONTACTS)
    return await import_rows(s, domain_id, campaign_id, parse_api(contacts))


async def remove_contacts(
    s: AsyncSession, domain_id: uuid.UUID, campaign_id: uuid.UUID, contact_ids: Sequence[uuid.UUID]
) -> int:
    """Remove contacts of the campaign that are still ``pending`` (others are kept); the count removed.
    Their numbers may then be added again."""
    campaign = await get_campaign(s, domain_id, campaign_id)
    removed = 0
    ids = list(dict.fromkeys(contact_ids))
    for i in range(0, len(ids), DELETE_BATCH):
        chunk = ids[i : i + DELETE_BATCH]
        pending = list(
            await s.scalars(
                select(AiContact.id).where(
                    AiContact.campaign_id == campaign.id,
                    AiContact.domain_id == domain_id,
                    AiContact.status == "pending",
                    AiContact.id.in_(chunk),
                )
            )
        )
        if not pending:
            continue
        await s.execute(delete(AiContactPhone).where(AiContactPhone.contact_id.in_(pending)))
        await s.execute(delete(AiContact).where(AiContact.id.in_(pending), AiContact.status == "pending"))
        removed += len(pending)
    return removed


__all__ = [
    "MAX_COLUMNS",
    "REASONS",
    "ContactTable",
    "ImportResult",
    "InputRow",
    "Rejection",
    "TableError",
    "add_numbers",
    "destination_allowed",
    "get_campaign",
    "import_file",
    "import_manual",
    "import_rows",
    "parse_api",
    "parse_file",
    "parse_manual",
    "remove_contacts",
    "table_of",
    "variable_name",
]
