"""The call engine's in-memory view of the directory: active domains, their users and SIP credentials.

One query loads it; it reloads (one query again) whenever the configuration version moves, i.e. after any
committed change to users or domains (``vpbx.store.changes``). Lookups never touch the database, so a
REGISTER costs no query and a flood of unknown users cannot load the database. A restart warms it once,
before the first phone re-registers (telephony.md §9.2 rule 6).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from vpbx.logs import get_logger
from vpbx.sip.auth import StoredCredentials
from vpbx.store.changes import ConfigVersion
from vpbx.store.models import Domain, DomainId, User

log = get_logger("vpbx.pbx.directory")


@dataclass(frozen=True, slots=True)
class DomainInfo:
    id: DomainId
    name: str
    channel_limit: int
    timezone: str
    record_calls: bool = False  # record every call of the domain (telephony.md §3.10)
    recording_retention_days: int = 90
    moh_prompt_id: str | None = None  # the domain's music on hold (None: the platform tone)


@dataclass(frozen=True, slots=True)
class DirectoryUser:
    id: uuid.UUID
    domain_id: DomainId
    name: str  # the login: <name>@<domain> in events
    display_name: str
    pin: str
    credentials: StoredCredentials
    record_calls: bool = False  # record this user's calls
    dnd: bool = False  # Do Not Disturb: calls to the user get its busy treatment


@dataclass(frozen=True, slots=True)
class _Snapshot:
    version: int
    domains: dict[str, DomainInfo]  # by name
    by_login: dict[tuple[str, str], DirectoryUser]  # (domain name, SIP login)
    by_pin: dict[tuple[DomainId, str], DirectoryUser]


class SipDirectory:
    """``vpbx.sip.auth.Credentials`` and the tenant lookups of the SIP node, from one snapshot."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], version: ConfigVersion) -> None:
        self._sessions = sessions
        self._version = version
        self._snap: _Snapshot | None = None
        self._loading: asyncio.Task[_Snapshot] | None = None

    async def _current(self) -> _Snapshot:
        snap = self._snap
        if snap is not None and snap.version == self._version.value:
            return snap
        if self._loading is None:
            self._loading = asyncio.create_task(self._load(), name="sip-directory-load")
        task = self._loading
        try:
            snap = await asyncio.shield(task)
        finally:
            if task.done() and self._loading is task:
                self._loading = None
        self._snap = snap
        return snap

    async def _load(self) -> _Snapshot:
        version = self._version.value  # read first: a change during the load triggers another one
        started = time.perf_counter()
        async with self._sessions() as s:
            rows = (
                await s.execute(
                    select(
                        User.id,
                        User.domain_id,
                        User.name,
                        User.display_name,
                        User.pin,
                        User.sip_login,
                        User.ha1_md5,
                        User.ha1_sha256,
                        User.record_calls,
                        User.dnd,
                        Domain.name,
                        Domain.channel_limit,
                        Domain.timezone,
                    )
                    .join(Domain, Domain.id == User.domain_id)
                    .where(Domain.status == "active")
                )
            ).all()
            domain_rows = (
                await s.execute(
                    select(
                        Domain.id,
                        Domain.name,
                        Domain.channel_limit,
                        Domain.timezone,
                        Domain.record_calls,
                        Domain.recording_retention_days,
                        Domain.moh_prompt_id,
                    ).where(Domain.status == "active")
                )
            ).all()
        domains = {
            d.name: DomainInfo(
                DomainId(d.id),
                d.name,
                d.channel_limit,
                d.timezone,
                record_calls=bool(d.record_calls),
                recording_retention_days=int(d.recording_retention_days),
                moh_prompt_id=d.moh_prompt_id,
            )
            for d in domain_rows
        }
        by_login: dict[tuple[str, str], DirectoryUser] = {}
        by_pin: dict[tuple[DomainId, str], DirectoryUser] = {}
        for r in rows:
            creds = StoredCredentials(
                username=r.sip_login,
                ha1_md5=r.ha1_md5,
                ha1_sha256=r.ha1_sha256,
                extension=r.pin,
                user_id=r.id,
                tenant_id=r.domain_id,
            )
            user = DirectoryUser(
                r.id,
                DomainId(r.domain_id),
                r.name,
                r.display_name,
                r.pin,
                creds,
                record_calls=bool(r.record_calls),
                dnd=bool(r.dnd),
            )
            by_login[(r[10], r.sip_login)] = user
            by_pin[(user.domain_id, r.pin)] = user
        log.info(
            "directory.loaded",
            domains=len(domains),
            users=len(by_login),
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return _Snapshot(version, domains, by_login, by_pin)

    async def warm(self) -> None:
        await self._current()

    async def find(self, realm: str, username: str) -> StoredCredentials | None:
        user = (await self._current()).by_login.get((realm, username))
        return user.credentials if user is not None else None

    async def domain(self, name: str) -> DomainInfo | None:
        return (await self._current()).domains.get(name.lower())

    async def user_by_pin(self, domain_id: DomainId, pin: str) -> DirectoryUser | None:
        return (await self._current()).by_pin.get((domain_id, pin))

    async def user_by_login(self, domain: str, sip_login: str) -> DirectoryUser | None:
        return (await self._current()).by_login.get((domain.lower(), sip_login))
