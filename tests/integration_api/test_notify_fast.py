"""call_events as ``vpbx serve`` runs them (``Notifications`` with the journal wired to it), for the latency
work of issue 7 (bench/api_bench.py): the journal's commit wakes the pump (no poll needed), many calls at once
still reach the CRM once each and in order per call, the sends reuse keep-alive connections, and one domain
never has more than ``per_domain`` POSTs in flight while another domain's go on."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy import select

from tests.conftest import make_tenant
from tests.helpers import Tenant
from tests.integration_api.notify_crm import Answer, Crm, Seen, activate
from tests.integration_api.test_notify_events import recent
from vpbx.app import Core
from vpbx.integration_api.dispatcher import Notifications
from vpbx.pbx.history import SqlCallJournal
from vpbx.store.models import ApiDelivery, ApiLog

WAIT_S = 20.0
NEVER_S = 3600.0  # a poll interval no test outlives: only a wake-up moves things
STATES = ["new", "calling", "connected", "disconnected", "end"]


@contextlib.asynccontextmanager
async def serving(core: Core, tmp_path: Path, **dispatcher: int) -> AsyncIterator[SqlCallJournal]:
    """The journal and the notifications wired as ``vpbx serve`` does, neither ever polling."""
    journal = SqlCallJournal(core.sessions, node_id="node-a", spool_path=tmp_path / "spool.jsonl")
    notifications = Notifications(core)
    notifications.pump.interval_s = NEVER_S
    notifications.dispatcher.interval_s = NEVER_S
    for name, value in dispatcher.items():
        setattr(notifications.dispatcher, name, value)
    journal.on_commit.append(notifications.wake)
    await journal.start()
    await notifications.start()
    try:
        yield journal
    finally:
        await notifications.stop()
        await journal.stop()


async def call(journal: SqlCallJournal, domain_id: uuid.UUID, session: str, gap_s: float = 0.0) -> None:
    """F's call under another session id, each event stamped as the engine does: when it happens."""
    for event in recent(domain_id, session):
        await journal.append(dataclasses.replace(event, timestamp=dt.datetime.now(dt.UTC)))
        if gap_s:
            await asyncio.sleep(gap_s)


def by_session(seen: list[Seen]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in seen:
        out.setdefault(r.json["session_id"], []).append(r.json["state"])
    return out


async def test_the_journals_commit_wakes_the_pump_without_its_poll(
    core: Core, t1: Tenant, tmp_path: Path
) -> None:
    async with Crm().running() as crm:
        await activate(core, t1.id, crm.url)
        async with serving(core, tmp_path) as journal:
            await asyncio.sleep(0.2)  # the pump's first pass has run and found nothing: it now sleeps an hour
            await call(journal, t1.id, "s-woken")
            seen = await crm.wait_for(5, WAIT_S)
    assert [r.json["state"] for r in seen] == STATES


async def test_many_calls_at_once_arrive_once_each_in_order(core: Core, t1: Tenant, tmp_path: Path) -> None:
    sessions = [f"s-many-{i:02d}" for i in range(40)]
    async with Crm().running() as crm:
        await activate(core, t1.id, crm.url)
        async with serving(core, tmp_path) as journal:
            await asyncio.gather(*(call(journal, t1.id, s, gap_s=0.01) for s in sessions))
            await crm.wait_for(5 * len(sessions), WAIT_S)
            await asyncio.sleep(0.3)  # nothing more follows
    assert by_session(crm.seen) == dict.fromkeys(sessions, STATES)
    async with core.sessions() as s:
        rows = list(await s.scalars(select(ApiDelivery)))
        logged = list(await s.scalars(select(ApiLog)))
    assert len(rows) == 200 and all(d.status == "delivered" and d.attempts == 1 for d in rows)
    assert len(logged) == 200 and all(r.verdict == "доставлено" and r.attempt == 1 for r in logged)


async def test_the_sends_reuse_keep_alive_connections(core: Core, t1: Tenant, tmp_path: Path) -> None:
    async with Crm().running() as crm:
        await activate(core, t1.id, crm.url)
        async with serving(core, tmp_path) as journal:
            for n in range(4):  # one call after the other: one connection is enough for all 20
                await call(journal, t1.id, f"s-keep-{n}")
                await crm.wait_for(5 * (n + 1), WAIT_S)
    ports = {r.peer for r in crm.seen}
    assert len(crm.seen) == 20 and len(ports) < 20
    assert len(ports) == 1


async def test_one_domain_never_has_more_than_its_share_in_flight(
    core: Core, t1: Tenant, tmp_path: Path
) -> None:
    t2 = await make_tenant(core, "other.vpbx.test")
    async with Crm(lambda _c, _r: Answer(200, delay_s=0.3)).running() as slow, Crm().running() as fast:
        await activate(core, t1.id, slow.url)
        await activate(core, t2.id, fast.url)
        async with serving(core, tmp_path, per_domain=2) as journal:
            await asyncio.gather(
                *(call(journal, t1.id, f"s-slow-{i}") for i in range(4)),
                *(call(journal, t2.id, f"s-fast-{i}") for i in range(4)),
            )
            await fast.wait_for(20, WAIT_S)
            await slow.wait_for(20, WAIT_S)
    assert slow.most_in_flight == 2  # used, and never more
    assert fast.most_in_flight <= 2
    assert by_session(slow.seen) == {f"s-slow-{i}": STATES for i in range(4)}
    assert by_session(fast.seen) == {f"s-fast-{i}": STATES for i in range(4)}


async def test_a_regenerated_key_signs_the_next_notification(core: Core, t1: Tenant, tmp_path: Path) -> None:
    """The dispatcher caches opened keys by their sealed value: a new key is used at once (§2.1)."""
    from vpbx.integration_api.core import verify
    from vpbx.integration_api.settings import regenerate
    from vpbx.store.models import ApiSettings

    async with Crm().running() as crm:
        await activate(core, t1.id, crm.url)
        async with core.sessions() as s:
            row = await s.get(ApiSettings, t1.id)
            assert row is not None
            client_id, old_key = row.client_id, core.box.open(row.sign_key_enc)
        async with serving(core, tmp_path) as journal:
            await call(journal, t1.id, "s-before")
            await crm.wait_for(5, WAIT_S)
            async with core.sessions() as s:
                new_key = await regenerate(s, t1.id, core.box, "key")
                await s.commit()
            await call(journal, t1.id, "s-after")
            seen = await crm.wait_for(10, WAIT_S)
    before, after = seen[:5], seen[5:]
    assert all(verify(client_id, r.raw, old_key, r.headers["x-client-sign"]) for r in before)
    assert all(verify(client_id, r.raw, new_key, r.headers["x-client-sign"]) for r in after)
    assert not any(verify(client_id, r.raw, old_key, r.headers["x-client-sign"]) for r in after)


async def test_a_domain_with_a_long_queue_does_not_hold_up_another(
    core: Core, t1: Tenant, tmp_path: Path
) -> None:
    """Few attempts in all (parallel 4, 2 per domain) and a slow CRM with a long queue: the other domain's
    call still goes out as the slots free, not after the whole queue."""
    t2 = await make_tenant(core, "other.vpbx.test")
    async with Crm(lambda _c, _r: Answer(200, delay_s=0.2)).running() as slow, Crm().running() as fast:
        await activate(core, t1.id, slow.url)
        await activate(core, t2.id, fast.url)
        async with serving(core, tmp_path, per_domain=2, parallel=4) as journal:
            await asyncio.gather(*(call(journal, t1.id, f"s-queue-{i}") for i in range(6)))
            await call(journal, t2.id, "s-other")  # its events are the newest of all
            await fast.wait_for(5, WAIT_S)
            behind = 30 - len(slow.seen)  # the slow domain's notifications not sent yet
            await slow.wait_for(30, WAIT_S)
    assert behind > 0
    assert by_session(fast.seen) == {"s-other": STATES}
    assert by_session(slow.seen) == {f"s-queue-{i}": STATES for i in range(6)}
