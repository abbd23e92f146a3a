"""Do Not Disturb («Не беспокоить»): a user's switch that turns every call to them into a busy one.

A call to a user on DND rings none of their phones nor mobile numbers: it gets the user's busy treatment
(voicemail on busy, else 486 Busy Here or the next fall-through step); a call group skips them. Calls from the
user are unaffected. The switch is flipped in the cabinet or from the user's own phone with the feature codes
below (the Asterisk/FreePBX habit). The call engine reads it from its directory snapshot, which reloads after
the commit (``vpbx.store.changes``).
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.errors import NotFound
from vpbx.store.models import User

DND_ON_CODE = "*78"
DND_OFF_CODE = "*79"
FEATURE_CODES = {DND_ON_CODE: True, DND_OFF_CODE: False}  # dialled code → DND wanted
# The answer to a feature code: 480 with a reason phrase a softphone shows ("Call failed: DND on"); the call
# is never answered, so no media, no history record, no channel used.
FEATURE_REPLY_CODE = 480
FEATURE_REPLY_PHRASE = {True: "DND on", False: "DND off"}
END_REASON = "dnd"  # CallEvent.extra["end_reason"] of a call refused because its callee is on DND


async def set_dnd(
    s: AsyncSession, domain_id: uuid.UUID, user_id: uuid.UUID, on: bool, *, now: dt.datetime
) -> User:
    """Switch the user's DND (``dnd_since`` keeps the first switch-on); not committed. NotFound for a user
    of another domain."""
    user = await s.scalar(select(User).where(User.id == user_id, User.domain_id == domain_id))
    if user is None:
        raise NotFound("user")
    if on and not user.dnd:
        user.dnd, user.dnd_since = True, now
    elif not on and user.dnd:
        user.dnd, user.dnd_since = False, None
    return user
