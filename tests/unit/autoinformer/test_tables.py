"""Contact lists as uploaded (autoinformer.md §3.2): encodings, delimiters, RFC 4180 quoting, XLSX cells as
displayed, and the header rules that turn cells into phones, external ids and variables."""

from __future__ import annotations

import datetime as dt
import io

import openpyxl
import pytest

from vpbx.autoinformer.contacts import parse_api, parse_file, parse_manual, variable_name
from vpbx.autoinformer.tables import MAX_FILE_BYTES, TableError, display_text, read_table, sniff_delimiter

# a sheet's dates and times are naive: Excel has no time zones
DUE = dt.datetime(2025, 6, 20)  # noqa: DTZ001
AT = dt.datetime(2025, 1, 2, 9, 30)  # noqa: DTZ001
ROWS = [
    ["телефон", "Имя", "sum"],
    ["8 (916) 123-45-67", "Иванов; Пётр", "1 234,50"],
    ["79161234568", "Анна", "10"],
]


def csv_text(rows: list[list[str]], delimiter: str) -> str:
    def cell(c: str) -> str:
        return '"' + c.replace('"', '""') + '"' if any(x in c for x in (delimiter, '"', "\n")) else c

    return "\r\n".join(delimiter.join(cell(c) for c in r) for r in rows) + "\r\n"


@pytest.mark.parametrize("delimiter", [";", ",", "\t"])
@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp1251", "utf-16"])
def test_csv_encodings_and_delimiters_are_detected(encoding: str, delimiter: str) -> None:
    grid = read_table(csv_text(ROWS, delimiter).encode(encoding))
    assert grid.kind == "csv" and grid.delimiter == delimiter
    assert grid.rows == ROWS


def test_cp1251_is_not_mistaken_for_utf8() -> None:
    data = "телефон;имя\n79161234567;Пётр Ёлкин\n".encode("cp1251")
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    assert read_table(data).rows[1] == ["79161234567", "Пётр Ёлкин"]


def test_rfc4180_quoting_keeps_delimiters_quotes_and_newlines_in_a_cell() -> None:
    data = b'phone;note\r\n79161234567;"say ""hi""; then\r\nbye"\r\n79161234568;plain\r\n'
    assert read_table(data).rows == [
        ["phone", "note"],
        ["79161234567", 'say "hi"; then\r\nbye'],
        ["79161234568", "plain"],
    ]


def test_delimiter_is_the_headers_not_the_datas() -> None:
    assert sniff_delimiter("phone;sum\n79161234567;1,5\n") == ";"
    assert sniff_delimiter('"a;b",c\n') == ","  # quoted delimiters do not count
    assert sniff_delimiter("phone\n79161234567\n") == ";"  # one column


def test_empty_lines_are_kept_inside_and_dropped_at_the_end() -> None:
    grid = read_table(b"phone\n1\n\n2\n;\n\n\n")
    assert grid.rows == [["phone"], ["1"], [], ["2"]]


@pytest.mark.parametrize(
    ("data", "row", "column"),
    [
        (b'phone;name\n79161234567;"Ivanov"x\n', 2, 2),
        (b'phone;name;x\n79161234567;ok;ok\n79161234568;ok;"open\n', 3, 3),
    ],
)
def test_bad_quoting_names_the_row_and_column(data: bytes, row: int, column: int) -> None:
    with pytest.raises(TableError) as e:
        read_table(data)
    assert e.value.reason == "quoting" and (e.value.row, e.value.column) == (row, column)
    assert f"Row {row}, column {column}" in str(e.value)


def test_a_binary_file_and_an_oversized_file_are_refused() -> None:
    with pytest.raises(TableError) as e:
        read_table(b"phone\n7916\x00\x01\n")
    assert e.value.reason == "binary" and e.value.row == 2
    with pytest.raises(TableError) as e:
        read_table(b"x" * (MAX_FILE_BYTES + 1))
    assert e.value.reason == "too-large"


def xlsx(rows: list[list[object]], formats: dict[str, str] | None = None) -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    for r in rows:
        ws.append(r)
    for ref, fmt in (formats or {}).items():
        ws[ref].number_format = fmt
    wb.create_sheet("second").append(["ignored"])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def test_xlsx_cells_as_displayed_and_long_numbers_in_full() -> None:
    data = xlsx(
        [
            ["Phone", "Sum", "Due", "Big", "Share", "Text"],
            [79161234567, 1234.5, DUE, 7.9161234567e10, 0.25, " 89161234567 "],
            [None, 10, None, 123456789012345, None, None],
        ],
        {"B2": "0.00", "E2": "0%"},
    )
    grid = read_table(data)
    assert grid.kind == "xlsx"
    assert grid.rows == [
        ["Phone", "Sum", "Due", "Big", "Share", "Text"],
        ["79161234567", "1234.50", "20.06.2025", "79161234567", "25%", "89161234567"],
        ["", "10", "", "123456789012345"],
    ]
    assert "E+" not in repr(grid.rows)


def test_display_text_of_values() -> None:
    assert display_text(79161234567.0) == "79161234567"
    assert display_text(1.5) == "1.5"
    assert display_text(dt.date(2025, 1, 2)) == "02.01.2025"
    assert display_text(AT) == "02.01.2025 09:30"
    assert display_text(True) == "TRUE" and display_text(None) == ""


def test_an_xlsx_that_unpacks_to_too_much_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from vpbx.autoinformer import tables

    data = xlsx([["phone"], [79161234567]])
    monkeypatch.setattr(tables, "MAX_XLSX_UNPACKED", 1000)
    with pytest.raises(TableError) as e:
        read_table(data)
    assert e.value.reason == "too-large"


def test_a_broken_xlsx_is_refused() -> None:
    data = xlsx([["phone"], [79161234567]])
    with pytest.raises(TableError) as e:
        read_table(data[: len(data) // 2])
    assert e.value.reason == "xlsx"


def test_header_rules() -> None:
    data = (
        "ID;Телефон;Name;Due Date;телефон2;Phone 3;external_id;Сумма;Name\n"
        "1;8 916 1234567;Ann;x;;+7 916 0000001;c-1;5;dup\n"
    )
    table = parse_file(data.encode("cp1251"))
    (row,) = table.rows
    assert row.phones == [("Телефон", "8 916 1234567"), ("телефон2", ""), ("Phone 3", "+7 916 0000001")]
    assert row.external_id == "c-1"
    assert row.variables == {"id": "1", "name": "Ann", "due_date": "x"}
    assert table.ignored_columns == ["Сумма", "Name"]  # no [a-z0-9_] left; a repeated name


def test_without_a_phone_header_the_first_column_is_the_phone() -> None:
    (row,) = parse_file(b"number_of_client,debt\n79161234567,100\n").rows
    assert row.phones == [("number_of_client", "79161234567")] and row.variables == {"debt": "100"}


def test_variable_names() -> None:
    assert variable_name("Due Date") == "due_date"
    assert variable_name("  SUM ") == "sum"
    assert variable_name("Сумма долга") == ""
    assert variable_name("a" * 40) == "a" * 32


def test_manual_lines_with_and_without_a_header() -> None:
    t = parse_manual("79161234567;Ann;100\n8 916 123-45-68;Bob;200\n")
    assert t.header == ["phone", "var1", "var2"]
    assert [r.variables for r in t.rows] == [{"var1": "Ann", "var2": "100"}, {"var1": "Bob", "var2": "200"}]
    t = parse_manual("phone;name\n79161234567;Ann\n")
    assert [r.variables for r in t.rows] == [{"name": "Ann"}]
    t = parse_manual("12345;x\n")  # a bad number is still a number, not a header
    assert t.rows[0].phones == [("phone", "12345")]


def test_api_list_shapes() -> None:
    t = parse_api(
        [
            {
                "phone": "8 (916) 123-45-67",
                "external_id": "c-1",
                "vars": {"Sum": 1200.0, "due": "01.07.2025"},
            },
            {"phones": ["79161234568", "+7 916 123-45-69"]},
            {"phone": 79161234570, "vars": "not a map"},
            {},
        ]
    )
    assert [r.phones for r in t.rows] == [
        [("phone", "8 (916) 123-45-67")],
        [("phones[0]", "79161234568"), ("phones[1]", "+7 916 123-45-69")],
        [("phone", "79161234570")],
        [("phone", "")],
    ]
    assert t.rows[0].variables == {"sum": "1200", "due": "01.07.2025"} and t.rows[0].external_id == "c-1"
