"""Ringing plans for users and call groups (pure)."""

from __future__ import annotations

import uuid

import pytest

from vpbx.pbx.callplan import MAX_RING_S, Plan, Rotation, Targets, group_plan, user_plan

MEMBERS = ("201", "202", "203")


def ringing(plan: Plan, at: float) -> list[str]:
    return [p for stage in plan.due(at) for p in (*stage.targets.pins, *stage.targets.numbers)]


def test_a_user_rings_their_devices_then_also_their_mobile() -> None:
    plan = user_plan("101", ("+79161234567",), mobile_delay_s=15, ring_s=60)
    assert ringing(plan, 0) == ["101"]
    assert ringing(plan, 14.9) == ["101"]
    assert ringing(plan, 15) == ["101", "+79161234567"]
    assert ringing(plan, 59.9) == ["101", "+79161234567"]
    assert ringing(plan, 60) == []
    assert plan.boundaries() == [0.0, 15.0, 60.0]


def test_a_mobile_delay_beyond_the_ring_limit_never_rings_the_mobile() -> None:
    plan = user_plan("101", ("+79161234567",), mobile_delay_s=90, ring_s=60)
    assert [s.targets for s in plan.stages] == [Targets(pins=("101",))]


def test_simultaneous_rings_everyone_until_the_overall_timeout() -> None:
    plan = group_plan("simultaneous", MEMBERS, member_timeout_s=10, overall_timeout_s=30)
    assert ringing(plan, 0) == list(MEMBERS)
    assert ringing(plan, 29) == list(MEMBERS)
    assert ringing(plan, 30) == []


def test_sequential_goes_round_the_list_until_the_overall_timeout() -> None:
    plan = group_plan("sequential", MEMBERS, member_timeout_s=10, overall_timeout_s=45, first=2)
    order = [ringing(plan, t) for t in (0, 9.9, 10, 20, 30, 40, 44.9, 45)]
    assert order == [["201"], ["201"], ["202"], ["203"], ["201"], ["202"], ["202"], []]
    assert plan.stages[-1].stop_s == 45  # the last stage is cut at the overall timeout
    assert ringing(plan, 25) == ["203"]  # never two at once


def test_cyclic_starts_where_the_rotation_says_and_wraps() -> None:
    rotation = Rotation()
    group = uuid.uuid4()
    starts = []
    for _ in range(4):
        first = rotation.take(group, len(MEMBERS))
        plan = group_plan("cyclic", MEMBERS, member_timeout_s=10, overall_timeout_s=30, first=first)
        starts.append(ringing(plan, 0))
    assert starts == [["201"], ["202"], ["203"], ["201"]]
    other = uuid.uuid4()
    assert rotation.take(other, 2) == 0  # per group
    rotation.forget(group)
    assert rotation.take(group, 3) == 0


def test_limits_and_odd_input() -> None:
    assert group_plan("sequential", (), member_timeout_s=10, overall_timeout_s=30).stages == ()
    huge = group_plan("simultaneous", MEMBERS, member_timeout_s=10, overall_timeout_s=10**6)
    assert huge.overall_s == MAX_RING_S
    tiny = group_plan("sequential", MEMBERS, member_timeout_s=0, overall_timeout_s=3)
    assert [s.stop_s - s.start_s for s in tiny.stages] == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="strategy"):
        group_plan("random", MEMBERS, member_timeout_s=10, overall_timeout_s=30)
    assert Rotation().take(uuid.uuid4(), 0) == 0
