"""The call history with real peers: SIPp calls leave one closed record each, and ``kill -9`` of
``vpbx serve`` mid-call leaves, after a restart on the same database, a closed record for every call
(telephony.md §3.7 "CDR"; issue core-4 item 6)."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from tests.conftest import postgres_database
from tests.helpers import Cabinet
from tests.integration.peers.net import LOOPBACK, free_port_block, free_ports, wait_sip_ready, wait_until
from tests.integration.peers.process import PeerProcess, require_binary
from tests.integration.peers.service import SipService
from tests.integration.peers.sipp import SippProcess, run_sipp
from tests.integration.peers.vpbx import DEFAULT_DOMAIN, REPO, START_TIMEOUT_S, _env, provision
from tests.integration.test_calls import (
    USERS,
    Server,
    bind,
    callee_run,
    caller_run,
    rejected_scenario,
    running,
)
from vpbx.app import Core
from vpbx.pbx import users
from vpbx.pbx.history import SPOOL_FILE, session_log_string
from vpbx.settings import Settings
from vpbx.store import create_engine, session_factory
from vpbx.store.models import CallEventRow, CallRecord

pytestmark = pytest.mark.peers

CALLS = 50
NODE_ID = "history-node"
EVENTS_TIMEOUT_S = 20.0


async def read_history(url: str) -> tuple[list[CallRecord], dict[str, list[CallEventRow]]]:
    """Every record, and the outbox by session, as a consumer of the database sees them."""
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as s:
            records = list(await s.scalars(select(CallRecord).order_by(CallRecord.started_at)))
            rows = await s.scalars(select(CallEventRow).order_by(CallEventRow.session_id, CallEventRow.seq))
            outbox: dict[str, list[CallEventRow]] = {}
            for row in rows:
                outbox.setdefault(row.session_id, []).append(row)
    finally:
        await engine.dispose()
    return records, outbox


def db_url(server: Server) -> str:
    return f"sqlite+aiosqlite:///{server.vpbx.proc.log_path.parent / 'data' / 'vpbx.sqlite3'}"


# --- one record per call ------------------------------------------------------------------------------------


async def test_answered_busy_cancelled_and_unanswered_calls_leave_one_closed_record_each(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, {"VPBX_NODE_ID": NODE_ID}, setup=admin_setup) as server:
        async with SippProcess.running(callee_run("uas_answer"), tmp_path) as callee:
            await bind(server, "102", callee)
            answered = await run_sipp(
                caller_run(server, "uac_call", caller="101", callee="102", calls=1, duration_ms=1100),
                tmp_path,
            )
            assert (await callee.wait()).ok
        # each callee its own extension: a binding left from the previous step would ring too
        async with SippProcess.running(callee_run("uas_busy"), tmp_path) as callee:
            await bind(server, "103", callee)
            busy = await run_sipp(
                caller_run(server, rejected_scenario(tmp_path, 486), caller="102", callee="103", calls=1),
                tmp_path,
            )
            assert (await callee.wait()).ok
        async with SippProcess.running(callee_run("uas_ring"), tmp_path) as callee:
            await bind(server, "101", callee)
            cancelled = await run_sipp(
                caller_run(server, "uac_cancel", caller="103", callee="101", calls=1), tmp_path
            )
            assert (await callee.wait()).ok
        unanswered = await run_sipp(  # 104 has no phone
            caller_run(server, rejected_scenario(tmp_path, 480), caller="101", callee="104", calls=1),
            tmp_path,
        )
        for result in (answered, busy, cancelled, unanswered):
            assert result.ok, result.describe()
        await server.calls(ended=4)  # `end` is published after its record is committed
        records, outbox = await read_history(db_url(server))
        async with httpx.AsyncClient(base_url=server.vpbx.http_url, timeout=5) as client:
            cab = Cabinet(client)
            assert (await cab.login(f"admin@{DEFAULT_DOMAIN}", ADMIN_PASSWORD)).status_code == 303
            journal = (await cab.get("/history")).text
            missed = (await cab.get("/history?state=missed")).text
            card = (await cab.get(f"/history/{records[0].session_id}")).text

    assert len(records) == 4 and len({r.session_id for r in records}) == 4
    talk, engaged, gave_up, nobody = records
    for r in records:
        assert r.ended_at is not None and r.node_id == NODE_ID and r.call_type == "internal"
        assert r.ended_at >= r.started_at
        states = [row.state for row in outbox[r.session_id]]
        assert states[0] == "new" and states[-1] == "end" and states.count("end") == 1
        assert [row.seq for row in outbox[r.session_id]] == list(range(1, len(states) + 1))
        assert r.last_seq == len(states)

    assert talk.answered_at is not None and talk.end_reason == "normal" and talk.status_code is None
    assert (talk.caller_pin, talk.callee_pin, talk.answering_pin) == ("101", "102", "102")
    assert talk.caller_number == f"user101@{DEFAULT_DOMAIN}"
    assert talk.answering_uri == f"user102@{DEFAULT_DOMAIN}"
    assert talk.duration_s >= 1  # SIPp talks for 1.1 s
    assert [code for _o, code, _p in talk.session_log] == ["ct", "cc", "cd"]
    assert re.match(r"\d+:ct:102;\d+:cc:102;\d+:cd:102;$", session_log_string(talk.session_log))

    assert (engaged.status_code, engaged.status_text, engaged.end_reason) == (486, "Busy Here", "busy")
    assert (engaged.caller_pin, engaged.callee_pin) == ("102", "103")
    assert (gave_up.status_code, gave_up.end_reason, gave_up.caller_pin) == (487, "cancelled", "103")
    assert (nobody.status_code, nobody.status_text) == (480, "Temporarily Unavailable")
    assert nobody.callee_pin == "104" and nobody.session_log == []
    for r in (engaged, gave_up, nobody):
        assert r.answered_at is None and r.duration_s == 0 and r.answering_pin is None

    # the cabinet shows what the engine wrote: all four listed, «missed» three, the card the protocol
    assert all(r.session_id in journal for r in records)
    assert talk.session_id not in missed and all(r.session_id in missed for r in (engaged, gave_up, nobody))
    assert session_log_string(talk.session_log) in card


ADMIN_PASSWORD = "history-admin-pass"


async def admin_setup(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
    await users.create_user(
        s,
        domain_id,
        users.UserInput(
            name="admin", display_name="Admin", pin="900", role="admin", web_password=ADMIN_PASSWORD
        ),
        box=core.box,
    )


# --- kill -9 mid-call ---------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve(
    workdir: Path, data: Path, env: Mapping[str, str], tag: str
) -> AsyncIterator[tuple[SipService, PeerProcess]]:
    """``python -m vpbx serve`` on a provisioned data directory; the caller decides how it ends."""
    sip_port, http_port = free_port_block(1), free_ports(1)[0]
    argv = [sys.executable, "-m", "vpbx", "serve", "--data-dir", str(data)]
    argv += ["--http-port", str(http_port), "--sip-port", str(sip_port)]
    proc = await PeerProcess.start("vpbx", argv, log_path=workdir / f"vpbx-{tag}.log", cwd=REPO, env=env)
    try:
        async with httpx.AsyncClient(timeout=2) as client:

            async def healthy() -> bool:
                if not proc.running:
                    raise RuntimeError(f"vpbx exited:\n{proc.log_tail()}")
                try:
                    return (await client.get(f"http://{LOOPBACK}:{http_port}/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_until(healthy, timeout_s=START_TIMEOUT_S, what="vpbx /healthz")
        await wait_sip_ready(LOOPBACK, sip_port, timeout_s=START_TIMEOUT_S)
        service = SipService(host=LOOPBACK, port=sip_port, domain=DEFAULT_DOMAIN, users=dict(USERS))
        yield service, proc
    finally:
        await proc.stop(sig=signal.SIGKILL)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The server's database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'vpbx' / 'data' / 'vpbx.sqlite3'}"
        return
    async with postgres_database(migrate=False) as url:
        yield url


async def test_kill_9_mid_call_leaves_a_closed_record_for_every_call_after_restart(
    tmp_path: Path, database: str
) -> None:
    for program in ("sipsak", "sipp"):
        require_binary(program)
    workdir = tmp_path / "vpbx"
    data = workdir / "data"
    data.mkdir(parents=True)
    secret = secrets.token_urlsafe(40)
    events_file = tmp_path / "events.jsonl"
    extra = {
        "VPBX_DATABASE_URL": database,
        "VPBX_NODE_ID": NODE_ID,
        "VPBX_DEBUG_CALL_EVENTS_FILE": str(events_file),
    }
    env = _env(data, DEFAULT_DOMAIN, secret, extra)
    settings = Settings(env="test", secret_key=secret, data_dir=data, database_url=database)  # type: ignore[arg-type]
    await provision(settings, DEFAULT_DOMAIN, USERS, channel_limit=CALLS * 2)

    def connected() -> int:
        if not events_file.exists():
            return 0
        return events_file.read_text().count('"state": "connected"')

    async with serve(workdir, data, env, "first") as (service, proc):
        server = Server(vpbx=_Handle(service, proc), events_file=events_file)  # type: ignore[arg-type]
        async with SippProcess.running(callee_run("uas_answer", calls=CALLS), tmp_path) as callee:
            await bind(server, "102", callee)
            run = caller_run(server, "uac_call_wait_bye", caller="101", callee="102", calls=CALLS, rate=CALLS)
            async with SippProcess.running(run, tmp_path):
                await wait_until(
                    lambda: connected() >= CALLS, timeout_s=EVENTS_TIMEOUT_S, what=f"{CALLS} connected calls"
                )
                os.kill(proc.pid, signal.SIGKILL)  # the server dies mid-call: no BYE, no `end`
                assert await proc.wait(timeout_s=10) == -signal.SIGKILL
    records, _ = await read_history(database)
    assert len(records) == CALLS and all(r.ended_at is None for r in records)  # open: the crash left them so

    async with serve(workdir, data, env, "second") as (_service, proc):
        # the reconciler ran before the node took calls: every call is closed, its events in the outbox
        records, outbox = await read_history(database)
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait(timeout_s=15) == 0

    assert len(records) == CALLS and len({r.session_id for r in records}) == CALLS
    for r in records:
        rows = outbox[r.session_id]
        assert [row.state for row in rows] == ["new", "calling", "connected", "disconnected", "end"]
        assert [row.seq for row in rows] == [1, 2, 3, 4, 5]
        assert r.ended_at == rows[2].at  # ended at the crash: its last event
        assert r.end_reason == "recovered" and r.answered_at is not None
        assert rows[3].payload["disconnect_reason"] == "5" and rows[4].payload["is_record"] == "false"
        assert [code for _o, code, _p in r.session_log] == ["ct", "cc", "cd"]
    ends = [line for line in events_file.read_text().splitlines() if '"state": "end"' in line]
    assert len(ends) == CALLS  # the recovered `end`s were published too


class _Handle:
    """What ``bind`` and ``caller_run`` read of a running server (its SIP service)."""

    def __init__(self, service: SipService, proc: PeerProcess) -> None:
        self.service = service
        self.proc = proc


# --- the database goes away mid-service ---------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_calls_go_on_while_the_database_is_down_and_their_history_follows(
    tmp_path: Path, database: str
) -> None:
    """PostgreSQL refuses connections mid-service: calls still connect and end, their events wait in the
    spool, and once the database is back the spool is replayed into closed records."""
    for program in ("sipsak", "sipp"):
        require_binary(program)
    workdir = tmp_path / "vpbx"
    data = workdir / "data"
    data.mkdir(parents=True)
    secret = secrets.token_urlsafe(40)
    events_file = tmp_path / "events.jsonl"
    extra = {"VPBX_DATABASE_URL": database, "VPBX_DEBUG_CALL_EVENTS_FILE": str(events_file)}
    env = _env(data, DEFAULT_DOMAIN, secret, extra)
    settings = Settings(env="test", secret_key=secret, data_dir=data, database_url=database)  # type: ignore[arg-type]
    await provision(settings, DEFAULT_DOMAIN, USERS)
    name = make_url(database).database
    admin = create_async_engine(make_url(database).set(database="postgres"), isolation_level="AUTOCOMMIT")

    async def allow_connections(allowed: bool) -> None:
        async with admin.connect() as conn:
            await conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}'))
            if not allowed:
                await conn.execute(
                    text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                    {"n": name},
                )

    spool = data / SPOOL_FILE
    try:
        async with serve(workdir, data, env, "outage") as (service, proc):
            server = Server(vpbx=_Handle(service, proc), events_file=events_file)  # type: ignore[arg-type]
            async with SippProcess.running(callee_run("uas_answer", calls=3), tmp_path) as callee:
                await bind(server, "102", callee)
                await allow_connections(False)
                caller = await run_sipp(
                    caller_run(server, "uac_call", caller="101", callee="102", calls=3, rate=10), tmp_path
                )
                answered = await callee.wait()
            assert caller.ok, caller.describe()
            assert answered.ok, answered.describe()
            await server.calls(ended=3)  # published although nothing could be committed
            assert spool.exists()

            await allow_connections(True)
            await wait_until(
                lambda: not spool.exists(), timeout_s=EVENTS_TIMEOUT_S, what="the spool replayed"
            )
            records, outbox = await read_history(database)
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait(timeout_s=15) == 0
    finally:
        await allow_connections(True)
        await admin.dispose()

    assert len(records) == 3
    for r in records:
        assert r.ended_at is not None and r.end_reason == "normal" and r.answered_at is not None
        assert [row.state for row in outbox[r.session_id]] == [
            "new",
            "calling",
            "connected",
            "disconnected",
            "end",
        ]
