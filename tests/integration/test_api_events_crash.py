"""call_events queued while the CRM is down survive ``kill -9`` of ``vpbx serve``: after a restart on the same
database with the CRM up, every notification is delivered exactly once, in order per session.

Two ways for the CRM to be down: it answers 500, or its port is closed (connection refused, so no attempt
ever reaches it). Either way the first event of each call is retried (integration-api.md §5.1: 1 s, 5 s,
30 s) while the call's later events wait behind it in the outbox.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from tests.integration.peers.net import free_port_block, wait_until
from tests.integration.peers.process import require_binary
from tests.integration.peers.sipp import SippProcess, SippResult, run_sipp
from tests.integration.peers.vpbx import DEFAULT_DOMAIN, _env, provision
from tests.integration.test_api_events import events_of, with_api
from tests.integration.test_calls import EVENTS_TIMEOUT_S, USERS, Server, bind, callee_run
from tests.integration.test_history import _Handle, serve
from tests.integration.test_incoming_calls import carrier_run, line_to
from tests.integration_api.notify_crm import Answer, Crm, Seen
from vpbx.settings import Settings
from vpbx.store.models import ApiDelivery

pytestmark = pytest.mark.peers

CALLS = 2
STATES = ["new", "calling", "connected", "disconnected", "end"]
DELIVERY_TIMEOUT_S = 90.0  # a bound: the dispatcher's retry delays are 1, 5 and 30 s


@dataclass
class Stack:
    """A provisioned data directory whose domain sends call_events to ``crm_url``."""

    workdir: Path
    data: Path
    env: dict[str, str]
    events_file: Path

    @contextlib.asynccontextmanager
    async def serving(self, tag: str) -> AsyncIterator[tuple[Server, int]]:
        """``vpbx serve`` on the data directory: the server and its process id (for ``kill -9``)."""
        async with serve(self.workdir, self.data, self.env, tag) as (service, proc):
            yield Server(vpbx=_Handle(service, proc), events_file=self.events_file), proc.pid  # type: ignore[arg-type]

    async def deliveries(self) -> list[ApiDelivery]:
        engine = create_async_engine(self.env["VPBX_DATABASE_URL"])
        try:
            async with AsyncSession(engine) as s:
                return list(
                    await s.scalars(select(ApiDelivery).order_by(ApiDelivery.session_id, ApiDelivery.seq))
                )
        finally:
            await engine.dispose()


async def provisioned(tmp_path: Path, crm: Crm) -> Stack:
    for program in ("sipsak", "sipp"):
        require_binary(program)
    workdir = tmp_path / "vpbx"
    data = workdir / "data"
    data.mkdir(parents=True)
    events_file = tmp_path / "events.jsonl"
    secret = secrets.token_urlsafe(40)
    env = _env(data, DEFAULT_DOMAIN, secret, {"VPBX_DEBUG_CALL_EVENTS_FILE": str(events_file)})
    settings = Settings(
        env="test",
        secret_key=secret,
        data_dir=data,  # type: ignore[arg-type]
        database_url=env["VPBX_DATABASE_URL"],
    )
    await provision(settings, DEFAULT_DOMAIN, USERS, setup=with_api(line_to("user"), crm))
    return Stack(workdir, data, env, events_file)


async def calls_then_kill(
    tmp_path: Path, stack: Stack, refused: Callable[[], Awaitable[bool]]
) -> tuple[SippResult, dict[str, list[dict[str, str]]]]:
    """CALLS answered calls through a first ``vpbx serve``, then ``kill -9`` once ``refused()`` says the CRM
    has refused what it was sent; the caller's result and the engine's events by session."""
    async with stack.serving("first") as (server, pid):
        async with SippProcess.running(callee_run("uas_answer", calls=CALLS), tmp_path) as phone:
            await bind(server, "102", phone)
            caller = await run_sipp(carrier_run(server, calls=CALLS, duration_ms=300), tmp_path)
            await phone.wait()
        engine = await server.calls(ended=CALLS)
        await wait_until(refused, timeout_s=EVENTS_TIMEOUT_S, what="the CRM refusing events")
        os.kill(pid, signal.SIGKILL)
    return caller, engine


async def delivered_after_restart(stack: Stack, crm: Crm, before: int) -> list[Seen]:
    """A second ``vpbx serve`` on the same database: the call_events the CRM receives from it. It runs until
    the outbox has recorded every delivery too (the CRM may see the last request before its row is marked)."""

    async def recorded() -> bool:
        return {r.status for r in await stack.deliveries()} == {"delivered"}

    async with stack.serving("second"):
        await wait_until(
            lambda: len(events_of(crm)) - before >= CALLS * len(STATES),
            timeout_s=DELIVERY_TIMEOUT_S,
            what="every notification delivered",
        )
        await wait_until(recorded, timeout_s=EVENTS_TIMEOUT_S, what="every delivery recorded")
    return events_of(crm)[before:]


def assert_once_in_order(after: list[Seen], engine: dict[str, list[dict[str, str]]]) -> None:
    assert len(engine) == CALLS
    keys = [(r.json["session_id"], r.json["state"]) for r in after]
    assert len(keys) == len(set(keys)) == CALLS * len(STATES)  # exactly once each
    for session_id, events in engine.items():
        assert [r.json["state"] for r in after if r.json["session_id"] == session_id] == STATES
        assert [e["state"] for e in events] == STATES


async def test_queued_notifications_survive_kill_9_and_arrive_once_in_order(tmp_path: Path) -> None:
    crm_up = False

    def script(_crm: Crm, _req: Seen) -> Answer:
        return Answer(200) if crm_up else Answer(500)

    async with Crm(script).running() as crm:
        stack = await provisioned(tmp_path, crm)

        async def refused() -> bool:  # at least one notification answered 500; the rest wait in the outbox
            return len(crm.seen) >= 1

        caller, engine = await calls_then_kill(tmp_path, stack, refused)
        assert caller.ok, caller.describe()
        refused_count = len(crm.seen)
        assert len(events_of(crm)) == refused_count  # nothing but call_events, all answered 500
        crm_up = True
        after = await delivered_after_restart(stack, crm, refused_count)

    assert_once_in_order(after, engine)


async def test_notifications_refused_at_the_connection_survive_kill_9_and_arrive_once_in_order(
    tmp_path: Path,
) -> None:
    """The CRM's port is closed during the first run: every attempt fails to connect and the head of each
    call's queue waits for its retry; after ``kill -9`` and a restart with the CRM listening on that port,
    each notification arrives once, in order, and the outbox records each attempt."""
    port = free_port_block(1)
    crm = Crm(url=f"http://127.0.0.1:{port}/rt")  # nothing listens there yet: connection refused
    stack = await provisioned(tmp_path, crm)

    async def refused() -> bool:
        """Every event turned into the outbox; the first of each call tried (and failed), none delivered."""
        rows = await stack.deliveries()
        heads = [r for r in rows if r.seq == min(x.seq or 0 for x in rows if x.session_id == r.session_id)]
        return (
            len(rows) == CALLS * len(STATES)
            and len(heads) == CALLS
            and all(r.attempts >= 1 and r.last_error for r in heads)
            and all(r.status == "pending" for r in rows)
        )

    caller, engine = await calls_then_kill(tmp_path, stack, refused)
    assert caller.ok, caller.describe()
    tried = {(r.session_id, r.seq): r.attempts for r in await stack.deliveries() if r.attempts}
    assert {sid for sid, _ in tried} == set(engine) and all(1 <= n <= 3 for n in tried.values())
    assert crm.seen == []

    async with crm.running(port=port):
        after = await delivered_after_restart(stack, crm, 0)
    assert_once_in_order(after, engine)
    for (
        r
    ) in await stack.deliveries():  # the failed attempts before the crash, then the one that reached the CRM
        assert r.attempts == tried.get((r.session_id, r.seq), 0) + 1, (r.session_id, r.seq, r.attempts)
