"""call_events with real peers for an outbound call and a missed one: ``vpbx serve`` with the Integration API
on, SIPp phones and carriers, and a CRM (a real HTTP server in the test process) verifying every signature;
the CRM receives exactly the engine's events, in order (integration-api.md §5.2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.peers.net import free_port_block
from tests.integration.peers.sipp import SippProcess, run_sipp
from tests.integration.test_api_events import CLIENT_ID, KEY, events_of, with_api
from tests.integration.test_calls import bind, callee_run, caller_run, running
from tests.integration.test_incoming_calls import carrier_run, line_to
from tests.integration.test_outbound_calls import CARRIER_IP, carrier_trunk
from tests.integration_api.notify_crm import Crm, Seen
from vpbx.integration_api.core import verify

pytestmark = pytest.mark.peers


def assert_signed(sent: list[Seen]) -> None:
    for r in sent:
        assert r.headers["x-client-id"] == CLIENT_ID
        assert verify(CLIENT_ID, r.raw, KEY, r.headers["x-client-sign"]), r.raw


async def test_an_outbound_call_sends_its_events_signed(tmp_path: Path) -> None:
    port = free_port_block(1)
    async with (
        Crm().running() as crm,
        running(tmp_path, setup=with_api(carrier_trunk(port), crm)) as server,
        SippProcess.running(
            callee_run("uas_trunk", calls=100_000, local_ip=CARRIER_IP, local_port=port), tmp_path
        ) as carrier,
    ):
        await carrier.wait_listening()
        caller = await run_sipp(
            caller_run(server, "uac_call", caller="101", callee="84957654321", calls=1, duration_ms=300),
            tmp_path,
        )
        [engine] = (await server.calls(ended=1)).values()
        await crm.wait_for(len(engine))
        await carrier.stop()
    assert caller.ok, caller.describe()
    sent = events_of(crm)
    assert [r.json["state"] for r in sent] == [e["state"] for e in engine]
    assert [r.json["state"] for r in sent] == ["new", "connected", "disconnected", "end"]
    assert_signed(sent)
    assert {r.json["type"] for r in sent} == {"outbound"} and sent[0].json["from_pin"] == "101"
    assert {r.json["session_id"] for r in sent} == {engine[0]["session_id"]}


async def test_a_missed_call_sends_its_events_signed(tmp_path: Path) -> None:
    async with (
        Crm().running() as crm,
        running(tmp_path, setup=with_api(line_to("user"), crm)) as server,
        SippProcess.running(callee_run("uas_ring"), tmp_path) as phone,
    ):
        await bind(server, "102", phone)
        caller = await run_sipp(carrier_run(server, calls=1, scenario="uac_cancel"), tmp_path)
        [engine] = (await server.calls(ended=1)).values()
        await crm.wait_for(len(engine))
    assert caller.ok, caller.describe()
    sent = events_of(crm)
    assert [(r.json["session_id"], r.json["state"]) for r in sent] == [
        (e["session_id"], e["state"]) for e in engine
    ]
    states = [r.json["state"] for r in sent]
    assert states[:2] == ["new", "calling"] and states[-1] == "end" and "connected" not in states
    assert_signed(sent)
    assert {r.json["type"] for r in sent} == {"incoming"}
