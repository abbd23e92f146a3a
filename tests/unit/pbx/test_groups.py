"""Call groups: shared PIN plan, ordered members, timeouts, fall-through, loop check and deletion."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from tests.helpers import Tenant
from vpbx.app import Core
from vpbx.errors import NotFound, ValidationFailed
from vpbx.pbx import groups, menus, routing, users
from vpbx.pbx.actions import ActionInput
from vpbx.pbx.groups import GroupInput
from vpbx.store.models import CallGroup, CallGroupMember, IncomingNumber, RoutingRule, User


def _fields(e: ValidationFailed) -> dict[str, list[str]]:
    return {k: [x.msgid for x in v] for k, v in e.by_field().items()}


async def _user(core: Core, t: Tenant, pin: str) -> User:
    async with core.sessions() as s:
        u = await users.create_user(
            s, t.id, users.UserInput(name=f"u{pin}", display_name=f"User {pin}", pin=pin), box=core.box
        )
        await s.commit()
        return u


async def _group(core: Core, t: Tenant, **kw: object) -> CallGroup:
    data = GroupInput(**{"name": "Sales", "pin": "500", **kw})  # type: ignore[arg-type]
    async with core.sessions() as s:
        g = await groups.create_group(s, t.id, data)
        await s.commit()
        return g


async def _count(core: Core) -> tuple[int, int]:
    async with core.sessions() as s:
        g = await s.scalar(select(func.count()).select_from(CallGroup))
        m = await s.scalar(select(func.count()).select_from(CallGroupMember))
        return int(g or 0), int(m or 0)


async def test_members_keep_their_order_without_duplicates(core: Core, t1: Tenant) -> None:
    for pin in ("101", "102", "103"):
        await _user(core, t1, pin)
    g = await _group(
        core, t1, strategy="sequential", members=["103", " 101", "103", "102"], member_timeout_s="15"
    )
    async with core.sessions() as s:
        g = await groups.get_group(s, t1.id, g.id)
        assert await groups.member_pins(s, t1.id, g) == ["103", "101", "102"]
        assert [m.position for m in g.members] == [0, 1, 2]
        assert (g.strategy, g.member_timeout_s, g.overall_timeout_s) == ("sequential", 15, 60)
        assert g.fallthrough_action is None


async def test_reordering_and_removing_members(core: Core, t1: Tenant) -> None:
    for pin in ("101", "102", "103"):
        await _user(core, t1, pin)
    g = await _group(core, t1, members=["101", "102", "103"])
    async with core.sessions() as s:
        await groups.update_group(s, t1.id, g.id, GroupInput(name="Sales", pin="500", members=["103", "101"]))
        await s.commit()
    async with core.sessions() as s:
        g = await groups.get_group(s, t1.id, g.id)
        assert await groups.member_pins(s, t1.id, g) == ["103", "101"]


async def test_unknown_member_saves_nothing(core: Core, t1: Tenant, t2: Tenant) -> None:
    await _user(core, t1, "101")
    await _user(core, t2, "102")  # a user of another domain is unknown here
    before = await _count(core)
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await groups.create_group(
                s, t1.id, GroupInput(name="Sales", pin="500", members=["101", "102", "999"])
            )
    assert _fields(e.value) == {"members": ["Unknown member: {pin}", "Unknown member: {pin}"]}
    assert [x.params["pin"] for x in e.value.errors] == ["102", "999"]
    assert await _count(core) == before


async def test_at_most_fifty_members(core: Core, t1: Tenant) -> None:
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await groups.create_group(
                s, t1.id, GroupInput(name="Big", pin="500", members=[str(1000 + i) for i in range(51)])
            )
    assert _fields(e.value) == {"members": ["At most {max} members"]}


async def test_pin_plan_is_shared_with_users(core: Core, t1: Tenant, t2: Tenant) -> None:
    await _group(core, t1)
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await groups.create_group(s, t1.id, GroupInput(name="Support", pin="100"))  # the admin's PIN
        assert _fields(e.value) == {"pin": ["This extension is taken by a user or a group"]}
        with pytest.raises(ValidationFailed) as e:
            await groups.create_group(s, t1.id, GroupInput(name="Sales", pin="500"))
        assert _fields(e.value) == {
            "name": ["A group with this name already exists"],
            "pin": ["This extension is taken by a user or a group"],
        }
        with pytest.raises(ValidationFailed) as e:
            await groups.create_group(s, t1.id, GroupInput(name="x" * 65, pin="5a"))
        assert set(_fields(e.value)) == {"name", "pin"}
    # users cannot take a group's PIN either, and another domain has its own plan
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await users.create_user(
                s, t1.id, users.UserInput(name="x", display_name="X", pin="500"), box=core.box
            )
        assert "pin" in _fields(e.value)
    await _group(core, t2)


@pytest.mark.parametrize(
    ("member", "overall", "strategy", "bad"),
    [
        ("4", "60", "simultaneous", {"member_timeout_s"}),
        ("301", "600", "simultaneous", {"member_timeout_s"}),
        ("20", "3601", "simultaneous", {"overall_timeout_s"}),
        ("30", "20", "simultaneous", {"overall_timeout_s"}),
        ("abc", "20", "simultaneous", {"member_timeout_s"}),
        ("20", "60", "random", {"strategy"}),
    ],
)
async def test_timeouts_and_strategy(
    core: Core, t1: Tenant, member: str, overall: str, strategy: str, bad: set[str]
) -> None:
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await groups.create_group(
                s,
                t1.id,
                GroupInput(
                    name="G", pin="500", strategy=strategy, member_timeout_s=member, overall_timeout_s=overall
                ),
            )
    assert set(_fields(e.value)) == bad


async def test_timeout_bounds_are_accepted(core: Core, t1: Tenant) -> None:
    g = await _group(core, t1, strategy="cyclic", member_timeout_s="300", overall_timeout_s="300")
    assert (g.member_timeout_s, g.overall_timeout_s, g.strategy) == (300, 300, "cyclic")


async def test_fallthrough_targets(core: Core, t1: Tenant) -> None:
    u = await _user(core, t1, "101")
    async with core.sessions() as s:
        m = await menus.create_menu(s, t1.id, menus.MenuInput(name="Main", prompt_text="Hello"))
        await s.commit()
    g1 = await _group(core, t1, fallthrough=ActionInput(action="user", user_id=u.id))
    assert (g1.fallthrough_action, g1.fallthrough_user_id) == ("user", u.id)
    g2 = await _group(
        core,
        t1,
        name="Support",
        pin="501",
        fallthrough=ActionInput(action="external", number="8 916 123-45-67"),
    )
    assert (g2.fallthrough_action, g2.fallthrough_number) == ("external", "+79161234567")
    async with core.sessions() as s:
        g2 = await groups.update_group(
            s,
            t1.id,
            g2.id,
            GroupInput(name="Support", pin="501", fallthrough=ActionInput(action="menu", menu_id=m.id)),
        )
        await s.commit()
        # switching the action clears the old target
        assert (g2.fallthrough_action, g2.fallthrough_menu_id, g2.fallthrough_number) == ("menu", m.id, None)
        g2 = await groups.update_group(
            s,
            t1.id,
            g2.id,
            GroupInput(name="Support", pin="501", fallthrough=ActionInput(action="group", group_id=g1.id)),
        )
        await s.commit()
        assert (g2.fallthrough_action, g2.fallthrough_group_id, g2.fallthrough_menu_id) == (
            "group",
            g1.id,
            None,
        )
        g2 = await groups.update_group(s, t1.id, g2.id, GroupInput(name="Support", pin="501"))
        await s.commit()
        assert (g2.fallthrough_action, g2.fallthrough_group_id) == (None, None)


async def test_fallthrough_to_itself_or_to_another_domain_is_refused(
    core: Core, t1: Tenant, t2: Tenant
) -> None:
    g = await _group(core, t1)
    foreign_user = await _user(core, t2, "101")
    foreign_group = await _group(core, t2)
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await groups.update_group(
                s,
                t1.id,
                g.id,
                GroupInput(name="Sales", pin="500", fallthrough=ActionInput(action="group", group_id=g.id)),
            )
        assert _fields(e.value) == {"fallthrough_group_id": ["A group cannot fall through to itself"]}
    async with core.sessions() as s:
        for ft, fld in (
            (ActionInput(action="user", user_id=foreign_user.id), "fallthrough_user_id"),
            (ActionInput(action="group", group_id=foreign_group.id), "fallthrough_group_id"),
            (ActionInput(action="menu", menu_id=uuid.uuid4()), "fallthrough_menu_id"),
            (ActionInput(action="external", number="12ab"), "fallthrough_number"),
            (ActionInput(action="dance"), "fallthrough_action"),
        ):
            with pytest.raises(ValidationFailed) as e:
                await groups.update_group(s, t1.id, g.id, GroupInput(name="Sales", pin="500", fallthrough=ft))
            assert list(_fields(e.value)) == [fld]
    async with core.sessions() as s:
        assert (await groups.get_group(s, t1.id, g.id)).fallthrough_action is None


async def test_loop_check_runs_after_the_changes_are_flushed(
    core: Core, t1: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = await _group(core, t1)
    seen: list[str | None] = []

    async def refuse(s: object, domain_id: uuid.UUID) -> None:
        assert domain_id == t1.id
        seen.append(await s.scalar(select(CallGroup.name).where(CallGroup.id == g.id)))  # type: ignore[attr-defined]
        raise ValidationFailed.one("action", "loop", path="500 → 500")

    monkeypatch.setattr(routing, "assert_no_loops", refuse)
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await groups.update_group(s, t1.id, g.id, GroupInput(name="Renamed", pin="500"))
        await s.rollback()
    assert seen == ["Renamed"]
    assert [(x.field, x.params) for x in e.value.errors] == [("fallthrough_action", {"path": "500 → 500"})]
    async with core.sessions() as s:
        assert (await groups.get_group(s, t1.id, g.id)).name == "Sales"


async def test_other_domain_gets_not_found(core: Core, t1: Tenant, t2: Tenant) -> None:
    g = await _group(core, t1)
    async with core.sessions() as s:
        with pytest.raises(NotFound):
            await groups.get_group(s, t2.id, g.id)
        with pytest.raises(NotFound):
            await groups.update_group(s, t2.id, g.id, GroupInput(name="Stolen", pin="509"))
        with pytest.raises(NotFound):
            await groups.delete_group(s, t2.id, g.id)
        assert (await groups.list_groups(s, t2.id)).total == 0
    async with core.sessions() as s:
        assert (await groups.get_group(s, t1.id, g.id)).name == "Sales"


async def test_search(core: Core, t1: Tenant) -> None:
    await _group(core, t1)
    await _group(core, t1, name="Support", pin="600")
    async with core.sessions() as s:
        assert [g.name for g in (await groups.list_groups(s, t1.id, "supp")).items] == ["Support"]
        assert [g.name for g in (await groups.list_groups(s, t1.id, "50")).items] == ["Sales"]
        assert [g.name for g in (await groups.list_groups(s, t1.id)).items] == ["Sales", "Support"]


async def test_delete_refused_while_a_rule_or_another_group_uses_it(core: Core, t1: Tenant) -> None:
    u = await _user(core, t1, "101")
    target = await _group(core, t1, members=["101"])
    other = await _group(
        core, t1, name="Support", pin="501", fallthrough=ActionInput(action="group", group_id=target.id)
    )
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await groups.delete_group(s, t1.id, target.id)
        assert list(_fields(e.value)) == ["id"]
        await groups.update_group(s, t1.id, other.id, GroupInput(name="Support", pin="501"))
        n = IncomingNumber(domain_id=t1.id, number="+74951234567")
        s.add(n)
        await s.flush()
        s.add(
            RoutingRule(
                domain_id=t1.id, number_id=n.id, position=0, action="group", target_group_id=target.id
            )
        )
        await s.commit()
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed):
            await groups.delete_group(s, t1.id, target.id)
        await s.rollback()
        for r in await s.scalars(select(RoutingRule)):
            await s.delete(r)
        await s.commit()
    async with core.sessions() as s:
        await groups.delete_group(s, t1.id, target.id)
        await s.commit()
    async with core.sessions() as s:
        assert await s.get(CallGroup, target.id) is None
        assert list(await s.scalars(select(CallGroupMember))) == []
        assert await s.get(User, u.id) is not None


async def test_fallthrough_loops_are_refused(core: Core, t1: Tenant) -> None:
    a = await _group(core, t1)
    b = await _group(
        core, t1, name="Support", pin="501", fallthrough=ActionInput(action="group", group_id=a.id)
    )
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await groups.update_group(
                s,
                t1.id,
                a.id,
                GroupInput(name="Sales", pin="500", fallthrough=ActionInput(action="group", group_id=b.id)),
            )
        await s.rollback()
    assert list(_fields(e.value)) == ["fallthrough_action"]
    assert "500" in str(e.value.errors[0].params["path"]) and "501" in str(e.value.errors[0].params["path"])
    async with core.sessions() as s:
        assert (await groups.get_group(s, t1.id, a.id)).fallthrough_action is None


async def test_fallthrough_to_an_own_number_routed_back_is_a_loop(core: Core, t1: Tenant) -> None:
    a = await _group(core, t1)
    async with core.sessions() as s:
        n = IncomingNumber(domain_id=t1.id, number="+74951234567")
        s.add(n)
        await s.flush()
        s.add(RoutingRule(domain_id=t1.id, number_id=n.id, position=0, action="group", target_group_id=a.id))
        await s.commit()
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await groups.update_group(
                s,
                t1.id,
                a.id,
                GroupInput(
                    name="Sales",
                    pin="500",
                    fallthrough=ActionInput(action="external", number="8 495 123-45-67"),
                ),
            )
        await s.rollback()
    assert list(_fields(e.value)) == ["fallthrough_action"]
    # forwarding to someone else's number is fine
    async with core.sessions() as s:
        await groups.update_group(
            s,
            t1.id,
            a.id,
            GroupInput(
                name="Sales", pin="500", fallthrough=ActionInput(action="external", number="+74951234568")
            ),
        )
        await s.commit()
