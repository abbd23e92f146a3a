"""The call protocol: the compact wire string (integration-api.md §4.4) and the steps the card shows."""

from __future__ import annotations

import datetime as dt

import pytest

from vpbx.pbx import journal
from vpbx.pbx.history_view import STEP_MSGIDS, Step, build_wire_log, duration_text, parse_steps
from vpbx.store.models import CallRecord


def test_the_vendor_example_round_trips() -> None:
    log = [[0, "ct", "89035037889"], [5, "cc", "89035037889"], [8, "cd", "89035037889"]]
    assert build_wire_log(log) == "0:ct:89035037889;5:cc:89035037889;8:cd:89035037889;"


def test_offsets_are_whole_seconds_and_every_code_has_words() -> None:
    log = [[0.4, "ct", "501"], [6.99, "cc", "501"], [40, "tr", "502"], ["41", "pu", "503"], [99, "vm", "600"]]
    assert build_wire_log(log) == "0:ct:501;6:cc:501;40:tr:502;41:pu:503;99:vm:600;"
    assert [s.msgid for s in parse_steps(log)] == [STEP_MSGIDS[c] for c in ("ct", "cc", "tr", "pu", "vm")]


def test_odd_entries_are_kept_not_dropped() -> None:
    log = [[3, "zz", None], [-5, "cd"], ["x", "cc", "101"], "garbage", [True, "ct", "1"]]
    assert parse_steps(log) == [
        Step(3, "zz", ""),
        Step(0, "cd", ""),
        Step(0, "cc", "101"),
        Step(0, "garbage", ""),
        Step(0, "ct", "1"),
    ]
    assert parse_steps(log)[0].msgid == "Event «{code}»"
    # a separator inside a party would split it for every reader of the string
    assert build_wire_log([[1, "tr", "sip:a;b"], [2, "c:d", "7"]]) == "1:tr:sipab;2:cd:7;"
    assert build_wire_log(None) == build_wire_log([]) == ""


@pytest.mark.parametrize(("seconds", "text"), [(0, "0:00"), (59.9, "0:59"), (61, "1:01"), (3725, "1:02:05")])
def test_duration_text(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text
    assert Step(int(seconds), "cc", "").offset_text == text


TODAY = dt.date(2026, 3, 2)


def test_filter_defaults_presets_and_the_url() -> None:
    f = journal.parse_filter({}, TODAY)
    assert (f.date_from, f.date_to) == (dt.date(2026, 2, 1), TODAY)
    assert journal.parse_filter({"period": "7d"}, TODAY).date_from == dt.date(2026, 2, 24)
    assert journal.parse_filter({"to": "2026-01-31"}, TODAY).date_from == dt.date(2026, 1, 2)
    f = journal.parse_filter(
        {"from": "2026-03-01", "direction": "sideways", "state": "missed", "number": " 123 ", "page": "x"},
        TODAY,
    )
    assert (f.date_to, f.direction, f.state, f.number, f.page) == (TODAY, "", "missed", "123", 1)
    assert f.query() == {"from": "2026-03-01", "to": "2026-03-02", "state": "missed", "number": "123"}
    assert f.query(page=3)["page"] == "3"


def test_day_bounds_follow_the_time_zone_and_its_summer_time() -> None:
    f = journal.JournalFilter(date_from=dt.date(2026, 3, 29), date_to=dt.date(2026, 3, 29))
    start, end = journal.utc_bounds(f, "Europe/Berlin")  # the night the clocks go forward: a 23-hour day
    assert start == dt.datetime(2026, 3, 28, 23, 0, tzinfo=dt.UTC)
    assert end == dt.datetime(2026, 3, 29, 22, 0, tzinfo=dt.UTC)
    start, _ = journal.utc_bounds(f, "Asia/Kathmandu")  # +5:45
    assert start == dt.datetime(2026, 3, 28, 18, 15, tzinfo=dt.UTC)


def test_a_record_without_a_log_reads_empty() -> None:
    rec = CallRecord(session_log=[])
    assert build_wire_log(rec.session_log) == "" and parse_steps(rec.session_log) == []


@pytest.mark.parametrize(
    ("typed", "looked_for"),
    [
        ("916 123-45", "91612345"),
        ("+7 (495) 111-22-33", "+74951112233"),
        (" 101 ", "101"),
        ("ann-1", "ann-1"),
    ],
)
def test_a_number_is_looked_for_without_its_formatting(typed: str, looked_for: str) -> None:
    assert journal.parse_filter({"number": typed}, TODAY).number == looked_for
