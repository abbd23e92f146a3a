"""Several ``vpbx serve`` processes on one PostgreSQL (amocrm.md §2.5; the call nodes behind Kamailio of
telephony.md share the database): each amoCRM account is assigned to one process by a lease row.

- ``AmoAccountLease`` (one row per account with an active binding): taken and renewed by a compare-and-swap
  UPDATE (``vpbx.store.leases``), ``LEASE_S`` = 15 s renewed every ``RENEW_S`` = 5 s, like the
  autoinformer's dispatcher lease. The owner runs the account's job queue (``JobRunner``) and its background
  reads (the phone cache's revalidation, webhook re-reads); a process that does not own the account never
  runs them. A process trusts its lease only ``LEASE_S - RENEW_S`` after its last renewal (monotonic), so it
  stops acting before the row can expire for the others; after a ``kill -9`` another process takes the row
  once it has expired. Jobs keep their own lease and ledger besides, so nothing runs twice in a hand-over.
- The request budget (ours): routing lookups and the widget's reads happen on whatever process took the call
  or the request, so every process has a limiter for the account, and their rates add up to at most
  ``amocrm.rps``. Each live process keeps a heartbeat row (``AmoNode``); with ``k`` other live processes, a
  non-owner gets ``f = min(NON_OWNER_RPS, floor((rps - 1) / k))`` and the owner ``rps - k·f`` (at least 1).
  A new process takes no share until its heartbeat has been seen for ``SETTLE_S`` (the owners re-count the
  processes at every renewal, so they have made room by then); a process that leaves only makes the others
  more careful until its heartbeat expires. Without a lease part (a CLI tool, a unit test) a pool's limiter
  keeps the whole ``amocrm.rps``.

On SQLite there is one process: it owns every account and keeps the whole rate.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.background import BackgroundLoop
from vpbx.logs import get_logger
from vpbx.store.leases import release_lease, take_leases
from vpbx.store.models import AmoAccountLease, AmoNode, CrmBinding

if TYPE_CHECKING:
    from vpbx.app import Core

log = get_logger("vpbx.amocrm.lease")

LEASE_S = 15.0
RENEW_S = 5.0
NON_OWNER_RPS = 1.0  # a non-owner's share of amocrm.rps for its realtime lookups and widget reads (ours)
SETTLE_S = RENEW_S + 1.0  # a new process's wait before it takes a share: every owner has re-counted by then
RELEASE_TIMEOUT_S = 2.0  # a stop does not wait longer for the database to take the leases back
FORGET_NODES_AFTER = dt.timedelta(hours=1)  # heartbeat rows of processes gone this long are deleted


def process_owner(node_id: str) -> str:
    """This process's name in the lease rows: the node id (the call history's) and the process id."""
    return f"{node_id}:{os.getpid()}"


def rate_shares(rps: float, others: int) -> tuple[float, float]:
    """(owner's rps, each non-owner's rps) with ``others`` live processes besides one: their sum ≤ ``rps``."""
    if others <= 0:
        return rps, NON_OWNER_RPS if rps >= NON_OWNER_RPS else rps
    each = min(NON_OWNER_RPS, float(math.floor(max(rps - 1.0, 0.0) / others)))
    return max(rps - others * each, 1.0), each


class AccountLeases(BackgroundLoop):
    """One process's leases (a runtime part and a ``BackgroundLoop`` ticking every ``renew_s``; ``tick``
    for tests). ``monotonic`` is injectable; database times come from ``core.clock``."""

    name = "amo-leases"
    failure_event = "amocrm.lease_tick_failed"  # leases simply lapse; the next tick tries again

    def __init__(
        self,
        core: Core,
        *,
        owner: str | None = None,
        lease_s: float = LEASE_S,
        renew_s: float = RENEW_S,
        settle_s: float = SETTLE_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = core
        self.owner = owner or process_owner(core.settings.node_id)
        self.lease_s = lease_s
        self.renew_s = self.interval_s = self.max_backoff_s = renew_s  # never backs off past a renewal
        self.settle_s = settle_s
        self._monotonic = monotonic
        self._owned: dict[int, float] = {}  # account → monotonic time of the last renewal
        self.others = 0  # other live processes at the last heartbeat
        self._first_seen: float | None = None  # monotonic time of this process's first heartbeat
        self._seen: set[int] = set()  # accounts with an active binding at the last tick
        self._ticked = float("-inf")  # monotonic time of the last tick

    # --- what the other parts ask ---------------------------------------------------------------------
    def owns(self, account_id: int) -> bool:
        """Whether this process may run the account's jobs and background reads now."""
        renewed = self._owned.get(account_id)
        return renewed is not None and self._monotonic() - renewed < self.lease_s - self.renew_s

    def owned(self) -> set[int]:
        return {a for a in self._owned if self.owns(a)}

    def share(self, account_id: int) -> float:
        """This process's part of ``amocrm.rps`` for the account (its limiter's rate)."""
        owner_rps, each = rate_shares(self.core.settings.amocrm.rps, self.others)
        if account_id not in self._seen and self._monotonic() - self._ticked > 1.0:
            self.wake()  # a binding made since the last tick: take its lease now
        if self.owns(account_id):
            return owner_rps
        if self._first_seen is None or self._monotonic() - self._first_seen < self.settle_s:
            return 0.0 if self.others else each  # alone: nobody to make room
        return each

    # --- the loop -------------------------------------------------------------------------------------
    async def start(self) -> None:
        try:  # the leases are held before the other parts start
            await self.tick()
        except Exception as e:  # the database away at start: the loop tries again
            log.warning("amocrm.lease_tick_failed", error=type(e).__name__)
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        await self.release()

    async def run_once(self) -> float | None:
        await self.tick()
        return None

    async def tick(self) -> None:
        """Heartbeat, count the live processes, take or renew the leases of the accounts with an active
        binding; give up the others."""
        now = self.core.clock.now()
        self._ticked = self._monotonic()
        lease_for = dt.timedelta(seconds=self.lease_s)
        async with self.core.sessions() as s:
            await self._heartbeat(s, now, lease_for)
            await s.commit()
            self.others = int(
                await s.scalar(
                    select(func.count()).where(AmoNode.seen_until > now, AmoNode.owner != self.owner)
                )
                or 0
            )
            accounts = set(
                await s.scalars(
                    select(CrmBinding.external_account_id)
                    .where(CrmBinding.crm_kind == "amocrm", CrmBinding.status == "active")
                    .distinct()
                )
            )
        self._seen = accounts
        if self._first_seen is None:
            self._first_seen = self._monotonic()
        await self._hold(sorted(accounts), now, lease_for)
        gone = [a for a in self._owned if a not in accounts]
        if gone:
            await self.release(gone)

    async def _heartbeat(self, s: AsyncSession, now: dt.datetime, lease_for: dt.timedelta) -> None:
        row = {"owner": self.owner, "seen_until": now + lease_for}
        insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
        stmt = insert(AmoNode).values(row)
        await s.execute(
            stmt.on_conflict_do_update(index_elements=["owner"], set_={"seen_until": row["seen_until"]})
        )
        await s.execute(delete(AmoNode).where(AmoNode.seen_until < now - FORGET_NODES_AFTER))

    async def _hold(self, accounts: list[int], now: dt.datetime, lease_for: dt.timedelta) -> None:
        """Take or renew every account's lease this process can have, in one compare-and-swap UPDATE."""
        mono = self._monotonic()
        held: set[int] = set()
        if accounts:
            async with self.core.sessions() as s:
                insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
                await s.execute(
                    insert(AmoAccountLease)
                    .values([{"amo_account_id": a, "owner": "", "lease_until": None} for a in accounts])
                    .on_conflict_do_nothing()
                )
                held = await take_leases(
                    s,
                    AmoAccountLease,
                    AmoAccountLease.amo_account_id,
                    accounts,
                    owner_col=AmoAccountLease.owner,
                    until_col=AmoAccountLease.lease_until,
                    owner=self.owner,
                    now=now,
                    lease_for=lease_for,
                )
                await s.commit()
        for account_id in accounts:
            if account_id in held:
                if account_id not in self._owned:
                    log.info("amocrm.lease_taken", account_id=account_id, owner=self.owner)
                self._owned[account_id] = mono
            elif self._owned.pop(account_id, None) is not None:
                log.warning("amocrm.lease_lost", account_id=account_id, owner=self.owner)

    async def release(self, accounts: list[int] | None = None) -> None:
        """Give up the leases (all of them at a clean stop) so another process takes over at once."""
        ids = list(self._owned) if accounts is None else accounts
        for account_id in ids:
            self._owned.pop(account_id, None)
        if not ids:
            return
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_S), self.core.sessions() as s:
                await release_lease(
                    s,
                    AmoAccountLease,
                    AmoAccountLease.amo_account_id.in_(ids),
                    owner_col=AmoAccountLease.owner,
                    until_col=AmoAccountLease.lease_until,
                    owner=self.owner,
                )
                if accounts is None:
                    await s.execute(delete(AmoNode).where(AmoNode.owner == self.owner))
                await s.commit()
        except Exception as e:  # the rows expire by themselves (a timeout too)
            log.warning("amocrm.lease_release_failed", error=type(e).__name__)


def background_allowed(clients: Any, account_id: int) -> bool:
    """Whether this process runs the account's background work: always without leases (one process), else
    only while it holds the account's lease. ``clients`` is the pool (``AmoClientPool.leases``)."""
    leases = getattr(clients, "leases", None)
    return not isinstance(leases, AccountLeases) or leases.owns(account_id)


__all__ = [
    "LEASE_S",
    "NON_OWNER_RPS",
    "RENEW_S",
    "AccountLeases",
    "background_allowed",
    "process_owner",
    "rate_shares",
]
