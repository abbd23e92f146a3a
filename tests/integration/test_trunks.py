"""SIP trunks against a real carrier: SIPp plays the carrier's registrar and OPTIONS peer (telephony.md §3.2).

- Registration: SIPp challenges our REGISTER with 401 and checks the credentials we answer with itself
  (``verifyauth``); with the right password the trunk shows *registered*, with a wrong one *wrong
  credentials* (auth-failed), both read from the cabinet's HTML as an administrator sees them.
- Health: an IP trunk to a SIPp that answers OPTIONS is *up*; when SIPp is gone it is *down* after three
  unanswered OPTIONS, and *up* again once a carrier answers on that port (short interval setting).
"""

from __future__ import annotations

import contextlib
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from tests.helpers import Cabinet
from tests.integration.peers.net import LOOPBACK, free_port_block, wait_until
from tests.integration.peers.process import require_binary
from tests.integration.peers.sipp import SippProcess, SippRun
from tests.integration.peers.vpbx import DEFAULT_DOMAIN, Setup, Vpbx
from vpbx.app import Core
from vpbx.pbx import trunks, users

pytestmark = pytest.mark.peers

ADMIN_PASSWORD = "trunk-admin-pass"
CARRIER_USER = "74951230000"
CARRIER_PASSWORD = "carrier-pass-1"
OPTIONS_S = 0.5  # trunk OPTIONS interval in these tests: down after 3 × 0.5 s
WAIT_S = 15.0


def carrier_setup(*, kind: str, port: int, password: str = CARRIER_PASSWORD) -> Setup:
    async def setup(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
        await users.create_user(
            s,
            domain_id,
            users.UserInput(
                name="admin", display_name="Admin", pin="900", role="admin", web_password=ADMIN_PASSWORD
            ),
            box=core.box,
        )
        await trunks.create_trunk(
            s,
            domain_id,
            trunks.TrunkInput(
                name="SIPp carrier",
                kind=kind,
                host=LOOPBACK,
                port=port,
                username=CARRIER_USER,
                password=password,
                allowed_networks=[LOOPBACK],
            ),
            box=core.box,
        )

    return setup


@contextlib.asynccontextmanager
async def cabinet(vpbx: Vpbx) -> AsyncIterator[Cabinet]:
    async with httpx.AsyncClient(base_url=vpbx.http_url, timeout=5) as client:
        cab = Cabinet(client)
        resp = await cab.login(f"admin@{DEFAULT_DOMAIN}", ADMIN_PASSWORD)
        assert resp.status_code == 303, resp.text[:500]
        yield cab


async def wait_state(cab: Cabinet, state: str) -> str:
    """Poll the page's live fragment until the trunk shows ``state``; the HTML it showed."""
    html = ""

    async def shows() -> bool:
        nonlocal html
        html = (await cab.get("/trunks/status")).text
        return f'data-state="{state}"' in html

    try:
        await wait_until(shows, timeout_s=WAIT_S, what=f"trunk state {state}", interval_s=0.1)
    except TimeoutError:
        raise AssertionError(f"trunk never became {state}:\n{html}") from None
    return html


def registrar(port: int) -> SippRun:
    return SippRun(
        scenario="trunk_registrar",
        calls=1000,
        timeout_s=60,
        local_port=port,
        keys={"user": CARRIER_USER, "password": CARRIER_PASSWORD},
        trace_msg=True,
    )


@pytest.mark.parametrize(
    ("password", "state", "shown"),
    [
        (CARRIER_PASSWORD, "registered", "Зарегистрирован"),
        ("wrong-pass", "auth-failed", "Неверные учётные данные"),
    ],
)
async def test_registration_with_digest_shows_in_the_cabinet(
    tmp_path: Path, password: str, state: str, shown: str
) -> None:
    require_binary("sipp")
    port = free_port_block(1)
    async with SippProcess.running(registrar(port), tmp_path) as carrier:
        await carrier.wait_listening()
        env = {"VPBX_TRUNK_OPTIONS_INTERVAL_S": "5", "VPBX_TRUNK_RETRY_S": "3600"}
        setup = carrier_setup(kind="registration", port=port, password=password)
        async with Vpbx.running(tmp_path / "vpbx", users={}, env=env, setup=setup) as vpbx:
            async with cabinet(vpbx) as cab:
                await wait_state(cab, state)
                page = (await cab.get("/trunks")).text
                assert shown in page and "SIPp carrier" in page
                assert password not in page
        result = await carrier.stop()
    # SIPp saw the challenge answered: 200 only after verifyauth accepted it (else 401 again)
    assert result.stats.failed_calls == 0, result.describe()
    assert result.stats.successful_calls >= 1, result.describe()
    if state == "registered":  # vpbx stopped: it removed its binding (REGISTER with Expires: 0)
        log = (result.workdir / "messages.log").read_text(errors="replace")
        assert "Expires: 0" in log, log[-3000:]


async def test_options_down_after_three_misses_and_up_again(tmp_path: Path) -> None:
    require_binary("sipp")
    port = free_port_block(1)
    run = SippRun(scenario="trunk_options", calls=100_000, timeout_s=60, local_port=port)
    env = {"VPBX_TRUNK_OPTIONS_INTERVAL_S": str(OPTIONS_S)}
    setup = carrier_setup(kind="ip", port=port)
    async with SippProcess.running(run, tmp_path / "first") as carrier:
        await carrier.wait_listening()
        async with Vpbx.running(tmp_path / "vpbx", users={}, env=env, setup=setup) as vpbx:
            async with cabinet(vpbx) as cab:
                await wait_state(cab, "up")
                await carrier.proc.stop(sig=signal.SIGKILL)  # the carrier stops answering
                html = await wait_state(cab, "down")
                assert "Не отвечает" in html
                async with SippProcess.running(run, tmp_path / "second") as again:
                    await again.wait_listening()
                    html = await wait_state(cab, "up")
                    assert "Работает" in html
