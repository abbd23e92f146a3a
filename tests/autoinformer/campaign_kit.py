"""What the autoinformer's tests build their campaigns from: §9's campaign object (the service's, the
Integration API's and the cabinet's tests start from the same one), Moscow wall-clock times, a real WAV; and
the stand of a running campaign behind ``vpbx serve`` with SIPp recipients (the peer tests and the bench)."""

from __future__ import annotations

import datetime as dt
import io
import math
import secrets
import struct
import uuid
import wave
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from tests.integration.peers.sipp import SippRun
from vpbx.autoinformer.schemas import CampaignSpec
from vpbx.billing import AUTOINFORMER
from vpbx.settings import Settings
from vpbx.store.models import AiCampaign, AiContact, Domain, DomainService, Trunk

if TYPE_CHECKING:
    from vpbx.app import Core

Setup = Callable[[AsyncSession, "Core", uuid.UUID], Awaitable[None]]

MSK = dt.timezone(dt.timedelta(hours=3))


def msk(at: dt.datetime) -> str:
    """A moment as the campaign object writes it: Moscow time, to the second."""
    return at.astimezone(MSK).strftime("%Y-%m-%d %H:%M:%S")


def campaign_body(file_id: str, caller_id: str, now: dt.datetime, /, **over: Any) -> dict[str, Any]:
    """§9's campaign object: a library file then a TTS part, starting the day after ``now`` for five days,
    keys 1 (connect to group 600), 2 (repeat), 9 (opt out); ``over`` replaces top-level fields."""
    data: dict[str, Any] = {
        "external_id": "crm-campaign-42",
        "name": "Напоминание о задолженности, июнь",
        "caller_id": caller_id,
        "message": {
            "repeat": 2,
            "segments": [
                {"type": "file", "file_id": file_id},
                {
                    "type": "tts",
                    "text": "{name}, ваша задолженность составляет {sum:money}. Оплатите до {due:date}.",
                    "voice": "female_1",
                    "rate": 1.0,
                },
            ],
        },
        "schedule": {
            "start_at": msk(now + dt.timedelta(days=1)),
            "end_at": msk(now + dt.timedelta(days=5)),
            "days": [1, 2, 3, 4, 5],
            "windows": [{"from": "10:00", "to": "13:00"}, {"from": "14:00", "to": "19:00"}],
            "time_basis": "recipient",
        },
        "attempts": {"max": 3, "interval_min": 60, "retry_on": ["busy", "no_answer", "failed"]},
        "ring_timeout_s": 30,
        "concurrency": 5,
        "compliance_profile": "collections",
        "success": {"criterion": "listened_full"},
        "dtmf": {
            "wait_s": 5,
            "actions": {
                "1": {"action": "connect", "target": {"type": "group", "pin": "600"}},
                "2": {"action": "repeat"},
                "9": {"action": "opt_out"},
            },
        },
    }
    data.update(over)
    return data


def tone_wav(seconds: float = 1.0, rate: int = 8000) -> bytes:
    """A real PCM WAV (mono, 16 bit, a 440 Hz tone), written by the standard library."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        n = int(seconds * rate)
        w.writeframes(
            b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate))) for i in range(n))
        )
    return buf.getvalue()


# --- a running campaign behind `vpbx serve`, its recipients a SIPp carrier behind the trunk -----------------
# The campaign acceptance and crash tests (tests/integration/test_autoinformer_*.py) and bench/ai_bench.py
# build their stand from these.

LINE = "74951234567"  # the campaign's caller ID: the domain's line that carrier_trunk() creates
CARRIER_CALLS = 100_000  # SIPp's call budget: OPTIONS pings count as calls too


def daytime_zone(now: dt.datetime) -> str:
    """A fixed-offset zone where it is about noon now, so quiet hours never hold a test back."""
    offset = (12 - now.hour + 12) % 24 - 12  # −12 … +11
    return f"Etc/GMT{-offset:+d}" if offset else "Etc/GMT"  # POSIX signs: Etc/GMT-3 is UTC+3


@dataclass(frozen=True, slots=True)
class Stand:
    """A data directory for ``vpbx serve`` on its own SQLite file: the settings and the environment."""

    workdir: Path
    data: Path
    env: dict[str, str]
    settings: Settings

    @classmethod
    def make(cls, tmp_path: Path) -> Stand:
        from tests.integration.peers.vpbx import DEFAULT_DOMAIN, _env

        workdir = tmp_path / "vpbx"
        data = workdir / "data"
        data.mkdir(parents=True)
        secret = secrets.token_urlsafe(40)
        env = _env(data, DEFAULT_DOMAIN, secret, {})
        settings = Settings(
            env="test", secret_key=secret, data_dir=data, database_url=env["VPBX_DATABASE_URL"]
        )  # type: ignore[arg-type]
        return cls(workdir, data, env, settings)

    async def provision(self, setup: Setup, *, channel_limit: int = 100) -> None:
        """The default domain with the test users, then ``setup`` in the same transaction."""
        from tests.integration.peers.vpbx import DEFAULT_DOMAIN, provision
        from tests.integration.test_calls import USERS

        await provision(self.settings, DEFAULT_DOMAIN, USERS, channel_limit=channel_limit, setup=setup)


def running_spec(name: str, /, **over: Any) -> CampaignSpec:
    """A campaign that may call at once: the line, a TTS message, started long ago, open all day; ``over``
    replaces top-level fields of the campaign object."""
    body: dict[str, Any] = {
        "name": name,
        "caller_id": LINE,
        "message": {"segments": [{"type": "tts", "text": "Проверка связи"}]},
        "schedule": {"start_at": "2020-01-01 00:00:00", "windows": [{"from": "00:00", "to": "23:59"}]},
    }
    body.update(over)
    return CampaignSpec.model_validate(body)


async def open_domain(
    s: AsyncSession,
    core: Core,
    domain_id: uuid.UUID,
    trunk: Setup,
    *,
    max_calls: int | None = None,
    timezone: str | None = None,
) -> None:
    """The domain's trunk (and its ``max_calls``), the autoinformer switched on, a time zone where it is about
    noon unless ``timezone`` is given."""
    await trunk(s, core, domain_id)
    if max_calls is not None:
        await s.execute(update(Trunk).where(Trunk.domain_id == domain_id).values(max_calls=max_calls))
    domain = await s.get(Domain, domain_id)
    assert domain is not None
    domain.timezone = timezone or daytime_zone(dt.datetime.now(dt.UTC))
    s.add(DomainService(domain_id=domain_id, code=AUTOINFORMER, enabled=True))


async def add_campaign(
    s: AsyncSession,
    domain_id: uuid.UUID,
    spec: CampaignSpec,
    phones: Iterable[str | list[str]] = (),
    *,
    status: str = "running",
    campaign_id: uuid.UUID | None = None,
) -> AiCampaign:
    """The campaign with one contact per entry of ``phones`` (a number, or a person's numbers), in order."""
    campaign = AiCampaign(
        domain_id=domain_id,
        name=spec.name,
        caller_id=spec.caller_id,
        settings=spec.settings_json(),
        status=status,
        **({"id": campaign_id} if campaign_id else {}),
    )
    s.add(campaign)
    await s.flush()
    for row, p in enumerate(phones, start=1):
        s.add(
            AiContact(
                campaign_id=campaign.id,
                domain_id=domain_id,
                row_no=row,
                phones=[p] if isinstance(p, str) else p,
            )
        )
    return campaign


def carrier(scenario: Path, port: int, *, timeout_s: float, calls: int = CARRIER_CALLS) -> SippRun:
    """SIPp as the carrier behind the domain's IP trunk (carrier_trunk(port)), logging every message."""
    from tests.integration.test_outbound_calls import CARRIER_IP

    return SippRun(
        scenario=scenario,
        calls=calls,
        timeout_s=timeout_s,
        local_ip=CARRIER_IP,
        local_port=port,
        trace_msg=True,
    )


# SIPp scenario parts: what a recipient behind the trunk sends
RINGING = """  <send><![CDATA[
    SIP/2.0 180 Ringing
    [last_Via:]
    [last_Record-Route:]
    [last_From:]
    [last_To:];tag=[pid]u[call_number]
    [last_Call-ID:]
    [last_CSeq:]
    Contact: <sip:uas@[local_ip]:[local_port]>
    Content-Length: 0

  ]]></send>
"""


def answer(media_ip: str = "[media_ip]", media_port: str = "[media_port]") -> str:
    """200 OK with A-law and RFC 4733 at SIPp's media socket, or at another one (a test's own RTP end)."""
    return f"""  <send retrans="500"><![CDATA[
    SIP/2.0 200 OK
    [last_Via:]
    [last_Record-Route:]
    [last_From:]
    [last_To:];tag=[pid]u[call_number]
    [last_Call-ID:]
    [last_CSeq:]
    Contact: <sip:uas@[local_ip]:[local_port]>
    Content-Type: application/sdp
    Content-Length: [len]

    v=0
    o=- [pid][call_number] 1 IN IP4 {media_ip}
    s=-
    c=IN IP4 {media_ip}
    t=0 0
    m=audio {media_port} RTP/AVP 8 101
    a=rtpmap:8 PCMA/8000
    a=rtpmap:101 telephone-event/8000
    a=fmtp:101 0-15
    a=ptime:20
    a=sendrecv

  ]]></send>
"""


def bye_ok(wait_ms: int = 60_000) -> str:
    """Wait for our BYE, answer it, end the call."""
    return f"""  <recv request="BYE" timeout="{wait_ms}"/>
  <send next="done"><![CDATA[
    SIP/2.0 200 OK
    [last_Via:]
    [last_From:]
    [last_To:]
    [last_Call-ID:]
    [last_CSeq:]
    Content-Length: 0

  ]]></send>
"""


HANGUP = """  <send retrans="500"><![CDATA[
    BYE [next_url] SIP/2.0
    Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
    [routes]
    From: [$callee];tag=[pid]u[call_number]
    To: [$caller]
    Call-ID: [call_id]
    CSeq: 2 BYE
    Contact: <sip:uas@[local_ip]:[local_port]>
    Max-Forwards: 70
    Content-Length: 0

  ]]></send>
  <recv response="200" timeout="10000" next="done"/>
"""
OPTIONS_OK = """  <label id="options"/>
  <send><![CDATA[
    SIP/2.0 200 OK
    [last_Via:]
    [last_From:]
    [last_To:];tag=[pid]o[call_number]
    [last_Call-ID:]
    [last_CSeq:]
    Content-Length: 0

  ]]></send>
  <label id="done"/>
"""


def recipient_scenario(*, hangup_after_ms: int | None = None, bye_wait_ms: int = 60_000) -> str:
    """Every recipient behind the trunk: 180, 200 with SDP, then either it hangs up after
    ``hangup_after_ms`` or it waits ``bye_wait_ms`` for our BYE; the trunk's OPTIONS get 200."""
    if hangup_after_ms is None:
        first, talk = '  <recv request="INVITE" crlf="true" rrs="true"/>\n', bye_ok(bye_wait_ms)
    else:
        first = """  <recv request="INVITE" crlf="true" rrs="true">
    <action>
      <ereg regexp="[^ ].*" search_in="hdr" header="From:" assign_to="caller"/>
      <ereg regexp="[^ ].*" search_in="hdr" header="To:" assign_to="callee"/>
    </action>
  </recv>
"""
        talk = f'  <pause milliseconds="{hangup_after_ms}"/>\n{HANGUP}'
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<scenario name="autoinformer recipient">\n'
        '  <recv request="OPTIONS" optional="true" next="options"/>\n'
        f'{first}{RINGING}{answer()}  <recv request="ACK" timeout="10000"/>\n{talk}{OPTIONS_OK}</scenario>\n'
    )
