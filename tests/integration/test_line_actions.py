"""More of what a line's rules do, with real peers: the group strategies, a group's fall-through, a line
forwarded to an outside number, and the schedule's closing time in the domain's time zone.

The carrier is SIPp on 127.0.0.2 (an IP trunk); phones are SIPp UASes registered with sipsak.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tests.integration.peers.net import free_port_block
from tests.integration.peers.process import require_binary
from tests.integration.peers.sipp import SippProcess, run_sipp
from tests.integration.peers.vpbx import Setup
from tests.integration.test_calls import bind, callee_run, caller_run, rejected_scenario, running
from tests.integration.test_incoming_calls import (
    CALLER,
    CARRIER_IP,
    LINE,
    carrier_run,
    menu_key_scenario,
    refused,
)
from vpbx.app import Core
from vpbx.pbx import groups, lines, menus, routing, schedules, trunks
from vpbx.pbx.actions import ActionInput
from vpbx.store.models import Domain, User

pytestmark = pytest.mark.peers

Target = Callable[[AsyncSession, uuid.UUID], Awaitable[ActionInput]]


def line(target: Target, *, trunk_port: int = 5060) -> Setup:
    """The carrier's IP trunk (sending to ``trunk_port``), the line, and one rule to ``target``."""

    async def setup(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
        await trunks.create_trunk(
            s,
            domain_id,
            trunks.TrunkInput(
                name="Carrier",
                kind="ip",
                host=CARRIER_IP,
                port=trunk_port,
                allowed_networks=[f"{CARRIER_IP}/32"],
            ),
            box=core.box,
        )
        number = await lines.create_number(s, domain_id, lines.NumberInput(number=f"+{LINE}"))
        action = await target(s, domain_id)
        await routing.add_rule(s, domain_id, number.id, routing.RuleInput(target=action))

    return setup


async def user_id(s: AsyncSession, domain_id: uuid.UUID, pin: str) -> uuid.UUID:
    found = await s.scalar(select(User.id).where(User.domain_id == domain_id, User.pin == pin))
    assert found is not None
    return found


def group(
    strategy: str, members: tuple[str, ...], *, fallthrough_to: str | None = None, **timeouts: int
) -> Target:
    async def target(s: AsyncSession, domain_id: uuid.UUID) -> ActionInput:
        fallthrough = ActionInput(action=groups.HANG_UP)
        if fallthrough_to is not None:
            fallthrough = ActionInput(action="user", user_id=await user_id(s, domain_id, fallthrough_to))
        g = await groups.create_group(
            s,
            domain_id,
            groups.GroupInput(
                name="Sales",
                pin="600",
                strategy=strategy,
                member_timeout_s=timeouts.get("member_timeout_s", 5),
                overall_timeout_s=timeouts.get("overall_timeout_s", 20),
                members=list(members),
                fallthrough=fallthrough,
            ),
        )
        return ActionInput(action="group", group_id=g.id)

    return target


def rung(events: list[dict[str, str]]) -> list[tuple[str, str | None]]:
    return [(e["state"], e.get("request_pin")) for e in events]


async def test_a_simultaneous_group_rings_everyone_and_the_first_answer_wins(tmp_path: Path) -> None:
    async with (
        running(tmp_path, setup=line(group("simultaneous", ("101", "102")))) as server,
        SippProcess.running(callee_run("uas_answer"), tmp_path) as answering,
        SippProcess.running(callee_run("uas_ring_elsewhere"), tmp_path) as ringing,
    ):
        await bind(server, "101", answering)
        await bind(server, "102", ringing)
        caller = await run_sipp(carrier_run(server, calls=1, duration_ms=300), tmp_path)
        answered, cancelled = await answering.wait(), await ringing.wait()
        [events] = (await server.calls(ended=1)).values()

    assert caller.ok, caller.describe()
    assert answered.ok, answered.describe()
    assert cancelled.ok, cancelled.describe()  # CANCEL with Reason "Call completed elsewhere"
    assert sorted(rung(events)[1:3]) == [("calling", "101"), ("calling", "102")]
    assert rung(events)[3:] == [("connected", "101"), ("disconnected", "101"), ("end", "101")]


async def test_a_cyclic_group_starts_each_call_after_the_member_who_took_the_last(tmp_path: Path) -> None:
    async with (
        running(tmp_path, setup=line(group("cyclic", ("101", "102")))) as server,
        SippProcess.running(callee_run("uas_answer"), tmp_path) as first,
        SippProcess.running(callee_run("uas_answer"), tmp_path) as second,
    ):
        await bind(server, "101", first)
        await bind(server, "102", second)
        one = await run_sipp(carrier_run(server, calls=1, duration_ms=200), tmp_path / "one")
        await server.calls(ended=1)
        two = await run_sipp(carrier_run(server, calls=1, duration_ms=200), tmp_path / "two")
        calls = await server.calls(ended=2)
        took_first, took_second = await first.wait(), await second.wait()

    assert one.ok and two.ok, (one.describe(), two.describe())
    assert took_first.ok and took_second.ok, (took_first.describe(), took_second.describe())
    first_call, second_call = sorted(calls.values(), key=lambda events: events[0]["timestamp"])
    assert rung(first_call)[1:3] == [("calling", "101"), ("connected", "101")]
    assert rung(second_call)[1:3] == [("calling", "102"), ("connected", "102")]  # the turn moved on


async def test_a_group_nobody_answers_falls_through_to_a_user(tmp_path: Path) -> None:
    setup = line(group("sequential", ("101",), fallthrough_to="103", member_timeout_s=5, overall_timeout_s=5))
    async with (
        running(tmp_path, setup=setup) as server,
        SippProcess.running(callee_run("uas_ring"), tmp_path) as silent,
        SippProcess.running(callee_run("uas_answer"), tmp_path) as backup,
    ):
        await bind(server, "101", silent)
        await bind(server, "103", backup)
        caller = await run_sipp(carrier_run(server, calls=1, duration_ms=300), tmp_path)
        cancelled, answered = await silent.wait(), await backup.wait()
        [events] = (await server.calls(ended=1)).values()

    assert caller.ok, caller.describe()
    assert cancelled.ok, cancelled.describe()
    assert answered.ok, answered.describe()
    assert rung(events) == [
        ("new", None),
        ("calling", "101"),
        ("calling", "103"),
        ("connected", "103"),
        ("disconnected", "103"),
        ("end", "103"),
    ]


async def test_a_line_forwarded_to_an_outside_number_goes_out_through_the_trunk(tmp_path: Path) -> None:
    async def outside(s: AsyncSession, domain_id: uuid.UUID) -> ActionInput:
        return ActionInput(action="external", number="+74957654321")

    port = free_port_block(1)
    async with (
        running(tmp_path, setup=line(outside, trunk_port=port)) as server,
        SippProcess.running(
            # the trunk's OPTIONS reach the carrier too: uas_trunk answers them beside the call
            callee_run("uas_trunk", calls=100_000, local_ip=CARRIER_IP, local_port=port, trace_msg=True),
            tmp_path,
        ) as far_end,
    ):
        await far_end.wait_listening()
        caller = await run_sipp(carrier_run(server, calls=1, duration_ms=300), tmp_path)
        [events] = (await server.calls(ended=1)).values()
        answered = await far_end.stop()

    assert caller.ok, caller.describe()
    assert answered.ok, answered.describe()
    log = (answered.workdir / "messages.log").read_text(errors="replace")
    assert "INVITE sip:+74957654321@" in log
    assert [e["state"] for e in events] == ["new", "connected", "disconnected", "end"]
    assert events[0]["from_number"] == f"sip:{CALLER}@{server.service.domain}"


def zone_near_noon(now: dt.datetime) -> str:
    """A fixed-offset zone whose local time is about noon now, so that minutes either side of "now" stay on
    today (no schedule interval crosses midnight)."""
    offset = 12 - now.hour
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"


async def test_a_schedule_closes_at_its_minute_in_the_domains_time_zone(tmp_path: Path) -> None:
    """Two lines, the same rules (work hours → 102, otherwise → 103): one closes a minute or two from now,
    the other closed a minute or two ago, both in the domain's time zone (not the server's, which is UTC)."""
    now = dt.datetime.now(dt.UTC)
    zone = zone_near_noon(now)
    local = now.astimezone(dt.timezone(dt.timedelta(hours=12 - now.hour))).replace(second=0, microsecond=0)
    opens = (local - dt.timedelta(hours=1)).strftime("%H:%M")
    open_line, closed_line = "74951110001", "74951110002"
    closing = {
        open_line: (local + dt.timedelta(minutes=2)).strftime("%H:%M"),  # closes in one to two minutes
        closed_line: (local - dt.timedelta(minutes=1)).strftime("%H:%M"),  # closed one to two minutes ago
    }

    async def setup(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
        domain = await s.get(Domain, domain_id)
        assert domain is not None
        domain.timezone = zone
        await trunks.create_trunk(
            s,
            domain_id,
            trunks.TrunkInput(
                name="Carrier", kind="ip", host=CARRIER_IP, allowed_networks=[f"{CARRIER_IP}/32"]
            ),
            box=core.box,
        )
        work = ActionInput(action="user", user_id=await user_id(s, domain_id, "102"))
        after = ActionInput(action="user", user_id=await user_id(s, domain_id, "103"))
        for number, closes in closing.items():
            schedule = await schedules.create_schedule(
                s, domain_id, schedules.ScheduleInput(name=f"Office {number}", days=[f"{opens}-{closes}"] * 7)
            )
            n = await lines.create_number(s, domain_id, lines.NumberInput(number=f"+{number}"))
            await routing.add_rule(
                s, domain_id, n.id, routing.RuleInput(condition="work", schedule_id=schedule.id, target=work)
            )
            await routing.add_rule(s, domain_id, n.id, routing.RuleInput(target=after))

    async with (
        running(tmp_path, setup=setup) as server,
        SippProcess.running(callee_run("uas_answer"), tmp_path) as office,
        SippProcess.running(callee_run("uas_answer"), tmp_path) as night,
    ):
        await bind(server, "102", office)
        await bind(server, "103", night)
        before = await run_sipp(
            carrier_run(server, calls=1, service=open_line, duration_ms=200), tmp_path / "a"
        )
        after_ = await run_sipp(
            carrier_run(server, calls=1, service=closed_line, duration_ms=200), tmp_path / "b"
        )
        calls = await server.calls(ended=2)
        took_office, took_night = await office.wait(), await night.wait()

    assert before.ok and after_.ok, (before.describe(), after_.describe())
    assert took_office.ok and took_night.ok, (took_office.describe(), took_night.describe())
    by_line = {events[0]["request_number"].split(":")[1].split("@")[0]: events for events in calls.values()}
    assert rung(by_line[open_line])[1] == ("calling", "102")  # still open
    assert rung(by_line[closed_line])[1] == ("calling", "103")  # just closed


async def test_malformed_numbers_are_refused_both_ways(tmp_path: Path) -> None:
    """A carrier's call to a "line" that is no number, and a phone dialling something that is neither an
    extension nor a number: 404 each, no call, nothing rung."""
    async with running(tmp_path, setup=line(group("simultaneous", ("101",)))) as server:
        inbound = await run_sipp(
            carrier_run(server, calls=1, scenario=refused(tmp_path, 404), service="7495abc"), tmp_path / "in"
        )
        outbound = await run_sipp(
            caller_run(server, rejected_scenario(tmp_path, 404), caller="101", callee="8495*12", calls=1),
            tmp_path / "out",
        )
    assert inbound.ok, inbound.describe()
    assert outbound.ok, outbound.describe()
    assert server.events() == []


def menu(*, keys: dict[str, str], timeout_to: str | None = None, repeat: int = 1) -> Target:
    """A spoken menu greeted ``repeat`` times, 1 s for a key; keys and the timeout lead to users by PIN."""

    async def target(s: AsyncSession, domain_id: uuid.UUID) -> ActionInput:
        async def to(pin: str) -> ActionInput:
            return ActionInput(action="user", user_id=await user_id(s, domain_id, pin))

        m = await menus.create_menu(
            s,
            domain_id,
            menus.MenuInput(
                name="Main",
                prompt_text="Здравствуйте.",
                repeat_count=repeat,
                digit_timeout_s=1,
                keys=[menus.KeyInput(key=k, target=await to(pin)) for k, pin in keys.items()],
                timeout=await to(timeout_to) if timeout_to else ActionInput(action="hangup"),
            ),
        )
        return ActionInput(action="menu", menu_id=m.id)

    return target


async def test_an_invalid_key_is_said_so_and_the_next_key_still_counts(tmp_path: Path) -> None:
    """SIPp presses 9 (no such key: «Неверный выбор», the greeting again), then 1, which rings 102."""
    require_binary("espeak-ng")
    scenario = menu_key_scenario(tmp_path, "9")
    second = Path("/usr/share/sip-tester/dtmf_2833_1.pcap")
    text = scenario.read_text()
    first_play = text.index("</nop>") + len("</nop>")
    scenario.write_text(
        text[:first_play]
        + '\n  <pause milliseconds="2500"/>'
        + f'\n  <nop><action><exec play_pcap_audio="{second}"/></action></nop>'
        + text[first_play:]
    )
    async with (
        running(tmp_path, setup=line(menu(keys={"1": "102"}, repeat=2))) as server,
        SippProcess.running(callee_run("uas_answer"), tmp_path) as phone,
    ):
        await bind(server, "102", phone)
        caller = await run_sipp(carrier_run(server, calls=1, scenario=scenario, duration_ms=1500), tmp_path)
        answered = await phone.wait()
        [events] = (await server.calls(ended=1)).values()

    assert caller.ok, caller.describe()
    assert answered.ok, answered.describe()
    assert rung(events)[1:3] == [("calling", "102"), ("connected", "102")]


async def test_no_key_in_time_runs_the_menus_timeout_action(tmp_path: Path) -> None:
    """The caller presses nothing: after the greeting and a second, the timeout action rings 103."""
    require_binary("espeak-ng")
    async with (
        running(tmp_path, setup=line(menu(keys={"1": "102"}, timeout_to="103"))) as server,
        SippProcess.running(callee_run("uas_answer"), tmp_path) as phone,
    ):
        await bind(server, "103", phone)
        caller = await run_sipp(carrier_run(server, calls=1, duration_ms=6000), tmp_path)
        answered = await phone.wait()
        [events] = (await server.calls(ended=1)).values()

    assert caller.ok, caller.describe()
    assert answered.ok, answered.describe()
    assert rung(events)[1:3] == [("calling", "103"), ("connected", "103")]
