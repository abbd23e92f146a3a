"""Calls through vpbx's B2BUA with real peers: SIPp callers and callees around ``python -m vpbx serve``.

Each test starts its own server (with ``VPBX_DEBUG_CALL_EVENTS_FILE``, so the published call events can be
read back), binds SIPp callees to extensions with sipsak (SIPp cannot register), runs a SIPp caller and
asserts on both SIPp results and on the events of every call (telephony.md §7.1, integration-api.md §5.2).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.peers import sipsak
from tests.integration.peers.net import wait_until
from tests.integration.peers.process import descendants, require_binary
from tests.integration.peers.service import SipService
from tests.integration.peers.sipp import SippProcess, SippRun, run_sipp, scenario_path
from tests.integration.peers.vpbx import Setup, Vpbx

pytestmark = pytest.mark.peers

USERS = {
    "101": "secret-101",
    "102": "secret-102",
    "103": "secret-103",
    "104": "secret-104",  # never registered
}
SIPP_TIMEOUT_S = 20.0
EVENTS_TIMEOUT_S = 30.0  # a bound, not a speed: a loaded 2-core box can be slow
MEDIA_TIMEOUT_S = 1.5


@dataclass
class Server:
    vpbx: Vpbx
    events_file: Path

    @property
    def service(self) -> SipService:
        return self.vpbx.service

    def events(self) -> list[dict[str, str]]:
        if not self.events_file.exists():
            return []
        return [json.loads(line) for line in self.events_file.read_text().splitlines() if line.strip()]

    async def calls(self, ended: int) -> dict[str, list[dict[str, str]]]:
        """The events of each call by session, once ``ended`` calls have published ``end``."""

        def done() -> bool:
            return sum(e["state"] == "end" for e in self.events()) >= ended

        await wait_until(done, timeout_s=EVENTS_TIMEOUT_S, what=f"{ended} ended calls in the event log")
        sessions: dict[str, list[dict[str, str]]] = {}
        for event in self.events():
            sessions.setdefault(event["session_id"], []).append(event)
        return sessions


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, env: Mapping[str, str] | None = None, setup: Setup | None = None
) -> AsyncIterator[Server]:
    """vpbx with USERS (and what ``setup`` adds) and its call events in a file."""
    for program in ("sipsak", "sipp"):
        require_binary(program)
    events_file = tmp_path / "events.jsonl"
    full_env = {"VPBX_DEBUG_CALL_EVENTS_FILE": str(events_file), **(env or {})}
    async with Vpbx.running(tmp_path / "vpbx", users=USERS, env=full_env, setup=setup) as vpbx:
        yield Server(vpbx, events_file)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running(tmp_path) as s:
        yield s


def caller_run(server: Server, scenario: str | Path, *, caller: str, callee: str, **kw: object) -> SippRun:
    service = server.service
    return SippRun(
        scenario=scenario,
        remote=(service.host, service.port),
        service=callee,
        keys={"domain": service.domain, "caller": caller},
        auth_user=caller,
        auth_password=service.password(caller),
        auth_uri=f"{callee}@{service.domain}",
        timeout_s=SIPP_TIMEOUT_S,
        **kw,  # type: ignore[arg-type]
    )


def callee_run(scenario: str, calls: int = 1, **kw: object) -> SippRun:
    return SippRun(scenario=scenario, calls=calls, timeout_s=SIPP_TIMEOUT_S, **kw)  # type: ignore[arg-type]


async def bind(server: Server, user: str, sipp: SippProcess, *, expires_s: int = 300) -> None:
    """Register ``user`` with a contact pointing at a SIPp callee (``expires_s=0``: remove it again, RFC 3261
    §10.2.2, so a phone that has gone away is not rung, and waited for, with the next one: ``unbind``)."""
    if expires_s:
        await sipp.wait_listening()
    service = server.service
    result = await sipsak.register(
        service.host,
        service.port,
        user,
        service.password(user),
        contact=f"sip:{user}@127.0.0.1:{sipp.port}",
        expires_s=expires_s,
    )
    assert result.ok, result.output


async def unbind(server: Server, user: str, sipp: SippProcess) -> None:
    """Remove the registration ``bind`` made for ``sipp``."""
    await bind(server, user, sipp, expires_s=0)


def rejected_scenario(tmp_path: Path, code: int) -> Path:
    """uac_rejected.xml expecting ``code`` as the final response."""
    path = tmp_path / f"uac_rejected_{code}.xml"
    path.write_text(scenario_path("uac_rejected").read_text().replace("FINAL_CODE", str(code)))
    return path


def states(events: list[dict[str, str]]) -> list[str]:
    return [e["state"] for e in events]


def assert_answered_call(events: list[dict[str, str]], *, caller: str, callee: str, legs: int = 1) -> None:
    assert states(events) == ["new", *["calling"] * legs, "connected", "disconnected", "end"]
    assert [int(e["seq"]) for e in events] == list(range(1, len(events) + 1))
    for e in events:
        assert e["type"] == "internal" and e["domain"] == "peers.vpbx.test"
        assert e["from_number"] == f"user{caller}@peers.vpbx.test" and e["from_pin"] == caller
        assert e["request_number"] == f"user{callee}@peers.vpbx.test" and e["request_pin"] == callee
    assert events[-2]["disconnect_reason"] == "5"
    assert events[-1]["is_record"] == "false"


# --- answered calls -----------------------------------------------------------------------------------------


async def test_call_with_digest_is_answered_and_the_caller_hangs_up(server: Server, tmp_path: Path) -> None:
    async with SippProcess.running(callee_run("uas_answer", calls=2), tmp_path) as callee:
        await bind(server, "102", callee)
        caller = await run_sipp(
            caller_run(server, "uac_call", caller="103", callee="102", calls=2, rate=10, duration_ms=200),
            tmp_path,
        )
        answered = await callee.wait()

    assert caller.ok, caller.describe()
    assert answered.ok, answered.describe()
    calls = await server.calls(ended=2)
    assert len(calls) == 2
    for events in calls.values():
        assert_answered_call(events, caller="103", callee="102")
        assert events[1]["request_uri"].startswith("sip:102@127.0.0.1:")


async def test_the_callee_hangs_up_and_the_caller_gets_bye(server: Server, tmp_path: Path) -> None:
    async with SippProcess.running(callee_run("uas_answer_bye", duration_ms=200), tmp_path) as callee:
        await bind(server, "102", callee)
        caller = await run_sipp(
            caller_run(server, "uac_call_wait_bye", caller="101", callee="102", calls=1), tmp_path
        )
        answered = await callee.wait()

    assert caller.ok, caller.describe()
    assert answered.ok, answered.describe()
    [events] = (await server.calls(ended=1)).values()
    assert_answered_call(events, caller="101", callee="102")


async def test_hold_and_resume_are_answered_without_reinviting_the_callee(
    server: Server, tmp_path: Path
) -> None:
    async with SippProcess.running(callee_run("uas_answer"), tmp_path) as callee:
        await bind(server, "102", callee)
        caller = await run_sipp(
            caller_run(server, "uac_hold", caller="101", callee="102", calls=1, duration_ms=100), tmp_path
        )
        answered = await callee.wait()

    assert caller.ok, caller.describe()  # 200 with a=recvonly to sendonly, a=sendrecv on resume
    assert answered.ok, answered.describe()  # an unexpected re-INVITE would have failed the callee
    [events] = (await server.calls(ended=1)).values()
    assert_answered_call(events, caller="101", callee="102")


async def test_both_contacts_ring_and_the_first_answer_wins(server: Server, tmp_path: Path) -> None:
    async with (
        SippProcess.running(callee_run("uas_answer"), tmp_path) as desk,
        SippProcess.running(callee_run("uas_ring_elsewhere"), tmp_path) as mobile,
    ):
        await bind(server, "102", desk)
        await bind(server, "102", mobile)
        caller = await run_sipp(
            caller_run(server, "uac_call", caller="101", callee="102", calls=1, duration_ms=200), tmp_path
        )
        answered, cancelled = await desk.wait(), await mobile.wait()

    assert caller.ok, caller.describe()
    assert answered.ok, answered.describe()
    assert cancelled.ok, cancelled.describe()  # CANCEL with Reason "Call completed elsewhere", then 487
    [events] = (await server.calls(ended=1)).values()
    assert_answered_call(events, caller="101", callee="102", legs=2)
    rung = {e["request_uri"] for e in events if e["state"] == "calling"}
    assert rung == {f"sip:102@127.0.0.1:{desk.port}", f"sip:102@127.0.0.1:{mobile.port}"}


# --- calls that are not answered ----------------------------------------------------------------------------


async def test_cancel_before_the_answer_gets_487(server: Server, tmp_path: Path) -> None:
    async with SippProcess.running(callee_run("uas_ring"), tmp_path) as callee:
        await bind(server, "102", callee)
        caller = await run_sipp(
            caller_run(server, "uac_cancel", caller="101", callee="102", calls=1), tmp_path
        )
        rang = await callee.wait()

    assert caller.ok, caller.describe()
    assert rang.ok, rang.describe()
    [events] = (await server.calls(ended=1)).values()
    assert states(events) == ["new", "calling", "end"]


async def test_a_busy_callee_gives_486(server: Server, tmp_path: Path) -> None:
    async with SippProcess.running(callee_run("uas_busy"), tmp_path) as callee:
        await bind(server, "102", callee)
        caller = await run_sipp(
            caller_run(server, rejected_scenario(tmp_path, 486), caller="101", callee="102", calls=1),
            tmp_path,
        )
        busy = await callee.wait()

    assert caller.ok, caller.describe()
    assert busy.ok, busy.describe()
    [events] = (await server.calls(ended=1)).values()
    assert states(events) == ["new", "calling", "end"]


async def test_unknown_extension_gets_404_and_unregistered_user_480(server: Server, tmp_path: Path) -> None:
    unknown = await run_sipp(
        caller_run(server, rejected_scenario(tmp_path, 404), caller="101", callee="999", calls=1), tmp_path
    )
    absent = await run_sipp(
        caller_run(server, rejected_scenario(tmp_path, 480), caller="101", callee="104", calls=1), tmp_path
    )

    assert unknown.ok, unknown.describe()
    assert absent.ok, absent.describe()
    [events] = (await server.calls(ended=1)).values()  # the unknown extension makes no call
    assert states(events) == ["new", "end"]
    assert events[0]["request_pin"] == "104"


# --- a phone that vanishes ----------------------------------------------------------------------------------


async def test_silent_media_ends_the_call_on_both_sides(tmp_path: Path) -> None:
    """Neither SIPp sends RTP: as if the phones vanished. The media timeout BYEs both legs."""
    async with (
        running(tmp_path, {"VPBX_MEDIA_TIMEOUT_S": str(MEDIA_TIMEOUT_S)}) as server,
        SippProcess.running(callee_run("uas_answer", trace_msg=True), tmp_path) as callee,
    ):
        await bind(server, "102", callee)
        caller = await run_sipp(
            caller_run(server, "uac_call_wait_bye", caller="101", callee="102", calls=1, trace_msg=True),
            tmp_path,
        )
        answered = await callee.wait()

    assert caller.ok, caller.describe()
    assert answered.ok, answered.describe()
    for result in (caller, answered):
        log = (result.workdir / "messages.log").read_text(errors="replace")
        assert 'Reason: SIP;cause=200;text="media timeout"' in log
    [events] = (await server.calls(ended=1)).values()
    assert_answered_call(events, caller="101", callee="102")


async def test_stopping_the_server_ends_a_live_call_with_bye(tmp_path: Path) -> None:
    """SIGTERM: vpbx BYEs both legs of a live call before it exits (telephony.md §4, drain)."""
    async with running(tmp_path) as server:
        async with SippProcess.running(callee_run("uas_answer"), tmp_path) as callee:
            await bind(server, "102", callee)
            run = caller_run(server, "uac_call_wait_bye", caller="101", callee="102", calls=1)
            async with SippProcess.running(run, tmp_path) as caller:

                def connected() -> bool:
                    return any(e["state"] == "connected" for e in server.events())

                await wait_until(connected, timeout_s=EVENTS_TIMEOUT_S, what="the call to connect")
                assert await server.vpbx.proc.stop() == 0
                hung_up, answered = await caller.wait(), await callee.wait()

        assert hung_up.ok, hung_up.describe()
        assert answered.ok, answered.describe()
        [events] = (await server.calls(ended=1)).values()
        assert_answered_call(events, caller="101", callee="102")


async def test_a_dead_media_worker_ends_its_calls_with_bye(tmp_path: Path) -> None:
    """SIGKILL the media worker mid-call: the relay is gone, so vpbx BYEs both legs (telephony.md §3.9)."""
    async with running(tmp_path) as server:
        async with SippProcess.running(callee_run("uas_answer", trace_msg=True), tmp_path) as callee:
            await bind(server, "102", callee)
            run = caller_run(server, "uac_call_wait_bye", caller="101", callee="102", calls=1, trace_msg=True)
            async with SippProcess.running(run, tmp_path) as caller:

                def connected() -> bool:
                    return any(e["state"] == "connected" for e in server.events())

                await wait_until(connected, timeout_s=EVENTS_TIMEOUT_S, what="the call to connect")
                workers = [pid for pid in descendants(server.vpbx.proc.pid) if _is_media_worker(pid)]
                assert workers, "vpbx serve runs its media in worker processes"
                for pid in workers:
                    os.kill(pid, signal.SIGKILL)
                hung_up, answered = await caller.wait(), await callee.wait()

        assert hung_up.ok, hung_up.describe()
        assert answered.ok, answered.describe()
        for result in (hung_up, answered):
            log = (result.workdir / "messages.log").read_text(errors="replace")
            assert 'Reason: SIP;cause=503;text="media lost"' in log
        [events] = (await server.calls(ended=1)).values()
        assert_answered_call(events, caller="101", callee="102")


def _is_media_worker(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return b"vpbx.media.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False
