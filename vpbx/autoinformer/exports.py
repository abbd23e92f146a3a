"""A campaign's report tables as files (autoinformer.md §6): the numbers and attempts tables with the report's
filters, as CSV (UTF-8 with BOM, ``;``, so spreadsheet programs open it directly) or XLSX (phones and ids as
text).

Up to ``BACKGROUND_ROWS`` rows the cabinet builds the file in the request and sends it at once. Over that,
``AiExports`` builds it in the background into ``<data_dir>/ai-exports/<domain>/<campaign>/`` (a ``.part``
file renamed when complete) and the report tab lists the campaign's files with their time, size and a
download link. Files are named after the moment they were ordered, so the listing needs no table and a
restart loses nothing but a build in progress (its ``.part`` is swept); every file goes after 7 days.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import io
import re
import secrets
import shutil
import uuid
import zoneinfo
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import QueryableAttribute

from vpbx.background import BackgroundLoop
from vpbx.clock import Clock
from vpbx.logs import get_logger
from vpbx.store.models import AI_CONTACT_STATUSES, AI_OUTCOMES, AiAttempt, AiContact, AiContactPhone
from vpbx.store.paging import like_pattern

log = get_logger("vpbx.autoinformer.exports")

_Row = TypeVar("_Row")

EXPORT_DIR = "ai-exports"  # under data_dir
BACKGROUND_ROWS = 100_000  # §6: over this many rows the file is built in the background
KEEP = dt.timedelta(days=7)  # background files are offered this long
FETCH_BATCH = 1000  # rows read per round trip while building a file
XLSX_MAX_ROWS = 1_048_575  # a sheet holds 1 048 576 rows, one of them the header
SWEEP_INTERVAL_S = 3600.0
Table = Literal["numbers", "attempts"]
Fmt = Literal["csv", "xlsx"]
_STAMP = "%Y%m%dT%H%M%S"
NAME_RE = re.compile(r"(\d{8}T\d{6})-(numbers|attempts)-([0-9a-f]{8})\.(csv|xlsx)")
PART = ".part"
MEDIA_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
NUMBER_COLUMNS = (
    "phone",
    "phones",
    "external_id",
    "variables",
    "status",
    "attempts_made",
    "last_outcome",
    "last_attempt_at",
    "next_attempt_at",
    "best_listen_s",
    "digits",
    "succeeded_at",
    "last_session_id",
)
ATTEMPT_COLUMNS = (
    "attempt_id",
    "contact_id",
    "external_id",
    "attempt_no",
    "number_index",
    "phone",
    "scheduled_at",
    "started_at",
    "answered_at",
    "ended_at",
    "sip_code",
    "outcome",
    "criterion_met",
    "listen_s",
    "played_full",
    "digits",
    "action",
    "operator_target",
    "operator_answered",
    "amd_result",
    "session_id",
    "cost",
    "detail",
)


@dataclass(frozen=True, slots=True)
class Filters:
    """The tables' filters (§6): status, last outcome, digit, period (the domain's dates), phone."""

    status: str = ""
    outcome: str = ""
    digit: str = ""
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    phone: str = ""

    @classmethod
    def of(cls, q: Any) -> Filters:
        def day(name: str) -> dt.date | None:
            try:
                return dt.date.fromisoformat(str(q.get(name) or "")[:10])
            except ValueError:
                return None

        status = str(q.get("status") or "")
        outcome = str(q.get("outcome") or "")
        digit = str(q.get("digit") or "")[:1]
        return cls(
            status=status if status in AI_CONTACT_STATUSES else "",
            outcome=outcome if outcome in AI_OUTCOMES else "",
            digit=digit if digit and digit in "0123456789*#" else "",
            date_from=day("from"),
            date_to=day("to"),
            phone="".join(ch for ch in str(q.get("phone") or "") if ch.isdigit())[:16],
        )

    def query(self) -> dict[str, str]:
        return {
            "status": self.status,
            "outcome": self.outcome,
            "digit": self.digit,
            "from": self.date_from.isoformat() if self.date_from else "",
            "to": self.date_to.isoformat() if self.date_to else "",
            "phone": self.phone,
        }

    def bounds(self, timezone: str) -> tuple[dt.datetime | None, dt.datetime | None]:
        """The period as UTC instants: from the start of ``date_from`` to the end of ``date_to``."""
        tz = zoneinfo.ZoneInfo(timezone)
        lo = dt.datetime.combine(self.date_from, dt.time(), tz) if self.date_from else None
        hi = dt.datetime.combine(self.date_to + dt.timedelta(days=1), dt.time(), tz) if self.date_to else None
        return (lo.astimezone(dt.UTC) if lo else None, hi.astimezone(dt.UTC) if hi else None)


def _narrowed(
    stmt: Select[_Row],
    f: Filters,
    timezone: str,
    *,
    outcome: QueryableAttribute[Any],
    digits: QueryableAttribute[Any],
    at: QueryableAttribute[Any],
) -> Select[_Row]:
    """The filters both tables share: the outcome, a pressed key, the local dates (on ``at``)."""
    if f.outcome:
        stmt = stmt.where(outcome == f.outcome)
    if f.digit:
        stmt = stmt.where(digits.like(like_pattern(f.digit), escape="\\"))
    lo, hi = f.bounds(timezone)
    if lo:
        stmt = stmt.where(at >= lo)
    if hi:
        stmt = stmt.where(at < hi)
    return stmt


def numbers_query(campaign_id: uuid.UUID, f: Filters, timezone: str) -> Select[AiContact]:
    stmt = select(AiContact).where(AiContact.campaign_id == campaign_id)
    if f.status:
        stmt = stmt.where(AiContact.status == f.status)
    stmt = _narrowed(
        stmt,
        f,
        timezone,
        outcome=AiContact.last_outcome,
        digits=AiContact.digits,
        at=AiContact.last_attempt_at,
    )
    if f.phone:
        stmt = stmt.where(
            AiContact.id.in_(
                select(AiContactPhone.contact_id).where(
                    AiContactPhone.campaign_id == campaign_id,
                    AiContactPhone.phone.like(like_pattern(f.phone), escape="\\"),
                )
            )
        )
    return stmt.order_by(AiContact.row_no, AiContact.created_at, AiContact.id)


def attempts_query(campaign_id: uuid.UUID, f: Filters, timezone: str) -> Select[AiAttempt]:
    stmt = select(AiAttempt).where(AiAttempt.campaign_id == campaign_id)
    if f.status:
        stmt = stmt.where(
            AiAttempt.contact_id.in_(
                select(AiContact.id).where(AiContact.campaign_id == campaign_id, AiContact.status == f.status)
            )
        )
    stmt = _narrowed(
        stmt, f, timezone, outcome=AiAttempt.outcome, digits=AiAttempt.digits, at=AiAttempt.started_at
    )
    if f.phone:
        stmt = stmt.where(AiAttempt.phone.like(like_pattern(f.phone), escape="\\"))
    return stmt.order_by(AiAttempt.started_at.desc(), AiAttempt.id)


# --- rows ---------------------------------------------------------------------------------------------------


def _cell(value: Any, tz: zoneinfo.ZoneInfo) -> str | int | float:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        at = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return at.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, uuid.UUID):
        return value.hex
    if isinstance(value, int | float):
        return value
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


Row = list[str | int | float]


def number_row(c: AiContact, tz: zoneinfo.ZoneInfo) -> Row:
    values: dict[str, Any] = {
        "phone": c.phones[0] if c.phones else "",
        "phones": c.phones,
        "external_id": c.external_id,
        "variables": c.variables,
        "status": c.status,
        "attempts_made": c.attempts_made,
        "last_outcome": c.last_outcome,
        "last_attempt_at": c.last_attempt_at,
        "next_attempt_at": c.next_attempt_at,
        "best_listen_s": c.best_listen_s,
        "digits": c.digits,
        "succeeded_at": c.succeeded_at,
        "last_session_id": c.last_session_id,
    }
    return [_cell(values[k], tz) for k in NUMBER_COLUMNS]


def attempt_row(a: AiAttempt, external: dict[uuid.UUID, str | None], tz: zoneinfo.ZoneInfo) -> Row:
    values: dict[str, Any] = {k: getattr(a, k, None) for k in ATTEMPT_COLUMNS}
    values["attempt_id"] = a.id
    values["external_id"] = external.get(a.contact_id)
    values["cost"] = f"{a.cost:.2f}" if a.cost is not None else None
    return [_cell(values[k], tz) for k in ATTEMPT_COLUMNS]


def header_of(table: Table) -> Sequence[str]:
    return NUMBER_COLUMNS if table == "numbers" else ATTEMPT_COLUMNS


async def count_rows(s: AsyncSession, campaign_id: uuid.UUID, table: Table, f: Filters, timezone: str) -> int:
    """How many rows the table has with these filters."""
    query = numbers_query if table == "numbers" else attempts_query
    inner = query(campaign_id, f, timezone).order_by(None).subquery()
    return int(await s.scalar(select(func.count()).select_from(inner)) or 0)


async def _external_ids(s: AsyncSession, campaign_id: uuid.UUID) -> dict[uuid.UUID, str | None]:
    rows = await s.execute(
        select(AiContact.id, AiContact.external_id).where(
            AiContact.campaign_id == campaign_id, AiContact.external_id.is_not(None)
        )
    )
    return {row[0]: row[1] for row in rows.all()}


async def batches(
    s: AsyncSession,
    campaign_id: uuid.UUID,
    table: Table,
    f: Filters,
    timezone: str,
    *,
    limit: int | None = None,
) -> AsyncIterator[list[Row]]:
    """The table's rows, ``FETCH_BATCH`` at a time, streamed from the database in the report's order."""
    tz = zoneinfo.ZoneInfo(timezone)
    if table == "numbers":
        contacts = numbers_query(campaign_id, f, timezone)
        if limit is not None:
            contacts = contacts.limit(limit)
        stream = await s.stream_scalars(contacts.execution_options(yield_per=FETCH_BATCH))
        async for part in stream.partitions(FETCH_BATCH):
            yield [number_row(c, tz) for c in part]
        return
    external = await _external_ids(s, campaign_id)
    attempts = attempts_query(campaign_id, f, timezone)
    if limit is not None:
        attempts = attempts.limit(limit)
    tries = await s.stream_scalars(attempts.execution_options(yield_per=FETCH_BATCH))
    async for chunk in tries.partitions(FETCH_BATCH):
        yield [attempt_row(a, external, tz) for a in chunk]


def build_csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    """UTF-8 with a BOM and ``;`` between fields, so spreadsheet programs open it directly (§6)."""
    return ("\ufeff" + csv_text([header, *rows])).encode("utf-8")


def csv_text(rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, delimiter=";", lineterminator="\r\n").writerows(rows)
    return buf.getvalue()


def build_xlsx(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    buf = io.BytesIO()
    _save_xlsx(buf, title, header, rows)
    return buf.getvalue()


def _save_xlsx(
    target: io.BytesIO | Path, title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    from openpyxl import Workbook

    wb = Workbook(write_only=True)
    ws = wb.create_sheet(title)
    ws.append(list(header))
    for row in rows:
        # phones and ids stay text: a spreadsheet would show 79161234567 as 7.9E+10
        ws.append([v if isinstance(v, int | float) else str(v) for v in row])
    wb.save(target)


# --- files in the background -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExportFile:
    """A background export of a campaign: ready to download, or still being built."""

    name: str
    table: Table
    fmt: Fmt
    ordered_at: dt.datetime
    size: int
    ready: bool


def campaign_dir(data_dir: Path, domain_id: uuid.UUID, campaign_id: uuid.UUID) -> Path:
    return data_dir / EXPORT_DIR / domain_id.hex / campaign_id.hex


def new_name(now: dt.datetime, table: Table, fmt: Fmt) -> str:
    return f"{now.astimezone(dt.UTC).strftime(_STAMP)}-{table}-{secrets.token_hex(4)}.{fmt}"


def ordered_at(name: str) -> dt.datetime | None:
    """When the file of this name was ordered; None for a name that is not an export's."""
    m = NAME_RE.fullmatch(name.removesuffix(PART))
    if m is None:
        return None
    return dt.datetime.strptime(m[1], _STAMP).replace(tzinfo=dt.UTC)


def list_files(directory: Path, now: dt.datetime) -> list[ExportFile]:
    """The directory's exports, newest first, without those past ``KEEP`` (blocking: run in a thread)."""
    out: list[ExportFile] = []
    with contextlib.suppress(FileNotFoundError):
        for path in directory.iterdir():
            name = path.name.removesuffix(PART)
            m = NAME_RE.fullmatch(name)
            at = ordered_at(path.name)
            if m is None or at is None or at + KEEP <= now:
                continue
            table: Table = "numbers" if m[2] == "numbers" else "attempts"
            fmt: Fmt = "csv" if m[4] == "csv" else "xlsx"
            with contextlib.suppress(FileNotFoundError):
                out.append(
                    ExportFile(name, table, fmt, at, path.stat().st_size, not path.name.endswith(PART))
                )
    return sorted(out, key=lambda e: (e.ordered_at, e.name), reverse=True)


def sweep_files(root: Path, now: dt.datetime) -> int:
    """Delete exports (finished or left half-built) ordered over ``KEEP`` ago and empty directories under
    ``root``; how many files went (blocking: run in a thread)."""
    gone = 0
    if not root.is_dir():
        return 0
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir():
            with contextlib.suppress(OSError):
                path.rmdir()  # only when empty
            continue
        at = ordered_at(path.name)
        if at is not None and at + KEEP <= now:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                gone += 1
    return gone


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8", newline="") as f:
        f.write(text)


async def write_file(
    s: AsyncSession,
    target: Path,
    campaign_id: uuid.UUID,
    table: Table,
    fmt: Fmt,
    f: Filters,
    timezone: str,
) -> int:
    """Build the table into ``target`` (through ``target.part``, renamed when complete); the rows written."""
    part = target.with_name(target.name + PART)
    await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
    rows = 0
    header = header_of(table)
    try:
        if fmt == "csv":
            await asyncio.to_thread(
                part.write_text, "\ufeff" + csv_text([header]), encoding="utf-8", newline=""
            )
            async for chunk in batches(s, campaign_id, table, f, timezone):
                await asyncio.to_thread(_append, part, csv_text(chunk))
                rows += len(chunk)
        else:
            held: list[Row] = []
            async for chunk in batches(s, campaign_id, table, f, timezone, limit=XLSX_MAX_ROWS):
                held.extend(chunk)
            rows = len(held)
            await asyncio.to_thread(_save_xlsx, part, table, header, held)
        await asyncio.to_thread(part.replace, target)
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink(missing_ok=True)
        raise
    return rows


class AiExports:
    """Builds campaigns' big exports in background tasks and sweeps old files (CONVENTIONS §4: start/stop).

    ``order`` answers at once with the file's name; the file shows in ``files`` as being built, then as
    ready. ``start`` runs the hourly sweep (``vpbx serve``); the cabinet works without it, since ``files``
    leaves out what is past ``KEEP``."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        data_dir: Path,
        clock: Clock,
        *,
        sweep_interval_s: float = SWEEP_INTERVAL_S,
    ) -> None:
        self.sessions = sessions
        self.root = data_dir / EXPORT_DIR
        self.data_dir = data_dir
        self.clock = clock
        self.sweep_interval_s = sweep_interval_s
        self._builds: dict[str, asyncio.Task[None]] = {}  # file path → its build
        self._sweeper = _ExportSweep(self)

    async def start(self) -> None:
        await self._sweeper.start()

    async def stop(self) -> None:
        tasks = list(self._builds.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, self._sweeper.stop(), return_exceptions=True)
        self._builds.clear()

    async def sweep(self) -> int:
        gone = await asyncio.to_thread(sweep_files, self.root, self.clock.now())
        if gone:
            log.info("ai_export.swept", files=gone)
        return gone

    def order(
        self, domain_id: uuid.UUID, campaign_id: uuid.UUID, table: Table, fmt: Fmt, f: Filters, timezone: str
    ) -> str:
        """Start building the table into a new file of the campaign; its name."""
        name = new_name(self.clock.now(), table, fmt)
        target = campaign_dir(self.data_dir, domain_id, campaign_id) / name
        task = asyncio.create_task(
            self._build(target, campaign_id, table, fmt, f, timezone), name=f"ai-export-{name}"
        )
        self._builds[str(target)] = task
        task.add_done_callback(lambda _t: self._builds.pop(str(target), None))
        return name

    async def _build(
        self, target: Path, campaign_id: uuid.UUID, table: Table, fmt: Fmt, f: Filters, timezone: str
    ) -> None:
        try:
            async with self.sessions() as s:
                rows = await write_file(s, target, campaign_id, table, fmt, f, timezone)
            log.info("ai_export.built", campaign_id=campaign_id.hex, file=target.name, rows=rows)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("ai_export.failed", campaign_id=campaign_id.hex, file=target.name)

    async def files(self, domain_id: uuid.UUID, campaign_id: uuid.UUID) -> list[ExportFile]:
        return await asyncio.to_thread(
            list_files, campaign_dir(self.data_dir, domain_id, campaign_id), self.clock.now()
        )

    def path(self, domain_id: uuid.UUID, campaign_id: uuid.UUID, name: str) -> Path | None:
        """The finished file of this name of the campaign, if the name is an export's and still kept."""
        at = ordered_at(name)
        if name.endswith(PART) or at is None or at + KEEP <= self.clock.now():
            return None
        path = campaign_dir(self.data_dir, domain_id, campaign_id) / name
        return path if path.is_file() else None

    async def forget(self, domain_id: uuid.UUID, campaign_id: uuid.UUID) -> None:
        """A deleted campaign's files go with its report (§4.1)."""
        await asyncio.to_thread(
            shutil.rmtree, campaign_dir(self.data_dir, domain_id, campaign_id), ignore_errors=True
        )


class _ExportSweep(BackgroundLoop):
    """``AiExports.sweep`` every ``sweep_interval_s``."""

    name = "ai-exports-sweep"
    failure_event = "ai_export.sweep_failed"

    def __init__(self, exports: AiExports) -> None:
        self.exports = exports
        self.interval_s = exports.sweep_interval_s

    async def run_once(self) -> float | None:
        await self.exports.sweep()
        return None
