"""Real SIP peers against vpbx and against the reference server, Kamailio (telephony.md §7).

sipsak, SIPp and baresip register with digest auth and call each other. Every test takes only a
``SipService``, so each runs against both servers: Kamailio proves the harness, vpbx is what is tested.
Calls run against Kamailio only until vpbx's B2BUA lands (issue 4): then ``vpbx`` joins ``CALL_SERVERS``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import pytest

from tests.integration.peers import sipsak
from tests.integration.peers.audio import dominant_frequency, make_tone, read_wav, rms
from tests.integration.peers.baresip import Account, Baresip
from tests.integration.peers.kamailio import Kamailio
from tests.integration.peers.process import require_binary
from tests.integration.peers.service import SipService
from tests.integration.peers.sipp import SippProcess, SippRun, run_sipp, write_users_csv
from tests.integration.peers.vpbx import Vpbx

pytestmark = pytest.mark.peers

USERS = {"101": "secret-101", "102": "secret-102", "103": "secret-103"}
TONE_A_HZ = 440.0
TONE_B_HZ = 1000.0
TONE_TOLERANCE = 0.05  # ±5 %, telephony.md §7.4
SIPP_TIMEOUT_S = 20.0


SERVERS = ["kamailio", "vpbx"]
CALL_SERVERS = ["kamailio", "vpbx"]


@contextlib.asynccontextmanager
async def running(kind: str, tmp_path: Path) -> AsyncIterator[SipService]:
    """The SIP server ``kind`` with ``USERS`` provisioned on its first domain."""
    for program in ("sipsak", "sipp"):
        require_binary(program)
    if kind == "kamailio":
        require_binary("kamailio")
        async with Kamailio.running(tmp_path / "kamailio", users=USERS) as kamailio:
            yield kamailio.service
    else:
        async with Vpbx.running(tmp_path / "vpbx", users=USERS) as vpbx:
            yield vpbx.service


@pytest.fixture(params=SERVERS)
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SipService]:
    async with running(request.param, tmp_path) as service:
        yield service


@pytest.fixture(params=CALL_SERVERS)
async def call_server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SipService]:
    async with running(request.param, tmp_path) as service:
        yield service


def call_run(
    server: SipService, scenario: str, *, caller: str, callee: str, password: str, **kw: object
) -> SippRun:
    """A UAC scenario from ``caller`` to ``callee`` with digest credentials, sent to the server."""
    return SippRun(
        scenario=scenario,
        remote=(server.host, server.port),
        service=callee,
        keys={"domain": server.domain, "caller": caller},
        auth_user=caller,
        auth_password=password,
        auth_uri=f"{callee}@{server.domain}",
        timeout_s=SIPP_TIMEOUT_S,
        **kw,  # type: ignore[arg-type]
    )


async def bind_sipp_to(server: SipService, user: str, sipp: SippProcess) -> None:
    """Register ``user`` with its contact pointing at a SIPp UAS (which cannot register by itself)."""
    result = await sipsak.register(
        server.host,
        server.port,
        user,
        server.password(user),
        contact=f"sip:{user}@127.0.0.1:{sipp.port}",
        expires_s=300,  # sipsak's own default (15 s) is below a registrar's Min-Expires (60 s)
    )
    assert result.ok, result.output


# -- sipsak ---------------------------------------------------------------------------------------------


async def test_sipsak_options_is_answered_with_200(server: SipService) -> None:
    result = await sipsak.options(server.host, server.port)

    assert result.ok, result.output
    assert 200 in result.status_codes


async def test_sipsak_registers_with_digest_and_a_wrong_password_fails(server: SipService) -> None:
    good = await sipsak.register(server.host, server.port, "101", USERS["101"], expires_s=120)
    bad = await sipsak.register(server.host, server.port, "102", "not-the-password", expires_s=120)

    assert good.ok, good.output
    assert not bad.ok, bad.output
    assert 200 not in bad.status_codes
    assert set(bad.status_codes) <= {100, 401, 407}, bad.status_codes


# -- SIPp -----------------------------------------------------------------------------------------------


async def test_sipp_registers_with_digest_at_a_small_rate(server: SipService, tmp_path: Path) -> None:
    users = write_users_csv(tmp_path / "users.csv", server.users)
    run = SippRun(
        scenario="reg_digest",
        remote=(server.host, server.port),
        calls=30,
        rate=30,
        timeout_s=SIPP_TIMEOUT_S,
        inf=users,
        keys={"domain": server.domain, "expires": "120"},
        auth_uri=server.domain,
    )

    result = await run_sipp(run, tmp_path)

    assert result.ok, result.describe()
    assert result.stats.successful_calls == 30
    assert result.stats.failed_calls == 0


async def test_sipp_register_with_a_wrong_password_fails(server: SipService, tmp_path: Path) -> None:
    users = write_users_csv(tmp_path / "users.csv", {"101": "not-the-password"})
    run = SippRun(
        scenario="reg_digest",
        remote=(server.host, server.port),
        calls=1,
        timeout_s=SIPP_TIMEOUT_S,
        inf=users,
        keys={"domain": server.domain, "expires": "120"},
        auth_uri=server.domain,
    )

    result = await run_sipp(run, tmp_path)

    assert not result.ok
    assert result.stats.failed_calls == 1, result.describe()


async def test_sipp_options_is_answered(server: SipService, tmp_path: Path) -> None:
    run = SippRun(
        scenario="options",
        remote=(server.host, server.port),
        calls=3,
        rate=30,
        timeout_s=SIPP_TIMEOUT_S,
        keys={"domain": server.domain},
    )

    result = await run_sipp(run, tmp_path)

    assert result.ok, result.describe()
    assert result.stats.successful_calls == 3


async def test_sipp_call_with_digest_reaches_the_callee_and_ends_with_bye(
    call_server: SipService, tmp_path: Path
) -> None:
    server = call_server
    answering = SippRun(scenario="uas_answer", calls=3, timeout_s=SIPP_TIMEOUT_S)
    async with SippProcess.running(answering, tmp_path) as callee:
        await callee.wait_listening()
        await bind_sipp_to(server, "102", callee)
        caller = await run_sipp(
            call_run(
                server,
                "uac_call",
                caller="103",
                callee="102",
                password=USERS["103"],
                calls=3,
                rate=10,
                duration_ms=100,
            ),
            tmp_path,
        )
        answered = await callee.wait()

    assert caller.ok, caller.describe()
    assert caller.stats.successful_calls == 3
    assert answered.ok, answered.describe()
    assert answered.stats.successful_calls == 3  # INVITE, ACK and BYE all arrived at the callee


async def test_sipp_call_with_a_wrong_password_is_refused(call_server: SipService, tmp_path: Path) -> None:
    server = call_server
    result = await run_sipp(
        call_run(server, "uac_call", caller="103", callee="102", password="not-the-password", calls=1),
        tmp_path,
    )

    assert not result.ok
    assert result.stats.failed_calls == 1, result.describe()


async def test_sipp_cancel_while_ringing_gets_487(call_server: SipService, tmp_path: Path) -> None:
    server = call_server
    ringing = SippRun(scenario="uas_ring", calls=2, timeout_s=SIPP_TIMEOUT_S)
    async with SippProcess.running(ringing, tmp_path) as callee:
        await callee.wait_listening()
        await bind_sipp_to(server, "102", callee)
        caller = await run_sipp(
            call_run(
                server, "uac_cancel", caller="101", callee="102", password=USERS["101"], calls=2, rate=10
            ),
            tmp_path,
        )
        rang = await callee.wait()

    assert caller.ok, caller.describe()
    assert caller.stats.successful_calls == 2
    assert rang.ok, rang.describe()  # the callee saw the CANCEL and the ACK for its 487


# -- baresip --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hangs_up", ["caller", "callee"])
async def test_two_phones_call_each_other_and_hear_each_others_tone(
    call_server: SipService, tmp_path: Path, hangs_up: Literal["caller", "callee"]
) -> None:
    server = call_server
    require_binary("baresip")
    require_binary("sox")
    tone_a = await make_tone(tmp_path / "a440.wav", TONE_A_HZ, 30)
    tone_b = await make_tone(tmp_path / "b1000.wav", TONE_B_HZ, 30)

    async with (
        Baresip.start(tmp_path, name="a", audio_source=tone_a) as a,
        Baresip.start(tmp_path, name="b", audio_source=tone_b) as b,
    ):
        await a.register(Account.on(server, "101"))
        await b.register(Account.on(server, "102", answermode="auto"))

        await a.dial("102")
        await a.wait_event("CALL_RINGING")
        await a.wait_event("CALL_ESTABLISHED")
        await b.wait_event("CALL_ESTABLISHED")
        heard_at_b = await b.wait_recorded(1.0)
        heard_at_a = await a.wait_recorded(1.0)
        await (a if hangs_up == "caller" else b).hangup()
        await a.wait_event("CALL_CLOSED")
        await b.wait_event("CALL_CLOSED")

        at_b, at_a = read_wav(heard_at_b), read_wav(heard_at_a)

    assert rms(at_b.samples) > 0.1 and rms(at_a.samples) > 0.1  # a tone, not silence
    assert dominant_frequency(at_b) == pytest.approx(TONE_A_HZ, rel=TONE_TOLERANCE)
    assert dominant_frequency(at_a) == pytest.approx(TONE_B_HZ, rel=TONE_TOLERANCE)
