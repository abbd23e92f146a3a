"""vpbx as the server under test: ``python -m vpbx serve`` on loopback with a provisioned domain.

The domain and its users are written through the services (as the cabinet would), then the real command
starts in its own process, exactly as the README's first command runs it (minus ``--demo``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from tests.integration.peers.net import LOOPBACK, free_port_block, free_ports, wait_sip_ready, wait_until
from tests.integration.peers.process import PeerProcess
from tests.integration.peers.service import SipService
from vpbx import store
from vpbx.app import Core, build_core
from vpbx.pbx import domains, users
from vpbx.settings import Settings

DEFAULT_DOMAIN = "peers.vpbx.test"
REPO = Path(__file__).resolve().parents[3]
# more rows for the provisioned domain, written in the same transaction (trunks, an admin for the cabinet)
Setup = Callable[[AsyncSession, Core, uuid.UUID], Awaitable[None]]
START_TIMEOUT_S = 30.0
START_ATTEMPTS = 3


def _env(data: Path, domain: str, secret: str, extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VPBX_")}
    env.update(
        {
            "VPBX_SECRET_KEY": secret,
            "VPBX_DATABASE_URL": f"sqlite+aiosqlite:///{data / 'vpbx.sqlite3'}",
            "VPBX_SIP_HOST": LOOPBACK,
            "VPBX_SIP_DEFAULT_DOMAIN": domain,  # sipsak and SIPp address us by IP
            "VPBX_LOG_LEVEL": "warning",
        }
    )
    env.update(extra)
    return env


async def provision(
    settings: Settings,
    domain: str,
    accounts: Mapping[str, str],
    *,
    channel_limit: int = 100,
    setup: Setup | None = None,
) -> None:
    """The domain with one user per extension; the SIP login is the extension, as on the Kamailio side."""
    await store.upgrade_async(settings.database_url)
    core = build_core(settings)
    try:
        async with core.sessions() as s:
            d = await domains.create_domain(s, domains.DomainInput(name=domain, channel_limit=channel_limit))
            for ext, password in accounts.items():
                await users.create_user(
                    s,
                    d.id,
                    users.UserInput(
                        name=f"user{ext}",
                        display_name=f"User {ext}",
                        pin=ext,
                        sip_login=ext,
                        sip_password=password,
                    ),
                    box=core.box,
                )
            if setup is not None:
                await setup(s, core, d.id)
            await s.commit()
    finally:
        await core.engine.dispose()


class _PortTaken(Exception):
    pass


async def _wait_started(proc: PeerProcess, url: str, sip_port: int) -> None:
    """Until vpbx answers /healthz and SIP; ``_PortTaken`` when it exited because a port was in use."""
    async with httpx.AsyncClient(timeout=2) as client:

        async def healthy() -> bool:
            if not proc.running:
                tail = proc.log_tail()
                if "address already in use" in tail:
                    raise _PortTaken
                raise RuntimeError(f"vpbx exited:\n{tail}")
            try:
                return (await client.get(f"{url}/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_until(healthy, timeout_s=START_TIMEOUT_S, what="vpbx /healthz")
    await wait_sip_ready(LOOPBACK, sip_port, timeout_s=START_TIMEOUT_S)


class Vpbx:
    def __init__(self, service: SipService, proc: PeerProcess, http_url: str) -> None:
        self.service = service
        self.proc = proc
        self.http_url = http_url

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls,
        workdir: Path,
        *,
        users: Mapping[str, str],
        domain: str = DEFAULT_DOMAIN,
        env: Mapping[str, str] | None = None,
        argv_prefix: Sequence[str] = (),
        channel_limit: int = 100,
        setup: Setup | None = None,
    ) -> AsyncIterator[Vpbx]:
        data = workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(40)
        full_env = _env(data, domain, secret, env or {})
        settings = Settings(
            env="test",
            secret_key=secret,
            data_dir=data,  # type: ignore[arg-type]
            database_url=full_env["VPBX_DATABASE_URL"],
        )
        await provision(settings, domain, users, channel_limit=channel_limit, setup=setup)
        for attempt in range(START_ATTEMPTS):
            # a port found free may be taken by another process before vpbx binds it: start again on others
            sip_port = free_port_block(1)
            http_port = free_ports(1)[0]
            argv = [
                *argv_prefix,
                sys.executable,
                "-m",
                "vpbx",
                "serve",
                "--data-dir",
                str(data),
                "--http-port",
                str(http_port),
                "--sip-port",
                str(sip_port),
            ]
            log_path = workdir / ("vpbx.log" if attempt == 0 else f"vpbx-{attempt}.log")
            proc = await PeerProcess.start("vpbx", argv, log_path=log_path, cwd=REPO, env=full_env)
            url = f"http://{LOOPBACK}:{http_port}"
            try:
                await _wait_started(proc, url, sip_port)
                break
            except _PortTaken:
                await proc.stop()
                if attempt == START_ATTEMPTS - 1:
                    raise RuntimeError(f"vpbx found its ports taken {START_ATTEMPTS} times") from None
            except BaseException:
                await proc.stop()
                raise
        try:
            yield cls(SipService(host=LOOPBACK, port=sip_port, domain=domain, users=dict(users)), proc, url)
        finally:
            rc = await proc.stop()
        if rc != 0:  # SIGTERM must end calls and exit cleanly (telephony.md §4)
            raise RuntimeError(f"vpbx did not stop cleanly (exit {rc}):\n{proc.log_tail()}")
