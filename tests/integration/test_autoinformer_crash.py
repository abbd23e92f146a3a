"""``kill -9`` of ``vpbx serve`` mid-campaign (autoinformer.md §7.2, issue 9's acceptance): 20 autoinformer
calls up to a SIPp carrier, the server killed, started again on the same database. No dispatch key reaches
the carrier twice (each Call-ID is one INVITE transaction at SIPp, counted by its branch), nothing is
redialled at once, and every attempt ends recorded (from the call history, or ``failed``/
``dispatcher_restart``)."""

from __future__ import annotations

import os
import re
import signal
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tests.autoinformer.campaign_kit import (
    Stand,
    add_campaign,
    carrier,
    open_domain,
    recipient_scenario,
    running_spec,
)
from tests.integration.peers.net import free_port_block, wait_until
from tests.integration.peers.process import require_binary
from tests.integration.peers.sipp import SippProcess
from tests.integration.test_history import serve
from tests.integration.test_outbound_calls import carrier_trunk
from vpbx import store
from vpbx.app import Core
from vpbx.pbx.broadcast import broadcast_ids
from vpbx.settings import Settings
from vpbx.store.models import AiAttempt, CallRecord

pytestmark = pytest.mark.peers

CALLS = 20
UP_TIMEOUT_S = 60.0  # 20 calls at 2 new a second, on a loaded 2-core box
SETTLE_TIMEOUT_S = 60.0
CARRIER_TIMEOUT_S = 300.0
BYE_WAIT_MS = 45_000  # the carrier's wait for our BYE: longer than a call, so only the killed calls time out
LOG_WAIT_S = 10.0  # SIPp writes each message to its log as it goes (-trace_msg)


def numbers() -> list[str]:
    return [f"7916555{i:04d}" for i in range(CALLS)]


def campaign_setup(port: int) -> object:
    trunk = carrier_trunk(port)

    async def setup(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
        await open_domain(s, core, domain_id, trunk, max_calls=CALLS * 2)
        spec = running_spec(
            "Crash",
            attempts={"max": 3, "interval_min": 30},
            concurrency=CALLS,
            dtmf={"wait_s": 30},  # each call stays up half a minute after its message
        )
        await add_campaign(s, domain_id, spec, numbers())

    return setup


def invites(log: str) -> dict[str, set[str]]:
    """Call-ID → the branches of the INVITEs SIPp received with it (a retransmission repeats its branch)."""
    out: dict[str, set[str]] = {}
    for block in re.split(r"\n-{10,}[^\n]*\n", log):
        start = block.find("INVITE sip:")
        if start < 0 or "received" not in block[:start]:
            continue
        msg = block[start:]
        call_id = re.search(r"^Call-ID:\s*(\S+)", msg, re.M | re.I)
        branch = re.search(r"^Via:[^\n]*branch=([^;\s]+)", msg, re.M | re.I)
        assert call_id and branch, msg[:400]
        out.setdefault(call_id.group(1), set()).add(branch.group(1))
    return out


async def calls_up(settings: Settings) -> int:
    """Answered calls of the history not ended yet (the engine's own record of calls in progress)."""
    engine = store.create_engine(settings.database_url)
    try:
        async with store.session_factory(engine)() as s:
            n = await s.scalar(
                select(func.count()).where(CallRecord.answered_at.is_not(None), CallRecord.ended_at.is_(None))
            )
            return int(n or 0)
    finally:
        await engine.dispose()


async def attempts(settings: Settings) -> list[AiAttempt]:
    engine = store.create_engine(settings.database_url)
    try:
        async with store.session_factory(engine)() as s:
            return list((await s.scalars(select(AiAttempt))).all())
    finally:
        await engine.dispose()


async def test_kill_9_mid_campaign_never_dials_a_key_twice_and_records_every_attempt(tmp_path: Path) -> None:
    for program in ("sipp", "espeak-ng"):
        require_binary(program)
    port = free_port_block(1)
    stand = Stand.make(tmp_path)
    settings, workdir, data, env = stand.settings, stand.workdir, stand.data, stand.env
    await stand.provision(campaign_setup(port))  # type: ignore[arg-type]
    scenario = tmp_path / "recipient.xml"
    scenario.write_text(recipient_scenario(bye_wait_ms=BYE_WAIT_MS))
    sipp = carrier(scenario, port, timeout_s=CARRIER_TIMEOUT_S)
    async with SippProcess.running(sipp, tmp_path) as far_end:
        await far_end.wait_listening()
        async with serve(workdir, data, env, "first") as (_service, proc):

            async def all_up() -> bool:
                return await calls_up(settings) >= CALLS

            await wait_until(all_up, timeout_s=UP_TIMEOUT_S, what=f"{CALLS} calls up")
            os.kill(proc.pid, signal.SIGKILL)
            assert await proc.wait(timeout_s=10) == -signal.SIGKILL
        before = await attempts(settings)
        assert len(before) == CALLS
        assert all(a.state != "done" for a in before)  # every call was still up when it died

        async with serve(workdir, data, env, "second"):

            async def settled() -> bool:
                return all(a.state == "done" for a in await attempts(settings))

            await wait_until(settled, timeout_s=SETTLE_TIMEOUT_S, what="every attempt recorded")
            after = await attempts(settings)
        # read while SIPp runs: a graceful stop would wait out the killed calls' BYE_WAIT_MS first
        log = far_end.workdir / "messages.log"

        async def logged() -> bool:  # the first run's INVITEs (at least) are in the log
            text = log.read_text(errors="replace") if log.exists() else ""
            return len(re.findall(r"^INVITE sip:", text, re.M)) >= CALLS

        await wait_until(logged, timeout_s=LOG_WAIT_S, what="the carrier's message log")
        dialled = invites(log.read_text(errors="replace"))

    assert {a.dispatch_key for a in after} == {a.dispatch_key for a in before}  # nothing redialled at once
    keys = {broadcast_ids(a.dispatch_key)[1]: a for a in after}
    assert set(dialled) == set(keys)  # every INVITE at the carrier belongs to a recorded attempt
    assert all(len(branches) == 1 for branches in dialled.values()), dialled  # no key dialled twice
    for a in after:
        assert a.outcome is not None and a.ended_at is not None
        # the carrier answered every call: the call history tells it (the message was heard only in part)
        assert (a.outcome, a.sip_code) == ("answered_incomplete", 200), (a.outcome, a.sip_code, a.detail)
