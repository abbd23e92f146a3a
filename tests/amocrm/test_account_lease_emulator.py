"""Two processes on one PostgreSQL database against one emulator (amocrm.md §2.5, vpbx/amocrm/lease.py): two
``build_core`` with their own client pools (limiters), lease holders and job runners, the real client over
HTTP. The account's jobs run in exactly one of them; both make routing lookups (realtime) at the same time,
and their limiters together never let more than ``rps`` requests go in any sliding second (two processes at
the whole rate would let ``2 × rps`` go). The emulator (limiting at ``2 × rps``: it runs in this event loop,
so on a loaded machine arrivals move by up to some hundred ms) answers every request, none with 429. After
the owner is killed (it stops renewing), the other takes the lease once it has expired and runs the queue,
nothing twice, now at the whole rate."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import select

from tests.amocrm.emu_kit import DEMO, Emu, emulator
from tests.amocrm.unit.jobs_kit import make_world
from tests.conftest import postgres_database
from vpbx.amocrm.client import AmoClientPool
from vpbx.amocrm.errors import AmoSkipped
from vpbx.amocrm.jobs import JobRunner, enqueue
from vpbx.amocrm.lease import LEASE_S, SETTLE_S, AccountLeases
from vpbx.amocrm.limiter import AccountLimiter, Lane, Permit
from vpbx.amocrm.oauth import TokenPair
from vpbx.app import Core, build_core
from vpbx.clock import FakeClock
from vpbx.settings import AmoSettings, Settings
from vpbx.store.models import CrmBinding, CrmJob

pytestmark = pytest.mark.postgres

ACCOUNT = 30000001
RPS = 3.0
PING = "test.ping"
LOOKUPS = 6  # realtime lookups per process, all at once
BUDGET_S = 1.5  # a routing lookup's deadline (lookup_timeout_ms)


@dataclass
class Node:
    core: Core
    pool: AmoClientPool
    leases: AccountLeases
    runner: JobRunner
    ran: list[str] = field(default_factory=list)

    async def lookups(self, count: int = LOOKUPS) -> tuple[int, int]:
        """``count`` concurrent realtime E4 searches: (answered, skipped)."""
        client = self.pool.for_account(ACCOUNT)

        async def one() -> bool:
            try:
                await client.search_contacts(
                    "9031112233", lane="realtime", deadline=time.monotonic() + BUDGET_S
                )
            except AmoSkipped:
                return False
            return True

        done = await asyncio.gather(*(one() for _ in range(count)))
        return sum(done), count - sum(done)


@pytest.fixture
async def emu() -> AsyncIterator[Emu]:
    async with emulator(rate_limit_rps=int(2 * RPS)) as e:
        yield e


@pytest.fixture
async def nodes(settings: Settings, emu: Emu) -> AsyncIterator[tuple[Node, Node, FakeClock]]:
    amo = AmoSettings(
        client_id=emu.client_id,
        client_secret=emu.client_secret,  # type: ignore[arg-type]
        api_url_template=emu.api_url_template,
        extra_hosts=[DEMO],
        rps=RPS,
    )
    clock = FakeClock(dt.datetime.now(dt.UTC).replace(microsecond=0))  # the leases' time, both processes
    sent.clear()
    async with postgres_database() as url:
        made: list[Node] = []
        for name in ("node-a", "node-b"):
            core = build_core(
                settings.model_copy(update={"database_url": url, "amocrm": amo, "node_id": name}), clock
            )
            pool = AmoClientPool(core)
            record_grants(pool.for_account(ACCOUNT).limiter)
            leases = AccountLeases(core, owner=f"{name}:1", monotonic=clock.monotonic)
            pool.use_leases(leases)
            node = Node(core, pool, leases, JobRunner(core, pool, {}, owner=f"{name}:1"))

            async def ping(runner: JobRunner, job: CrmJob, binding: CrmBinding, node: Node = node) -> None:
                await runner.clients.for_account(binding.external_account_id).search_contacts("9031112233")
                node.ran.append(job.key)

            node.runner.handlers[PING] = ping
            made.append(node)
        pair = await emu.token_pair(DEMO)
        tokens = TokenPair(
            access_token=pair["access_token"],
            refresh_token=pair["refresh_token"],
            expires_at=clock.now() + dt.timedelta(seconds=int(pair["expires_in"])),
        )
        await make_world(made[0].core, clock, clients=made[0].pool, tokens=tokens)  # the bound domain
        try:
            yield made[0], made[1], clock
        finally:
            for n in made:
                await n.runner.stop()
                await n.pool.aclose()
                await n.core.engine.dispose()


async def add_jobs(core: Core, keys: list[str]) -> None:
    async with core.sessions() as s:
        binding_id = await s.scalar(
            select(CrmBinding.id).where(
                CrmBinding.external_account_id == ACCOUNT, CrmBinding.status == "active"
            )
        )
        assert binding_id is not None
        for key in keys:
            await enqueue(s, binding_id=binding_id, kind=PING, key=key, run_after=core.clock.now())
        await s.commit()


sent: list[float] = []  # when each process's limiter let an API request go (one monotonic clock)


def record_grants(limiter: AccountLimiter) -> None:
    acquire = limiter.acquire

    async def recorded(lane: Lane = "background", deadline: float | None = None) -> Permit:
        permit = await acquire(lane, deadline)
        sent.append(permit.at)
        return permit

    limiter.acquire = recorded  # type: ignore[method-assign]


def busiest_second() -> int:
    """The most API requests let go in any sliding second, both processes together (the emulator sees
    them a few ms later, each with its own delay)."""
    return max((sum(1 for t in sent if w <= t < w + 1.0) for w in sent), default=0)


def rejected(stats: dict[str, Any]) -> int:
    return sum(int(per.get("429", 0)) for per in stats["routes"].values())


async def test_one_owner_runs_the_jobs_and_the_rate_is_shared(
    nodes: tuple[Node, Node, FakeClock], emu: Emu
) -> None:
    a, b, clock = nodes
    await a.leases.tick()
    await b.leases.tick()
    await a.leases.tick()  # A counts B
    clock.advance(SETTLE_S)
    await a.leases.tick()
    await b.leases.tick()
    assert a.leases.owns(ACCOUNT) and not b.leases.owns(ACCOUNT)
    assert (a.leases.share(ACCOUNT), b.leases.share(ACCOUNT)) == (RPS - 1, 1.0)

    await add_jobs(a.core, [f"job-{n}" for n in range(6)])
    a_lookups, b_lookups, _, _ = await asyncio.wait_for(
        asyncio.gather(a.lookups(), b.lookups(), a.runner.run_until_idle(), b.runner.run_until_idle()),
        timeout=60,
    )
    assert sorted(a.ran) == [f"job-{n}" for n in range(6)] and b.ran == []
    assert b_lookups[0] >= 1  # the non-owner's lookups get its share, the rest are skipped, not queued
    assert a.pool.for_account(ACCOUNT).limiter.state.configured_rate == RPS - 1
    assert b.pool.for_account(ACCOUNT).limiter.state.configured_rate == 1.0
    assert busiest_second() == RPS
    stats = await emu.stats(DEMO)
    assert rejected(stats) == 0, stats
    assert stats["total"] >= 6 + a_lookups[0] + b_lookups[0]

    # A is killed: it renews nothing more and runs nothing more; B takes over once the lease has expired
    clock.advance(LEASE_S + 1)  # the leases' clock: A's requests are that long ago for what follows
    sent.clear()
    assert not a.leases.owns(ACCOUNT)
    await b.leases.tick()
    assert b.leases.owns(ACCOUNT) and b.leases.others == 0
    assert b.leases.share(ACCOUNT) == RPS  # A's heartbeat has expired too
    await add_jobs(b.core, [f"later-{n}" for n in range(4)])
    b_lookups, _ = await asyncio.wait_for(asyncio.gather(b.lookups(), b.runner.run_until_idle()), timeout=60)
    assert sorted(b.ran) == [f"later-{n}" for n in range(4)]
    assert sorted(a.ran) == [f"job-{n}" for n in range(6)]  # nothing ran twice
    assert b.pool.for_account(ACCOUNT).limiter.state.configured_rate == RPS
    assert busiest_second() == RPS
    assert rejected(await emu.stats(DEMO)) == 0
