"""Configuration version: bumped after every commit that changed directory rows the call engine caches.

The SIP node keeps credentials and domains in memory (a database round trip per REGISTER would cost more
than the whole SIP work); it drops those caches when this number moves. One process today; with several
nodes the same bump travels on the bus (telephony.md §9.2 rule 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, UOWTransaction

from vpbx.store.models import Domain, Trunk, User

WATCHED: tuple[type[Any], ...] = (Domain, User, Trunk)  # trunks: the trunk monitor reloads
_FLAG = "vpbx.config_changed"


@dataclass
class ConfigVersion:
    value: int = 0


def tracked_session_class(version: ConfigVersion) -> type[Session]:
    """A ``Session`` subclass for one engine whose commits bump ``version`` when watched rows changed."""

    class TrackedSession(Session):
        pass

    def after_flush(session: Session, _ctx: UOWTransaction) -> None:
        if any(isinstance(o, WATCHED) for o in chain(session.new, session.dirty, session.deleted)):
            session.info[_FLAG] = True

    def after_commit(session: Session) -> None:
        if session.info.pop(_FLAG, False):
            version.value += 1

    def after_rollback(session: Session) -> None:
        session.info.pop(_FLAG, None)

    event.listen(TrackedSession, "after_flush", after_flush)
    event.listen(TrackedSession, "after_commit", after_commit)
    event.listen(TrackedSession, "after_rollback", after_rollback)
    return TrackedSession
