"""call_events of transferred calls with real phones (integration-api.md §5.2): baresips around ``vpbx serve``
with the Integration API on, transferring as tests/integration/test_transfer.py drives them (blind REFER by
the callee; attended REFER with Replaces by the caller), and a CRM (a real HTTP server in the test process)
verifying every signature. On the wire a transfer is a repeated conversation within one ``session_id``: the
released leg's ``disconnected`` carries ``disconnect_reason`` "0", the target's ``calling`` (blind only: the
attended target already talks) and ``connected`` follow, and ``end`` names the last connected employee."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from tests.integration.peers.sipp import SippProcess
from tests.integration.test_api_events import CLIENT_ID, KEY, events_of, with_api
from tests.integration.test_incoming_calls import CALLER, LINE, carrier_run, line_to
from tests.integration.test_transfer import (
    Phones,
    alice_calls_bob,
    alice_consults_carol,
    alice_merges,
    bob_transfers_blind_to_carol,
    phones,
)
from tests.integration_api.notify_crm import Crm
from vpbx.app import Core
from vpbx.integration_api.core import verify
from vpbx.integration_api.events import body

pytestmark = pytest.mark.peers

# §5.2's key order; keys that do not apply are left out
KEYS = "state type session_id timestamp from_number from_pin request_number request_pin disconnect_reason"
KEYS += " is_record domain"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}")


async def nothing(_s: AsyncSession, _core: Core, _domain_id: uuid.UUID) -> None:
    """No rows beyond the users: internal calls between the three phones."""


def expected(domain: str, steps: list[tuple[str, str, str, str | None]]) -> list[dict[str, str]]:
    """The bodies of an internal call by (state, caller, callee, disconnect_reason), minus the time: after
    a transfer the caller is the party that stayed, the callee the one that came (vpbx/pbx/transfer.py)."""
    out = []
    for state, caller, callee, reason in steps:
        event = {"state": state, "type": "internal", "from_number": f"user{caller}@{domain}"}
        event |= {"from_pin": caller, "request_number": f"user{callee}@{domain}", "request_pin": callee}
        if reason is not None:
            event["disconnect_reason"] = reason
        if state == "end":
            event["is_record"] = "false"
        out.append(event | {"domain": domain})
    return out


async def received(p: Phones, crm: Crm, ended: int) -> list[list[dict[str, str]]]:
    """Once ``ended`` calls ended and the CRM got all their events: every request signed with the domain's
    credentials; each session's bodies exactly the engine's events as §5.2 renders them, in order, keys in
    the wire order. The bodies of each call (oldest first), without ``timestamp`` and ``session_id``."""
    engine = await p.server.calls(ended=ended)
    await crm.wait_for(sum(map(len, engine.values())))
    by_session: dict[str, list[dict[str, str]]] = {}
    for r in events_of(crm):
        assert r.headers["x-client-id"] == CLIENT_ID
        assert verify(CLIENT_ID, r.raw, KEY, r.headers["x-client-sign"]), r.raw
        assert r.headers["content-type"] == "application/json; charset=utf-8"
        wire: dict[str, str] = r.json
        assert list(wire) == [k for k in KEYS.split() if k in wire], wire
        assert TIMESTAMP.fullmatch(wire["timestamp"]), wire
        by_session.setdefault(wire["session_id"], []).append(wire)
    assert set(by_session) == set(engine)
    for session_id, bodies in by_session.items():
        assert bodies == [body(e) for e in engine[session_id]]
        stamps = [dt.datetime.fromisoformat(b["timestamp"]) for b in bodies]
        assert stamps == sorted(stamps)
    return [
        [{k: v for k, v in b.items() if k not in ("timestamp", "session_id")} for b in by_session[sid]]
        for sid in sorted(engine, key=lambda sid: engine[sid][0]["timestamp"])
    ]


async def test_a_blind_transfer_reaches_the_crm_as_one_session(tmp_path: Path) -> None:
    async with (
        Crm().running() as crm,
        phones(tmp_path, tones=False, setup=with_api(nothing, crm)) as p,
    ):
        domain = p.server.service.domain
        await alice_calls_bob(p)
        await bob_transfers_blind_to_carol(p)
        await p.alice.hangup()
        await p.carol.wait_event("CALL_CLOSED")
        [bodies] = await received(p, crm, 1)

    assert bodies == expected(
        domain,
        [
            ("new", "101", "102", None),
            ("calling", "101", "102", None),
            ("connected", "101", "102", None),
            ("disconnected", "101", "102", "0"),  # bob's leg released by the transfer
            ("calling", "101", "103", None),
            ("connected", "101", "103", None),
            ("disconnected", "101", "103", "5"),
            ("end", "101", "103", None),  # the last connected employee
        ],
    )


async def test_a_customers_call_transferred_blind_keeps_its_session_and_the_line(tmp_path: Path) -> None:
    """A SIPp carrier calls the line, which rings bob (102); bob transfers the customer to carol (103) by
    REFER; carol hangs up. The CRM's bodies: the customer's number throughout, the line in ``new``, then
    the employee rung or connected, the transfer's "0" and carol's normal end."""
    async with (
        Crm().running() as crm,
        phones(tmp_path, tones=False, setup=with_api(line_to("user"), crm)) as p,
    ):
        domain = p.server.service.domain
        async with SippProcess.running(
            carrier_run(p.server, scenario="uac_call_wait_bye", calls=1), tmp_path
        ) as customer:
            await p.bob.wait_event("CALL_ESTABLISHED")
            await bob_transfers_blind_to_carol(p)
            await p.carol.hangup()
            await p.carol.wait_event("CALL_CLOSED")
            hung_up = await customer.wait()
        [bodies] = await received(p, crm, 1)

    assert hung_up.ok, hung_up.describe()  # answered, then our BYE when carol left
    customer_number = {"type": "incoming", "from_number": f"sip:{CALLER}@{domain}"}
    line = {"request_number": f"sip:{LINE}@{domain}"}

    def employee(pin: str) -> dict[str, str]:
        return {"request_number": f"user{pin}@{domain}", "request_pin": pin}

    assert bodies == [
        {"state": "new", **customer_number, **line, "domain": domain},
        {"state": "calling", **customer_number, **employee("102"), "domain": domain},
        {"state": "connected", **customer_number, **employee("102"), "domain": domain},
        {
            "state": "disconnected",
            **customer_number,
            **employee("102"),
            "disconnect_reason": "0",
            "domain": domain,
        },
        {"state": "calling", **customer_number, **employee("103"), "domain": domain},
        {"state": "connected", **customer_number, **employee("103"), "domain": domain},
        {
            "state": "disconnected",
            **customer_number,
            **employee("103"),
            "disconnect_reason": "5",
            "domain": domain,
        },
        {"state": "end", **customer_number, **employee("103"), "is_record": "false", "domain": domain},
    ]


async def test_an_attended_transfer_reaches_the_crm_as_two_sessions(tmp_path: Path) -> None:
    async with (
        Crm().running() as crm,
        phones(tmp_path, tones=False, trace_alice=True, setup=with_api(nothing, crm)) as p,
    ):
        domain = p.server.service.domain
        await alice_calls_bob(p)
        await alice_merges(p, await alice_consults_carol(p))
        await p.bob.hangup()
        await p.carol.wait_event("CALL_CLOSED")
        first, consultation = await received(p, crm, 2)

    assert first == expected(
        domain,
        [
            ("new", "101", "102", None),
            ("calling", "101", "102", None),
            ("connected", "101", "102", None),
            ("disconnected", "101", "102", "0"),
            ("connected", "102", "103", None),  # no calling: carol was talking already
            ("disconnected", "102", "103", "5"),
            ("end", "102", "103", None),  # bob stayed (now the caller), carol came
        ],
    )
    assert consultation == expected(
        domain,
        [
            ("new", "101", "103", None),
            ("calling", "101", "103", None),
            ("connected", "101", "103", None),
            ("disconnected", "101", "103", "0"),  # merged into the first call
            ("end", "101", "103", None),
        ],
    )


async def test_a_call_hung_up_on_hold_says_so(tmp_path: Path) -> None:
    """alice holds bob, who hangs up while listening to the music: ``disconnected`` carries "4"."""
    async with (
        Crm().running() as crm,
        phones(tmp_path, tones=False, setup=with_api(nothing, crm)) as p,
    ):
        domain = p.server.service.domain
        await alice_calls_bob(p)
        await p.alice.command("hold")
        # the re-INVITE's answer: the hold took effect before bob hangs up
        await p.alice.wait_event("CALL_REMOTE_SDP", where=lambda e: e.get("param") == "answer")
        await p.bob.hangup()
        await p.alice.wait_event("CALL_CLOSED")
        [bodies] = await received(p, crm, 1)

    assert bodies == expected(
        domain,
        [
            ("new", "101", "102", None),
            ("calling", "101", "102", None),
            ("connected", "101", "102", None),
            ("disconnected", "101", "102", "4"),
            ("end", "101", "102", None),
        ],
    )
