"""A user calls an outside number: the INVITE reaches the carrier (SIPp on 127.0.0.2, an IP trunk) with
the number in the trunk's format and the domain's line as caller ID; a number the user may not call is
refused."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from tests.integration.peers.net import free_port_block
from tests.integration.peers.sipp import SippProcess, run_sipp
from tests.integration.peers.vpbx import Setup
from tests.integration.test_calls import callee_run, caller_run, rejected_scenario, running
from vpbx.app import Core
from vpbx.pbx import lines, trunks

pytestmark = pytest.mark.peers

CARRIER_IP = "127.0.0.2"
LINE = "+74951234567"


def carrier_trunk(port: int) -> Setup:
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
            callee_run("uas_answer", local_ip=CARRIER_IP, local_port=port, trace_msg=True), tmp_path
        ) as carrier,
    ):
        await carrier.wait_listening()
        caller = await run_sipp(
            caller_run(server, "uac_call", caller="101", callee="84957654321", calls=1, duration_ms=300),
            tmp_path,
        )
        answered = await carrier.wait()
        [events] = (await server.calls(ended=1)).values()

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
