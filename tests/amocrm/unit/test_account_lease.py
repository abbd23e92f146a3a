"""The per-account lease (vpbx/amocrm/lease.py, amocrm.md §2.5) on SQLite and PostgreSQL: two processes'
lease holders and job runners on one database (two owners in this process, one fake clock moving both):
exactly one holds the account and runs its jobs; after the holder stops renewing (``kill -9``), the other
takes the lease once it has expired and runs the queue, including the job the dead one was running; the
rate shares of the two add up to ``amocrm.rps``."""

from __future__ import annotations

import asyncio
import datetime as dt

from sqlalchemy import select, update

from tests.amocrm.unit.fake_amo import FakeAmo, FakeClients
from tests.amocrm.unit.jobs_kit import World
from vpbx.amocrm.calls import CallConsumer
from vpbx.amocrm.jobs import JobRunner, enqueue
from vpbx.amocrm.lease import LEASE_S, RENEW_S, SETTLE_S, AccountLeases, background_allowed, rate_shares
from vpbx.amocrm.limiter import LimiterState
from vpbx.store.models import AmoAccountLease, CrmBinding, CrmJob

ACCOUNT = 30000001
PING = "test.ping"


class LeasedClients(FakeClients):
    """The fake amoCRM behind one process's lease holder (what ``AmoClientPool.use_leases`` sets)."""

    def __init__(self, api: FakeAmo, leases: AccountLeases) -> None:
        super().__init__(api)
        self.leases = leases


def node(world: World, owner: str) -> tuple[AccountLeases, JobRunner, list[str]]:
    leases = AccountLeases(world.core, owner=owner, monotonic=world.clock.monotonic)
    ran: list[str] = []

    async def ping(runner: JobRunner, job: CrmJob, binding: CrmBinding) -> None:
        ran.append(job.key)

    runner = JobRunner(world.core, LeasedClients(world.amo, leases), {PING: ping}, owner=owner)
    return leases, runner, ran


async def add_jobs(world: World, keys: list[str]) -> None:
    async with world.core.sessions() as s:
        for key in keys:
            await enqueue(s, binding_id=world.binding_id, kind=PING, key=key, run_after=world.clock.now())
        await s.commit()


async def lease_row(world: World) -> tuple[str, dt.datetime | None]:
    async with world.core.sessions() as s:
        row = (
            await s.execute(
                select(AmoAccountLease.owner, AmoAccountLease.lease_until).where(
                    AmoAccountLease.amo_account_id == ACCOUNT
                )
            )
        ).one()
    return row.owner, row.lease_until


def test_rate_shares_never_exceed_the_setting() -> None:
    assert rate_shares(5.0, 0) == (5.0, 1.0)
    assert rate_shares(5.0, 1) == (4.0, 1.0)
    assert rate_shares(5.0, 3) == (2.0, 1.0)
    assert rate_shares(5.0, 4) == (1.0, 1.0)
    assert rate_shares(5.0, 5) == (5.0, 0.0)  # more processes than the rate: only the owner sends
    for rps in (1.0, 2.0, 5.0, 7.0):
        for others in range(1, 12):
            owner, each = rate_shares(rps, others)
            assert owner >= 1.0 and owner + others * each <= rps


def test_limiter_cap_follows_the_share() -> None:
    state = LimiterState(configured_rate=5.0, now=0.0)
    state.set_cap(1.0, 0.0)
    assert state.rate == 1.0 and state.tokens <= 1.0
    assert state.try_take(0.0) == 0.0 and state.try_take(0.0) > 0.0  # one send per second now
    state.set_cap(0.0, 2.0)
    assert state.try_take(2.0) > 1.0  # no share: nothing goes (a realtime request is skipped)
    state.set_cap(4.0, 3.0)
    assert state.rate == 4.0
    state.on_429(3.5, sent_at=3.4, retry_after_s=0.0)  # halved to 2 …
    state.set_cap(5.0, 4.0)
    assert state.rate == 2.0 and state.configured_rate == 5.0  # … and recovers towards the new cap


async def test_one_process_runs_the_account_and_the_other_takes_over(world: World) -> None:
    a_leases, a_runner, a_ran = node(world, "node-a:1")
    b_leases, b_runner, b_ran = node(world, "node-b:2")
    await a_leases.tick()
    await b_leases.tick()
    assert a_leases.owns(ACCOUNT) and not b_leases.owns(ACCOUNT)
    assert (await lease_row(world))[0] == "node-a:1"
    assert background_allowed(a_runner.clients, ACCOUNT) and not background_allowed(b_runner.clients, ACCOUNT)

    await add_jobs(world, [f"first-{n}" for n in range(5)])
    await b_runner.run_until_idle()
    assert b_ran == []  # the non-owner claims nothing
    await a_runner.run_until_idle()
    assert sorted(a_ran) == [f"first-{n}" for n in range(5)]

    # the shares: both see each other; the newcomer's share waits until the owner has made room
    rps = world.core.settings.amocrm.rps
    assert a_leases.others == 0 and b_leases.others == 1  # A has not counted B yet …
    assert a_leases.share(ACCOUNT) == rps and b_leases.share(ACCOUNT) == 0.0  # … so B takes nothing yet
    await a_leases.tick()
    assert a_leases.others == 1 and a_leases.share(ACCOUNT) == rps - 1
    assert b_leases.share(ACCOUNT) == 0.0  # B waits out SETTLE_S (A might not have re-counted)
    world.clock.advance(SETTLE_S)
    await a_leases.tick()
    await b_leases.tick()
    assert a_leases.share(ACCOUNT) == rps - 1 and b_leases.share(ACCOUNT) == 1.0

    # A is killed (-9) while running a job: its rows stay, nobody renews them
    await add_jobs(world, ["second-0", "second-1", "orphan"])
    async with world.core.sessions() as s, s.begin():
        await s.execute(
            update(CrmJob)
            .where(CrmJob.key == "orphan")
            .values(
                state="running",
                lease_owner="node-a:1",
                lease_until=world.clock.now() + dt.timedelta(seconds=120),
            )
        )
    world.clock.advance(RENEW_S)
    await b_leases.tick()
    assert not b_leases.owns(ACCOUNT)  # A's lease has not expired yet
    world.clock.advance(LEASE_S - RENEW_S + 1)  # A's lease expires (A itself stopped trusting it before)
    assert not a_leases.owns(ACCOUNT)
    await b_leases.tick()
    assert b_leases.owns(ACCOUNT) and (await lease_row(world))[0] == "node-b:2"
    await b_runner.run_until_idle()
    assert sorted(b_ran) == ["second-0", "second-1"]
    world.clock.advance(120)  # the orphan's own job lease expires: the new owner runs it, once
    await b_leases.tick()
    await b_runner.run_until_idle()
    assert sorted(b_ran) == ["orphan", "second-0", "second-1"]
    assert sorted(a_ran) == [f"first-{n}" for n in range(5)]

    # A comes back: it cannot take the lease B holds, and runs nothing
    await a_leases.tick()
    assert not a_leases.owns(ACCOUNT)
    await add_jobs(world, ["third"])
    await a_runner.run_until_idle()
    assert "third" not in a_ran


async def test_a_clean_stop_hands_over_at_once(world: World) -> None:
    a_leases, _, _ = node(world, "node-a:1")
    b_leases, _, _ = node(world, "node-b:2")
    await a_leases.tick()
    await b_leases.tick()
    assert a_leases.owns(ACCOUNT) and not b_leases.owns(ACCOUNT)
    await a_leases.stop()  # releases: no 15 s wait
    await b_leases.tick()
    assert b_leases.owns(ACCOUNT) and b_leases.others == 0
    assert b_leases.share(ACCOUNT) == world.core.settings.amocrm.rps


async def test_a_disabled_binding_is_given_up(world: World) -> None:
    leases, _, _ = node(world, "node-a:1")
    await leases.tick()
    assert leases.owns(ACCOUNT)
    async with world.core.sessions() as s, s.begin():
        await s.execute(update(CrmBinding).where(CrmBinding.id == world.binding_id).values(status="disabled"))
    await leases.tick()
    assert not leases.owns(ACCOUNT)
    owner, until = await lease_row(world)
    assert owner == "node-a:1" and until is None  # released for whoever binds it next


async def test_racing_processes_leave_one_owner(world: World) -> None:
    nodes = [node(world, f"node-{n}:{n}")[0] for n in range(3)]
    await asyncio.gather(*(n.tick() for n in nodes))
    assert sum(n.owns(ACCOUNT) for n in nodes) == 1
    [owner] = [n for n in nodes if n.owns(ACCOUNT)]
    assert (await lease_row(world))[0] == owner.owner


async def test_only_the_owner_turns_call_events_into_jobs(world: World) -> None:
    a_leases, _, _ = node(world, "node-a:1")
    b_leases, _, _ = node(world, "node-b:2")
    a_calls = CallConsumer(world.core, leases=a_leases)
    b_calls = CallConsumer(world.core, leases=b_leases)
    first = await world.incoming("79031112233", answered=["101"], talk_s=30)
    await a_leases.tick()
    await b_leases.tick()
    assert await b_calls.consume_once() == 0  # not its account
    assert await a_calls.consume_once() == 1
    second = await world.incoming("79035550000", answered=["102"], talk_s=30)  # A has died meanwhile
    await b_leases.tick()  # the call took longer than the lease: A's has expired
    assert b_leases.owns(ACCOUNT) and not a_leases.owns(ACCOUNT)
    assert await a_calls.consume_once() == 0
    assert await b_calls.consume_once() == 1
    assert sorted(j.key for j in await world.jobs()) == sorted([first, second])
