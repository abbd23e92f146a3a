"""A campaign end to end through ``vpbx serve`` with a SIPp carrier (issue 9's "Acceptance (real peers)",
autoinformer.md §3.3–§3.5, §4, §7, §12): the dispatcher claims, the engine dials through the trunk, and the
results become attempts and contact states.

The carrier answers by the dialled number (the trunk's national format): …0001 answers and listens, …0002
is busy (486), …0003 rings until our CANCEL at the ring timeout, …0004 answers and presses 9 (SIPp's RFC 4733
recording), the campaign's opt-out key. Retries are 5 minutes apart: the test checks the stored
``next_attempt_at``, then moves it to now in the database (standing in for the clock) and sees the second
round dialled. The same run's autoinformer_events reach a CRM (a real HTTP server in the test process).

Also: the connect key ringing a baresip operator, a window opening at the next minute (and a number in
another zone, from the numbering table, waiting for its own hours), and the library message heard by a
baresip recipient."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import struct
import uuid
import zoneinfo
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tests.autoinformer.campaign_kit import (
    LINE,
    OPTIONS_OK,
    RINGING,
    Stand,
    add_campaign,
    answer,
    bye_ok,
    daytime_zone,
    open_domain,
    running_spec,
)
from tests.autoinformer.campaign_kit import carrier as carrier_run
from tests.integration.peers.audio import (
    TONE_TOLERANCE,
    Pcm,
    dominant_frequency,
    is_tone,
    make_tone,
    read_wav,
    rms,
)
from tests.integration.peers.baresip import Account, Baresip
from tests.integration.peers.net import LOOPBACK, free_port_block, wait_until
from tests.integration.peers.process import require_binary
from tests.integration.peers.sipp import SippProcess
from tests.integration.test_api_events import CLIENT_ID, KEY, with_api
from tests.integration.test_history import serve
from tests.integration.test_outbound_calls import carrier_trunk
from tests.integration_api.notify_crm import Crm, Seen
from vpbx import store
from vpbx.app import Core
from vpbx.autoinformer import contacts as contact_import
from vpbx.autoinformer.schedule import QUIET_HOURS_KEY
from vpbx.autoinformer.tz import load_numbering, region_zone
from vpbx.integration_api.core import verify
from vpbx.media.dtmf import digit_payloads
from vpbx.media.g711 import alaw_to_pcm
from vpbx.media.rtp import PT_PCMA, RtpPacket, parse_packet, serialize_packet
from vpbx.pbx import lines, trunks
from vpbx.settings import Settings
from vpbx.store.models import (
    AiAttempt,
    AiAudioFile,
    AiCampaign,
    AiContact,
    AiStopEntry,
    CallRecord,
    PlatformSetting,
)

pytestmark = pytest.mark.peers

ANSWERS, BUSY, SILENT, OPTS_OUT = "79167770001", "79167770002", "79167770003", "79167770004"
INTERVAL_MIN = 5
RING_TIMEOUT_S = 10
ROUND_TIMEOUT_S = 90.0  # four calls at 2 new a second: the longest rings 10 s, a message plays ~1–2 s
CARRIER_TIMEOUT_S = 600.0
CARRIER_STOP_S = 60.0
EVENTS = 12  # campaign_status running, 6 attempt_finished, 4 number_finished, campaign_status completed
PCAP_9 = Path("/usr/share/sip-tester/dtmf_2833_9.pcap")
PCAP_1 = Path("/usr/share/sip-tester/dtmf_2833_1.pcap")

T = TypeVar("T")


def ai_events(crm: Crm) -> list[Seen]:
    return [r for r in crm.seen if r.path.endswith("/autoinformer_events")]


def require_pcap() -> None:
    for pcap in (PCAP_9, PCAP_1):
        if not pcap.exists():
            pytest.fail(f"{pcap} is missing: the sip-tester package ships it")


def national(number: str) -> str:
    return "8" + number[1:]


def carrier_scenario(pcap: Path = PCAP_9) -> str:
    """One carrier for every recipient: the INVITE's request URI picks the branch."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<scenario name="campaign carrier">
  <recv request="OPTIONS" optional="true" next="options"/>
  <recv request="INVITE" crlf="true" rrs="true">
    <action>
      <ereg regexp="INVITE sip:{national(BUSY)}@" search_in="msg" check_it="false" assign_to="busy"/>
      <ereg regexp="INVITE sip:{national(SILENT)}@" search_in="msg" check_it="false" assign_to="silent"/>
      <ereg regexp="INVITE sip:{national(OPTS_OUT)}@" search_in="msg" check_it="false" assign_to="keys"/>
    </action>
  </recv>
  <nop test="busy" next="busy"/>
{RINGING}  <nop test="silent" next="silent"/>
{answer()}  <recv request="ACK" timeout="10000"/>
  <nop test="keys" next="keys"/>
{bye_ok()}  <label id="keys"/>
  <pause milliseconds="700"/>
  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>
{bye_ok()}  <label id="busy"/>
  <send retrans="500"><![CDATA[
    SIP/2.0 486 Busy Here
    [last_Via:]
    [last_From:]
    [last_To:];tag=[pid]u[call_number]
    [last_Call-ID:]
    [last_CSeq:]
    Content-Length: 0

  ]]></send>
  <recv request="ACK" timeout="10000" next="done"/>
  <label id="silent"/>
  <recv request="CANCEL" timeout="120000"/>
  <send><![CDATA[
    SIP/2.0 200 OK
    [last_Via:]
    [last_From:]
    [last_To:]
    [last_Call-ID:]
    [last_CSeq:]
    Content-Length: 0

  ]]></send>
  <send retrans="500"><![CDATA[
    SIP/2.0 487 Request Terminated
    [last_Via:]
    [last_From:]
    [last_To:];tag=[pid]u[call_number]
    [last_Call-ID:]
    CSeq: [last_cseq_number] INVITE
    Content-Length: 0

  ]]></send>
  <recv request="ACK" timeout="10000" next="done"/>
{OPTIONS_OK}</scenario>
"""


def campaign_setup(port: int, ids: dict[str, uuid.UUID], crm: Crm) -> Callable[..., Awaitable[None]]:
    trunk = with_api(carrier_trunk(port), crm)  # autoinformer_events on (the default) to the CRM

    async def setup(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
        await open_domain(s, core, domain_id, trunk)
        spec = running_spec(
            "Acceptance",
            message={"segments": [{"type": "tts", "text": "Проверка"}]},
            attempts={"max": 2, "interval_min": INTERVAL_MIN, "retry_on": ["busy", "no_answer"]},
            ring_timeout_s=RING_TIMEOUT_S,
            success={"criterion": "answered"},
            concurrency=4,
            dtmf={"wait_s": 3, "actions": {"9": {"action": "opt_out"}}},
        )
        # scheduled with its start_at passed: the dispatcher starts it (campaign_status)
        campaign = await add_campaign(
            s, domain_id, spec, (ANSWERS, BUSY, SILENT, OPTS_OUT), status="scheduled"
        )
        other = await add_campaign(s, domain_id, spec.model_copy(update={"name": "Later"}), status="draft")
        ids["campaign"], ids["other"], ids["domain"] = campaign.id, other.id, domain_id

    return setup


async def in_db(settings: Settings, fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
    engine = store.create_engine(settings.database_url)
    try:
        async with store.session_factory(engine)() as s:
            out = await fn(s)
            await s.commit()
            return out
    finally:
        await engine.dispose()


async def contacts_of(settings: Settings, campaign_id: uuid.UUID) -> dict[str, AiContact]:
    async def q(s: AsyncSession) -> dict[str, AiContact]:
        rows = (await s.scalars(select(AiContact).where(AiContact.campaign_id == campaign_id))).all()
        return {c.phones[0]: c for c in rows}

    return await in_db(settings, q)


async def attempts_of(settings: Settings, campaign_id: uuid.UUID) -> list[AiAttempt]:
    async def q(s: AsyncSession) -> list[AiAttempt]:
        stmt = select(AiAttempt).where(AiAttempt.campaign_id == campaign_id)
        return list((await s.scalars(stmt.order_by(AiAttempt.phone, AiAttempt.attempt_no))).all())

    return await in_db(settings, q)


def utc(value: dt.datetime | None) -> dt.datetime:
    assert value is not None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


async def test_a_campaign_answers_busy_no_answer_and_opt_out_with_retries_at_the_interval(
    tmp_path: Path,
) -> None:
    for program in ("sipp", "espeak-ng"):
        require_binary(program)
    require_pcap()
    port = free_port_block(1)
    stand = Stand.make(tmp_path)
    workdir, data, env, settings = stand.workdir, stand.data, stand.env, stand.settings
    ids: dict[str, uuid.UUID] = {}
    crm = Crm()
    async with crm.running():
        await stand.provision(campaign_setup(port, ids, crm))
        await run_campaign(tmp_path, port, workdir, data, env, settings, ids, crm)


async def run_campaign(
    tmp_path: Path,
    port: int,
    workdir: Path,
    data: Path,
    env: dict[str, str],
    settings: Settings,
    ids: dict[str, uuid.UUID],
    crm: Crm,
) -> None:
    scenario = tmp_path / "campaign_carrier.xml"
    scenario.write_text(carrier_scenario())
    carrier = carrier_run(scenario, port, timeout_s=CARRIER_TIMEOUT_S)
    cid = ids["campaign"]
    async with SippProcess.running(carrier, tmp_path) as far_end:
        await far_end.wait_listening()
        async with serve(workdir, data, env, "campaign"):

            async def round_one() -> bool:
                cs = await contacts_of(settings, cid)
                return all(c.status not in ("pending", "in_progress") for c in cs.values())

            await wait_until(round_one, timeout_s=ROUND_TIMEOUT_S, what="the first round dialled")
            first = await contacts_of(settings, cid)
            first_attempts = await attempts_of(settings, cid)

            # the clock's stand-in: the retries are due now
            async def due_now(s: AsyncSession) -> None:
                await s.execute(
                    update(AiContact)
                    .where(AiContact.campaign_id == cid, AiContact.status == "waiting_retry")
                    .values(next_attempt_at=dt.datetime.now(dt.UTC))
                )

            await in_db(settings, due_now)

            async def completed() -> bool:
                camp = await in_db(settings, lambda s: s.get(AiCampaign, cid))
                return camp is not None and camp.status == "completed"

            await wait_until(completed, timeout_s=ROUND_TIMEOUT_S, what="the second round and completion")
            last = await contacts_of(settings, cid)
            attempts = await attempts_of(settings, cid)

            async def records(s: AsyncSession) -> dict[str, CallRecord]:
                rows = (await s.scalars(select(CallRecord))).all()
                return {r.session_id: r for r in rows}

            history = await in_db(settings, records)

            async def stop_entries(s: AsyncSession) -> list[AiStopEntry]:
                return list((await s.scalars(select(AiStopEntry))).all())

            stopped = await in_db(settings, stop_entries)

            async def later_import(s: AsyncSession) -> Any:
                return await contact_import.import_manual(s, ids["domain"], ids["other"], f"{OPTS_OUT}\n")

            rejected = await in_db(settings, later_import)

            async def notified() -> bool:  # call_events of the calls come to the same CRM as well
                return len(ai_events(crm)) >= EVENTS

            await wait_until(notified, timeout_s=ROUND_TIMEOUT_S, what="the autoinformer_events")
        await far_end.proc.stop(timeout_s=CARRIER_STOP_S)

    # round one
    assert first[ANSWERS].status == "succeeded" and first[OPTS_OUT].status == "opted_out"
    by_phone = {a.phone: a for a in first_attempts}
    for phone in (BUSY, SILENT):
        c = first[phone]
        assert (c.status, c.attempts_made) == ("waiting_retry", 1), (phone, c.status, c.detail)
        ended = utc(by_phone[phone].ended_at)
        assert utc(c.next_attempt_at) >= ended + dt.timedelta(minutes=INTERVAL_MIN)
    # the end: the retried numbers exhausted after round two, the others as they were
    assert {p: c.status for p, c in last.items()} == {
        ANSWERS: "succeeded",
        BUSY: "attempts_exhausted",
        SILENT: "attempts_exhausted",
        OPTS_OUT: "opted_out",
    }
    got = [(a.phone, a.attempt_no, a.sip_code, a.outcome) for a in attempts]
    assert got == [
        (ANSWERS, 1, 200, "success"),
        (BUSY, 1, 486, "busy"),
        (BUSY, 2, 486, "busy"),
        (SILENT, 1, 408, "no_answer"),
        (SILENT, 2, 408, "no_answer"),
        (OPTS_OUT, 1, 200, "opted_out"),
    ], got
    for a in attempts:
        assert a.state == "done" and a.ended_at is not None
        rec = history.get(a.session_id or "")
        assert rec is not None, a.phone
        assert (rec.call_kind, rec.call_type) == ("autoinformer", "outbound")
    keyed = next(a for a in attempts if a.phone == OPTS_OUT)
    assert (keyed.digits, keyed.action) == ("9", "opt_out")
    assert next(a for a in attempts if a.phone == SILENT).detail in (None, "", "ring_timeout")
    # the opt-out: on the domain's stop list from this campaign, and a later import refuses it
    assert [(e.phone, e.source, e.campaign_id) for e in stopped] == [(OPTS_OUT, "opt_out", cid)]
    assert [r.reason for r in rejected.rejected] == ["stop_list"]

    # autoinformer_events at the CRM: signed, per contact in order, the campaign's start and completion
    sent = ai_events(crm)
    assert len(sent) == EVENTS
    for r in sent:
        assert r.headers["x-client-id"] == CLIENT_ID
        assert verify(CLIENT_ID, r.raw, KEY, r.headers["x-client-sign"]), r.raw
        assert r.json["campaign_id"] == cid.hex
    statuses = [r.json["status"] for r in sent if r.json["event"] == "campaign_status"]
    assert statuses == ["running", "completed"]
    per_phone: dict[str, list[tuple[str, Any, Any]]] = {}
    for r in sent:
        body = r.json
        if body["event"] != "campaign_status":
            per_phone.setdefault(body["phone"], []).append(
                (body["event"], body.get("attempt"), body["number_status"])
            )
    assert per_phone == {
        ANSWERS: [("attempt_finished", 1, "succeeded"), ("number_finished", None, "succeeded")],
        BUSY: [
            ("attempt_finished", 1, "waiting_retry"),
            ("attempt_finished", 2, "attempts_exhausted"),
            ("number_finished", None, "attempts_exhausted"),
        ],
        SILENT: [
            ("attempt_finished", 1, "waiting_retry"),
            ("attempt_finished", 2, "attempts_exhausted"),
            ("number_finished", None, "attempts_exhausted"),
        ],
        OPTS_OUT: [("attempt_finished", 1, "opted_out"), ("number_finished", None, "opted_out")],
    }, per_phone
    sessions = {r.json["session_id"] for r in sent if r.json["event"] == "attempt_finished"}
    assert sessions == {a.session_id for a in attempts}
    # (the outbox orders each contact's events and the campaign's own, not one stream against another)


def operator_setup(port: int, ids: dict[str, uuid.UUID]) -> Callable[..., Awaitable[None]]:
    trunk = carrier_trunk(port)

    async def setup(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
        await open_domain(s, core, domain_id, trunk)
        spec = running_spec(
            "Operator",
            message={"segments": [{"type": "tts", "text": "Проверка"}]},
            attempts={"max": 1},
            ring_timeout_s=RING_TIMEOUT_S,
            success={"criterion": "answered"},
            dtmf={
                "wait_s": 5,
                "actions": {"1": {"action": "connect", "target": {"type": "user", "pin": "102"}}},
            },
        )
        ids["campaign"] = (await add_campaign(s, domain_id, spec, [OPTS_OUT])).id

    return setup


async def test_connect_to_operator_rings_a_baresip_user_within_the_attempts_session(tmp_path: Path) -> None:
    """The recipient presses 1 (RFC 4733): extension 102, a baresip phone, rings and answers; the attempt
    records the connection, its session is the call record's (one call, kind autoinformer)."""
    for program in ("sipp", "espeak-ng", "baresip"):
        require_binary(program)
    require_pcap()
    port = free_port_block(1)
    stand = Stand.make(tmp_path)
    workdir, data, env, settings = stand.workdir, stand.data, stand.env, stand.settings
    ids: dict[str, uuid.UUID] = {}
    scenario = tmp_path / "campaign_carrier.xml"
    scenario.write_text(carrier_scenario(PCAP_1))
    carrier = carrier_run(scenario, port, timeout_s=CARRIER_TIMEOUT_S)
    async with (
        SippProcess.running(carrier, tmp_path) as far_end,
        Baresip.start(tmp_path, name="operator") as desk,
    ):
        await far_end.wait_listening()
        # paused until the operator's phone is registered: the dispatcher would dial at once
        setup = operator_setup(port, ids)

        async def paused(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
            await setup(s, core, domain_id)
            await s.flush()
            await s.execute(update(AiCampaign).values(status="paused"))

        await stand.provision(paused)
        cid = ids["campaign"]
        async with serve(workdir, data, env, "operator") as (service, _proc):
            await desk.register(Account.on(service, "102", answermode="auto"))

            async def resume(s: AsyncSession) -> None:
                await s.execute(update(AiCampaign).where(AiCampaign.id == cid).values(status="running"))

            await in_db(settings, resume)
            incoming = await desk.wait_event("CALL_ESTABLISHED", timeout_s=ROUND_TIMEOUT_S)
            await asyncio.sleep(0.5)  # a moment's talk
            await desk.hangup()

            async def recorded() -> bool:
                return all(a.state == "done" for a in await attempts_of(settings, cid)) and bool(
                    await attempts_of(settings, cid)
                )

            await wait_until(recorded, timeout_s=ROUND_TIMEOUT_S, what="the attempt recorded")
            [attempt] = await attempts_of(settings, cid)

            async def record_of(s: AsyncSession) -> CallRecord | None:
                return await s.scalar(select(CallRecord).where(CallRecord.session_id == attempt.session_id))

            rec = await in_db(settings, record_of)
        await far_end.proc.stop(timeout_s=CARRIER_STOP_S)

    assert f"+{OPTS_OUT}" in str(incoming.get("peeruri", ""))  # the recipient's number on the phone
    assert (attempt.digits, attempt.action, attempt.operator_target) == ("1", "connect", "102")
    assert attempt.operator_answered is True
    assert (attempt.sip_code, attempt.outcome) == (200, "success")
    assert rec is not None and (rec.call_kind, rec.call_type) == ("autoinformer", "outbound")


OFFSET_REGIONS = (  # one region of each Russian zone, as the regulator's files name them
    "Калининградская обл.",
    "г. Москва",
    "Самарская обл.",
    "Свердловская обл.",
    "Омская обл.",
    "Красноярский край",
    "Иркутская обл.",
    "Республика Саха /Якутия/",
    "Приморский край",
    "Магаданская обл.",
    "Камчатский край",
)
ELSEWHERE = "79167779000"  # the numbering table's row puts it in a zone where it is not yet its window
QUIET = {"from": "08:00", "to": "21:00"}
WINDOW_TIMEOUT_S = 240.0  # the window opens within two minutes


def waiting_region(now: dt.datetime) -> tuple[str, str]:
    """(region, zone) of a Russian zone whose local time is before 11:00 or after 21:00 now: outside the
    quiet hours' 08–21 or before the campaign's window (which opens at about noon in the domain's zone).
    Eleven consecutive zones always hold one."""
    for region in OFFSET_REGIONS:
        zone = region_zone(region)
        assert zone is not None, region
        hour = now.astimezone(zoneinfo.ZoneInfo(zone)).hour
        if hour < 11 or hour >= 21:
            return region, zone
    raise AssertionError("no Russian zone outside 11–21 now")


def window_setup(
    port: int, ids: dict[str, uuid.UUID], opening: dt.datetime, zone: str, region: str
) -> Callable[..., Awaitable[None]]:
    trunk = carrier_trunk(port)

    async def setup(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
        await open_domain(s, core, domain_id, trunk, timezone=zone)
        s.add(PlatformSetting(key=QUIET_HOURS_KEY, value={"workday": QUIET, "dayoff": QUIET}))
        table = (
            f"АВС/ DEF;От;До;Емкость;Оператор;Регион\n916;{ELSEWHERE[4:]};{ELSEWHERE[4:]};1;Тест;{region}\n"
        )
        await load_numbering(s, table.encode())
        local = opening.astimezone(zoneinfo.ZoneInfo(zone))
        spec = running_spec(
            "Window",
            message={"segments": [{"type": "tts", "text": "Проверка"}]},
            schedule={
                "start_at": "2020-01-01 00:00:00",
                "windows": [{"from": local.strftime("%H:%M"), "to": "23:59"}],
            },
            attempts={"max": 1},
            ring_timeout_s=RING_TIMEOUT_S,
            success={"criterion": "answered"},
            dtmf={"wait_s": 1},
        )
        campaign = await add_campaign(s, domain_id, spec)
        ids["campaign"] = campaign.id
        result = await contact_import.import_manual(s, domain_id, campaign.id, f"{ANSWERS}\n{ELSEWHERE}\n")
        assert not result.rejected, result.api_rejected()

    return setup


async def test_a_window_opening_starts_its_numbers_and_another_zone_waits_for_its_own(tmp_path: Path) -> None:
    """The window opens at the next minute boundary of the domain's zone (noon there): nobody is dialled
    before it (the contact waits with next_attempt_at = the opening) and the domain-zone number is dialled
    once it opens; a number whose numbering-table row puts it in a zone outside its hours now is not."""
    for program in ("sipp", "espeak-ng"):
        require_binary(program)
    now = dt.datetime.now(dt.UTC)
    zone = daytime_zone(now)
    minute = now.replace(second=0, microsecond=0)
    opening = minute + dt.timedelta(minutes=1 if now.second < 40 else 2)
    region, elsewhere_zone = waiting_region(now)
    port = free_port_block(1)
    stand = Stand.make(tmp_path)
    workdir, data, env, settings = stand.workdir, stand.data, stand.env, stand.settings
    ids: dict[str, uuid.UUID] = {}
    setup = window_setup(port, ids, opening, zone, region)
    await stand.provision(setup)
    cid = ids["campaign"]
    scenario = tmp_path / "campaign_carrier.xml"
    scenario.write_text(carrier_scenario())
    carrier = carrier_run(scenario, port, timeout_s=CARRIER_TIMEOUT_S)
    async with SippProcess.running(carrier, tmp_path) as far_end:
        await far_end.wait_listening()
        async with serve(workdir, data, env, "window"):

            async def deferred() -> bool:
                cs = await contacts_of(settings, cid)
                return all(c.next_attempt_at is not None for c in cs.values()) or bool(
                    await attempts_of(settings, cid)
                )

            await wait_until(deferred, timeout_s=ROUND_TIMEOUT_S, what="both contacts deferred")
            waiting = await contacts_of(settings, cid)

            async def dialled() -> bool:
                cs = await contacts_of(settings, cid)
                return cs[ANSWERS].status == "succeeded"

            await wait_until(dialled, timeout_s=WINDOW_TIMEOUT_S, what="the window opening")
            last = await contacts_of(settings, cid)
            attempts = await attempts_of(settings, cid)
        await far_end.proc.stop(timeout_s=CARRIER_STOP_S)

    assert utc(waiting[ANSWERS].next_attempt_at) == opening  # waited for its window, no attempt used
    [attempt] = attempts
    assert attempt.phone == ANSWERS and utc(attempt.started_at) >= opening
    other = last[ELSEWHERE]
    assert other.timezone == elsewhere_zone
    assert (other.status, other.attempts_made) == ("pending", 0)
    assert utc(other.next_attempt_at) > opening


TONE_HZ = 1000
TONE_S = 2.0


async def tone_file(s: AsyncSession, core: Core, domain_id: uuid.UUID, tmp_path: Path) -> AiAudioFile:
    """A sox tone of TONE_HZ in the domain's audio library."""
    wav = await make_tone(tmp_path / "message.wav", TONE_HZ, TONE_S)
    prompt = await core.prompts.upload(wav.read_bytes())
    audio = AiAudioFile(
        domain_id=domain_id,
        name="tone.wav",
        duration_ms=int(TONE_S * 1000),
        original_format="wav",
        size_bytes=wav.stat().st_size,
        prompt_id=prompt.id,
    )
    s.add(audio)
    await s.flush()
    return audio


async def test_the_campaigns_library_message_reaches_a_baresip_recipient_as_its_tone(tmp_path: Path) -> None:
    """baresip answers for the carrier (auto-answer; its account is the number in the trunk's national
    format): the campaign's message, a sox tone in the domain's audio library, is what it receives."""
    for program in ("baresip", "sox", "espeak-ng"):
        require_binary(program)
    stand = Stand.make(tmp_path)
    workdir, data, env, settings = stand.workdir, stand.data, stand.env, stand.settings
    ids: dict[str, uuid.UUID] = {}
    async with Baresip.start(tmp_path, name="recipient") as phone:
        account = Account(
            user=national(ANSWERS), domain=LOOPBACK, password="unused-secret", regint_s=0, answermode="auto"
        )
        await phone.command("uanew", f"{account.line()};cuser={national(ANSWERS)}")

        async def phone_trunk(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
            await trunks.create_trunk(
                s,
                domain_id,
                trunks.TrunkInput(
                    name="Carrier",
                    kind="ip",
                    host=LOOPBACK,
                    port=phone.sip_port,
                    allowed_networks=[f"{LOOPBACK}/32"],
                    number_format="national",
                ),
                box=core.box,
            )
            await lines.create_number(s, domain_id, lines.NumberInput(number=LINE))

        async def setup(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
            await open_domain(s, core, domain_id, phone_trunk)
            audio = await tone_file(s, core, domain_id, tmp_path)
            spec = running_spec(
                "Heard",
                message={"segments": [{"type": "file", "file_id": audio.id.hex}]},
                attempts={"max": 1},
                ring_timeout_s=RING_TIMEOUT_S,
                dtmf={"wait_s": 1},
            )
            ids["campaign"] = (await add_campaign(s, domain_id, spec, [ANSWERS])).id

        await stand.provision(setup)
        cid = ids["campaign"]
        async with serve(workdir, data, env, "heard"):

            async def done() -> bool:
                return (await contacts_of(settings, cid))[ANSWERS].status not in ("pending", "in_progress")

            await wait_until(done, timeout_s=ROUND_TIMEOUT_S, what="the message played")
            [attempt] = await attempts_of(settings, cid)
        heard = read_wav(phone.recorded("dec")[-1])

    assert (attempt.sip_code, attempt.outcome, attempt.played_full) == (200, "success", True)
    middle = heard.window(0.5, 1.5)
    assert rms(middle.samples) > 0.05  # a tone, not silence
    assert dominant_frequency(middle) == pytest.approx(TONE_HZ, rel=TONE_TOLERANCE)


CONFIRM_TEXT = "Спасибо, ваш ответ принят. До свидания."
KEY_AFTER_S = 0.6  # of the message heard before the recipient presses the key
SILENCE_GAP_S = 2.0  # no RTP this long after the key: the call has ended
LISTEN_LIMIT_S = 30.0


def media_at_scenario(rtp_port: int) -> str:
    """A carrier that answers with its media at the test's own RTP socket (127.0.0.1:``rtp_port``): the test
    hears the call and presses keys itself; SIPp keeps the signalling and answers the PBX's BYE."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<scenario name="carrier with the media at the test">
  <recv request="OPTIONS" optional="true" next="options"/>
  <recv request="INVITE" crlf="true" rrs="true"/>
{answer(LOOPBACK, str(rtp_port))}  <recv request="ACK" timeout="10000"/>
{bye_ok()}{OPTIONS_OK}</scenario>
"""


class Ear:
    """The recipient's RTP end on loopback: hears the call as A-law, answers with RFC 4733 key events."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.setblocking(False)
        self.heard: list[tuple[float, bytes]] = []  # (monotonic arrival, A-law payload)
        self.pbx: tuple[str, int] | None = None  # where the PBX's media comes from (symmetric RTP)
        self.key_at: float | None = None

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    async def recv(self, timeout_s: float) -> tuple[RtpPacket, tuple[str, int]]:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s):
            data, addr = await loop.sock_recvfrom(self.sock, 2048)
        return parse_packet(data), addr

    async def press(self, digit: str) -> None:
        """One key as RFC 4733 events at 20 ms, to where the PBX sends from."""
        assert self.pbx is not None
        ts = 123_456
        for i, payload in enumerate(digit_payloads(digit)):
            pkt = RtpPacket(
                payload_type=101,
                sequence_number=900 + i,
                timestamp=ts,
                ssrc=0x7A7A,
                marker=i == 0,
                payload=payload,
            )
            self.sock.sendto(serialize_packet(pkt), self.pbx)
            await asyncio.sleep(0.02)  # the events' own pacing, not a wait for something

    async def listen(self, digit: str, first_timeout_s: float) -> None:
        """Hear the message for ``KEY_AFTER_S``, press ``digit``, hear until the media stops."""
        loop = asyncio.get_running_loop()
        pkt, self.pbx = await self.recv(first_timeout_s)
        deadline = loop.time() + LISTEN_LIMIT_S
        while loop.time() < deadline:
            if pkt.payload_type == PT_PCMA:
                self.heard.append((loop.time(), pkt.payload))
            if self.key_at is None and len(self.heard) * 0.02 >= KEY_AFTER_S:
                self.key_at = loop.time()
                await self.press(digit)
            try:
                pkt, _ = await self.recv(SILENCE_GAP_S)
            except TimeoutError:
                return

    def audio(self, *, after: float | None = None, before: float | None = None) -> Pcm:
        data = b"".join(
            p for at, p in self.heard if (after is None or at >= after) and (before is None or at < before)
        )
        pcm = alaw_to_pcm(data)
        values = struct.unpack(f"<{len(pcm) // 2}h", pcm)
        return Pcm(8000, tuple(v / 32768.0 for v in values))

    def close(self) -> None:
        self.sock.close()


async def test_the_confirm_keys_tts_confirmation_is_heard_before_the_hangup(tmp_path: Path) -> None:
    """§3.5: the recipient (SIPp's signalling, this test's RTP) hears the library tone, presses 1
    (``confirm``, RFC 4733) and then hears the TTS confirmation: speech, not the tone, before the PBX hangs
    up. The attempt records the key, the action and success by the ``confirmed`` criterion."""
    for program in ("sipp", "sox", "espeak-ng"):
        require_binary(program)
    port = free_port_block(1)
    stand = Stand.make(tmp_path)
    workdir, data, env, settings = stand.workdir, stand.data, stand.env, stand.settings
    ids: dict[str, uuid.UUID] = {}
    trunk = carrier_trunk(port)

    async def setup(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
        await open_domain(s, core, domain_id, trunk)
        audio = await tone_file(s, core, domain_id, tmp_path)
        spec = running_spec(
            "Confirm",
            message={"segments": [{"type": "file", "file_id": audio.id.hex}]},
            attempts={"max": 1},
            ring_timeout_s=RING_TIMEOUT_S,
            success={"criterion": "confirmed", "confirm_digit": "1"},
            dtmf={
                "wait_s": 5,
                "actions": {"1": {"action": "confirm", "segment": {"type": "tts", "text": CONFIRM_TEXT}}},
            },
        )
        ids["campaign"] = (await add_campaign(s, domain_id, spec, [ANSWERS])).id

    await stand.provision(setup)
    cid = ids["campaign"]
    ear = Ear()
    scenario = tmp_path / "media_at_carrier.xml"
    scenario.write_text(media_at_scenario(ear.port))
    carrier = carrier_run(scenario, port, timeout_s=CARRIER_TIMEOUT_S)
    try:
        async with SippProcess.running(carrier, tmp_path) as far_end:
            await far_end.wait_listening()
            async with serve(workdir, data, env, "confirm"):
                await ear.listen("1", ROUND_TIMEOUT_S)

                async def recorded() -> bool:
                    found = await attempts_of(settings, cid)
                    return bool(found) and all(a.state == "done" for a in found)

                await wait_until(recorded, timeout_s=ROUND_TIMEOUT_S, what="the attempt recorded")
                [attempt] = await attempts_of(settings, cid)
                contact = (await contacts_of(settings, cid))[ANSWERS]
            await far_end.proc.stop(timeout_s=CARRIER_STOP_S)
    finally:
        ear.close()

    assert ear.key_at is not None
    before = ear.audio(before=ear.key_at)
    assert is_tone(before.window(0.1, KEY_AFTER_S - 0.2), TONE_HZ)  # the message: the library tone
    after = ear.audio(after=ear.key_at + 0.3)  # the tone stops at the key
    assert after.seconds > 1.0, after.seconds  # the confirmation plays before the hangup
    assert rms(after.samples) > 0.05 and not is_tone(after, TONE_HZ)  # speech, not more of the message
    assert (attempt.digits, attempt.action) == ("1", "confirm")
    assert (attempt.sip_code, attempt.outcome, attempt.criterion_met) == (200, "success", True)
    assert contact.status == "succeeded"
