"""Routing rules («Маршрутизация») of incoming numbers: ordered rules, a schedule condition and an action.

A call to a number takes the first rule (by ``position``) whose condition holds at that moment in the domain's
time zone. Rules and group fall-throughs may send a call on to a group or to one of the domain's own numbers;
``assert_no_loops`` refuses any change after which such hops could go round for ever.
"""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.errors import NotFound, ValidationFailed
from vpbx.pbx import lines, menus, schedules, users
from vpbx.pbx.actions import Action, ActionInput, validate_action
from vpbx.pbx.schedules import is_work_time
from vpbx.pbx.validation import N_, Check
from vpbx.store.models import (
    CallGroup,
    Domain,
    IncomingNumber,
    RoutingRule,
    Schedule,
    User,
    VoiceMenu,
    VoiceMenuKey,
)
from vpbx.store.paging import Page

CONDITIONS = ("always", "work", "non_work")
MAX_RULES = 50


@dataclass(kw_only=True)
class RuleInput:
    condition: str = "always"
    schedule_id: uuid.UUID | None = None
    target: ActionInput = field(default_factory=lambda: ActionInput(action="reject"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Resolution:
    """Which rule a call to ``number`` at ``local_time`` takes, and where it goes."""

    number: IncomingNumber
    rule: RoutingRule
    action: Action
    local_time: dt.datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Targets:
    """What a rule form offers: the domain's users, groups, voice menus and schedules."""

    users: list[User]
    groups: list[CallGroup]
    menus: list[VoiceMenu]
    schedules: list[Schedule]


# --- numbers ----------------------------------------------------------------------------------------------


async def list_numbers(
    s: AsyncSession, domain_id: uuid.UUID, q: str = "", page: int = 1
) -> tuple[Page[IncomingNumber], dict[uuid.UUID, int]]:
    """A page of the domain's numbers (searched as the numbers section does) and the rule count of each."""
    pg = await lines.list_numbers(s, domain_id, q, page)
    counts = await lines.rule_counts(s, domain_id, [n.id for n in pg.items])
    return pg, {n.id: counts.get(n.id, 0) for n in pg.items}


async def targets(s: AsyncSession, domain_id: uuid.UUID) -> Targets:
    from vpbx.pbx import groups  # groups imports this module for its loop check

    return Targets(
        users=await users.all_users(s, domain_id),
        groups=await groups.all_groups(s, domain_id),
        menus=await menus.all_menus(s, domain_id),
        schedules=await schedules.all_schedules(s, domain_id),
    )


# --- rules ------------------------------------------------------------------------------------------------


async def list_rules(s: AsyncSession, domain_id: uuid.UUID, number_id: uuid.UUID) -> list[RoutingRule]:
    await lines.get_number(s, domain_id, number_id)
    return await _rules_of(s, domain_id, number_id)


async def _rules_of(s: AsyncSession, domain_id: uuid.UUID, number_id: uuid.UUID) -> list[RoutingRule]:
    rows = await s.scalars(
        select(RoutingRule)
        .where(RoutingRule.domain_id == domain_id, RoutingRule.number_id == number_id)
        .order_by(RoutingRule.position, RoutingRule.created_at)
    )
    return list(rows.all())


async def get_rule(
    s: AsyncSession, domain_id: uuid.UUID, rule_id: uuid.UUID, number_id: uuid.UUID | None = None
) -> RoutingRule:
    """The rule, also checked to belong to ``number_id`` when one is given (a page's URL names both)."""
    stmt = select(RoutingRule).where(RoutingRule.domain_id == domain_id, RoutingRule.id == rule_id)
    if number_id is not None:
        stmt = stmt.where(RoutingRule.number_id == number_id)
    rule: RoutingRule | None = await s.scalar(stmt)
    if rule is None:
        raise NotFound("rule", rule_id)
    return rule


async def _validate(s: AsyncSession, domain_id: uuid.UUID, data: RuleInput) -> tuple[Check, Action | None]:
    c = Check()
    condition = c.choice("condition", data.condition, CONDITIONS)
    if condition in ("work", "non_work"):
        found = None
        if data.schedule_id is not None:
            found = await s.scalar(
                select(Schedule.id).where(Schedule.domain_id == domain_id, Schedule.id == data.schedule_id)
            )
        if found is None:
            c.add("schedule_id", N_("Choose a schedule of this domain"))
    else:
        data.schedule_id = None
    action = await validate_action(c, s, domain_id, data.target)
    return c, action


def _apply(rule: RoutingRule, data: RuleInput, action: Action) -> None:
    rule.condition = data.condition
    rule.schedule_id = data.schedule_id
    rule.action = action.action
    rule.target_user_id = action.user_id
    rule.target_group_id = action.group_id
    rule.target_menu_id = action.menu_id
    rule.target_number = action.number


async def add_rule(
    s: AsyncSession, domain_id: uuid.UUID, number_id: uuid.UUID, data: RuleInput
) -> RoutingRule:
    """Append a rule to the number's list. On ``ValidationFailed`` after the flush (a loop), roll back."""
    await lines.get_number(s, domain_id, number_id)
    c, action = await _validate(s, domain_id, data)
    count = int(
        await s.scalar(
            select(func.count())
            .select_from(RoutingRule)
            .where(RoutingRule.domain_id == domain_id, RoutingRule.number_id == number_id)
        )
        or 0
    )
    if count >= MAX_RULES:
        c.add("id", N_("A number has at most {max} rules"), max=MAX_RULES)
    c.done()
    assert action is not None
    rule = RoutingRule(domain_id=domain_id, number_id=number_id, position=count)
    _apply(rule, data, action)
    s.add(rule)
    await s.flush()
    await assert_no_loops(s, domain_id)
    return rule


async def update_rule(
    s: AsyncSession,
    domain_id: uuid.UUID,
    rule_id: uuid.UUID,
    data: RuleInput,
    *,
    number_id: uuid.UUID | None = None,
) -> RoutingRule:
    """Change a rule's condition and action. On ``ValidationFailed`` after the flush (a loop), roll back."""
    rule = await get_rule(s, domain_id, rule_id, number_id)
    c, action = await _validate(s, domain_id, data)
    c.done()
    assert action is not None
    _apply(rule, data, action)
    await s.flush()
    await assert_no_loops(s, domain_id)
    return rule


async def delete_rule(
    s: AsyncSession, domain_id: uuid.UUID, rule_id: uuid.UUID, *, number_id: uuid.UUID | None = None
) -> None:
    rule = await get_rule(s, domain_id, rule_id, number_id)
    await s.delete(rule)
    await s.flush()
    for i, r in enumerate(await _rules_of(s, domain_id, rule.number_id)):
        r.position = i
    await s.flush()


async def move_rule(
    s: AsyncSession,
    domain_id: uuid.UUID,
    rule_id: uuid.UUID,
    delta: int,
    *,
    number_id: uuid.UUID | None = None,
) -> None:
    """Move a rule up (``delta=-1``) or down (``+1``); at either end it stays where it is."""
    rule = await get_rule(s, domain_id, rule_id, number_id)
    rules = await _rules_of(s, domain_id, rule.number_id)
    i = next(k for k, r in enumerate(rules) if r.id == rule.id)
    j = i + (1 if delta > 0 else -1)
    if 0 <= j < len(rules):
        rules[i], rules[j] = rules[j], rules[i]
    for k, r in enumerate(rules):
        r.position = k
    await s.flush()


# --- loops ------------------------------------------------------------------------------------------------

Node = tuple[str, str]  # ("number", "+7…"), ("group", "<uuid>") or ("menu", "<uuid>")


def find_cycle(edges: dict[Node, set[Node]]) -> list[Node] | None:
    """A cycle as a node list whose last node repeats the first, or ``None``; deterministic order."""
    state: dict[Node, int] = {}  # 1 = on the current path, 2 = done
    for root in sorted(edges):
        if root in state:
            continue
        path: list[Node] = [root]
        stack: list[Iterator[Node]] = [iter(sorted(edges.get(root, ())))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
                continue
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(edges.get(nxt, ()))))
    return None


async def assert_no_loops(s: AsyncSession, domain_id: uuid.UUID) -> None:
    """Raise ``ValidationFailed`` (field ``action``) when the domain's rules and group fall-throughs loop.

    Edges: a number's rule to a group or a voice menu, or to one of the domain's own numbers as an external
    number; a group's fall-through to a group, a menu or an own number; a menu's timeout action (no key
    pressed) to a group, a menu or an own number. A menu's keys are no edges: the caller chooses them, so
    «0 — back to the main menu» is allowed. Call it after flushing the change being checked.
    """
    number_rows = await s.execute(
        select(IncomingNumber.id, IncomingNumber.number).where(IncomingNumber.domain_id == domain_id)
    )
    numbers: dict[uuid.UUID, str] = dict(number_rows.all())
    own = set(numbers.values())
    groups: dict[uuid.UUID, str] = {}
    edges: dict[Node, set[Node]] = {}

    def edge(a: Node, b: Node) -> None:
        edges.setdefault(a, set()).add(b)

    rows = await s.execute(
        select(
            CallGroup.id,
            CallGroup.pin,
            CallGroup.fallthrough_action,
            CallGroup.fallthrough_group_id,
            CallGroup.fallthrough_menu_id,
            CallGroup.fallthrough_number,
        ).where(CallGroup.domain_id == domain_id)
    )
    fallthroughs = list(rows.all())
    menu_rows = await s.execute(select(VoiceMenu.id, VoiceMenu.name).where(VoiceMenu.domain_id == domain_id))
    menus: dict[uuid.UUID, str] = dict(menu_rows.all())
    for gid, pin, _action, _gto, _mto, _nto in fallthroughs:
        groups[gid] = pin

    def hop(
        src: Node, action: str | None, gto: uuid.UUID | None, mto: uuid.UUID | None, nto: str | None
    ) -> None:
        if action == "group" and gto in groups:
            edge(src, ("group", str(gto)))
        elif action == "menu" and mto in menus:
            edge(src, ("menu", str(mto)))
        elif action == "external" and nto in own:
            edge(src, ("number", nto))

    for gid, _pin, action, gto, mto, nto in fallthroughs:
        hop(("group", str(gid)), action, gto, mto, nto)
    rule_rows = await s.execute(
        select(
            RoutingRule.number_id,
            RoutingRule.action,
            RoutingRule.target_group_id,
            RoutingRule.target_menu_id,
            RoutingRule.target_number,
        ).where(RoutingRule.domain_id == domain_id, RoutingRule.action.in_(("group", "menu", "external")))
    )
    for number_id, action, gto, mto, nto in rule_rows.all():
        hop(("number", numbers[number_id]), action, gto, mto, nto)
    timeout_rows = await s.execute(
        select(
            VoiceMenuKey.menu_id,
            VoiceMenuKey.action,
            VoiceMenuKey.target_group_id,
            VoiceMenuKey.target_menu_id,
            VoiceMenuKey.target_number,
        )
        .join(VoiceMenu, VoiceMenu.id == VoiceMenuKey.menu_id)
        .where(VoiceMenu.domain_id == domain_id, VoiceMenuKey.key == "t")
    )
    for menu_id, action, gto, mto, nto in timeout_rows.all():
        hop(("menu", str(menu_id)), action, gto, mto, nto)
    cycle = find_cycle(edges)
    if cycle is None:
        return
    # Read the loop from a number when it has one (that is where a call enters it), else from the lowest PIN
    # (a group) or name (a menu).
    labels = {"group": groups, "menu": menus}
    ring = [(kind, labels[kind][uuid.UUID(ident)] if kind in labels else ident) for kind, ident in cycle[:-1]]
    start = ring.index(min(ring, key=lambda node: (node[0] != "number", node[1])))
    names = [label for _, label in (*ring[start:], *ring[:start], ring[start])]
    raise ValidationFailed.one("action", N_("This rule makes a routing loop: {path}"), path=" → ".join(names))


# --- resolution -------------------------------------------------------------------------------------------


async def resolve(
    s: AsyncSession, domain_id: uuid.UUID, number_e164: str, when_utc: dt.datetime
) -> Resolution | None:
    """The first rule of the number that holds at ``when_utc``, or ``None`` when none does.

    Raises ``NotFound`` when the number is not one of the domain's.
    """
    domain = await s.get(Domain, domain_id)
    if domain is None:
        raise NotFound("domain", domain_id)
    number: IncomingNumber | None = await s.scalar(
        select(IncomingNumber).where(
            IncomingNumber.domain_id == domain_id, IncomingNumber.number == number_e164
        )
    )
    if number is None:
        raise NotFound("number", number_e164)
    local = when_utc.astimezone(zoneinfo.ZoneInfo(domain.timezone))
    work: dict[uuid.UUID, bool] = {}
    for rule in await _rules_of(s, domain_id, number.id):
        if rule.condition != "always":
            if rule.schedule_id is None:
                continue
            if rule.schedule_id not in work:
                sch = await s.scalar(
                    select(Schedule).where(Schedule.domain_id == domain_id, Schedule.id == rule.schedule_id)
                )
                work[rule.schedule_id] = sch is not None and is_work_time(sch, when_utc, domain.timezone)
            if work[rule.schedule_id] != (rule.condition == "work"):
                continue
        return Resolution(number=number, rule=rule, action=action_of(rule), local_time=local)
    return None


def action_of(rule: RoutingRule) -> Action:
    return Action(
        action=rule.action,
        user_id=rule.target_user_id,
        group_id=rule.target_group_id,
        menu_id=rule.target_menu_id,
        number=rule.target_number,
    )
