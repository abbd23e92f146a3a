"""Call groups («Группы»): an extension that rings its members by a strategy, then falls through."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.errors import FieldError, NotFound, ValidationFailed
from vpbx.pbx import routing
from vpbx.pbx.actions import Action, ActionInput, is_target, validate_action
from vpbx.pbx.users import pin_owner
from vpbx.pbx.validation import N_, Check
from vpbx.store.models import CallGroup, CallGroupMember, User
from vpbx.store.paging import Page, like_pattern, paginate

STRATEGIES = ("simultaneous", "sequential", "cyclic")
MAX_NAME = 64
MAX_MEMBERS = 50
MEMBER_TIMEOUT_S = (5, 300)
OVERALL_TIMEOUT_S = (5, 3600)
HANG_UP = ""  # the fall-through action meaning "nobody answered: hang up"


@dataclass(kw_only=True)
class GroupInput:
    name: str
    pin: str
    strategy: str = "simultaneous"
    member_timeout_s: str | int = 20
    overall_timeout_s: str | int = 60
    members: list[str] = field(default_factory=list)  # user PINs, in ringing order
    fallthrough: ActionInput = field(default_factory=lambda: ActionInput(action=HANG_UP))


@dataclass(frozen=True, slots=True)
class _Checked:
    member_ids: list[uuid.UUID]
    fallthrough: Action | None


async def _members(c: Check, s: AsyncSession, domain_id: uuid.UUID, pins: list[str]) -> list[uuid.UUID]:
    wanted: list[str] = []
    for raw in pins:
        pin = raw.strip()
        if pin and pin not in wanted:
            wanted.append(pin)
    if len(wanted) > MAX_MEMBERS:
        c.add("members", N_("At most {max} members"), max=MAX_MEMBERS)
        return []
    if not wanted:
        return []
    rows = await s.execute(select(User.pin, User.id).where(User.domain_id == domain_id, User.pin.in_(wanted)))
    by_pin = dict(rows.all())
    out: list[uuid.UUID] = []
    for pin in wanted:
        uid = by_pin.get(pin)
        if uid is None:
            c.add("members", N_("Unknown member: {pin}"), pin=pin[:16])
        else:
            out.append(uid)
    return out


async def _validate(
    s: AsyncSession, domain_id: uuid.UUID, d: GroupInput, current: CallGroup | None
) -> tuple[Check, _Checked]:
    c = Check()
    own = current.id if current else None
    d.name = c.text("name", d.name, max_len=MAX_NAME)
    d.pin = c.pin("pin", d.pin)
    c.choice("strategy", d.strategy, STRATEGIES)
    member_s = c.integer(
        "member_timeout_s", d.member_timeout_s, lo=MEMBER_TIMEOUT_S[0], hi=MEMBER_TIMEOUT_S[1]
    )
    overall_s = c.integer(
        "overall_timeout_s", d.overall_timeout_s, lo=OVERALL_TIMEOUT_S[0], hi=OVERALL_TIMEOUT_S[1]
    )
    if not c.has("member_timeout_s") and not c.has("overall_timeout_s") and overall_s < member_s:
        c.add("overall_timeout_s", N_("Must not be less than the ring time of a member"))
    if not c.has("member_timeout_s"):
        d.member_timeout_s = member_s
    if not c.has("overall_timeout_s"):
        d.overall_timeout_s = overall_s
    if not c.has("name"):
        taken = await s.scalar(
            select(CallGroup.id).where(CallGroup.domain_id == domain_id, CallGroup.name == d.name)
        )
        if taken is not None and taken != own:
            c.add("name", N_("A group with this name already exists"))
    if not c.has("pin"):
        owner = await pin_owner(s, domain_id, d.pin)
        if owner is not None and owner[1] != own:
            c.add("pin", N_("This extension is taken by a user or a group"))
    member_ids = await _members(c, s, domain_id, d.members)
    ft: Action | None = None
    if d.fallthrough.action != HANG_UP:
        ft = await validate_action(c, s, domain_id, d.fallthrough, prefix="fallthrough_")
        if ft is not None and ft.action == "group" and own is not None and ft.group_id == own:
            c.add("fallthrough_group_id", N_("A group cannot fall through to itself"))
    return c, _Checked(member_ids=member_ids, fallthrough=ft)


def _apply(g: CallGroup, d: GroupInput, checked: _Checked) -> None:
    g.name, g.pin = d.name, d.pin
    g.strategy = d.strategy
    g.member_timeout_s, g.overall_timeout_s = int(d.member_timeout_s), int(d.overall_timeout_s)
    ft = checked.fallthrough
    g.fallthrough_action = ft.action if ft else None
    g.fallthrough_user_id = ft.user_id if ft else None
    g.fallthrough_group_id = ft.group_id if ft else None
    g.fallthrough_menu_id = ft.menu_id if ft else None
    g.fallthrough_number = ft.number if ft else None
    # keep the rows of members that stay, so the (group, user) key is never deleted and re-inserted
    existing = {m.user_id: m for m in g.members}
    members: list[CallGroupMember] = []
    for pos, uid in enumerate(checked.member_ids):
        m = existing.get(uid) or CallGroupMember(user_id=uid)
        m.position = pos
        members.append(m)
    g.members = members


async def _assert_no_loops(s: AsyncSession, domain_id: uuid.UUID) -> None:
    """The domain-wide loop check, its error shown on the fall-through field of the group form."""
    try:
        await routing.assert_no_loops(s, domain_id)
    except ValidationFailed as e:
        raise ValidationFailed(
            [
                FieldError(
                    "fallthrough_action",
                    N_("This fall-through makes a routing loop: {path}"),
                    {"path": x.params.get("path", "…")},
                )
                for x in e.errors
            ]
        ) from None


async def create_group(s: AsyncSession, domain_id: uuid.UUID, data: GroupInput) -> CallGroup:
    """Create a group; on ``ValidationFailed`` (a rule loop included) the caller rolls the session back."""
    c, checked = await _validate(s, domain_id, data, None)
    c.done()
    g = CallGroup(domain_id=domain_id, members=[])
    _apply(g, data, checked)
    s.add(g)
    await s.flush()
    await _assert_no_loops(s, domain_id)
    return g


async def update_group(
    s: AsyncSession, domain_id: uuid.UUID, group_id: uuid.UUID, data: GroupInput
) -> CallGroup:
    """Update a group; on ``ValidationFailed`` (a rule loop included) the caller rolls the session back."""
    g = await get_group(s, domain_id, group_id)
    c, checked = await _validate(s, domain_id, data, g)
    c.done()
    _apply(g, data, checked)
    await s.flush()
    await _assert_no_loops(s, domain_id)
    return g


async def delete_group(s: AsyncSession, domain_id: uuid.UUID, group_id: uuid.UUID) -> None:
    g = await get_group(s, domain_id, group_id)
    if await is_target(s, domain_id, "group", g.id):
        raise ValidationFailed.one(
            "id",
            N_("The group is a target of a routing rule or another group's fall-through; change it first"),
        )
    await s.delete(g)
    await s.flush()


async def get_group(s: AsyncSession, domain_id: uuid.UUID, group_id: uuid.UUID) -> CallGroup:
    g: CallGroup | None = await s.scalar(
        select(CallGroup).where(CallGroup.domain_id == domain_id, CallGroup.id == group_id)
    )
    if g is None:
        raise NotFound("group", group_id)
    return g


async def member_pins(s: AsyncSession, domain_id: uuid.UUID, g: CallGroup) -> list[str]:
    """The members' extensions in ringing order."""
    ids = [m.user_id for m in g.members]
    if not ids:
        return []
    rows = await s.execute(select(User.id, User.pin).where(User.domain_id == domain_id, User.id.in_(ids)))
    pins = dict(rows.all())
    return [pins[uid] for uid in ids if uid in pins]


def fallthrough_of(g: CallGroup) -> ActionInput:
    return ActionInput(
        action=g.fallthrough_action or HANG_UP,
        user_id=g.fallthrough_user_id,
        group_id=g.fallthrough_group_id,
        menu_id=g.fallthrough_menu_id,
        number=g.fallthrough_number or "",
    )


async def list_groups(s: AsyncSession, domain_id: uuid.UUID, q: str = "", page: int = 1) -> Page[CallGroup]:
    stmt = select(CallGroup).where(CallGroup.domain_id == domain_id).order_by(CallGroup.pin)
    if q.strip():
        pat = like_pattern(q.strip())
        stmt = stmt.where(or_(CallGroup.name.ilike(pat, escape="\\"), CallGroup.pin.ilike(pat, escape="\\")))
    return await paginate(s, stmt, page)


async def all_groups(s: AsyncSession, domain_id: uuid.UUID) -> list[CallGroup]:
    stmt = select(CallGroup).where(CallGroup.domain_id == domain_id).order_by(CallGroup.pin)
    return list((await s.scalars(stmt)).all())
