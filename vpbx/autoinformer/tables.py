"""Contact lists and stop lists as uploaded (autoinformer.md §3.2): CSV or XLSX bytes → rows of text cells.

CSV: UTF-8 (BOM optional), UTF-16 with a BOM (Excel's «Unicode text»), else Windows-1251; the delimiter
(``;``, ``,`` or tab) is the one the header line uses most outside quotes; RFC 4180 quoting. XLSX: the
first sheet, read in openpyxl's streaming mode, every cell as the text a spreadsheet shows, with long
numbers in full (``79161234567``, never ``7.9E+10``) and dates as ``DD.MM.YYYY``. Trailing empty rows are
dropped; empty rows in between are kept (the import reports them). A file that cannot be read raises
``TableError`` naming the row and column, and nothing is imported.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import zipfile
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from vpbx.errors import StoreError

MAX_FILE_BYTES = 20 * 1024 * 1024  # 20 MB (§3.2)
MAX_XLSX_UNPACKED = 256 * 1024 * 1024  # the workbook's XML once unzipped
MAX_ROWS = 200_000  # rows read from one file: twice the contact limit, so row_limit can still be reported
MAX_COLUMNS = 64  # 5 phones, external_id and the variables; wider sheets are cut here
MAX_CELL_CHARS = 1000
DELIMITERS = (";", ",", "\t")
XLSX_MAGIC = b"PK\x03\x04"
# a cell starting like a formula is run by spreadsheets (CSV injection); phone numbers such as +7 495 … are
# data, anything else gets a leading apostrophe (the journal's rule, vpbx.web.pages.history)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
PHONE_RE = re.compile(r"[+]?[0-9 ()\-]+")

Kind = Literal["csv", "xlsx"]


def N_(msgid: str) -> str:
    """Marks a message for the cabinet's catalog (vpbx/web/locale); translated where it is shown."""
    return msgid


class TableError(StoreError):
    """A file that cannot be read as a table; ``row``/``column`` (1-based, 0 = unknown) say where."""

    code = "table-unreadable"

    def __init__(self, reason: str, msgid: str, *, row: int = 0, column: int = 0, **params: object) -> None:
        all_params: dict[str, object] = {"row": row, "column": column, **params}
        super().__init__(msgid.format(**all_params), details={"reason": reason, **all_params})
        self.reason = reason
        self.msgid = msgid
        self.params = all_params
        self.row = row
        self.column = column


@dataclass(frozen=True, slots=True)
class Grid:
    """The cells of a file as text, row by row (the header is ``rows[0]``)."""

    kind: Kind
    rows: list[list[str]]
    delimiter: str = ";"  # the CSV's, for writing a report back in the same shape


def safe_cell(value: str) -> str:
    """A cell for a CSV we hand out: a spreadsheet shows it instead of running it as a formula."""
    if value.startswith(FORMULA_START) and not PHONE_RE.fullmatch(value):
        return "'" + value
    return value


def sniff_kind(data: bytes) -> Kind:
    return "xlsx" if data.startswith(XLSX_MAGIC) else "csv"


def read_table(data: bytes) -> Grid:
    """A CSV or XLSX upload as a grid of text cells."""
    if len(data) > MAX_FILE_BYTES:
        raise TableError(
            "too-large", N_("The file is too large (at most {mb} MB)"), mb=MAX_FILE_BYTES // (1024 * 1024)
        )
    return read_xlsx(data) if sniff_kind(data) == "xlsx" else read_csv(data)


# --- CSV -----------------------------------------------------------------------------------------------


def decode_csv(data: bytes) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        encoding = "utf-8-sig"
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    else:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            encoding = "cp1251"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        row = data[: e.start].count(b"\n") + 1
        raise TableError(
            "encoding",
            N_("Row {row}: the text is neither UTF-8 nor Windows-1251"),
            row=row,
        ) from None


def _outside_quotes(line: str) -> str:
    out, quoted = [], False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif not quoted:
            out.append(ch)
    return "".join(out)


def sniff_delimiter(text: str) -> str:
    """The delimiter the first non-empty line uses most (outside quotes); ``;`` when it has none."""
    for line in text.splitlines()[:50]:
        bare = _outside_quotes(line)
        if not bare.strip():
            continue
        counts = {d: bare.count(d) for d in DELIMITERS}
        best = max(DELIMITERS, key=lambda d: counts[d])  # ties go to the earlier: ; before , before tab
        if counts[best]:
            return best
    return ";"


def _bad_quote_column(record: str, delimiter: str) -> int:
    """The 1-based column of the first field whose quoting breaks RFC 4180 in ``record``."""
    column, at_start, quoted, i = 1, True, False, 0
    while i < len(record):
        ch = record[i]
        if quoted:
            if ch == '"':
                if i + 1 < len(record) and record[i + 1] == '"':
                    i += 1
                else:
                    quoted = False
                    nxt = record[i + 1] if i + 1 < len(record) else ""
                    if nxt not in (delimiter, "", "\r", "\n"):
                        return column
        elif ch == delimiter:
            column += 1
            at_start = True
            i += 1
            continue
        elif ch == '"':
            if not at_start:
                return column
            quoted = True
        at_start = False
        i += 1
    return column


def read_csv(data: bytes) -> Grid:
    text = decode_csv(data)
    if "\x00" in text:
        row = text[: text.index("\x00")].count("\n") + 1
        raise TableError("binary", N_("Row {row}: the file is not a text table"), row=row)
    delimiter = sniff_delimiter(text)
    lines = text.splitlines(keepends=True)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quotechar='"', strict=True)
    rows: list[list[str]] = []
    record_start = 0  # the line the current record starts on (0-based)
    try:
        for record in reader:
            if len(rows) > MAX_ROWS:
                raise TableError("too-many-rows", N_("The file has over {n} rows"), n=MAX_ROWS)
            rows.append(_cells(record))
            record_start = reader.line_num
    except csv.Error:
        broken = "".join(lines[record_start : reader.line_num or record_start + 1])
        raise TableError(
            "quoting",
            N_("Row {row}, column {column}: unbalanced quotes"),
            row=record_start + 1,
            column=_bad_quote_column(broken, delimiter),
        ) from None
    return Grid("csv", _trim(rows), delimiter)


def _cells(record: list[str]) -> list[str]:
    return [c.strip()[:MAX_CELL_CHARS] for c in record[:MAX_COLUMNS]]


def _trim(rows: list[list[str]]) -> list[list[str]]:
    while rows and not any(rows[-1]):
        rows.pop()
    return rows


# --- XLSX ----------------------------------------------------------------------------------------------


def read_xlsx(data: bytes) -> Grid:
    from openpyxl import load_workbook  # a large import, needed only for spreadsheets

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            unpacked = sum(i.file_size for i in z.infolist())
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise TableError(
            "xlsx", N_("The file is not a readable XLSX workbook ({error})"), error=str(e)[:200]
        ) from None
    if unpacked > MAX_XLSX_UNPACKED:  # a zip bomb: openpyxl keeps the shared strings in memory
        raise TableError(
            "too-large", N_("The file is too large (at most {mb} MB)"), mb=MAX_XLSX_UNPACKED // (1024 * 1024)
        )
    try:
        wb = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, TypeError) as e:
        raise TableError(
            "xlsx", N_("The file is not a readable XLSX workbook ({error})"), error=str(e)[:200]
        ) from None
    rows: list[list[str]] = []
    row_no = 0
    try:
        ws = wb.worksheets[0]
        for row in ws.iter_rows(max_col=MAX_COLUMNS):
            row_no += 1
            if row_no > MAX_ROWS + 1:
                raise TableError("too-many-rows", N_("The file has over {n} rows"), n=MAX_ROWS)
            cells = [display_text(c.value, getattr(c, "number_format", "General")) for c in row]
            while cells and not cells[-1]:
                cells.pop()
            rows.append([c[:MAX_CELL_CHARS] for c in cells])
    except TableError:
        raise
    except Exception as e:  # a broken sheet: openpyxl raises many kinds
        raise TableError(
            "xlsx", N_("Row {row}: the sheet cannot be read ({error})"), row=row_no, error=str(e)[:200]
        ) from None
    finally:
        wb.close()
    return Grid("xlsx", _trim(rows))


def display_text(value: object, number_format: str = "General") -> str:
    """A cell's value as a spreadsheet shows it, with numbers never in exponent form."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, dt.datetime):
        if value.time() == dt.time(0):
            return value.strftime("%d.%m.%Y")
        return value.strftime("%d.%m.%Y %H:%M")
    if isinstance(value, dt.date):
        return value.strftime("%d.%m.%Y")
    if isinstance(value, dt.time):
        return value.strftime("%H:%M")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_text(value, number_format or "General")
    return str(value).strip()


def _float_text(value: float, number_format: str) -> str:
    if value != value or value in (float("inf"), float("-inf")):
        return ""
    fmt = number_format.split(";", 1)[0]
    if fmt.endswith("%"):
        return _plain(Decimal(repr(value)) * 100, _decimals(fmt)) + "%"
    decimals = _decimals(fmt)
    if fmt != "General" and decimals is not None:
        return _plain(Decimal(repr(value)), decimals)
    if value.is_integer():
        return str(int(value))
    return _plain(Decimal(repr(value)), None)


def _decimals(fmt: str) -> int | None:
    """Digits after the point in a format such as ``0.00`` or ``#,##0.0``; None for ``General``."""
    if fmt in ("General", "@", ""):
        return None
    if "." not in fmt:
        return 0
    tail = fmt.split(".", 1)[1]
    return sum(1 for ch in tail if ch in "0#")


def _plain(d: Decimal, decimals: int | None) -> str:
    if decimals is not None:
        d = d.quantize(Decimal(1).scaleb(-decimals))
    text = format(d, "f")
    return text
