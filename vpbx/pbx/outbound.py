"""Calls from users to numbers outside the PBX: is the number one, may this user call it, with what caller ID.

``OutboundRouter.decide`` normalises what the phone dialled (Russian spellings such as ``8 495 …``, ``+7…``,
``7…``; ``vpbx.pbx.numbering``), classifies the number and checks it against the user's rights
(international, long distance, mobile: issue core-3 item 3), and names the caller ID: the domain's first line
unless the trunk says otherwise. Long distance means a Russian fixed-line number outside the area of the
domain's own lines (ours: a domain has no separate "home region" setting; its numbers tell it).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import phonenumbers
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from vpbx.pbx.numbering import to_e164
from vpbx.store.models import IncomingNumber, User

INTERNATIONAL = "international"
LONG_DISTANCE = "long_distance"
MOBILE = "mobile"
LOCAL = "local"
AREA_DIGITS = 3  # Russian area codes: 495, 812, 343… (the first digits of the national number)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundDecision:
    number: str  # E.164
    kind: str  # international, long_distance, mobile, local
    allowed: bool
    caller_id: str  # E.164 of the domain's first line, or "" when it has none


def classify(e164: str, home_areas: frozenset[str]) -> str:
    """The kind of a valid E.164 number as seen from a domain whose lines are in ``home_areas``."""
    num = phonenumbers.parse(e164, None)
    if num.country_code != 7:
        return INTERNATIONAL
    kind = phonenumbers.number_type(num)
    if kind in (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE):
        national = str(num.national_number)
        if national.startswith("9"):
            return MOBILE
    area = str(num.national_number)[:AREA_DIGITS]
    if home_areas and area not in home_areas:
        return LONG_DISTANCE
    return LOCAL


class OutboundRouter:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def decide(
        self, domain_id: uuid.UUID, user_id: uuid.UUID | None, dialled: str
    ) -> OutboundDecision | None:
        """None when ``dialled`` is no valid outside number (then it was an unknown extension)."""
        e164 = to_e164(dialled)
        if e164 is None:
            return None
        async with self._sessions() as s:
            lines = list(
                await s.scalars(
                    select(IncomingNumber.number)
                    .where(IncomingNumber.domain_id == domain_id)
                    .order_by(IncomingNumber.created_at, IncomingNumber.number)
                )
            )
            user = await s.get(User, user_id) if user_id is not None else None
        areas = frozenset(
            str(phonenumbers.parse(n, None).national_number)[:AREA_DIGITS]
            for n in lines
            if n.startswith("+7")
        )
        kind = classify(e164, areas)
        allowed = user is not None and user.domain_id == domain_id and _may(user, kind)
        return OutboundDecision(number=e164, kind=kind, allowed=allowed, caller_id=lines[0] if lines else "")


def _may(user: User, kind: str) -> bool:
    if kind == INTERNATIONAL:
        return user.allow_international
    if kind == LONG_DISTANCE:
        return user.allow_long_distance
    if kind == MOBILE:
        return user.allow_mobile
    return True
