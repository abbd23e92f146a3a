"""A user calls an outside number: the INVITE reaches the carrier (SIPp on 127.0.0.2, an IP trunk) with
the number in the trunk's format and the domain's line as caller ID; a number the user may not call is
refused."""

from __future__ import annotations

import dataclasses
import re
import signal
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from tests.helpers import Cabinet
from tests.integration.peers.net import free_port_block, wait_until
from tests.integration.peers.sipp import SippProcess, SippRun, run_sipp
from tests.integration.peers.vpbx import Setup
from tests.integration.test_calls import Server, callee_run, caller_run, rejected_scenario, running
from vpbx.app import Core
from vpbx.pbx import lines, trunks, users

pytestmark = pytest.mark.peers

CARRIER_IP = "127.0.0.2"
LINE = "+74951234567"
ADMIN = "outbound-admin-pass"


def carrier_trunk(port: int, transport: str = "udp") -> Setup:
    async def setup(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
        await trunks.create_trunk(
            s,
            domain_id,
            trunks.TrunkInput(
                name="Carrier",
                kind="ip",
                host=CARRIER_IP,
                port=port,
                allowed_networks=[f"{CARRIER_IP}/32"],
                number_format="national",
                transport=transport,
            ),
            box=core.box,
        )
        await lines.create_number(s, domain_id, lines.NumberInput(number=LINE))

    return setup


async def test_an_outside_call_reaches_the_carrier_in_its_format(tmp_path: Path) -> None:
    port = free_port_block(1)
    async with (
        running(tmp_path, setup=carrier_trunk(port)) as server,
        SippProcess.running(
            # the trunk's OPTIONS reach the carrier too: uas_trunk answers them beside the call
            callee_run("uas_trunk", calls=100_000, local_ip=CARRIER_IP, local_port=port, trace_msg=True),
            tmp_path,
        ) as carrier,
    ):
        await carrier.wait_listening()
        caller = await run_sipp(
            caller_run(server, "uac_call", caller="101", callee="84957654321", calls=1, duration_ms=300),
            tmp_path,
        )
        [events] = (await server.calls(ended=1)).values()
        answered = await carrier.stop()

    assert caller.ok, caller.describe()
    assert answered.ok, answered.describe()
    log = (answered.workdir / "messages.log").read_text(errors="replace")
    assert f"INVITE sip:84957654321@{CARRIER_IP}" in log  # the carrier's national format
    assert "From: <sip:84951234567@" in log  # the domain's line as caller ID
    assert [e["state"] for e in events] == ["new", "connected", "disconnected", "end"]
    assert events[0]["type"] == "outbound" and events[0]["from_pin"] == "101"


async def test_an_international_number_is_refused_with_a_spoken_reason(tmp_path: Path) -> None:
    async with running(tmp_path, setup=carrier_trunk(free_port_block(1))) as server:
        refused = await run_sipp(
            caller_run(
                server,
                rejected_scenario(tmp_path, 403),
                caller="101",
                callee="+493012345678",
                calls=1,
                trace_msg=True,
            ),
            tmp_path,
        )
    assert refused.ok, refused.describe()
    log = (refused.workdir / "messages.log").read_text(errors="replace")
    assert log.index("SIP/2.0 183") < log.index(
        "SIP/2.0 403"
    )  # the spoken reason comes first, as early media
    assert server.events() == []


SECOND_IP = "127.0.0.3"


def two_trunks(first_port: int, second_port: int) -> Setup:
    """Two IP trunks in failover order (127.0.0.2 first, then 127.0.0.3) and an admin to watch them."""

    async def setup(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
        for name, host, port, priority in (
            ("First", CARRIER_IP, first_port, 1),
            ("Second", SECOND_IP, second_port, 2),
        ):
            await trunks.create_trunk(
                s,
                domain_id,
                trunks.TrunkInput(
                    name=name,
                    kind="ip",
                    host=host,
                    port=port,
                    priority=priority,
                    allowed_networks=[f"{host}/32"],
                ),
                box=core.box,
            )
        await lines.create_number(s, domain_id, lines.NumberInput(number=LINE))
        await users.create_user(
            s,
            domain_id,
            users.UserInput(name="admin", display_name="Admin", pin="900", role="admin", web_password=ADMIN),
            box=core.box,
        )

    return setup


async def test_calls_fail_over_to_the_second_trunk_when_the_first_stops_answering_options(
    tmp_path: Path,
) -> None:
    first_port, second_port = free_port_block(1), free_port_block(1)
    env = {"VPBX_TRUNK_OPTIONS_INTERVAL_S": "0.5"}  # down after three unanswered OPTIONS
    # each carrier answers OPTIONS (every one a SIPp "call") and calls, until stopped
    first = callee_run("uas_trunk", calls=100_000, local_ip=CARRIER_IP, local_port=first_port)
    second = callee_run(
        "uas_trunk", calls=100_000, local_ip=SECOND_IP, local_port=second_port, trace_msg=True
    )
    async with (
        running(tmp_path, env=env, setup=two_trunks(first_port, second_port)) as server,
        SippProcess.running(first, tmp_path / "first") as carrier1,
        SippProcess.running(second, tmp_path / "second") as carrier2,
    ):
        await carrier1.wait_listening()
        await carrier2.wait_listening()
        async with httpx.AsyncClient(base_url=server.vpbx.http_url, timeout=5) as client:
            cab = Cabinet(client)
            assert (await cab.login(f"admin@{server.service.domain}", ADMIN)).status_code == 303
            await trunk_states(cab, {"First": "up", "Second": "up"})
            before = await run_sipp(outside_call(server), tmp_path / "before")
            await carrier1.proc.stop(sig=signal.SIGKILL)  # the first carrier is gone
            await trunk_states(cab, {"First": "down", "Second": "up"})
            after = await run_sipp(outside_call(server), tmp_path / "after")
        await server.calls(ended=2)
        answered = await carrier2.stop()

    assert before.ok, before.describe()
    assert after.ok, after.describe()
    assert answered.ok, answered.describe()
    second_log = (answered.workdir / "messages.log").read_text(errors="replace")
    # the first call went to the first trunk; the second went straight to the second trunk, once
    assert second_log.count("INVITE sip:") == 1
    assert f"@{SECOND_IP}" in second_log


def outside_call(server: Server) -> SippRun:
    return caller_run(server, "uac_call", caller="101", callee="84957654321", calls=1, duration_ms=200)


async def trunk_states(cab: Cabinet, states: dict[str, str]) -> None:
    """Poll the trunks' live fragment until each named trunk shows its state."""
    html = ""

    async def shows() -> bool:
        nonlocal html
        html = (await cab.get("/trunks/status")).text
        return all(trunk_row_state(html, name) == state for name, state in states.items())

    try:
        await wait_until(shows, timeout_s=15, what=f"trunk states {states}", interval_s=0.1)
    except TimeoutError:
        raise AssertionError(f"trunks never showed {states}:\n{html}") from None


def trunk_row_state(html: str, name: str) -> str:
    """The data-state of the trunk named ``name`` in the live fragment ("" when it is not listed)."""
    row = re.search(
        rf'<tr id="trunk-[^"]+">(?:(?!</tr>).)*>{re.escape(name)}</a>(?:(?!</tr>).)*</tr>', html, re.S
    )
    state = re.search(r'data-state="([^"]+)"', row.group(0)) if row else None
    return state.group(1) if state else ""


async def test_a_tcp_trunk_carries_the_call_on_one_connection(tmp_path: Path) -> None:
    """The trunk's transport is TCP: vpbx opens the connection to the carrier (SIPp over TCP) and sends the
    OPTIONS, the INVITE, the ACK and the BYE on it; the carrier's answers come back on it."""
    port = free_port_block(1)
    carrier_run = callee_run("uas_trunk", calls=100_000, local_ip=CARRIER_IP, local_port=port, transport="t1")
    async with (
        running(
            tmp_path, env={"VPBX_TRUNK_OPTIONS_INTERVAL_S": "1"}, setup=carrier_trunk(port, "tcp")
        ) as server,
        SippProcess.running(dataclasses.replace(carrier_run, trace_msg=True), tmp_path) as carrier,
    ):
        await carrier.wait_listening()
        caller = await run_sipp(outside_call(server), tmp_path)
        [events] = (await server.calls(ended=1)).values()
        answered = await carrier.stop()

    assert caller.ok, caller.describe()
    assert [e["state"] for e in events] == ["new", "connected", "disconnected", "end"]
    log = (answered.workdir / "messages.log").read_text(errors="replace")
    invite = log[log.index("INVITE sip:") :]
    assert invite.startswith(f"INVITE sip:84957654321@{CARRIER_IP}")
    assert "Via: SIP/2.0/TCP" in invite.split("\n\n")[0]
    assert "BYE sip:" in log and "TCP message received" in log and "UDP message" not in log
