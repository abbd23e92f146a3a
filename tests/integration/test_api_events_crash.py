"""call_events queued while the CRM is down survive ``kill -9`` of ``vpbx serve``: after a restart on the same
database with the CRM up, every notification is delivered exactly once, in order per session."""

from __future__ import annotations

import os
import secrets
import signal
from pathlib import Path

import pytest

from tests.integration.peers.net import wait_until
from tests.integration.peers.process import require_binary
from tests.integration.peers.sipp import SippProcess, run_sipp
from tests.integration.peers.vpbx import DEFAULT_DOMAIN, _env, provision
from tests.integration.test_api_events import events_of, with_api
from tests.integration.test_calls import EVENTS_TIMEOUT_S, USERS, Server, bind, callee_run
from tests.integration.test_history import _Handle, serve
from tests.integration.test_incoming_calls import carrier_run, line_to
from tests.integration_api.notify_crm import Answer, Crm, Seen
from vpbx.settings import Settings

pytestmark = pytest.mark.peers

CALLS = 2
STATES = ["new", "calling", "connected", "disconnected", "end"]
DELIVERY_TIMEOUT_S = 90.0  # a bound: the dispatcher's retry delays are 1, 5 and 30 s


async def test_queued_notifications_survive_kill_9_and_arrive_once_in_order(tmp_path: Path) -> None:
    for program in ("sipsak", "sipp"):
        require_binary(program)
    crm_up = False

    def script(_crm: Crm, _req: Seen) -> Answer:
        return Answer(200) if crm_up else Answer(500)

    workdir = tmp_path / "vpbx"
    data = workdir / "data"
    data.mkdir(parents=True)
    events_file = tmp_path / "events.jsonl"
    secret = secrets.token_urlsafe(40)
    env = _env(data, DEFAULT_DOMAIN, secret, {"VPBX_DEBUG_CALL_EVENTS_FILE": str(events_file)})
    settings = Settings(
        env="test",
        secret_key=secret,
        data_dir=data,  # type: ignore[arg-type]
        database_url=env["VPBX_DATABASE_URL"],
    )
    async with Crm(script).running() as crm:
        await provision(settings, DEFAULT_DOMAIN, USERS, setup=with_api(line_to("user"), crm))
        async with serve(workdir, data, env, "first") as (service, proc):
            server = Server(vpbx=_Handle(service, proc), events_file=events_file)  # type: ignore[arg-type]
            async with SippProcess.running(callee_run("uas_answer", calls=CALLS), tmp_path) as phone:
                await bind(server, "102", phone)
                caller = await run_sipp(carrier_run(server, calls=CALLS, duration_ms=300), tmp_path)
                await phone.wait()
            engine = await server.calls(ended=CALLS)
            # the CRM has refused at least one notification: the rest wait in the outbox
            await wait_until(lambda: len(crm.seen) >= 1, timeout_s=EVENTS_TIMEOUT_S, what="a refused event")
            os.kill(proc.pid, signal.SIGKILL)
            assert await proc.wait(timeout_s=10) == -signal.SIGKILL
        assert caller.ok, caller.describe()
        refused = len(crm.seen)
        assert len(events_of(crm)) == refused  # nothing but call_events, all answered 500
        crm_up = True

        async with serve(workdir, data, env, "second"):

            def delivered() -> int:
                return len(events_of(crm)[refused:])

            await wait_until(
                lambda: delivered() >= CALLS * len(STATES),
                timeout_s=DELIVERY_TIMEOUT_S,
                what="every notification delivered",
            )
        after = events_of(crm)[refused:]

    assert len(engine) == CALLS
    keys = [(r.json["session_id"], r.json["state"]) for r in after]
    assert len(keys) == len(set(keys)) == CALLS * len(STATES)  # exactly once each
    for session_id, events in engine.items():
        assert [r.json["state"] for r in after if r.json["session_id"] == session_id] == STATES
        assert [e["state"] for e in events] == STATES
