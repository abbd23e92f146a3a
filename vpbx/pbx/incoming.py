"""Where a call to one of the domains' numbers goes: the routing rules as plain facts for the B2BUA.

``IncomingRouter.decide`` finds the line (numbers are unique across tenants), takes the first rule that holds
at that moment in the domain's time zone (``vpbx.pbx.routing.resolve``) and returns a ``Decision``: frozen
values, no ORM objects, so the call engine never touches the database session. The routing hook of issue
core-3 (get_number_info, amoCRM) will sit in front of this.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from vpbx.errors import NotFound
from vpbx.logs import get_logger
from vpbx.pbx import routing
from vpbx.store.models import CallGroup, Domain, DomainId, IncomingNumber, User

log = get_logger("vpbx.pbx.incoming")


@dataclass(frozen=True, slots=True, kw_only=True)
class Person:
    """A user a call may ring: the extension and what the events and the mobile forwarding need."""

    user_id: uuid.UUID
    login: str
    pin: str
    display_name: str
    contact_numbers: tuple[str, ...] = ()
    mobile_delay_s: int = 15


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """What to do with a call to ``line`` of ``domain``."""

    domain_id: DomainId
    domain: str
    line: str  # E.164
    action: str  # user, group, menu, voicemail, external, reject; "none" when no rule holds
    people: tuple[Person, ...] = ()  # user: one; group: the members in order
    group_id: uuid.UUID | None = None
    strategy: str = "simultaneous"
    member_timeout_s: int = 20
    overall_timeout_s: int = 60
    number: str | None = None  # external: where to
    menu_id: uuid.UUID | None = None  # menu: which
    user_id: uuid.UUID | None = None  # voicemail: the user whose box takes the call (else group_id's box)
    rule_id: uuid.UUID | None = None
    fallthrough: Decision | None = None  # a group's: where the call goes when nobody answers (None: hang up)
    ring_s: float | None = (
        None  # how long the plan rings at most (None: a user's no-answer time, a group's own)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingQuery:
    """What a routing hook is told about a call on a line (integration-api.md §5.3), before the rules run."""

    session_id: str
    domain_id: DomainId
    domain: str
    from_number: str  # E.164 digits, "" when withheld
    request_number: str  # the line, E.164 digits


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingAnswer:
    """A hook's answer: where to route (a user's or group's PIN) and the caller's name for the phones.

    ``overflow_after_s`` (amoCRM's ИМК, amocrm.md F9.5): ring the PIN that long, then go on with the rules'
    decision for the line; None (get_number_info) rings the PIN as the rules would, and never the rules.
    """

    pin: str = ""
    display_name: str = ""
    overflow_after_s: float | None = None


class IncomingRouter:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def decide(self, line_e164: str, when: dt.datetime) -> Decision | None:
        """The decision for a call to ``line_e164`` at ``when`` (UTC); None when no domain has that number."""
        async with self._sessions() as s:
            number = await s.scalar(select(IncomingNumber).where(IncomingNumber.number == line_e164))
            if number is None:
                return None
            domain = await s.get(Domain, number.domain_id)
            if domain is None or domain.status != "active":
                return None
            make = _maker(domain, line_e164)

            try:
                found = await routing.resolve(s, domain.id, line_e164, when)
            except NotFound:
                return None
            if found is None:
                return make("none")
            action = found.action
            if action.action == "user" and action.user_id is not None:
                user = await s.get(User, action.user_id)
                people = (_person(user),) if user is not None and user.domain_id == domain.id else ()
                return make("user", people=people, rule_id=found.rule.id)
            if action.action == "group" and action.group_id is not None:
                group = await s.get(CallGroup, action.group_id)
                if group is None or group.domain_id != domain.id:
                    return make("none", rule_id=found.rule.id)
                return await _group(s, make, group, rule_id=found.rule.id)
            if action.action == "voicemail":
                return make(
                    "voicemail", user_id=action.user_id, group_id=action.group_id, rule_id=found.rule.id
                )
            return make(action.action, number=action.number, menu_id=action.menu_id, rule_id=found.rule.id)

    async def by_extension(self, domain_id: uuid.UUID, line_e164: str, pin: str) -> Decision | None:
        """A routing hook's target: the domain's user or group with this PIN, as a decision; None if none."""
        async with self._sessions() as s:
            domain = await s.get(Domain, domain_id)
            if domain is None:
                return None
            make = _maker(domain, line_e164)

            user = await s.scalar(select(User).where(User.domain_id == domain_id, User.pin == pin))
            if user is not None:
                return make("user", people=(_person(user),))
            group = await s.scalar(
                select(CallGroup).where(CallGroup.domain_id == domain_id, CallGroup.pin == pin)
            )
            return await _group(s, make, group) if group is not None else None

    async def by_group(self, domain_id: uuid.UUID, line_e164: str, group_id: uuid.UUID) -> Decision | None:
        """A menu key's group, as a decision; None if the group is gone or another domain's."""
        async with self._sessions() as s:
            group = await s.get(CallGroup, group_id)
            if group is None or group.domain_id != domain_id:
                return None
            domain = await s.get(Domain, domain_id)
            assert domain is not None
            make = _maker(domain, line_e164)

            return await _group(s, make, group)


MAX_FALLTHROUGH = 4  # groups falling through to groups: loops are refused on save, and this bounds the rest


async def _group(
    s: AsyncSession, make: Callable[..., Decision], group: CallGroup, depth: int = 0, **more: Any
) -> Decision:
    members = []
    for m in group.members:
        user = await s.get(User, m.user_id)
        if user is not None:
            members.append(_person(user))
    return make(
        "group",
        people=tuple(members),
        group_id=group.id,
        strategy=group.strategy,
        member_timeout_s=group.member_timeout_s,
        overall_timeout_s=group.overall_timeout_s,
        fallthrough=await _fallthrough(s, make, group, depth),
        **more,
    )


async def _fallthrough(
    s: AsyncSession, make: Callable[..., Decision], group: CallGroup, depth: int
) -> Decision | None:
    action = group.fallthrough_action
    if not action or depth >= MAX_FALLTHROUGH:  # NULL: hang up
        return None
    if action == "user" and group.fallthrough_user_id is not None:
        user = await s.get(User, group.fallthrough_user_id)
        return make("user", people=(_person(user),)) if user is not None else None
    if action == "group" and group.fallthrough_group_id is not None:
        target = await s.get(CallGroup, group.fallthrough_group_id)
        if target is None or target.domain_id != group.domain_id:
            return None
        return await _group(s, make, target, depth + 1)
    if action == "voicemail":
        return make("voicemail", user_id=group.fallthrough_user_id, group_id=group.fallthrough_group_id)
    return make(action, number=group.fallthrough_number)


def _maker(domain: Domain, line_e164: str) -> Callable[..., Decision]:
    """Decisions about calls to ``line_e164`` of ``domain``: ``make(action, **fields)``."""

    def make(action: str, **more: Any) -> Decision:
        return Decision(
            domain_id=DomainId(domain.id), domain=domain.name, line=line_e164, action=action, **more
        )

    return make


def _person(user: User) -> Person:
    return Person(
        user_id=user.id,
        login=user.name,
        pin=user.pin,
        display_name=user.display_name,
        contact_numbers=tuple(c.number for c in user.contact_numbers),
        mobile_delay_s=user.mobile_delay_s,
    )
