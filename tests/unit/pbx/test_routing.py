"""Routing rules: order, conditions, targets inside the domain, the resolver and loop detection."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import select

from tests.helpers import Tenant
from vpbx.app import Core
from vpbx.errors import NotFound, ValidationFailed
from vpbx.pbx import routing as svc
from vpbx.pbx.actions import ActionInput
from vpbx.pbx.routing import RuleInput, find_cycle
from vpbx.store.models import CallGroup, Domain, IncomingNumber, RoutingRule, Schedule, ScheduleInterval, User

A, B, C = "+74951234567", "+74957654321", "+74959990011"
FOREIGN = "+78123334455"
UTC = dt.UTC


def _fields(e: ValidationFailed) -> dict[str, list[str]]:
    return {k: [x.msgid for x in v] for k, v in e.by_field().items()}


async def _number(core: Core, t: Tenant, e164: str) -> uuid.UUID:
    async with core.sessions() as s:
        n = IncomingNumber(domain_id=t.id, number=e164)
        s.add(n)
        await s.commit()
        return n.id


async def _group(
    core: Core,
    t: Tenant,
    pin: str,
    *,
    ft: str | None = None,
    ft_group: uuid.UUID | None = None,
    ft_number: str = "",
) -> uuid.UUID:
    async with core.sessions() as s:
        g = CallGroup(
            domain_id=t.id,
            name=f"Группа {pin}",
            pin=pin,
            fallthrough_action=ft,
            fallthrough_group_id=ft_group,
            fallthrough_number=ft_number or None,
        )
        s.add(g)
        await s.commit()
        return g.id


async def _schedule(core: Core, t: Tenant, name: str = "Офис") -> uuid.UUID:
    """Mon–Fri 09:00-18:00."""
    async with core.sessions() as s:
        sch = Schedule(
            domain_id=t.id,
            name=name,
            intervals=[ScheduleInterval(weekday=d, start_min=540, end_min=1080) for d in range(5)],
            holidays=[],
        )
        s.add(sch)
        await s.commit()
        return sch.id


async def _admin(core: Core, t: Tenant) -> uuid.UUID:
    async with core.sessions() as s:
        uid = await s.scalar(select(User.id).where(User.domain_id == t.id))
        assert uid is not None
        return uid


def rule(
    action: str = "reject", condition: str = "always", schedule_id: uuid.UUID | None = None, **kw: object
) -> RuleInput:
    return RuleInput(condition=condition, schedule_id=schedule_id, target=ActionInput(action=action, **kw))  # type: ignore[arg-type]


async def _add(core: Core, t: Tenant, number_id: uuid.UUID, data: RuleInput) -> RoutingRule:
    async with core.sessions() as s:
        r = await svc.add_rule(s, t.id, number_id, data)
        await s.commit()
        return r


async def _rules(core: Core, t: Tenant, number_id: uuid.UUID) -> list[tuple[int, str, str | None]]:
    async with core.sessions() as s:
        return [(r.position, r.action, r.target_number) for r in await svc.list_rules(s, t.id, number_id)]


# --- ordering ---------------------------------------------------------------------------------------------


async def test_rules_keep_positions_through_moves_and_deletes(core: Core, t1: Tenant) -> None:
    n = await _number(core, t1, A)
    r1 = await _add(core, t1, n, rule("external", number="8 916 123-45-67"))
    r2 = await _add(core, t1, n, rule("user", user_id=await _admin(core, t1)))
    r3 = await _add(core, t1, n, rule("reject"))
    assert await _rules(core, t1, n) == [
        (0, "external", "+79161234567"),
        (1, "user", None),
        (2, "reject", None),
    ]
    async with core.sessions() as s:
        await svc.move_rule(s, t1.id, r3.id, -1)
        await svc.move_rule(s, t1.id, r1.id, -1)  # already first: stays
        await s.commit()
    assert [a for _, a, _ in await _rules(core, t1, n)] == ["external", "reject", "user"]
    async with core.sessions() as s:
        await svc.move_rule(s, t1.id, r1.id, +1)
        await svc.move_rule(s, t1.id, r2.id, +1)  # already last: stays
        await s.commit()
    assert [a for _, a, _ in await _rules(core, t1, n)] == ["reject", "external", "user"]
    async with core.sessions() as s:
        await svc.delete_rule(s, t1.id, r1.id)
        await s.commit()
    assert await _rules(core, t1, n) == [(0, "reject", None), (1, "user", None)]


# --- validation and tenancy -------------------------------------------------------------------------------


async def test_work_condition_needs_a_schedule_of_this_domain(core: Core, t1: Tenant, t2: Tenant) -> None:
    n = await _number(core, t1, A)
    foreign = await _schedule(core, t2)
    for sid in (None, foreign, uuid.uuid4()):
        async with core.sessions() as s:
            with pytest.raises(ValidationFailed) as e:
                await svc.add_rule(s, t1.id, n, rule("reject", "non_work", sid))
        assert _fields(e.value) == {"schedule_id": ["Choose a schedule of this domain"]}
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await svc.add_rule(s, t1.id, n, rule("reject", "sometimes"))
    assert _fields(e.value) == {"condition": ["Choose one of the options"]}
    assert await _rules(core, t1, n) == []


async def test_always_drops_the_schedule(core: Core, t1: Tenant) -> None:
    n = await _number(core, t1, A)
    sid = await _schedule(core, t1)
    r = await _add(core, t1, n, rule("reject", "always", sid))
    assert r.schedule_id is None


async def test_targets_of_another_domain_are_field_errors(core: Core, t1: Tenant, t2: Tenant) -> None:
    n = await _number(core, t1, A)
    g2 = await _group(core, t2, "600")
    u2 = await _admin(core, t2)
    cases = [
        (rule("group", group_id=g2), {"group_id": ["Choose a group of this domain"]}),
        (rule("user", user_id=u2), {"user_id": ["Choose a user of this domain"]}),
        (rule("voicemail", group_id=g2), {"group_id": ["Choose a group of this domain"]}),
        (rule("external", number="12ab"), {"number": ["Not a valid phone number: {value}"]}),
        (rule("transfer"), {"action": ["Choose one of the options"]}),
    ]
    for data, errors in cases:
        async with core.sessions() as s:
            with pytest.raises(ValidationFailed) as e:
                await svc.add_rule(s, t1.id, n, data)
        assert _fields(e.value) == errors
    assert await _rules(core, t1, n) == []


async def test_numbers_and_rules_of_another_domain_are_not_found(core: Core, t1: Tenant, t2: Tenant) -> None:
    n = await _number(core, t1, A)
    r = await _add(core, t1, n, rule("reject"))
    async with core.sessions() as s:
        with pytest.raises(NotFound):
            await svc.list_rules(s, t2.id, n)
        with pytest.raises(NotFound):
            await svc.add_rule(s, t2.id, n, rule("reject"))
        with pytest.raises(NotFound):
            await svc.update_rule(s, t2.id, r.id, rule("external", number=B))
        with pytest.raises(NotFound):
            await svc.move_rule(s, t2.id, r.id, 1)
        with pytest.raises(NotFound):
            await svc.delete_rule(s, t2.id, r.id)
        other = await _number(core, t1, B)
        with pytest.raises(NotFound):  # the rule exists, but not under that number
            await svc.get_rule(s, t1.id, r.id, other)
        await s.commit()
    assert await _rules(core, t1, n) == [(0, "reject", None)]


async def test_update_changes_condition_and_target(core: Core, t1: Tenant) -> None:
    n = await _number(core, t1, A)
    g = await _group(core, t1, "600")
    sid = await _schedule(core, t1)
    r = await _add(core, t1, n, rule("group", group_id=g))
    async with core.sessions() as s:
        await svc.update_rule(s, t1.id, r.id, rule("voicemail", "work", sid, user_id=await _admin(core, t1)))
        await s.commit()
    async with core.sessions() as s:
        got = await svc.get_rule(s, t1.id, r.id)
        assert (got.condition, got.schedule_id, got.action, got.target_group_id) == (
            "work",
            sid,
            "voicemail",
            None,
        )
        assert got.target_user_id is not None


# --- resolver ---------------------------------------------------------------------------------------------


async def test_resolver_takes_the_first_matching_rule(core: Core, t1: Tenant, t2: Tenant) -> None:
    n = await _number(core, t1, A)
    empty = await _number(core, t1, B)
    sid = await _schedule(core, t1)
    g = await _group(core, t1, "600")
    await _add(core, t1, n, rule("group", "work", sid, group_id=g))
    await _add(core, t1, n, rule("external", "non_work", sid, number="+79161234567"))
    await _add(core, t1, n, rule("reject"))
    thursday_10_msk = dt.datetime(2026, 1, 15, 7, 0, tzinfo=UTC)
    thursday_19_msk = dt.datetime(2026, 1, 15, 16, 0, tzinfo=UTC)
    async with core.sessions() as s:
        at_work = await svc.resolve(s, t1.id, A, thursday_10_msk)
        assert at_work is not None
        assert (at_work.rule.position, at_work.action.action, at_work.action.group_id) == (0, "group", g)
        assert at_work.local_time.hour == 10
        evening = await svc.resolve(s, t1.id, A, thursday_19_msk)
        assert evening is not None
        assert (evening.rule.position, evening.action.number) == (1, "+79161234567")
        assert await svc.resolve(s, t1.id, B, thursday_10_msk) is None
        with pytest.raises(NotFound):
            await svc.resolve(s, t2.id, A, thursday_10_msk)
    assert empty


async def test_resolver_reads_the_schedule_in_the_domain_time_zone(core: Core, t1: Tenant) -> None:
    n = await _number(core, t1, A)
    sid = await _schedule(core, t1)
    await _add(core, t1, n, rule("reject", "work", sid))
    when = dt.datetime(2026, 1, 15, 15, 30, tzinfo=UTC)  # 18:30 in Moscow, 16:30 in Berlin
    async with core.sessions() as s:
        assert await svc.resolve(s, t1.id, A, when) is None
        d = await s.get(Domain, t1.id)
        assert d is not None
        d.timezone = "Europe/Berlin"
        await s.flush()
        hit = await svc.resolve(s, t1.id, A, when)
        assert hit is not None and hit.local_time.hour == 16


async def test_first_rule_wins_even_when_later_ones_match(core: Core, t1: Tenant) -> None:
    n = await _number(core, t1, A)
    sid = await _schedule(core, t1)
    await _add(core, t1, n, rule("reject"))
    await _add(core, t1, n, rule("external", "work", sid, number=B))
    async with core.sessions() as s:
        hit = await svc.resolve(s, t1.id, A, dt.datetime(2026, 1, 15, 7, 0, tzinfo=UTC))
        assert hit is not None and hit.action.action == "reject"


# --- loops ------------------------------------------------------------------------------------------------


async def _loop(core: Core, t: Tenant, number_id: uuid.UUID, data: RuleInput) -> str:
    """Add a rule that must be refused as a loop; returns the path and checks nothing was kept."""
    before = await _rules(core, t, number_id)
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await svc.add_rule(s, t.id, number_id, data)
        await s.rollback()
    assert _fields(e.value) == {"action": ["This rule makes a routing loop: {path}"]}
    assert await _rules(core, t, number_id) == before
    return str(e.value.errors[0].params["path"])


async def test_number_to_own_number_and_back_is_a_loop(core: Core, t1: Tenant) -> None:
    a, b = await _number(core, t1, A), await _number(core, t1, B)
    await _add(core, t1, a, rule("external", number=B))
    assert await _loop(core, t1, b, rule("external", number="8 (495) 123-45-67")) == f"{A} → {B} → {A}"


async def test_a_number_forwarded_to_itself_is_a_loop(core: Core, t1: Tenant) -> None:
    a = await _number(core, t1, A)
    assert await _loop(core, t1, a, rule("external", "always", number=A)) == f"{A} → {A}"


async def test_loop_through_a_group_fall_through(core: Core, t1: Tenant) -> None:
    a = await _number(core, t1, A)
    g = await _group(core, t1, "600", ft="external", ft_number=A)
    assert await _loop(core, t1, a, rule("group", group_id=g)) == f"{A} → 600 → {A}"


async def test_update_into_a_loop_is_refused_and_rolled_back(core: Core, t1: Tenant) -> None:
    a, b = await _number(core, t1, A), await _number(core, t1, B)
    await _add(core, t1, a, rule("external", number=B))
    r = await _add(core, t1, b, rule("reject"))
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await svc.update_rule(s, t1.id, r.id, rule("external", number=A))
        await s.rollback()
    assert "loop" in e.value.errors[0].msgid
    assert await _rules(core, t1, b) == [(0, "reject", None)]


async def test_group_fall_through_cycles_and_self_loops(core: Core, t1: Tenant) -> None:
    g1 = await _group(core, t1, "600")
    g2 = await _group(core, t1, "601", ft="group", ft_group=g1)
    async with core.sessions() as s:
        await svc.assert_no_loops(s, t1.id)  # a chain is fine
        g = await s.get(CallGroup, g1)
        assert g is not None
        g.fallthrough_action, g.fallthrough_group_id = "group", g2
        await s.flush()
        with pytest.raises(ValidationFailed) as e:
            await svc.assert_no_loops(s, t1.id)
        assert e.value.errors[0].params == {"path": "600 → 601 → 600"}
        g.fallthrough_group_id = g1
        await s.flush()
        with pytest.raises(ValidationFailed) as e:
            await svc.assert_no_loops(s, t1.id)
        assert e.value.errors[0].params == {"path": "600 → 600"}


async def test_no_false_loops(core: Core, t1: Tenant, t2: Tenant) -> None:
    a, b = await _number(core, t1, A), await _number(core, t1, B)
    await _number(core, t2, FOREIGN)
    g1 = await _group(core, t1, "600")
    g2 = await _group(core, t1, "601", ft="group", ft_group=g1)
    # a diamond: A → 600, A → 601 → 600; and 600 → B → foreign number (another domain's line: not followed)
    await _add(core, t1, a, rule("group", group_id=g1))
    await _add(core, t1, a, rule("group", group_id=g2))
    await _add(core, t1, a, rule("external", number=B))
    await _add(core, t1, b, rule("external", number=FOREIGN))
    await _add(core, t1, b, rule("voicemail", group_id=g1))
    assert len(await _rules(core, t1, a)) == 3


async def test_another_domains_loop_does_not_block_this_one(core: Core, t1: Tenant, t2: Tenant) -> None:
    c2 = await _number(core, t2, C)
    async with core.sessions() as s:  # stored behind the service's back: t2 loops on itself
        s.add(RoutingRule(domain_id=t2.id, number_id=c2, position=0, action="external", target_number=C))
        await s.commit()
    a = await _number(core, t1, A)
    await _add(core, t1, a, rule("external", number=C))
    async with core.sessions() as s:
        await svc.assert_no_loops(s, t1.id)
        with pytest.raises(ValidationFailed):
            await svc.assert_no_loops(s, t2.id)


def test_find_cycle_is_deterministic() -> None:
    edges = {("n", "b"): {("n", "a")}, ("n", "a"): {("n", "c")}, ("n", "c"): {("n", "a"), ("n", "d")}}
    assert find_cycle(edges) == [("n", "a"), ("n", "c"), ("n", "a")]
    assert find_cycle({("n", "a"): {("n", "b")}, ("n", "b"): set()}) is None
