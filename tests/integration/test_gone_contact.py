"""A phone that exited while its registration is still valid (RFC 3261 §18.4) with real peers on loopback.

A SIPp callee is registered as 102 and then killed: its UDP port is closed, so the kernel answers vpbx's
INVITE with ICMP port unreachable. vpbx reads that from its socket's error queue and fails the branch at
once, as a transport error (503 locally), instead of waiting 32 s for Timer B: the SIPp caller's own
timeout (20 s) is shorter than Timer B, and the call record names the cause.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.integration.peers.sipp import SippProcess, run_sipp
from tests.integration.test_calls import (
    Server,
    assert_answered_call,
    bind,
    callee_run,
    caller_run,
    rejected_scenario,
    running,
    states,
)
from tests.integration.test_history import db_url, read_history

pytestmark = pytest.mark.peers


async def gone_phone(server: Server, tmp_path: Path, user: str) -> int:
    """Register a SIPp phone as ``user``, then kill it: the binding stays, the port is closed."""
    async with SippProcess.running(callee_run("uas_answer"), tmp_path) as phone:
        await bind(server, user, phone)
        await phone.proc.stop(sig=signal.SIGKILL)
        return phone.port


async def test_a_call_to_a_gone_phone_gets_unavailable_with_a_transport_error(tmp_path: Path) -> None:
    async with running(tmp_path) as server:
        await gone_phone(server, tmp_path, "102")
        caller = await run_sipp(
            caller_run(server, rejected_scenario(tmp_path, 480), caller="101", callee="102", calls=1),
            tmp_path,
        )
        assert caller.ok, caller.describe()  # 480 came before SIPp's 20 s timeout: Timer B is 32 s
        [events] = (await server.calls(ended=1)).values()
        records, _ = await read_history(db_url(server))

    assert states(events) == ["new", "calling", "end"]
    (record,) = records
    assert (record.status_code, record.end_reason) == (480, "unreachable")  # not a 408 timeout


async def test_a_fork_with_a_gone_contact_still_connects_to_the_live_one(tmp_path: Path) -> None:
    async with running(tmp_path) as server:
        gone = await gone_phone(server, tmp_path, "102")
        async with SippProcess.running(callee_run("uas_answer"), tmp_path) as desk:
            await bind(server, "102", desk)
            caller = await run_sipp(
                caller_run(server, "uac_call", caller="101", callee="102", calls=1, duration_ms=200), tmp_path
            )
            answered = await desk.wait()
        [events] = (await server.calls(ended=1)).values()

    assert caller.ok, caller.describe()
    assert answered.ok, answered.describe()
    assert_answered_call(events, caller="101", callee="102", legs=2)
    rung = {e["request_uri"] for e in events if e["state"] == "calling"}
    assert rung == {f"sip:102@127.0.0.1:{gone}", f"sip:102@127.0.0.1:{desk.port}"}
