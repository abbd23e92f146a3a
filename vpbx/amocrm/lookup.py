"""Who is calling: the caller lookup of the ИМК and the phone cache (amocrm.md §5.3, §2.4, §5.8).

A caller's number becomes its match key (``vpbx.crm.phone.match_key``: the 10 national digits of a ``+7``
number), the key of ``amo_phone_cache`` rows and the ``query`` of E4.

- **Cache first.** A positive row routes at once; when older than ``POSITIVE_FRESH_S`` it is re-read in the
  background lane (stale-while-revalidate), so a lost webhook costs at most one stale decision. A negative row
  (nobody has the number) answers "miss" for ``NEGATIVE_TTL_S``.
- **Then E4** in the realtime lane, bounded by the binding's lookup budget. amoCRM's ``query`` is a full-text
  search over every field, so the answer is post-filtered on the PHONE values: «Склад» with «перезвонить
  9161234567 после 18» in a comment is not the caller. Several real matches → the greatest ``updated_at`` wins
  (logged as a warning).
- **Failures.** A timeout or an error makes the lookup "unknown" (the call follows the rules). After
  ``FAILURES_TO_CACHE_ONLY`` realtime failures in a row the binding is cache-only for ``CACHE_ONLY_S``: later
  calls answer from the cache at once, without waiting for amoCRM.
- **Webhooks** (E18, ``vpbx.amocrm.hooks``) only hint: the contact's rows are dropped and the contact is
  re-read with E5 in the background.

The failure counters live in this process (one process serves an account's traffic, §2.5).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from vpbx.amocrm.api import AmoClients, Json
from vpbx.amocrm.errors import AmoError, AmoSkipped
from vpbx.amocrm.lease import background_allowed
from vpbx.amocrm.per_core import PerCore
from vpbx.clock import Clock
from vpbx.crm.connector import Binding
from vpbx.crm.phone import match_key
from vpbx.logs import get_logger
from vpbx.store.models import AmoPhoneCache, CrmBinding

if TYPE_CHECKING:
    from vpbx.app import Core

log = get_logger("vpbx.amocrm.lookup")

POSITIVE_FRESH_S = 600.0  # older positive rows still route, and are re-read in the background
NEGATIVE_TTL_S = 60.0
FAILURES_TO_CACHE_ONLY = 3
CACHE_ONLY_S = 60.0
BACKGROUND_TIMEOUT_S = 30.0  # a background read (revalidation, webhook re-read) never waits longer
MAX_BACKGROUND = 64  # background reads in flight per process; more are dropped (the next call retries)
PHONE_CODE = "PHONE"

Outcome = Literal["hit", "miss", "unknown"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Contact:
    """The matched contact, as routing and the call's context need it."""

    id: int
    name: str
    responsible_user_id: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class LookupResult:
    """``outcome`` (hit, miss, unknown) and where it came from: cache, api, cache-only, timeout, error,
    skipped (the limiter had no token in time), invalid (no usable number)."""

    outcome: Outcome
    contact: Contact | None = None
    source: str = ""


# --- pure: the post-filter (§2.4) ------------------------------------------------------------------------


def phone_values(contact: Json) -> list[str]:
    """The PHONE values of an amoCRM contact (field_code ``PHONE``; other fields never count)."""
    values: list[str] = []
    for field in contact.get("custom_fields_values") or ():
        if not isinstance(field, dict) or field.get("field_code") != PHONE_CODE:
            continue
        for item in field.get("values") or ():
            value = item.get("value") if isinstance(item, dict) else None
            if isinstance(value, str | int):
                values.append(str(value))
    return values


def phone_keys(contact: Json) -> set[str]:
    """The match keys of the contact's phones."""
    return {key for value in phone_values(contact) if (key := match_key(value)) is not None}


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def contact_of(raw: Json) -> Contact | None:
    ident = _int(raw.get("id"))
    if ident is None:
        return None
    name = raw.get("name")
    return Contact(
        id=ident,
        name=name.strip()[:255] if isinstance(name, str) else "",
        responsible_user_id=_int(raw.get("responsible_user_id")),
    )


def pick(contacts: Iterable[Json], key: str) -> Json | None:
    """The contact whose PHONE matches ``key``; of several, the most recently updated (a warning)."""
    matching = [c for c in contacts if isinstance(c, dict) and key in phone_keys(c)]
    if not matching:
        return None
    if len(matching) > 1:
        log.warning(
            "amocrm.lookup_several", phone_key=key[-4:], contacts=[_int(c.get("id")) for c in matching][:10]
        )
    return max(matching, key=lambda c: (_int(c.get("updated_at")) or 0, _int(c.get("id")) or 0))


# --- the lookup -----------------------------------------------------------------------------------------


class PhoneLookup:
    """The phone cache and the E4 lookup of every binding in this process."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], clients: AmoClients, clock: Clock) -> None:
        self.sessions = sessions
        self.clients = clients
        self.clock = clock
        self._failures: dict[uuid.UUID, int] = {}
        self._cache_only_until: dict[uuid.UUID, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._revalidating: set[tuple[uuid.UUID, str]] = set()

    # -- realtime (the routing hook) --

    def cache_only(self, binding_id: uuid.UUID) -> bool:
        until = self._cache_only_until.get(binding_id)
        return until is not None and self.clock.monotonic() < until

    async def realtime(self, b: Binding, key: str, budget_s: float, *, counts: bool = True) -> LookupResult:
        """The caller behind ``key`` within ``budget_s`` seconds; never raises. ``counts``: its outcome counts
        toward the binding's cache-only switch (the routing's lookups); the pop-ups' only obey the switch, so
        §5.8's "after 3 failures" stays about the calls' routing."""
        cached = await self.cached(b.id, key)
        if cached is not None:
            return cached
        if self.cache_only(b.id):
            return LookupResult(outcome="unknown", source="cache-only")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(budget_s):
                found = await self.clients.for_account(b.account_id).search_contacts(
                    key, lane="realtime", deadline=loop.time() + budget_s
                )
        except AmoSkipped:
            log.info("amocrm.lookup_skipped", binding=str(b.id))
            return LookupResult(outcome="unknown", source="skipped")
        except TimeoutError:
            if counts:
                self._failed(b, "timeout")
            return LookupResult(outcome="unknown", source="timeout")
        except (AmoError, OSError) as e:
            if counts:
                self._failed(b, type(e).__name__)
            return LookupResult(outcome="unknown", source="error")
        if counts:
            self._failures.pop(b.id, None)
        return await self._store_search(b, key, found)

    def _failed(self, b: Binding, why: str) -> None:
        count = self._failures.get(b.id, 0) + 1
        if count >= FAILURES_TO_CACHE_ONLY:
            self._failures.pop(b.id, None)
            self._cache_only_until[b.id] = self.clock.monotonic() + CACHE_ONLY_S
            log.warning("amocrm.lookup_cache_only", binding=str(b.id), seconds=CACHE_ONLY_S, why=why)
        else:
            self._failures[b.id] = count
            log.info("amocrm.lookup_failed", binding=str(b.id), failures=count, why=why)

    async def cached(
        self, binding_id: uuid.UUID, key: str, *, revalidate: bool = True
    ) -> LookupResult | None:
        """The cache's answer, or None when it has none that counts (a miss goes to amoCRM)."""
        async with self.sessions() as s:
            row = await s.get(AmoPhoneCache, (binding_id, key))
        if row is None:
            return None
        age = (self.clock.now() - row.cached_at).total_seconds()
        if row.negative or row.contact_id is None:
            return LookupResult(outcome="miss", source="cache") if age < NEGATIVE_TTL_S else None
        if age >= POSITIVE_FRESH_S and revalidate:
            self._revalidate(binding_id, key)
        contact = Contact(id=row.contact_id, name=row.name, responsible_user_id=row.responsible_user_id)
        return LookupResult(outcome="hit", contact=contact, source="cache")

    async def peek(self, b: Binding, key: str, budget_s: float) -> LookupResult:
        """What ``realtime`` would answer, writing nothing (the dry run, §3.4): the cache without its
        revalidation, else E4 (a read) without storing the answer; failures do not count for cache-only."""
        cached = await self.cached(b.id, key, revalidate=False)
        if cached is not None:
            return cached
        if self.cache_only(b.id):
            return LookupResult(outcome="unknown", source="cache-only")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(budget_s):
                found = await self.clients.for_account(b.account_id).search_contacts(
                    key, lane="realtime", deadline=loop.time() + budget_s
                )
        except AmoSkipped:
            return LookupResult(outcome="unknown", source="skipped")
        except TimeoutError:
            return LookupResult(outcome="unknown", source="timeout")
        except (AmoError, OSError):
            return LookupResult(outcome="unknown", source="error")
        chosen = pick(found, key)
        contact = contact_of(chosen) if chosen is not None else None
        if contact is None:
            return LookupResult(outcome="miss", source="api")
        return LookupResult(outcome="hit", contact=contact, source="api")

    # -- background --

    async def lookup(self, b: Binding, key: str) -> LookupResult:
        """Cache, then E4 in the background lane (no routing deadline): for the jobs' re-check (§5.4)."""
        cached = await self.cached(b.id, key)
        if cached is not None:
            return cached
        async with asyncio.timeout(BACKGROUND_TIMEOUT_S):
            found = await self.clients.for_account(b.account_id).search_contacts(key, lane="background")
        return await self._store_search(b, key, found)

    def _revalidate(self, binding_id: uuid.UUID, key: str) -> None:
        if (binding_id, key) in self._revalidating:
            return
        self._revalidating.add((binding_id, key))

        async def run() -> None:
            try:
                b = await self._binding(binding_id)
                if b is None or not background_allowed(self.clients, b.account_id):
                    return  # another process owns the account's background reads (lease.py)
                async with asyncio.timeout(BACKGROUND_TIMEOUT_S):
                    found = await self.clients.for_account(b.account_id).search_contacts(
                        key, lane="background"
                    )
                await self._store_search(b, key, found)
            finally:
                self._revalidating.discard((binding_id, key))

        self.spawn(run(), "amo-lookup-revalidate")

    async def refresh_contact(self, b: Binding, contact_id: int) -> None:
        """A webhook's hint: forget the contact's rows and read it again (E5); its phones are cached anew."""
        await self.forget_contact(b.id, contact_id)
        async with asyncio.timeout(BACKGROUND_TIMEOUT_S):
            raw = await self.clients.for_account(b.account_id).get_contact(contact_id, lane="background")
        if raw is None:
            return  # deleted: nothing to cache
        contact = contact_of(raw)
        if contact is None:
            return
        async with self.sessions() as s:
            for key in phone_keys(raw):
                row = await s.get(AmoPhoneCache, (b.id, key))
                if row is not None and not row.negative and row.contact_id not in (None, contact.id):
                    await s.delete(row)  # another contact has the number too: E4 decides next time
                    continue
                await self._put(s, b.id, key, contact)
            await _commit(s)

    async def remember(self, binding_id: uuid.UUID, key: str, contact: Contact) -> None:
        """A contact created or adopted by a job goes into the cache at once (§5.5 step 1)."""
        async with self.sessions() as s:
            await self._put(s, binding_id, key, contact)
            await _commit(s)

    async def forget_contact(self, binding_id: uuid.UUID, contact_id: int) -> None:
        async with self.sessions() as s:
            await s.execute(
                delete(AmoPhoneCache).where(
                    AmoPhoneCache.binding_id == binding_id, AmoPhoneCache.contact_id == contact_id
                )
            )
            await s.commit()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """A background read; failures are logged, never raised; bounded in number."""
        if len(self._tasks) >= MAX_BACKGROUND:
            coro.close()
            log.warning("amocrm.lookup_background_full", task=name)
            return

        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a background read must never take the process down
                log.warning("amocrm.lookup_background_failed", task=name, error=type(e).__name__)

        task = asyncio.create_task(guarded(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the background reads in flight (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- storage --

    async def _binding(self, binding_id: uuid.UUID) -> Binding | None:
        async with self.sessions() as s:
            row = await s.get(CrmBinding, binding_id)
        return Binding.of(row) if row is not None and row.status == "active" else None

    async def _store_search(self, b: Binding, key: str, found: list[Json]) -> LookupResult:
        chosen = pick(found, key)
        contact = contact_of(chosen) if chosen is not None else None
        async with self.sessions() as s:
            await self._put(s, b.id, key, contact)
            await _commit(s)
        if contact is None:
            return LookupResult(outcome="miss", source="api")
        return LookupResult(outcome="hit", contact=contact, source="api")

    async def _put(self, s: AsyncSession, binding_id: uuid.UUID, key: str, contact: Contact | None) -> None:
        row = await s.get(AmoPhoneCache, (binding_id, key))
        if row is None:
            row = AmoPhoneCache(binding_id=binding_id, phone_key=key)
            s.add(row)
        row.contact_id = contact.id if contact else None
        row.name = contact.name if contact else ""
        row.responsible_user_id = contact.responsible_user_id if contact else None
        row.negative = contact is None
        row.cached_at = self.clock.now()


async def _commit(s: AsyncSession) -> None:
    """Commit; a row another task inserted meanwhile wins (both wrote what amoCRM said)."""
    try:
        await s.commit()
    except IntegrityError:
        await s.rollback()


async def cache_rows(s: AsyncSession, binding_id: uuid.UUID) -> list[AmoPhoneCache]:
    """A binding's cache rows (tests, the health panel)."""
    return list(await s.scalars(select(AmoPhoneCache).where(AmoPhoneCache.binding_id == binding_id)))


# --- one per process ---------------------------------------------------------------------------------------

# The routing hook and the pop-ups share one lookup per process (as they share the client pool): one set of
# failure counters and cache-only switches per binding, so amoCRM failing for the calls' routing makes the
# pop-ups' lookups cache-only too.
_SHARED: PerCore[PhoneLookup] = PerCore()


def shared_lookup(core: Core, clients: AmoClients) -> PhoneLookup:
    """The process's ``PhoneLookup`` for ``core``, made on first use over ``clients`` (the runtime's shared
    client pool); stopped and dropped by ``close_shared_lookup``."""
    return _SHARED.get(core, lambda: PhoneLookup(core.sessions, clients, core.clock))


async def close_shared_lookup(core: Core) -> None:
    lookup = _SHARED.pop(core)
    if lookup is not None:
        await lookup.stop()


class SharedLookupPart:
    """The runtime part that stops the shared lookup's background reads and drops it on stop."""

    def __init__(self, core: Core) -> None:
        self.core = core

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await close_shared_lookup(self.core)
