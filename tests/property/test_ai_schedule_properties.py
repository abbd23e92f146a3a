"""The autoinformer's start rule and caps for any schedule, zone and moment: ``next_open`` is open and nothing
opens before it; ``next_allowed`` is allowed when reached."""

from __future__ import annotations

import datetime as dt
import zoneinfo

from hypothesis import given, settings
from hypothesis import strategies as st

from vpbx.autoinformer.caps import Caps, next_allowed
from vpbx.autoinformer.schedule import Plan, PlatformRules, can_start, next_open

ZONES = [
    "Europe/Moscow",
    "Europe/Kaliningrad",
    "Asia/Novosibirsk",
    "Asia/Vladivostok",
    "Asia/Kamchatka",
    None,
]
RULES = PlatformRules()


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    cuts = sorted(draw(st.sets(st.integers(0, 24 * 4 - 1), min_size=2, max_size=8)))
    pairs = [(cuts[i], cuts[i + 1]) for i in range(0, len(cuts) - 1, 2)]
    windows = tuple((dt.time(a // 4, a % 4 * 15), dt.time(b // 4, b % 4 * 15)) for a, b in pairs)
    days = frozenset(draw(st.sets(st.integers(1, 7), min_size=1)))
    return Plan(
        days=days,
        windows=windows,
        time_basis=draw(st.sampled_from(["recipient", "domain"])),
        ring_timeout_s=draw(st.integers(10, 90)),
    )


MOMENTS = st.datetimes(  # hypothesis takes naive bounds and adds the zone
    min_value=dt.datetime(2025, 1, 1),  # noqa: DTZ001
    max_value=dt.datetime(2027, 12, 31),  # noqa: DTZ001
    timezones=st.just(dt.UTC),
)


@settings(max_examples=150, deadline=None)
@given(plans(), st.sampled_from(ZONES), st.sampled_from(ZONES[:-1]), MOMENTS)
def test_next_open_is_open_and_the_first(
    plan: Plan, recipient: str | None, domain: str, after: dt.datetime
) -> None:
    found = next_open(plan, RULES, recipient_tz=recipient, domain_tz=domain, after=after)
    if found is None:  # a window shorter than the ring timeout, or never inside quiet hours
        return
    assert found >= after
    assert can_start(plan, RULES, recipient_tz=recipient, domain_tz=domain, at=found)
    gap = (found - after).total_seconds()
    for k in range(1, 40):  # nothing opens in between
        probe = after + dt.timedelta(seconds=gap * k / 40)
        if probe < found:
            assert not can_start(plan, RULES, recipient_tz=recipient, domain_tz=domain, at=probe)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 40 * 24 * 60), max_size=12),
    st.integers(1, 3),
    st.integers(1, 5),
    st.integers(1, 10),
    st.sampled_from(ZONES[:-1]),
)
def test_next_allowed_is_allowed(minutes_ago: list[int], day: int, week: int, month: int, zone: str) -> None:
    now = dt.datetime(2026, 6, 17, 9, 0, tzinfo=dt.UTC)
    answered = [now - dt.timedelta(minutes=m) for m in minutes_ago]
    caps, tz = Caps(day, week, month), zoneinfo.ZoneInfo(zone)
    at = next_allowed(answered, caps, zone=tz, now=now)
    if at is not None:
        assert at > now
        assert next_allowed(answered, caps, zone=tz, now=at) is None
        assert next_allowed(answered, caps, zone=tz, now=at - dt.timedelta(seconds=1)) is not None
