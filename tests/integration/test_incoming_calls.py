"""A carrier (SIPp on 127.0.0.2, known by an IP trunk) calls one of the domain's lines; the rules decide
who rings. Phones are SIPp UASes registered with sipsak; vpbx runs as ``vpbx serve`` with its media workers.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tests.integration.peers.baresip import Account, Baresip
from tests.integration.peers.net import wait_until
from tests.integration.peers.process import require_binary
from tests.integration.peers.sipp import SippProcess, SippRun, run_sipp, scenario_path
from tests.integration.peers.vpbx import Setup
from tests.integration.test_calls import SIPP_TIMEOUT_S, Server, bind, callee_run, running
from vpbx.app import Core
from vpbx.pbx import groups, lines, menus, routing, trunks
from vpbx.pbx.actions import ActionInput
from vpbx.store.models import User

pytestmark = pytest.mark.peers

CARRIER_IP = "127.0.0.2"  # a host of its own on loopback: the trunk knows the carrier by this address
LINE = "74951234567"
CALLER = "79161234567"


def line_to(
    target: str, *, members: tuple[str, ...] = (), carrier_networks: tuple[str, ...] = (f"{CARRIER_IP}/32",)
) -> Setup:
    """An IP trunk for the carrier, the line, and one rule sending the line's calls to ``target``."""

    async def setup(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
        await trunks.create_trunk(
            s,
            domain_id,
            trunks.TrunkInput(
                name="Carrier", kind="ip", host=CARRIER_IP, allowed_networks=list(carrier_networks)
            ),
            box=core.box,
        )
        number = await lines.create_number(s, domain_id, lines.NumberInput(number=f"+{LINE}"))
        user_id = await s.scalar(select(User.id).where(User.domain_id == domain_id, User.pin == "102"))
        if target == "user":
            action = ActionInput(action="user", user_id=user_id)
        elif target == "group":
            group = await groups.create_group(
                s,
                domain_id,
                groups.GroupInput(
                    name="Sales",
                    pin="600",
                    strategy="sequential",
                    member_timeout_s=5,
                    overall_timeout_s=20,
                    members=list(members),
                ),
            )
            action = ActionInput(action="group", group_id=group.id)
        elif target == "menu":  # a voice menu whose key 1 rings extension 102 (greeting spoken on first use)
            main = await menus.create_menu(
                s,
                domain_id,
                menus.MenuInput(
                    name="Main",
                    prompt_text="Здравствуйте. Нажмите один.",
                    keys=[menus.KeyInput(key="1", target=ActionInput(action="user", user_id=user_id))],
                ),
            )
            action = ActionInput(action="menu", menu_id=main.id)
        else:
            action = ActionInput(action=target)
        await routing.add_rule(s, domain_id, number.id, routing.RuleInput(target=action))

    return setup


def refused(tmp_path: Path, code: int) -> Path:
    """uac_refused.xml expecting ``code`` as the final response."""
    path = tmp_path / f"uac_refused_{code}.xml"
    path.write_text(scenario_path("uac_refused").read_text().replace("FINAL_CODE", str(code)))
    return path


def carrier_run(server: Server, **kw: object) -> SippRun:
    service = server.service
    args: dict[str, object] = {
        "scenario": "uac_call",
        "remote": (service.host, service.port),
        "service": LINE,
        "keys": {"domain": service.host, "caller": CALLER},
        "local_ip": CARRIER_IP,
        "timeout_s": SIPP_TIMEOUT_S,
    }
    args.update(kw)
    return SippRun(**args)  # type: ignore[arg-type]


async def test_a_carrier_call_to_the_line_reaches_the_user_of_the_rule(tmp_path: Path) -> None:
    async with (
        running(tmp_path, setup=line_to("user")) as server,
        SippProcess.running(callee_run("uas_answer"), tmp_path) as phone,
    ):
        await bind(server, "102", phone)
        caller = await run_sipp(carrier_run(server, calls=1, duration_ms=300), tmp_path)
        answered = await phone.wait()
        [events] = (await server.calls(ended=1)).values()

    assert caller.ok, caller.describe()
    assert answered.ok, answered.describe()
    assert [e["state"] for e in events] == ["new", "calling", "connected", "disconnected", "end"]
    domain = server.service.domain
    assert {e["type"] for e in events} == {"incoming"}
    assert all(e["from_number"] == f"sip:{CALLER}@{domain}" for e in events)
    assert events[0]["request_number"] == f"sip:{LINE}@{domain}"
    assert events[2]["request_number"] == f"user102@{domain}" and events[2]["request_pin"] == "102"


async def test_a_sequential_group_moves_on_when_the_first_member_does_not_answer(tmp_path: Path) -> None:
    async with (
        running(tmp_path, setup=line_to("group", members=("101", "102"))) as server,
        SippProcess.running(callee_run("uas_ring"), tmp_path) as silent,
        SippProcess.running(callee_run("uas_answer"), tmp_path) as answering,
    ):
        await bind(server, "101", silent)
        await bind(server, "102", answering)
        caller = await run_sipp(carrier_run(server, calls=1, duration_ms=300), tmp_path)
        answered = await answering.wait()
        [events] = (await server.calls(ended=1)).values()

    assert caller.ok, caller.describe()
    assert answered.ok, answered.describe()
    assert [(e["state"], e.get("request_pin")) for e in events] == [
        ("new", None),
        ("calling", "101"),
        ("calling", "102"),
        ("connected", "102"),
        ("disconnected", "102"),
        ("end", "102"),
    ]


async def test_a_rejecting_rule_and_an_unknown_line(tmp_path: Path) -> None:
    async with running(tmp_path, setup=line_to("reject")) as server:
        rejected = await run_sipp(carrier_run(server, calls=1, scenario=refused(tmp_path, 603)), tmp_path)
        unknown = await run_sipp(
            carrier_run(server, calls=1, scenario=refused(tmp_path, 404), service="74959999999"), tmp_path
        )
    assert rejected.ok, rejected.describe()
    assert unknown.ok, unknown.describe()
    assert server.events() == []


async def test_a_baresip_phone_answers_a_carrier_call(tmp_path: Path) -> None:
    """baresip registers as 102 and answers by itself; SIPp as the carrier plays no audio, so the check
    is the call itself and its events, end to end with media anchored in the worker."""
    require_binary("baresip")
    async with (
        running(tmp_path, setup=line_to("user")) as server,
        Baresip.start(tmp_path, name="desk") as desk,
    ):
        await desk.register(Account.on(server.service, "102", answermode="auto"))
        caller = await run_sipp(carrier_run(server, calls=1, duration_ms=1500), tmp_path)
        await desk.wait_event("CALL_CLOSED")
        [events] = (await server.calls(ended=1)).values()

    assert caller.ok, caller.describe()
    assert [e["state"] for e in events] == ["new", "calling", "connected", "disconnected", "end"]
    assert events[2]["request_pin"] == "102" and events[0]["type"] == "incoming"


def menu_key_scenario(tmp_path: Path, digit: str) -> Path:
    """uac_menu_key.xml pressing ``digit``, from SIPp's own RFC 4733 recordings."""
    pcap = Path(f"/usr/share/sip-tester/dtmf_2833_{digit}.pcap")
    if not pcap.exists():
        pytest.fail(f"{pcap} is missing: the sip-tester package ships it")
    scenario = tmp_path / f"uac_menu_key_{digit}.xml"
    scenario.write_text(scenario_path("uac_menu_key").read_text().replace("DTMF_PCAP", str(pcap)))
    return scenario


async def test_a_key_pressed_in_the_menu_rings_the_chosen_user(tmp_path: Path) -> None:
    require_binary("espeak-ng")
    scenario = menu_key_scenario(tmp_path, "1")
    async with (
        running(tmp_path, setup=line_to("menu")) as server,
        SippProcess.running(callee_run("uas_answer"), tmp_path) as phone,
    ):
        await bind(server, "102", phone)
        caller = await run_sipp(carrier_run(server, calls=1, scenario=scenario, duration_ms=1500), tmp_path)
        answered = await phone.wait()
        [events] = (await server.calls(ended=1)).values()

    assert caller.ok, caller.describe()
    assert answered.ok, answered.describe()
    assert [(e["state"], e.get("request_pin")) for e in events] == [
        ("new", None),
        ("calling", "102"),
        ("connected", "102"),
        ("disconnected", "102"),
        ("end", "102"),
    ]


async def test_a_baresip_caller_presses_a_key_in_the_menu_and_reaches_the_user(tmp_path: Path) -> None:
    """baresip plays the carrier (its source address is inside the trunk's networks and it never registers),
    waits for the menu to answer, sends ``1`` with its ``sndcode`` command (RFC 4733, as negotiated), and the
    menu rings extension 102 (a SIPp phone) and bridges the call."""
    require_binary("baresip")
    require_binary("espeak-ng")
    async with (
        running(
            tmp_path, setup=line_to("menu", carrier_networks=(f"{CARRIER_IP}/32", "127.0.0.1/32"))
        ) as server,
        SippProcess.running(callee_run("uas_answer"), tmp_path) as phone,
        Baresip.start(tmp_path, name="carrier") as carrier,
    ):
        await bind(server, "102", phone)
        service = server.service
        await carrier.add_account(
            Account(
                user=CALLER, domain=service.domain, password="unused", outbound=service.outbound, regint_s=0
            )
        )
        await carrier.dial(f"sip:{LINE}@{service.domain}")
        await carrier.wait_event("CALL_ESTABLISHED")  # the menu answered
        await carrier.command("sndcode", "1")
        [started] = await _until_calling(server)
        await carrier.hangup()
        answered = await phone.wait()
        [events] = (await server.calls(ended=1)).values()

    assert started["request_pin"] == "102"
    assert answered.ok, answered.describe()
    assert [(e["state"], e.get("request_pin")) for e in events] == [
        ("new", None),
        ("calling", "102"),
        ("connected", "102"),
        ("disconnected", "102"),
        ("end", "102"),
    ]


async def _until_calling(server: Server) -> list[dict[str, str]]:
    """Once the menu rings someone: the ``calling`` events so far."""

    def calling() -> list[dict[str, str]]:
        return [e for e in server.events() if e["state"] == "calling"]

    await wait_until(lambda: bool(calling()), timeout_s=15, what="the menu ringing the chosen user")
    await wait_until(
        lambda: any(e["state"] == "connected" for e in server.events()), timeout_s=15, what="the call bridged"
    )
    return calling()
