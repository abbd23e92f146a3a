"""The pure rules of amo.finish (amocrm.md §5.4, §5.5, F11): classification, call_status, templates,
deadlines, «Принявший вызов», the responsible table and its round-robin, the phone post-filter."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from vpbx.amocrm.finish import (
    TemplateVars,
    active_lead,
    call_status,
    classify,
    deadline_at,
    manager_pin,
    pick_responsible,
    render,
    round_robin,
)
from vpbx.amocrm.lookup import pick
from vpbx.amocrm.scenario import Deadline, Responsible

MSK = zoneinfo.ZoneInfo("Europe/Moscow")
END = dt.datetime(2026, 1, 15, 9, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("call_type", "answered", "client_answered", "expected"),
    [
        ("incoming", ["101"], False, "incoming"),
        ("incoming", [], False, "missed"),
        ("outbound", [], True, "outgoing"),
        ("outbound", [], False, "failed_outgoing"),
    ],
)
def test_classification(call_type: str, answered: list[str], client_answered: bool, expected: str) -> None:
    assert classify(call_type, answered_pins=answered, client_answered=client_answered) == expected


@pytest.mark.parametrize(
    ("direction", "code", "expected"),
    [
        ("incoming", None, (4, "Разговор состоялся")),
        ("outgoing", None, (4, "Разговор состоялся")),
        ("missed", 487, (6, "Пропущенный вызов")),
        ("failed_outgoing", 486, (7, "Номер занят")),
        ("failed_outgoing", 404, (5, "Неверный номер")),
        ("failed_outgoing", 484, (5, "Неверный номер")),
        ("failed_outgoing", 480, (6, "Не дозвонился")),
        ("failed_outgoing", None, (6, "Не дозвонился")),
    ],
)
def test_call_status(direction: str, code: int | None, expected: tuple[int, str]) -> None:
    assert call_status(direction, code) == expected  # type: ignore[arg-type]


def test_templates_expand_every_variable_once() -> None:
    v = TemplateVars(phone="+79031112233", line="+74951234567", ext="101", at=END.astimezone(MSK))
    text = "$(phone) на $(line), $(ext), $(date) $(time), $(unknown) $(phone"
    assert render(text, v) == "+79031112233 на +74951234567, 101, 15.01.2026 12:00, $(unknown) $(phone"
    tricky = TemplateVars(phone="$(line)", line="X", ext="", at=END)
    assert render("$(phone)", tricky) == "$(line)"  # a value is never expanded again


def test_deadline_minutes_after_the_end() -> None:
    till = deadline_at(Deadline(kind="minutes", minutes=60), ended_at=END, zone=MSK, now=END)
    assert till == int(END.timestamp()) + 3600


def test_deadline_end_of_day_in_the_accounts_zone() -> None:
    late = dt.datetime(2026, 1, 15, 22, 30, tzinfo=dt.UTC)  # 01:30 on the 16th in Moscow
    till = deadline_at(Deadline(kind="end_of_day"), ended_at=late, zone=MSK, now=late)
    assert dt.datetime.fromtimestamp(till, MSK) == dt.datetime(2026, 1, 16, 23, 59, tzinfo=MSK)


def test_deadline_already_past_becomes_now_plus_15_minutes() -> None:
    now = END + dt.timedelta(hours=2)
    till = deadline_at(Deadline(kind="minutes", minutes=60), ended_at=END, zone=MSK, now=now)
    assert till == int((now + dt.timedelta(minutes=15)).timestamp())


def test_who_answered() -> None:
    kw = {"rung_pins": ["101", "102"], "caller_pin": "102"}
    assert manager_pin("incoming", answered_pins=["101", "102"], follow_transfer=False, **kw) == "101"  # type: ignore[arg-type]
    assert manager_pin("incoming", answered_pins=["101", "102"], follow_transfer=True, **kw) == "102"  # type: ignore[arg-type]
    assert manager_pin("missed", answered_pins=[], follow_transfer=True, **kw) == "102"  # type: ignore[arg-type]
    assert manager_pin("outgoing", answered_pins=["102"], follow_transfer=False, **kw) == "102"  # type: ignore[arg-type]
    assert manager_pin("failed_outgoing", answered_pins=[], follow_transfer=False, **kw) == "102"  # type: ignore[arg-type]


def test_responsible_rules_fall_back_when_unknown() -> None:
    kw = {"answered_user": 5001, "contact_user": 5003, "fallback": 5002}
    assert pick_responsible(Responsible(rule="answered"), **kw) == 5001
    assert pick_responsible(Responsible(rule="contact"), **kw) == 5003
    assert pick_responsible(Responsible(rule="user", user_id=5003), **kw) == 5003
    assert pick_responsible(Responsible(rule="fallback"), **kw) == 5002
    assert pick_responsible(Responsible(rule="group", group_id=1), **kw, group_pick=lambda g: g) == 1
    assert (
        pick_responsible(Responsible(rule="answered"), answered_user=None, contact_user=None, fallback=5002)
        == 5002
    )
    assert (
        pick_responsible(Responsible(rule="contact"), answered_user=1, contact_user=None, fallback=5002)
        == 5002
    )


def test_round_robin_cycles_through_the_members() -> None:
    members = [5003, 5001, 5002]
    picks = []
    last = None
    for _ in range(4):
        last = round_robin(members, last)
        picks.append(last)
    assert picks == [5001, 5002, 5003, 5001]
    assert round_robin([], None) is None


def phone(value: str) -> list[dict[str, object]]:
    return [{"field_code": "PHONE", "values": [{"value": value, "enum_code": "WORK"}]}]


def test_post_filter_keeps_only_phone_matches_and_the_latest() -> None:
    contacts = [
        {"id": 9001, "updated_at": 10, "custom_fields_values": phone("+79161234567")},
        {
            "id": 9003,
            "updated_at": 99,
            "custom_fields_values": [
                {"field_id": 104, "values": [{"value": "перезвонить 9161234567 после 18"}]}
            ],
        },
        {"id": 9004, "updated_at": 20, "custom_fields_values": phone("8 (916) 123-45-67")},
    ]
    assert pick(contacts, "9161234567")["id"] == 9004  # type: ignore[index]
    assert pick(contacts[:2], "9161234567")["id"] == 9001  # type: ignore[index]
    assert pick(contacts[1:2], "9161234567") is None


def test_nearest_active_lead() -> None:
    leads = [
        {"id": 1, "status_id": 142, "closest_task_at": 1},
        {"id": 2, "status_id": 7002, "updated_at": 50},
        {"id": 3, "status_id": 7001, "updated_at": 40, "closest_task_at": 500},
        {"id": 4, "status_id": 7001, "updated_at": 60},
    ]
    assert active_lead(leads)["id"] == 3  # type: ignore[index]
    assert active_lead(leads[:2] + leads[3:])["id"] == 4  # type: ignore[index]
    assert active_lead(leads[:1]) is None
