"""A recorded call between two real phones (issue 6 acceptance; telephony.md §3.10, §7.2, §7.4).

``vpbx serve`` records every call of its domain. baresip 101 sends a 440 Hz tone, baresip 102 a 1000 Hz one;
after the hang-up ``end`` says is_record "true", the Recording row becomes ready, and the MP3 (decoded by
sox) holds both tones, found by the Goertzel filter. The domain's admin downloads the MP3 from the cabinet;
another domain's admin gets 404. Both media modes: worker processes (the default) and inline.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tests.helpers import Cabinet
from tests.integration.peers.audio import goertzel_power, make_tone, read_wav, rms
from tests.integration.peers.baresip import Account, Baresip
from tests.integration.peers.net import wait_until
from tests.integration.peers.process import require_binary, run_command
from tests.integration.peers.vpbx import DEFAULT_DOMAIN, Vpbx
from vpbx.app import Core
from vpbx.pbx import domains, users
from vpbx.store import create_engine, session_factory
from vpbx.store.models import Domain, Recording

pytestmark = pytest.mark.peers

USERS = {"101": "secret-101", "102": "secret-102"}
OTHER_DOMAIN = "other.vpbx.test"
ADMIN_PASSWORD = "Admin-Password-1"
TONE_A_HZ, TONE_B_HZ, CONTROL_HZ = 440.0, 1000.0, 700.0
TALK_S = 3.0
READY_TIMEOUT_S = 60.0  # telephony.md §3.10: the MP3 is ready within 60 s of `end`
EVENTS_TIMEOUT_S = 30.0  # a bound, not a speed: a loaded 2-core box can be slow
HTTP_TIMEOUT_S = 5.0


async def setup(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
    """Record every call of the domain; an admin in it, and another domain with its own admin."""
    await s.execute(update(Domain).where(Domain.id == domain_id).values(record_calls=True))
    admin = users.UserInput(
        name="admin", display_name="Admin", pin="100", role="admin", web_password=ADMIN_PASSWORD
    )
    await users.create_user(s, domain_id, admin, box=core.box)
    other = await domains.create_domain(s, domains.DomainInput(name=OTHER_DOMAIN))
    await users.create_user(s, other.id, admin, box=core.box)


def call_events(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def cabinet(client: httpx.AsyncClient, login: str) -> Cabinet:
    cab = Cabinet(client)
    resp = await cab.login(login, ADMIN_PASSWORD)
    assert resp.status_code == 303, resp.text[:500]
    return cab


@pytest.mark.parametrize("media_mode", ["workers", "inline"])
async def test_a_recorded_call_holds_both_parties_tones(tmp_path: Path, media_mode: str) -> None:
    for program in ("baresip", "sox"):
        require_binary(program)
    tone_a = await make_tone(tmp_path / "a440.wav", TONE_A_HZ, 30)
    tone_b = await make_tone(tmp_path / "b1000.wav", TONE_B_HZ, 30)
    events_file = tmp_path / "events.jsonl"
    env = {"VPBX_DEBUG_CALL_EVENTS_FILE": str(events_file), "VPBX_MEDIA_MODE": media_mode}
    workdir = tmp_path / "vpbx"
    async with Vpbx.running(workdir, users=USERS, env=env, setup=setup) as server:
        async with (
            Baresip.start(tmp_path, name="a", audio_source=tone_a) as a,
            Baresip.start(tmp_path, name="b", audio_source=tone_b) as b,
        ):
            await a.register(Account.on(server.service, "101"))
            await b.register(Account.on(server.service, "102", answermode="auto"))
            await a.dial("102")
            await a.wait_event("CALL_ESTABLISHED")
            await b.wait_event("CALL_ESTABLISHED")
            await b.wait_recorded(TALK_S)  # both directions flowed for a while
            await a.wait_recorded(TALK_S)
            await a.hangup()
            await a.wait_event("CALL_CLOSED")
            await b.wait_event("CALL_CLOSED")

        await wait_until(
            lambda: any(e["state"] == "end" for e in call_events(events_file)),
            timeout_s=EVENTS_TIMEOUT_S,
            what="the call's end event",
        )
        (end,) = [e for e in call_events(events_file) if e["state"] == "end"]
        assert end["is_record"] == "true"
        session = end["session_id"]

        engine = create_engine(f"sqlite+aiosqlite:///{workdir / 'data' / 'vpbx.sqlite3'}")
        sessions = session_factory(engine)
        try:

            async def recording() -> Recording | None:
                async with sessions() as s:
                    return await s.scalar(select(Recording).where(Recording.session_id == session))

            async def ready() -> bool:
                row = await recording()
                assert row is None or row.status != "failed", "the recording failed"
                return row is not None and row.status == "ready"

            await wait_until(ready, timeout_s=READY_TIMEOUT_S, what="the recording ready")
            row = await recording()
            assert row is not None
        finally:
            await engine.dispose()

        mp3 = workdir / "data" / "recordings" / row.path
        assert mp3.stat().st_size == row.size_bytes
        assert not mp3.with_suffix(".wav").exists(), "the WAV is gone once the MP3 is ready"
        assert TALK_S - 0.5 <= row.duration_s <= 30.0

        async with httpx.AsyncClient(base_url=server.http_url, timeout=HTTP_TIMEOUT_S) as c1:
            admin = await cabinet(c1, f"admin@{DEFAULT_DOMAIN}")
            got = await admin.client.get(f"/recordings/{session}.mp3")
            assert got.status_code == 200 and got.headers["content-type"] == "audio/mpeg"
            assert got.content == mp3.read_bytes()
        async with httpx.AsyncClient(base_url=server.http_url, timeout=HTTP_TIMEOUT_S) as c2:
            stranger = await cabinet(c2, f"admin@{OTHER_DOMAIN}")
            assert (await stranger.client.get(f"/recordings/{session}.mp3")).status_code == 404

    decoded = tmp_path / "decoded.wav"
    rc, output = await run_command(
        ["sox", str(mp3), "-r", "8000", "-c", "1", "-b", "16", str(decoded)], timeout_s=30.0
    )
    assert rc == 0, output
    pcm = read_wav(decoded)
    middle = pcm.window(0.5, max(1.0, pcm.seconds - 1.0))
    assert rms(middle.samples) > 0.05
    p_a, p_b, p_control = (goertzel_power(middle, f) for f in (TONE_A_HZ, TONE_B_HZ, CONTROL_HZ))
    assert p_a > 20 * p_control and p_b > 20 * p_control, (p_a, p_b, p_control)
