"""The start rule (autoinformer.md §3.3): days ∩ windows ∩ quiet hours, zones, ring timeout, next open."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from vpbx.autoinformer.schedule import (
    Plan,
    PlatformRules,
    QuietHours,
    WorkCalendar,
    can_start,
    next_open,
    open_intervals,
)

MSK = zoneinfo.ZoneInfo("Europe/Moscow")
NSK = zoneinfo.ZoneInfo("Asia/Novosibirsk")  # UTC+7
VLAT = zoneinfo.ZoneInfo("Asia/Vladivostok")  # UTC+10
RULES = PlatformRules()
ALL_DAYS = frozenset(range(1, 8))


def plan(
    *windows: tuple[str, str], days: frozenset[int] = ALL_DAYS, basis: str = "recipient", ring: int = 30
) -> Plan:
    def t(s: str) -> dt.time:
        h, m = s.split(":")
        return dt.time(int(h), int(m))

    return Plan(
        days=days, windows=tuple((t(a), t(b)) for a, b in windows), time_basis=basis, ring_timeout_s=ring
    )


def at(zone: zoneinfo.ZoneInfo, *args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=zone).astimezone(dt.UTC)  # type: ignore[misc]


def nxt(
    p: Plan,
    after: dt.datetime,
    tz: str | None = "Europe/Moscow",
    domain: str = "Europe/Moscow",
    rules: PlatformRules = RULES,
) -> dt.datetime | None:
    return next_open(p, rules, recipient_tz=tz, domain_tz=domain, after=after)


def test_friday_23_start_waits_for_saturday_10_not_the_quiet_hours_9() -> None:
    # §12: days 1–7, window 10:00–19:00, started Friday 23:00 recipient time → no earlier than Saturday 10:00
    p = plan(("10:00", "19:00"))
    friday_23 = at(MSK, 2026, 6, 19, 23, 0)
    assert not can_start(p, RULES, recipient_tz="Europe/Moscow", domain_tz="Europe/Moscow", at=friday_23)
    assert nxt(p, friday_23) == at(MSK, 2026, 6, 20, 10, 0)
    # with a window from 07:00 the weekend's quiet hours (09:00) are what holds it back
    assert nxt(plan(("07:00", "19:00")), friday_23) == at(MSK, 2026, 6, 20, 9, 0)


def test_recipient_in_utc7_is_dialled_at_10_local_which_is_6_moscow() -> None:
    p = plan(("10:00", "13:00"))
    six_msk = at(MSK, 2026, 6, 16, 6, 0)
    assert six_msk == at(NSK, 2026, 6, 16, 10, 0)
    assert can_start(p, RULES, recipient_tz="Asia/Novosibirsk", domain_tz="Europe/Moscow", at=six_msk)
    assert not can_start(
        p,
        RULES,
        recipient_tz="Asia/Novosibirsk",
        domain_tz="Europe/Moscow",
        at=six_msk - dt.timedelta(seconds=1),
    )
    assert nxt(p, at(MSK, 2026, 6, 16, 0, 0), tz="Asia/Novosibirsk") == six_msk
    # the same window for a Moscow recipient opens four hours later
    assert nxt(p, at(MSK, 2026, 6, 16, 0, 0)) == at(MSK, 2026, 6, 16, 10, 0)


def test_no_recipient_zone_means_the_domains() -> None:
    p = plan(("10:00", "13:00"))
    assert nxt(p, at(MSK, 2026, 6, 16, 0, 0), tz=None, domain="Asia/Novosibirsk") == at(
        NSK, 2026, 6, 16, 10, 0
    )
    assert nxt(p, at(MSK, 2026, 6, 16, 0, 0), tz="Not/AZone", domain="Asia/Novosibirsk") == at(
        NSK, 2026, 6, 16, 10, 0
    )


def test_domain_basis_reads_windows_in_the_domains_zone_but_quiet_hours_stay_the_recipients() -> None:
    p = plan(("10:00", "20:00"), basis="domain")
    # Novosibirsk recipient: 10:00 Moscow = 14:00 local, inside its quiet hours
    assert nxt(p, at(MSK, 2026, 6, 16, 0, 0), tz="Asia/Novosibirsk") == at(MSK, 2026, 6, 16, 10, 0)
    # Vladivostok recipient (UTC+10): 10:00–20:00 Moscow is 17:00–03:00 there; quiet hours end at 22:00 local
    intervals = open_intervals(
        p,
        RULES,
        recipient_tz="Asia/Vladivostok",
        domain_tz="Europe/Moscow",
        start=at(MSK, 2026, 6, 16, 0, 0),
        days=1,
    )
    assert (at(MSK, 2026, 6, 16, 10, 0), at(VLAT, 2026, 6, 16, 22, 0)) in intervals
    late = at(MSK, 2026, 6, 16, 15, 0)  # 22:00 in Vladivostok
    assert not can_start(p, RULES, recipient_tz="Asia/Vladivostok", domain_tz="Europe/Moscow", at=late)
    assert nxt(p, late, tz="Asia/Vladivostok") == at(MSK, 2026, 6, 17, 10, 0)


def test_ring_timeout_must_fit_before_the_window_closes() -> None:
    p = plan(("10:00", "19:00"), ring=30)
    ok = at(MSK, 2026, 6, 16, 18, 59, 30)
    assert can_start(p, RULES, recipient_tz=None, domain_tz="Europe/Moscow", at=ok)
    assert not can_start(
        p, RULES, recipient_tz=None, domain_tz="Europe/Moscow", at=ok + dt.timedelta(seconds=1)
    )
    assert nxt(p, ok + dt.timedelta(seconds=1)) == at(MSK, 2026, 6, 17, 10, 0)
    # the same applies at the quiet hours' edge: window to 23:00 on a working day closes at 22:00
    p2 = plan(("10:00", "23:00"), ring=60)
    assert can_start(p2, RULES, recipient_tz=None, domain_tz="Europe/Moscow", at=at(MSK, 2026, 6, 16, 21, 59))
    assert not can_start(
        p2, RULES, recipient_tz=None, domain_tz="Europe/Moscow", at=at(MSK, 2026, 6, 16, 21, 59, 1)
    )


def test_quiet_hours_clip_windows_on_working_days_and_days_off() -> None:
    p = plan(("07:00", "23:00"))
    tuesday = at(MSK, 2026, 6, 16, 0, 0)
    saturday = at(MSK, 2026, 6, 20, 0, 0)
    assert nxt(p, tuesday) == at(MSK, 2026, 6, 16, 8, 0)
    assert nxt(p, saturday) == at(MSK, 2026, 6, 20, 9, 0)
    assert nxt(p, at(MSK, 2026, 6, 20, 20, 0)) == at(MSK, 2026, 6, 21, 9, 0)  # Saturday closes at 20:00
    assert nxt(p, at(MSK, 2026, 6, 16, 22, 0)) == at(MSK, 2026, 6, 17, 8, 0)


def test_public_holidays_and_transfers_follow_the_production_calendar() -> None:
    p = plan(("07:00", "23:00"))
    assert nxt(p, at(MSK, 2026, 1, 7, 0, 0)) == at(MSK, 2026, 1, 7, 9, 0)  # Christmas, a Wednesday
    assert nxt(p, at(MSK, 2026, 1, 12, 0, 0)) == at(MSK, 2026, 1, 12, 8, 0)  # the first working Monday
    assert nxt(p, at(MSK, 2025, 11, 1, 0, 0)) == at(MSK, 2025, 11, 1, 8, 0)  # a Saturday made a working day
    assert nxt(p, at(MSK, 2026, 6, 12, 0, 0)) == at(MSK, 2026, 6, 12, 9, 0)  # Russia Day, a Friday


def test_operator_overrides_of_the_calendar() -> None:
    p = plan(("07:00", "23:00"))
    rules = PlatformRules.from_settings(
        {"autoinformer.holidays": {"add": ["2026-06-16"], "remove": ["2026-01-07"]}}
    )
    assert nxt(p, at(MSK, 2026, 6, 16, 0, 0), rules=rules) == at(MSK, 2026, 6, 16, 9, 0)
    assert nxt(p, at(MSK, 2026, 1, 7, 0, 0), rules=rules) == at(MSK, 2026, 1, 7, 8, 0)
    assert WorkCalendar.from_json(None) == WorkCalendar()


def test_operator_quiet_hours() -> None:
    rules = PlatformRules.from_settings(
        {
            "autoinformer.quiet_hours": {
                "workday": {"from": "09:30", "to": "21:00"},
                "dayoff": {"from": "10:00", "to": "18:00"},
            }
        }
    )
    p = plan(("07:00", "23:00"))
    assert nxt(p, at(MSK, 2026, 6, 16, 0, 0), rules=rules) == at(MSK, 2026, 6, 16, 9, 30)
    assert nxt(p, at(MSK, 2026, 6, 20, 18, 0), rules=rules) == at(MSK, 2026, 6, 21, 10, 0)
    assert QuietHours.from_json({"workday": {"from": "08:00", "to": "22:00"}}).dayoff == QuietHours().dayoff
    with pytest.raises(ValueError):
        QuietHours.from_json({"workday": {"from": "22:00", "to": "08:00"}})


def test_days_and_several_windows() -> None:
    p = plan(("10:00", "13:00"), ("14:00", "19:00"), days=frozenset({1, 2, 3, 4, 5}))
    assert nxt(p, at(MSK, 2026, 6, 16, 13, 30)) == at(MSK, 2026, 6, 16, 14, 0)
    assert nxt(p, at(MSK, 2026, 6, 16, 11, 0)) == at(MSK, 2026, 6, 16, 11, 0)
    assert nxt(p, at(MSK, 2026, 6, 19, 19, 0)) == at(MSK, 2026, 6, 22, 10, 0)  # Friday evening → Monday
    assert nxt(p, at(MSK, 2026, 6, 20, 12, 0)) == at(MSK, 2026, 6, 22, 10, 0)


def test_busy_with_interval_60_retries_at_least_an_hour_later_inside_a_window() -> None:
    p = plan(("10:00", "19:00"))
    ended = at(MSK, 2026, 6, 16, 12, 10)
    assert nxt(p, ended + dt.timedelta(minutes=60)) == at(MSK, 2026, 6, 16, 13, 10)
    late = at(MSK, 2026, 6, 16, 18, 30)
    retry = nxt(p, late + dt.timedelta(minutes=60))
    assert retry == at(MSK, 2026, 6, 17, 10, 0)
    assert retry is not None and retry - late >= dt.timedelta(minutes=60)


def test_plan_of_a_campaign_spec() -> None:
    from vpbx.autoinformer.schemas import CampaignSpec

    spec = CampaignSpec.model_validate(
        {
            "name": "x",
            "caller_id": "74951234567",
            "message": {"segments": [{"type": "tts", "text": "hi"}]},
            "schedule": {
                "start_at": "2026-06-16 09:00:00",
                "days": [1, 2],
                "windows": [{"from": "14:00", "to": "19:00"}, {"from": "10:00", "to": "13:00"}],
                "time_basis": "domain",
            },
            "ring_timeout_s": 45,
        }
    )
    p = Plan.of(spec)
    assert p.days == frozenset({1, 2}) and p.time_basis == "domain" and p.ring_timeout_s == 45
    assert p.windows == ((dt.time(10), dt.time(13)), (dt.time(14), dt.time(19)))
